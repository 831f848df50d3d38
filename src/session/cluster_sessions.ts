/**
 * The cluster side of the session registry: which node holds a client id's
 * session, and how it moves. A CONNECT claims the client id on the bus
 * (numbered claims; the kick carries the number) and loads the session from
 * the shared store, with a holder catching its messages while the old node
 * lets go (handover.ts); a kicked node writes the session back and forgets it;
 * a survivor adopts a dead node's sessions and fills them with what was left
 * in its inbox; a node the cluster expelled drops everything. The registry
 * itself (sessions, binding, expiry) is BrokerCore's (core.ts).
 */
import { getLogger } from "@logtape/logtape";
import { ForeignSessionError, type OrphanDelivery } from "../cluster/types.ts";
import { ReasonCode } from "../protocol/reason_codes.ts";
import { Router, Subscribed } from "../router/router.ts";
import type { Subscription } from "../router/types.ts";
import { isClusterStore, type SessionState } from "../store/types.ts";
import type { BrokerCore } from "./core.ts";
import { HeldDeliveries, OnceTo } from "./handover.ts";
import type { AttachingConnection, AttachRequest, AttachResult } from "./host.ts";
import type { Session } from "./session.ts";

const log = getLogger(["mcloudtt", "core"]);

/** Serve no shared group here (a remote message whose groups are served elsewhere). */
const NO_GROUPS: ReadonlySet<string> = new Set();

/** A cluster attach between its claim and its bind. */
interface PendingClaim {
  /** This node's claim number, 0 until the bus answered. */
  epoch: number;
  /** The highest claim number of a kick that arrived meanwhile. */
  kicked: number;
  /** Resolves once `epoch` is known (or the claim failed). */
  readonly claimed: Promise<void>;
  readonly done: () => void;
  /** Resolves once the attach bound its session or gave up. */
  readonly settled: Promise<void>;
  readonly finish: () => void;
}

/**
 * A session adopted from a dead node while that node's inbox is drained: its
 * stored subscriptions route to `held`, so what is published meanwhile comes
 * after the older messages left in the inbox (see `nodeDown`).
 */
export interface Adoption {
  readonly session: Session;
  /** Its subscriptions, in the router once the inbox is drained. */
  readonly subs: Subscription[];
  readonly held: HeldDeliveries;
  /** Resolves once the session took over its routes (or is gone). */
  readonly done: Promise<void>;
  readonly finish: () => void;
  /** Claimed by another node meanwhile: filled, written back and forgotten here. */
  readonly handBack: boolean;
}

/** CONNACK for a connection whose session the cluster state cannot tell about now. */
const UNAVAILABLE: AttachResult = Object.freeze({
  ok: false,
  code: ReasonCode.ServerUnavailable,
  reason: "cluster state unavailable, try again",
});

/** CONNACK for a connection whose client id another node claimed after this one did. */
const OUTCLAIMED: AttachResult = Object.freeze({
  ok: false,
  code: ReasonCode.ServerBusy,
  reason: "client id taken over by a newer connection",
});

export class ClusterSessions {
  constructor(private readonly core: BrokerCore) {}

  /** Cluster: connections of this node still claiming their client id (see `sessionTakenOver`). */
  private readonly attaching = new Map<string, PendingClaim>();

  /** Cluster: the last attach of each client id on this node (see `attachShared`). */
  private readonly attachTail = new Map<string, Promise<void>>();

  /** Cluster: the claim number under which this node bound each session. */
  private readonly claimOf = new WeakMap<Session, number>();

  /** Cluster: how many journal batches had left when each session was claimed here. */
  private readonly claimedAfter = new WeakMap<Session, number>();

  /** Cluster: sessions bound to a connection that has not taken them yet, and who waits for it. */
  private readonly linking = new Map<Session, { linked: Promise<void>; resolve: () => void }>();

  /** Sessions adopted from a dead node whose inbox is still being drained, by client id. */
  readonly adopting = new Map<string, Adoption>();

  /**
   * Cluster: the session may live on another node; claim it, then load it from the store.
   * Bounded: with the cluster state unreachable, the client hears so instead of waiting.
   */
  attachShared(conn: AttachingConnection, req: AttachRequest): Promise<AttachResult> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    let gaveUp = false;
    const late = new Promise<AttachResult>((resolve) => {
      timer = setTimeout(() => {
        gaveUp = true;
        resolve(UNAVAILABLE);
      }, this.core.limits.connectTimeoutMs);
    });
    // CONNECTs with one client id on this node attach one after the other, each once the one
    // before holds its session (linked) or gave up: bind() takes the session from a connection
    // only once that connection has it, so two attaching together both went on with it.
    const id = conn.clientId;
    const before = this.attachTail.get(id);
    let done!: () => void;
    const mine = new Promise<void>((r) => done = r);
    this.attachTail.set(id, mine);
    const run = before === undefined
      ? this.claimAndLoad(conn, req, () => gaveUp)
      : this.boundedWait(before).then(() => this.claimAndLoad(conn, req, () => gaveUp));
    run.then((r) => {
      const linking = r.ok ? this.linking.get(r.session) : undefined;
      return linking === undefined ? undefined : this.boundedWait(linking.linked);
    }).catch(() => {}).finally(() => {
      if (this.attachTail.get(id) === mine) this.attachTail.delete(id);
      done();
    });
    return Promise.race([run, late]).finally(() => clearTimeout(timer));
  }

  private async claimAndLoad(
    conn: AttachingConnection,
    req: AttachRequest,
    /** True once the client was answered 0x88 (connect timeout): nothing may be bound for it. */
    gaveUp: () => boolean,
  ): Promise<AttachResult> {
    const id = conn.clientId;
    const store = this.core.store;
    let done!: () => void;
    let finish!: () => void;
    const pending: PendingClaim = {
      epoch: 0,
      kicked: 0,
      claimed: new Promise<void>((resolve) => done = resolve),
      done: () => done(),
      settled: new Promise<void>((resolve) => finish = resolve),
      finish: () => finish(),
    };
    this.attaching.set(id, pending);
    let held: HeldDeliveries | null = null;
    try {
      // Adopted here a moment ago: the client gets the dead node's leftovers first.
      const adoption = this.adopting.get(id);
      if (adoption !== undefined) await this.boundedWait(adoption.done);
      // Another user's session may be here (bound while this CONNECT waited its turn in
      // attachShared): refused before it claims, or the claim would record its user as owner.
      const foreign = this.core.binding.foreignHere(conn, req);
      if (foreign !== null) return foreign;
      // Look before claiming: a stranger must not kick the owner's connection on another node.
      const before = await store.loadSession(id);
      if (before !== null && before.owner !== req.owner) {
        return this.core.binding.refuseForeign(conn, before.owner);
      }
      // A new session on a full node is refused before it claims (bind() would refuse it after):
      // the claim takes the id over from its connection on another node (a clean session,
      // nothing stored to resume), and writes the id's keys in Redis.
      if (before === null && !this.core.sessions.has(id)) {
        const full = this.core.binding.sessionLimitRefusal();
        if (full !== null) return full;
      }
      if (before !== null && before.subscriptions.length > 0 && !this.core.sessions.has(id)) {
        held = await this.holdFor(before);
      }
      await this.core.bus.claimSession(
        id,
        (epoch) => {
          pending.epoch = epoch;
          pending.done();
        },
        undefined,
        req.owner,
      );
      pending.done();
      // A newer claim elsewhere wins: this node must not fence the store against it.
      if (pending.kicked > pending.epoch) return this.outclaimed();
      // From here on only this node's writes of the session count (a late write elsewhere fails).
      if (isClusterStore(store)) await store.claimSession(id);
      // Adopted here from a dead node while this attach waited for it: the leftovers of that
      // node's inbox go in before what this attach's holder collected.
      const adopted = this.adopting.get(id);
      if (adopted !== undefined) await this.boundedWait(adopted.done);
      if (!this.core.sessions.has(id)) {
        const state = await store.loadSession(id);
        if (state !== null && state.owner !== req.owner) {
          return this.core.binding.refuseForeign(conn, state.owner);
        }
        if (state !== null && !this.core.sessions.has(id)) {
          // Session Present promises the subscriptions work: the CONNACK waits until every
          // node routes them here (as a SUBACK does).
          const routed = this.core.restorer.restore(state);
          if (held !== null) this.release(held);
          held = null;
          if (routed.length > 0) await Promise.all(routed).catch(() => {});
        }
      }
      if (held !== null) this.release(held);
      held = null;
    } catch (e) {
      // Another user's session holds the id on another node (one the store does not keep).
      if (e instanceof ForeignSessionError) return this.core.binding.refuseForeign(conn, e.owner);
      log.warn("cannot attach {clientId}: the cluster state is unreachable: {error}", {
        clientId: id,
        error: e instanceof Error ? e.message : String(e),
      });
      return UNAVAILABLE;
    } finally {
      // Refused or failed: nothing to hand over, and the held routes must go.
      if (held !== null) this.core.unsubscribeAll(held);
      pending.done();
      if (this.attaching.get(id) === pending) this.attaching.delete(id);
      pending.finish();
    }
    if (pending.kicked > pending.epoch) return this.outclaimed();
    if (gaveUp()) {
      // Its client was told 0x88 and is gone: a session bound now would hold the id (and its
      // owner record) with nobody connected. A stored session loaded here stays, detached.
      if (!this.core.sessions.has(id)) this.core.bus.releaseSession(id);
      return UNAVAILABLE;
    }
    // bind() refuses another user's session here (one adopted from a dead node meanwhile, say).
    const result = this.core.binding.bind(conn, req);
    if (!result.ok) {
      // Full by now (sessions came while this one claimed): its claim must not keep the id.
      if (!this.core.sessions.has(id)) this.core.bus.releaseSession(id);
      return result;
    }
    this.core.adopted.delete(id);
    this.claimOf.set(result.session, pending.epoch);
    this.claimedAfter.set(result.session, this.core.journal?.flushed ?? 0);
    let resolve!: () => void;
    const linked = new Promise<void>((r) => resolve = r);
    this.linking.set(result.session, { linked, resolve });
    return result;
  }

  /**
   * Hands what was held to the session now here (the one just loaded, or one
   * that was already here), in the same turn as its subscriptions took over
   * the routes, then drops the holder's routes.
   */
  private release(held: HeldDeliveries): void {
    const session = this.core.sessions.get(held.clientId);
    const n = session !== undefined ? held.handTo(session) : 0;
    this.core.unsubscribeAll(held);
    if (n > 0 || held.dropped > 0 || held.duplicates > 0) {
      log.debug("handed {n} messages that arrived during the takeover to {clientId}", {
        n,
        clientId: held.clientId,
        dropped: held.dropped,
        duplicates: held.duplicates,
      });
    }
  }

  /** Waits for `p`, but not past the connect timeout (a connection that died never links). */
  private async boundedWait(p: Promise<void>): Promise<void> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<void>((r) => timer = setTimeout(r, this.core.limits.connectTimeoutMs));
    await Promise.race([p, late]).finally(() => clearTimeout(timer));
  }

  /**
   * A CONNECT with the same client id on another node claimed it after this
   * one did: that connection stays, exactly as if it had come a moment later.
   */
  private outclaimed(): AttachResult {
    // Counted with its CONNACK (connect_flow.ts `refuse`).
    return OUTCLAIMED;
  }

  /** BusHost: another node took over `clientId` with claim number `epoch`. */
  async sessionTakenOver(clientId: string, epoch: number): Promise<void> {
    const pending = this.attaching.get(clientId);
    if (pending !== undefined) {
      // Recorded before any wait: the attach checks it right before binding.
      pending.kicked = Math.max(pending.kicked, epoch);
      await pending.claimed;
      // A kick from a claim older than this node's own (one left in a dead node's inbox, say).
      if (epoch > 0 && epoch <= pending.epoch) return;
      // Newer: the attach gives up (or, past its last check, binds and is taken over below).
      // The kicker loads the session only after this returns, so the attach must be over.
      await pending.settled;
    }
    // Adopted from a dead node a moment ago: hand it over with that node's leftovers in it.
    const adoption = this.adopting.get(clientId);
    if (adoption !== undefined) await this.boundedWait(adoption.done);
    const s = this.core.sessions.get(clientId);
    if (s === undefined) return;
    const mine = this.claimOf.get(s) ?? 0;
    if (epoch > 0 && epoch <= mine) return;
    const linking = this.linking.get(s);
    if (s.link === null && linking !== undefined) {
      // Bound here a moment ago, its CONNACK not sent yet: take over the connection, not just
      // the state, or it would go on with a session that was handed away.
      await this.boundedWait(linking.linked);
      this.linking.delete(s);
    }
    s.link?.takenOver();
    // Let what is being written land, then, in one turn, write the session back and stop
    // routing to it: whatever reached it until then is in what the new owner loads, whatever
    // comes later reaches the new owner's holder (handover.ts).
    await this.core.journal?.pending?.catch(() => {});
    s.persist(this.core.subscriptionsOf(s));
    this.forgetHere(s);
    // What was pushed until now, not a drain: under steady traffic the journal is never empty,
    // and the new owner would wait for its takeover timeout and load a stale session.
    await this.core.journal?.pending?.catch(() => {});
    const store = this.core.store;
    if (isClusterStore(store) && !this.core.sessions.has(clientId)) store.sessionLeft(clientId);
  }

  /**
   * BusHost: node `nodeId` died without leaving, and this node was chosen to
   * clean up. Its sessions are adopted from the store (on exactly one node
   * each): they wait here, detached, for their clients, and their wills are
   * published after their delay unless the client comes back first.
   */
  async nodeDown(nodeId: string): Promise<OrphanDelivery | void> {
    const store = this.core.store;
    if (!isClusterStore(store)) return;
    let adopted = 0;
    // The adopted sessions' subscriptions alone: what was left in the dead node's inbox is
    // theirs, and this node's other subscribers had their own copy.
    const orphans = new Router();
    orphans.receiveCheck = this.core.mayReceive;
    const taken: Adoption[] = [];
    const onceTo = new Map<Session, OnceTo>();
    for (const id of await store.sessionsOfNode(nodeId)) {
      if (this.core.sessions.has(id)) continue;
      const state = await store.adoptSession(id, nodeId);
      if (state === null || this.core.sessions.has(id)) continue;
      // Owning it on the bus too, so a client that reconnects elsewhere takes it from here.
      // 0: its client is already claiming it on another node; this node fills it with the dead
      // node's leftovers and then hands it back to the store for that node to load.
      const handBack = (await this.core.bus.claimSession(id, undefined, nodeId, state.owner)) === 0;
      if (this.core.sessions.has(id)) continue;
      // Its routes are here before the dead node's are withdrawn (so a publish in between
      // reaches it), but what they bring waits until the older messages in the dead node's
      // inbox are in: a publisher's messages stay in order.
      const { held } = this.hold(state);
      const s = this.core.restorer.revive(state);
      const subs = this.core.restorer.subscriptions(state, s);
      let finish!: () => void;
      const done = new Promise<void>((r) => finish = r);
      const a: Adoption = { session: s, subs, held, done, finish, handBack };
      this.adopting.set(id, a);
      this.core.adopted.add(id);
      adopted++;
      taken.push(a);
      // What the dead node had already taken from its inbox into the session (written, not yet
      // acknowledged in the inbox) is in the state: its copy in the inbox is dropped.
      const once = new OnceTo(s);
      onceTo.set(s, once);
      for (const sub of this.core.restorer.subscriptions(state, once)) orphans.subscribe(sub);
    }
    await store.forgetNode(nodeId);
    log.warn("node {nodeId} died: adopted {n} of its sessions", { nodeId, n: adopted });
    if (adopted === 0) return;
    return {
      deliver: (msg, groups, redelivery) => {
        // A session whose client came back meanwhile is no longer this node's to fill.
        for (const a of taken) {
          if (this.core.sessions.get(a.session.clientId) !== a.session) {
            orphans.unsubscribeAll(onceTo.get(a.session)!);
          }
        }
        if (redelivery) {
          // Another node's member left it: for a member of its group, as `redeliverShared`
          // does. Published, it reached the plain subscribers a second time (under a new id)
          // and would have updated the retained store of `orphans`.
          this.core.metrics.droppedSharedGone += orphans.redeliverSharedKeys(msg, groups);
        } else orphans.publish(msg, groups.length === 0 ? NO_GROUPS : new Set(groups));
      },
      done: async () => {
        for (const a of taken) this.adoptionDone(a);
        const back = taken.filter((a) => a.handBack);
        if (back.length === 0) return;
        for (const a of back) {
          const s = a.session;
          if (this.core.sessions.get(s.clientId) !== s) continue;
          s.persist(this.core.router.subscriptionsOf(s));
          this.forgetHere(s);
        }
        // Written before the bus tells the claiming node that the dead one let go.
        await this.core.journal?.pending?.catch(() => {});
      },
    };
  }

  /**
   * The dead node's inbox is drained: an adopted session takes over its
   * routes from its holder and then what the holder collected meanwhile.
   */
  private adoptionDone(a: Adoption): void {
    const s = a.session;
    const id = s.clientId;
    if (this.adopting.get(id) === a) this.adopting.delete(id);
    if (this.core.sessions.get(id) === s) {
      for (const sub of a.subs) this.core.subscribe(s, sub);
      a.held.handTo(s);
    }
    this.core.unsubscribeAll(a.held);
    a.finish();
  }

  /** BusHost: the cluster handled this node as dead while it was frozen; its sessions moved. */
  expelled(): void {
    this.dropStale([...this.core.sessions.keys()]);
  }

  /**
   * A batch was refused for sessions another node owns now (it took them over
   * while this node still held them): drop them here without writing.
   */
  dropStale(clientIds: readonly string[], batch = Infinity): void {
    for (const id of clientIds) {
      const s = this.core.sessions.get(id);
      if (s === undefined) continue;
      // Claimed again by this node after that batch left: the refusal was about the old claim.
      if ((this.claimedAfter.get(s) ?? 0) >= batch) continue;
      s.journal = null;
      // The owner publishes the will: cleared before the connection closes, which would send it.
      s.setWill(null);
      s.link?.takenOver();
      this.forgetHere(s);
    }
  }

  /**
   * `s` lives on at another node (moved, handed back, or taken while this node was behind):
   * it leaves this one without ending (no will, no store delete). What it held leaves this
   * node's queue gauges and the counts of messages other queues share, or
   * limits.max_queued_bytes_total would count it here for ever.
   */
  private forgetHere(s: Session): void {
    const core = this.core;
    core.detached.delete(s);
    core.unsubscribeAll(s);
    if (core.sessions.get(s.clientId) === s) {
      core.sessions.delete(s.clientId);
      core.adopted.delete(s.clientId);
    }
    s.clear();
  }

  /**
   * Routes the subscriptions of a session that lives on another node to a
   * holder here, before that node is asked to let go: see handover.ts.
   */
  private async holdFor(state: SessionState): Promise<HeldDeliveries> {
    const { held, routed } = this.hold(state);
    await Promise.all(routed).catch(() => {});
    return held;
  }

  /** Routes a stored session's subscriptions to a new holder; `routed` says when they work. */
  private hold(state: SessionState): { held: HeldDeliveries; routed: Promise<void>[] } {
    const core = this.core;
    const held = new HeldDeliveries(
      state.clientId,
      state.owner ?? undefined,
      core.limits.maxQueued,
      core.limits.maxQueuedBytes,
    );
    const routed: Promise<void>[] = [];
    for (const sub of core.restorer.subscriptions(state, held)) {
      if (sub.group !== null) held.shared = true;
      if (core.router.subscribe(sub) !== Subscribed.NewRoute) continue;
      const ready = core.bus.addRoute(sub.key);
      if (ready !== null) routed.push(ready);
    }
    return { held, routed };
  }

  /** The adoption in progress for `clientId`, if any. */
  adoptionOf(clientId: string): Adoption | undefined {
    return this.adopting.get(clientId);
  }

  /** The connection took the session `bind` handed it: a kick waiting for that may go on. */
  linked(session: Session): void {
    const linking = this.linking.get(session);
    if (linking === undefined) return;
    this.linking.delete(session);
    linking.resolve();
  }
}
