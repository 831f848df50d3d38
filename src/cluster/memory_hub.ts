/**
 * Several buses in one process sharing one hub: the in-memory counterpart of
 * the Redis bus, with the same routing, shared-group and ownership rules, so
 * the bus contract test runs against both and multi-node behaviour of the
 * broker can be tested in one process. Forwarded messages go through the same
 * codec as Redis inbox entries (so a delivered message never aliases the
 * publisher's read buffer) and arrive asynchronously, in order per sender.
 */
import { getLogger } from "@logtape/logtape";
import type { Message } from "../protocol/message.ts";
import { decodeBatch, encodeBody, encodeGroups, encodeIds, MessageIds } from "./codec.ts";
import {
  dispatch,
  redeliveryTarget,
  Rotation,
  type SharedPolicy,
  toEveryNode,
} from "./dispatch.ts";
import { RouteTrie } from "./route_trie.ts";
import {
  type Bus,
  type BusHost,
  ForeignSessionError,
  type ForwardResult,
  LOCAL_ONLY,
} from "./types.ts";

const log = getLogger(["mcloudtt", "cluster"]);

export interface MemoryBusOptions {
  sharedPolicy?: SharedPolicy;
  /** How long claimSession waits for the old owner (default 3000 ms). */
  takeoverTimeoutMs?: number;
}

/** The shared state: which buses are up, who owns which client id. */
export class MemoryHub {
  readonly buses = new Map<string, MemoryBus>();
  readonly owners = new Map<string, string>();
  /** Claim numbers per client id (the Redis bus keeps them in the owner key). */
  readonly claims = new Map<string, number>();
  /** Whose session the owner of each client id holds (null: anonymous). */
  readonly users = new Map<string, string | null>();
  private seq = 0;

  /** A new bus on this hub; `nodeId` defaults to node-1, node-2, ... */
  bus(nodeId = `node-${++this.seq}`, opts: MemoryBusOptions = {}): MemoryBus {
    return new MemoryBus(this, nodeId, opts);
  }

  /**
   * Simulates a crash of `nodeId`: it stops without leaving, its routes are
   * withdrawn and exactly one survivor is told (nodeDown).
   */
  async kill(nodeId: string): Promise<void> {
    const dead = this.buses.get(nodeId);
    if (dead === undefined) return;
    dead.halt();
    this.buses.delete(nodeId);
    for (const b of this.buses.values()) b.trie.dropNode(nodeId);
    const survivor = [...this.buses.values()][0];
    // No inbox here: nothing was left for the adopted sessions.
    await (await survivor?.host?.nodeDown(nodeId))?.done();
  }

  /** Every other live bus. */
  others(self: MemoryBus): MemoryBus[] {
    return [...this.buses.values()].filter((b) => b !== self);
  }
}

export class MemoryBus implements Bus {
  readonly name = "memory";
  host: BusHost | null = null;
  readonly trie: RouteTrie;
  private readonly rotation = new Rotation();
  private readonly local = new Map<string, number>();
  private readonly policy: SharedPolicy;
  private readonly takeoverTimeoutMs: number;
  private running = false;
  /** Per-destination records (and their message ids) waiting for this turn's delivery. */
  private pending = new Map<string, { parts: Uint8Array[]; ids: string[]; versions: string[] }>();
  private readonly ids = new MessageIds();
  private scheduled = false;

  constructor(private readonly hub: MemoryHub, readonly nodeId: string, opts: MemoryBusOptions) {
    this.trie = new RouteTrie(nodeId);
    this.policy = opts.sharedPolicy ?? "local";
    this.takeoverTimeoutMs = opts.takeoverTimeoutMs ?? 3000;
  }

  get problems(): readonly string[] {
    return this.running ? [] : ["not joined"];
  }

  start(host: BusHost): Promise<void> {
    this.host = host;
    this.running = true;
    for (const other of this.hub.buses.values()) {
      for (const key of other.trie.keysOf(other.nodeId)) this.trie.set(key, other.nodeId, true);
    }
    this.hub.buses.set(this.nodeId, this);
    for (const key of this.local.keys()) this.announce(key, true);
    return Promise.resolve();
  }

  stop(): Promise<void> {
    if (!this.running) return Promise.resolve();
    for (const key of [...this.local.keys()]) this.announce(key, false);
    this.local.clear();
    this.halt();
    this.hub.buses.delete(this.nodeId);
    return Promise.resolve();
  }

  /** Stops without leaving (see MemoryHub.kill). */
  halt(): void {
    this.running = false;
    this.pending.clear();
  }

  addRoute(key: string): Promise<void> | null {
    const n = this.local.get(key) ?? 0;
    this.local.set(key, n + 1);
    if (n === 0) this.announce(key, true);
    // Other buses' tries are updated synchronously: the route is live now.
    return null;
  }

  removeRoute(key: string): void {
    const n = this.local.get(key) ?? 0;
    if (n <= 1) {
      this.local.delete(key);
      if (n === 1) this.announce(key, false);
    } else this.local.set(key, n - 1);
  }

  private announce(key: string, present: boolean): void {
    this.trie.set(key, this.nodeId, present);
    if (!this.running) return;
    for (const b of this.hub.others(this)) b.trie.set(key, this.nodeId, present);
  }

  forward(msg: Message, retainVersion = ""): ForwardResult {
    if (!this.running) return LOCAL_ONLY;
    let d = dispatch(this.trie.plan(msg.topic), this.nodeId, this.policy, this.rotation);
    const routed = d !== null && d.dests.size > 0;
    if (msg.retain) d = toEveryNode(d, this.hub.buses.keys(), this.nodeId);
    if (d === null) return LOCAL_ONLY;
    if (d.dests.size > 0) {
      if (msg.qos !== 0 && msg.id === "") msg.id = this.ids.next();
      const body = encodeBody(msg);
      for (const [dest, groups] of d.dests) {
        this.add(dest, encodeGroups(groups), body, msg.id, retainVersion);
      }
    }
    return {
      localGroups: d.localGroups,
      written: msg.qos > 0 && d.dests.size > 0 ? Promise.resolve() : null,
      routed,
    };
  }

  forwardShared(msg: Message, key: string): boolean {
    if (!this.running) return false;
    const dest = redeliveryTarget(this.trie.plan(msg.topic), key, this.nodeId, this.rotation);
    if (dest === null) return false;
    // A new id, as the Redis bus gives one (its receiver's duplicate check would drop the old).
    this.add(
      dest,
      encodeGroups([key]),
      encodeBody(msg, true),
      msg.qos === 0 ? "" : this.ids.next(),
    );
    return true;
  }

  /** Collects a record for `dest`; this turn's records are delivered together (flush). */
  private add(dest: string, header: Uint8Array, body: Uint8Array, id: string, version = ""): void {
    let list = this.pending.get(dest);
    if (list === undefined) {
      this.pending.set(dest, list = { parts: [new Uint8Array([1])], ids: [], versions: [] });
    }
    list.parts.push(header, body);
    list.ids.push(id);
    list.versions.push(version);
    if (!this.scheduled) {
      this.scheduled = true;
      queueMicrotask(() => this.flush());
    }
  }

  private flush(): void {
    this.scheduled = false;
    const pending = this.pending;
    this.pending = new Map();
    for (const [dest, { parts, ids, versions }] of pending) {
      const target = this.hub.buses.get(dest);
      if (target === undefined || target.host === null) continue;
      const batch = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
      let o = 0;
      for (const p of parts) {
        batch.set(p, o);
        o += p.length;
      }
      for (const f of decodeBatch(batch, encodeIds(ids), encodeIds(versions))) {
        try {
          if (f.redelivery) target.host.redeliverShared(f.msg, f.groups);
          else target.host.deliverRemote(f.msg, f.groups, f.version);
        } catch (e) {
          log.error`delivering a forwarded message on ${dest} failed: ${e}`;
        }
      }
    }
  }

  claimSession(
    clientId: string,
    numbered?: (epoch: number) => void,
    _adoptingFrom?: string,
    owner?: string | null,
  ): Promise<number> {
    const old = this.hub.owners.get(clientId);
    const users = this.hub.users;
    if (owner !== undefined && old !== undefined && old !== this.nodeId && users.has(clientId)) {
      const user = users.get(clientId)!;
      if (user !== owner && this.hub.buses.get(old)?.host != null) {
        return Promise.reject(new ForeignSessionError(user));
      }
    }
    if (owner === undefined) users.delete(clientId);
    else users.set(clientId, owner);
    const epoch = (this.hub.claims.get(clientId) ?? 0) + 1;
    this.hub.claims.set(clientId, epoch);
    numbered?.(epoch);
    this.hub.owners.set(clientId, this.nodeId);
    if (old === undefined || old === this.nodeId) return Promise.resolve(epoch);
    const holder = this.hub.buses.get(old);
    if (holder?.host == null) return Promise.resolve(epoch);
    return bounded(holder.host.sessionTakenOver(clientId, epoch), this.takeoverTimeoutMs)
      .then(() => epoch);
  }

  releaseSession(clientId: string): void {
    if (this.hub.owners.get(clientId) === this.nodeId) {
      this.hub.owners.delete(clientId);
      this.hub.users.delete(clientId);
    }
  }
}

/** Waits for `p`, but no longer than `ms`; failures of the old owner do not fail the claim. */
export function bounded(p: Promise<void>, ms: number): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<void>((resolve) => {
    timer = setTimeout(resolve, ms);
  });
  return Promise.race([p.catch((e) => log.warn`session takeover: ${e}`), timeout]).finally(() =>
    clearTimeout(timer)
  );
}
