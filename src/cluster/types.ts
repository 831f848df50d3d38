/**
 * The cluster seam: how publishes, subscriptions and session ownership reach
 * other broker nodes. A single node uses `localBus` (nothing to do); the
 * Redis bus replicates a route table (filter -> nodes), forwards a publish
 * only to nodes with a matching route, and arbitrates which node owns a
 * client id.
 */
import type { Message } from "../protocol/message.ts";

/**
 * A claim refused: another user's session holds the client id on another live node (a
 * connection or a persistent session there); its owner is `owner` (null: anonymous).
 */
export class ForeignSessionError extends Error {
  constructor(readonly owner: string | null) {
    super("the client id is held by another user on another node");
    this.name = "ForeignSessionError";
  }
}

/** What the bus calls on its own node. */
export interface BusHost {
  /**
   * A message published on another node: deliver it to local subscribers
   * only (never forward it again). `groups` are the shared-subscription keys
   * (`$share/group/filter`) this node was chosen to serve for it; other
   * matching groups are served elsewhere.
   */
  deliverRemote(msg: Message, groups: readonly string[], retainVersion?: string): void;
  /**
   * A message another node's member of share group(s) `groups` left undelivered (its session
   * ended): hand it to a member here, of those groups only.
   */
  redeliverShared(msg: Message, groups: readonly string[]): void;
  /** A forwarded message came a second time and was dropped (counted with duplicates). */
  duplicateArrived?(): void;
  /**
   * Resolves once what `deliverRemote` queued so far for persistent sessions
   * is durable (the inbox entries are acknowledged after it; a failed store
   * write is retried, so this waits for the store to be back), or will never
   * be written here (sessions another node took over: rejects); null when
   * nothing is waiting to be written. Never settles when the broker stopped
   * first: the entries stay unacknowledged.
   */
  deliveredWritten(): Promise<void> | null;
  /**
   * True while the store is failing and `[storage] max_unwritten_ops`
   * operations wait: the inbox is not read until it is false again.
   */
  readonly storeFull: boolean;
  /**
   * Another node took over `clientId` with claim number `epoch`: close its
   * connection here with 0x8E, keep nothing. A connection of this node still
   * attaching `clientId` under an older claim must lose too (two CONNECTs
   * racing on two nodes leave one survivor: the later claim).
   */
  sessionTakenOver(clientId: string, epoch: number): Promise<void>;
  /**
   * Node `nodeId` (an incarnation: node_id plus a random suffix) stopped
   * without leaving and its lease ran out. Called on exactly one surviving
   * node, after the dead node's routes were withdrawn, so the core can publish
   * the wills of that node's clients and adopt its sessions from the store.
   * The dead node counts as handled once this resolves (if this node dies
   * first, another survivor is called). May return how to deliver what is
   * left in the dead node's inbox (messages forwarded to it after it died,
   * before its routes were withdrawn) to the sessions adopted from it.
   */
  nodeDown(nodeId: string): Promise<OrphanDelivery | void>;
  /**
   * This node was frozen past its lease and another node handled it as dead
   * (adopted its sessions, published their wills): close every connection
   * here (0x8E) and forget every session without writing it or publishing
   * its will again. The node then serves anew.
   */
  expelled(): void;
  /**
   * The sessions held here (connected or offline) by client id, with their owners: written
   * again as the id's holder when Redis lost its data.
   */
  readonly sessions?: ReadonlyMap<string, { readonly owner: string | null }>;
  /**
   * Redis lost its data (restarted without persistence) while this node ran: what it holds for
   * the store (its sessions, the retained messages) is written again, in the background.
   */
  storeLost?(): void;
}

/**
 * What is left in a dead node's inbox, for the sessions this node adopted
 * from it (not for its other subscribers, who had their copy).
 */
export interface OrphanDelivery {
  /**
   * Delivers one message found in the dead node's inbox, oldest first. `redelivery`: a share
   * group's message handed on from another node's member (`Bus.forwardShared`), for a member of
   * `groups` only: the plain subscribers had their own copy.
   */
  deliver(msg: Message, groups: readonly string[], redelivery: boolean): void;
  /**
   * The inbox is drained (or draining it failed): nothing more comes. The
   * adopted sessions then take what was published for them meanwhile, after
   * the older messages from the inbox. Called exactly once; the bus answers
   * takeovers waiting for the dead node only once it resolved (a session
   * handed back must be written first).
   */
  done(): Promise<void> | void;
}

/** The bus's decision for a message published on this node. */
export interface ForwardResult {
  /**
   * Shared-subscription keys this node serves for the message, or null when
   * every matching local group serves it (no other node has that group).
   */
  readonly localGroups: ReadonlySet<string> | null;
  /**
   * Resolves once every forwarded copy is written where it cannot be lost
   * (a QoS 1/2 PUBACK waits for it); null when nothing was forwarded, for
   * QoS 0, or when durability is "async". Rejects when they could not be
   * written (Redis unreachable): then no PUBACK, and the client resends.
   */
  readonly written: Promise<void> | null;
  /**
   * True when another node holds a subscription the message matches (a retained copy sent to
   * every node does not count): the publisher's PUBACK must not say "no matching subscribers".
   */
  readonly routed: boolean;
}

/** Forward nothing, serve every local group: the answer of a single node. */
export const LOCAL_ONLY: ForwardResult = Object.freeze({
  localGroups: null,
  written: null,
  routed: false,
});

/** Inbox backpressure figures of the Redis bus (see redis_backlog.ts), for /metrics. */
export interface BacklogStats {
  /** Entries in this node's own inbox at the last measurement. */
  own: number;
  /** Live nodes over `[cluster] max_inbox_backlog` at the last measurement (this one included). */
  over: number;
  /** QoS 1/2 forwards whose acknowledgement was held for a node over the bound. */
  held: number;
  /** QoS 0 forwards dropped for a node over the bound. */
  dropped: number;
}

export interface Bus {
  /** "local", "redis". */
  readonly name: string;
  /** This node's id in the cluster. */
  readonly nodeId: string;
  /**
   * Joins the cluster; resolves when routes are loaded and this node can serve. A backend that
   * is not reachable yet may wait for it (Redis: `[redis] start_timeout_ms`); `stop()` meanwhile
   * ends the wait, and start() then rejects.
   */
  start(host: BusHost): Promise<void>;
  /** Leaves the cluster: withdraws this node's routes and stops reading its inbox. */
  stop(): Promise<void>;
  /**
   * Resolves once the other nodes know this one is alive and send it what it must see (the
   * broker loads its stored state after this). Absent: nothing to wait for.
   */
  settled?(): Promise<void>;
  /** Why this node is not ready (for /readyz); empty when ready. */
  readonly problems: readonly string[];
  /**
   * The first local subscription with this key appeared (`filter`, or
   * `$share/group/filter`). Resolves once other nodes route matching messages
   * here (the SUBACK waits for it); null when there is nothing to wait for.
   */
  addRoute(key: string): Promise<void> | null;
  /** The last local subscription with this key went away. */
  removeRoute(key: string): void;
  /** A message published on this node (by a client, a will or $SYS): forward it where it is wanted. */
  forward(msg: Message, retainVersion?: string): ForwardResult;
  /**
   * Hands `msg` to a member of share group `key` on another node: the member it was given to
   * here is gone before its client got it, and no other member is here (section 4.8.2). False
   * when no other node holds the group. Best effort: the publisher was answered long ago.
   */
  forwardShared(msg: Message, key: string): boolean;
  /**
   * Makes this node the owner of `clientId` cluster-wide before its session is
   * loaded: a connection with that id on another node is closed (0x8E) and its
   * state written back first. Resolves to the claim's number, which grows with
   * every claim of `clientId` cluster-wide (the kick carries it). `numbered`
   * hears that number as soon as it is drawn, before the old owner let go:
   * two nodes claiming at once must be able to tell whose claim is newer
   * while each waits for the other. Null when nothing needs to happen (one node).
   */
  claimSession(
    clientId: string,
    numbered?: (epoch: number) => void,
    /**
     * The dead node, for the survivor adopting its session: the claim is made
     * only while that node still owns the client id, and resolves to 0 when a
     * live node claimed it meanwhile (the survivor then fills the session with
     * the dead node's leftovers and hands it back). Any other claim of a
     * session whose owner died waits until a survivor has handled the death,
     * so the session it loads holds what the dead node had been sent.
     */
    adoptingFrom?: string,
    /**
     * Who will own the session (username or certificate identity, null when anonymous). A
     * client id another user holds on another live node is not taken from them: the claim
     * rejects with `ForeignSessionError` and nobody is kicked. Undefined: not checked.
     */
    owner?: string | null,
  ): Promise<number> | null;
  /** This node no longer holds `clientId` (session ended or moved). */
  releaseSession(clientId: string): void;
  /**
   * Asked right after `forward(msg)` for a client's message: non-null when its copies were
   * written past a bound on what waits for other nodes and nothing else slows its publisher
   * down (a retained QoS 0 message, which every node must get); the publisher's connection
   * is not read until it resolves. Absent: nothing is ever held.
   */
  heldPublisher?(msg: Message): Promise<void> | null;
  /** Inbox backpressure figures; absent on a single node. */
  readonly backlogStats?: BacklogStats;
}

/** The bus of a broker that is not part of a cluster. */
export const localBus: Bus = {
  name: "local",
  nodeId: "local",
  start: () => Promise.resolve(),
  stop: () => Promise.resolve(),
  problems: [],
  addRoute: () => null,
  removeRoute: () => {},
  forward: () => LOCAL_ONLY,
  forwardShared: () => false,
  claimSession: () => null,
  releaseSession: () => {},
};
