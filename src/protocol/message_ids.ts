/**
 * Message ids (`Message.id`): a random prefix per generator (one per process in practice) and a
 * counter. Unique without asking anyone: no coordination with Redis or another node, and a
 * restarted process draws a new prefix. The cluster bus gives one to a message when it first
 * forwards it (every copy on other nodes carries it), and the session journal gives one to a
 * message when a durable store first keeps it (every stored copy carries it, so the sessions
 * restored from the store share one Message again: see session/stored.ts).
 */

/** Characters of the process prefix that starts every id `MessageIds` gives. */
const ID_PREFIX_LENGTH = 8;

/**
 * Ids for the messages that enter the cluster here, or that a durable store keeps: a random
 * prefix of this generator (48 bits, 8 characters of base64url) and a counter in base 36. The
 * counter follows the order in which they were given (`idOrigin`, `idSeq`): the cluster bus
 * relies on it for the messages it forwards. An id never contains a space or a colon.
 */
export class MessageIds {
  private readonly prefix: string;
  private seq = 0;

  constructor() {
    const bytes = crypto.getRandomValues(new Uint8Array(6));
    // base64url: no space (the separator of an entry's id list), no padding for 6 bytes.
    this.prefix = btoa(String.fromCharCode(...bytes)).replaceAll("+", "-").replaceAll("/", "_");
  }

  next(): string {
    return this.prefix + (++this.seq).toString(36);
  }
}

/** The process that gave `id` (its prefix), or "" for an id `MessageIds` did not make. */
export function idOrigin(id: string): string {
  return id.length > ID_PREFIX_LENGTH ? id.slice(0, ID_PREFIX_LENGTH) : "";
}

/** Where `id` comes in its process's order (`idOrigin`), NaN for an id `MessageIds` did not make. */
export function idSeq(id: string): number {
  return id.length > ID_PREFIX_LENGTH ? parseInt(id.slice(ID_PREFIX_LENGTH), 36) : NaN;
}
