/**
 * Versions of retained updates, so every node of a cluster (and the store) keeps the same
 * retained message of a topic however the updates reach it: the newest version wins, whatever
 * came last. A version is the wall-clock millisecond of the update and a tag of the process that
 * made it, as a fixed-width string (compared as a string): the later update wins, and two
 * processes' updates in one millisecond are ordered by their tags. One process's versions never
 * go back (a clock stepped backwards repeats the last one, and a tie goes to the update that
 * came later, which for one process's updates is the same order everywhere).
 * "" is older than every version: retained messages stored before versions existed.
 */

/** The version of no update: older than all. */
export const NO_VERSION = "";

const MS_DIGITS = 13;
const TAG_DIGITS = 4;

/** Gives this process's retained updates their versions. */
export class RetainClock {
  private last = NO_VERSION;
  private readonly tag: string;

  constructor(private readonly now: () => number = Date.now, tag?: number) {
    const t = tag ?? crypto.getRandomValues(new Uint16Array(1))[0];
    this.tag = t.toString(16).padStart(TAG_DIGITS, "0");
  }

  next(): string {
    const ms = Math.max(0, Math.floor(this.now()));
    const v = String(ms).padStart(MS_DIGITS, "0") + this.tag;
    if (v > this.last) this.last = v;
    return this.last;
  }
}

/** True when an update of version `v` replaces what `current` set (ties: the later one). */
export function newerOrSame(v: string, current: string): boolean {
  return v >= current;
}
