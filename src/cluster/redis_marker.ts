/**
 * Notices a Redis that lost its data (a restart without persistence), so the
 * nodes write what they hold again.
 *
 * One key, `{rt}:marker`, holds a random value the nodes remember. Gone or
 * changed means the cluster state was lost (or another node already noticed,
 * and picked a new value). In Redis Cluster mode that key lives on one shard
 * only, and a different master can restart empty while the marker's shard
 * keeps it: the sessions and retained messages stored on that shard would be
 * gone unnoticed. So each master also holds a witness, a copy of the
 * marker's value in the first slot it serves. A missing witness makes the
 * node that sees it set a new marker value (compare-and-set, so two nodes
 * seeing it at once agree on one value); every node then finds the value
 * changed and writes its state again, once. A node that finds the value
 * already changed takes it over, missing witnesses or not: another node is
 * writing them, and a second new value would make everyone rewrite twice.
 *
 * A witness is also missing after slots move to another master (resharding),
 * which costs one needless rewrite; a replica promoted after a failover holds
 * its master's witness, which costs none.
 */
import { getLogger } from "@logtape/logtape";
import { Cluster } from "ioredis";
import calculateSlot from "cluster-key-slot";
import type { RedisClient } from "./redis_connection.ts";

const log = getLogger(["mcloudtt", "cluster"]);

const slotOf = calculateSlot as unknown as (key: string) => number;

/** Sets the marker to ARGV[2] if it still holds ARGV[1]; returns what it holds then. */
const REPLACE =
  `if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2]) end
return redis.call('GET', KEYS[1])`;

/** Hash tags found for slots (one per slot asked for; a master's first slot rarely changes). */
const tags = new Map<number, string>();

/** A short hash tag whose keys land in `slot` (CRC16 spreads `w<n>` evenly: ~16k tries). */
export function tagForSlot(slot: number): string {
  let tag = tags.get(slot);
  if (tag !== undefined) return tag;
  for (let i = 0;; i++) {
    if (slotOf(`w${i}`) === slot) {
      tag = `w${i}`;
      break;
    }
  }
  tags.set(slot, tag);
  return tag;
}

export class StateMarker {
  /** The marker value this node last saw ("" until the first check). */
  private value = "";

  constructor(
    private readonly cmd: RedisClient,
    private readonly prefix: string,
    private readonly markerKey: string,
  ) {}

  /**
   * Witness keys, one per master, in the first slot ioredis maps to it
   * (none outside Redis Cluster mode). Keyed by master so a missing one can
   * be named.
   */
  private witnesses(): Map<string, string> {
    const out = new Map<string, string>();
    if (!(this.cmd instanceof Cluster)) return out;
    const slots = this.cmd.slots;
    for (let slot = 0; slot < slots.length; slot++) {
      const master = slots[slot]?.[0];
      if (master === undefined || out.has(master)) continue;
      out.set(master, `${this.prefix}:{${tagForSlot(slot)}}:witness`);
    }
    return out;
  }

  /**
   * True when the cluster state was lost since the last check (or on the
   * first check of a new cluster): the caller writes what it holds again.
   * Throws when Redis cannot be read (the caller retries).
   */
  async check(): Promise<boolean> {
    const witnesses = this.witnesses();
    const keys = [...witnesses.values()];
    // Witnesses before the marker: a node that sets a new value sets the marker before the
    // witnesses, so a witness read here never holds a value newer than the marker read after it.
    const seen = await Promise.all(keys.map((k) => this.cmd.get(k)));
    const current = await this.cmd.get(this.markerKey);
    const known = this.value;
    if (
      current !== null && seen.every((v) => v === current) && (known === "" || current === known)
    ) {
      this.value = current;
      return false;
    }
    const missing = [...witnesses.keys()].filter((_, i) => seen[i] === null);
    let next: string;
    if (current === null) {
      if (known !== "") {
        log.warn("redis lost the cluster state (restarted without persistence?): rebuilding it");
      }
      await this.cmd.set(this.markerKey, crypto.randomUUID(), "NX");
      next = (await this.cmd.get(this.markerKey)) ?? "";
    } else if (missing.length > 0 && (known === "" || current === known)) {
      log.warn`redis master ${
        missing.join(", ")
      } lost the cluster state (restarted without persistence, or its slots moved): rebuilding it`;
      const replaced = await this.cmd.eval(
        REPLACE,
        1,
        this.markerKey,
        current,
        crypto.randomUUID(),
      );
      next = typeof replaced === "string" ? replaced : "";
    } else {
      if (known !== "" && current !== known) {
        log.warn("redis lost the cluster state (another node noticed it): rebuilding it");
      }
      next = current;
    }
    if (next === "") throw new Error("the cluster state marker could not be written");
    await Promise.all(keys.map((k) => this.cmd.set(k, next)));
    this.value = next;
    return true;
  }
}
