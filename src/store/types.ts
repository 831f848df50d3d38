/**
 * The state seam: what outlives a connection (persistent sessions) and what
 * outlives a publish (retained messages), in a serializable shape a `Store`
 * saves and loads. The in-memory store keeps nothing outside the process; the
 * embedded (SQLite) and Redis stores make it survive restarts and move
 * between cluster nodes.
 *
 * The core owns the live state (sessions, the router's retained index) and
 * tells a durable store what changed as a journal of small operations,
 * batched per event-loop turn: `write(ops)` is one transaction. A QoS 1/2
 * publish routed to a persistent session is acknowledged only after the batch
 * holding its enqueue has been written.
 */

/** A message as stored: the bytes the router delivers, owned (never a view of a read buffer). */
export interface StoredMessage {
  readonly topic: string;
  readonly payload: Uint8Array;
  readonly qos: 0 | 1 | 2;
  readonly retain: boolean;
  /** Encoded MQTT 5 pass-through properties, or null. */
  readonly props: Uint8Array | null;
  /** Absolute expiry, ms since the epoch; 0 for none. */
  readonly expiresAt: number;
  /** Client id of the publisher (No Local). */
  readonly origin: string;
  /**
   * The message id (`Message.id`): given by the cluster bus when the message
   * first crossed it, or by the journal when a durable store first kept it
   * (every queued and inflight message the core writes has one; retained
   * messages and wills need none). Every store keeps it with queued and
   * inflight messages: the sessions restored from the copies of one message
   * share one Message again, and in a cluster a session moving between nodes
   * drops a copy it already holds. Absent or "" for one written without it.
   */
  readonly id?: string;
  /** A retained message's version (retain_version.ts), as a shared store loads it. */
  readonly version?: string;
}

/** One subscription of a session, with its options. */
export interface StoredSubscription {
  /** As subscribed, including a `$share/group/` prefix. */
  readonly key: string;
  readonly qos: 0 | 1 | 2;
  readonly noLocal: boolean;
  readonly retainAsPublished: boolean;
  readonly retainHandling: 0 | 1 | 2;
  /** Subscription Identifier, 0 for none. */
  readonly subscriptionId: number;
}

/** A message waiting for (or in) delivery to one session. */
export interface StoredDelivery {
  readonly msg: StoredMessage;
  readonly qos: 1 | 2;
  readonly retain: boolean;
  readonly subIds: readonly number[] | null;
}

/** An outgoing QoS 1/2 message sent and not yet acknowledged. */
export interface StoredInflight extends StoredDelivery {
  readonly packetId: number;
  /** QoS 2: PUBREC received and PUBREL sent. */
  readonly released: boolean;
}

/** A will waiting for its connection to end (and its delay). */
export interface StoredWill {
  readonly msg: StoredMessage;
  /** Will Delay Interval, seconds. */
  readonly delay: number;
  /** Message Expiry Interval from publication, seconds; -1 for none. */
  readonly expiry: number;
}

/** Everything a persistent session is, in a shape that can be written and read back. */
export interface SessionState {
  readonly clientId: string;
  /**
   * Who may resume it: the username or certificate identity it was created
   * by, or null when it was created anonymously.
   */
  readonly owner: string | null;
  /** Session Expiry Interval, seconds (0xFFFFFFFF = never). */
  readonly expiryInterval: number;
  /** When the session ends if nobody resumes it (ms since epoch); 0 while connected, Infinity = never. */
  readonly expiresAt: number;
  readonly will: StoredWill | null;
  /** When a detached session's will is due (ms since epoch), 0 for none. */
  readonly willAt: number;
  readonly subscriptions: readonly StoredSubscription[];
  /** Queued for delivery, oldest first, each with its journal sequence number. */
  readonly queue: readonly (StoredDelivery & { readonly seq: number })[];
  readonly inflight: readonly StoredInflight[];
  /** Incoming QoS 2 packet ids received and not yet released (PUBREL). */
  readonly incomingQos2: readonly number[];
  /**
   * Ids (`Message.id`) of the last QoS 1/2 messages the session's client
   * acknowledged, oldest first, at most `[cluster] dedupe_window`: a copy of
   * one of them reaching the session from another node is dropped. Written
   * with the whole session (connect, disconnect, takeover) and added to by
   * each `inflight-delete` that carries an id; absent or empty outside a
   * cluster (a core with an unshared store remembers none, and the embedded
   * store keeps none).
   */
  readonly recent?: readonly string[];
}

/** One change to stored state; a batch of them is written as one transaction, in order. */
export type StoreOp =
  /** Create or replace a session's whole state (connect, disconnect, takeover, will, ACL). */
  | { readonly type: "session"; readonly state: SessionState }
  | { readonly type: "session-delete"; readonly clientId: string }
  /**
   * SUBSCRIBE of a stored session: adds `sub`, or replaces the subscription with its key in
   * place (its position kept, as the router keeps it). One subscription, whatever the session
   * holds: rewriting the whole session for each filter made subscribing to N filters one at a
   * time cost N² (5,000 filters: 9 s of a stalled event loop).
   */
  | { readonly type: "subscribe"; readonly clientId: string; readonly sub: StoredSubscription }
  /** UNSUBSCRIBE of a stored session: removes the subscription with `key`, if any. */
  | { readonly type: "unsubscribe"; readonly clientId: string; readonly key: string }
  | {
    readonly type: "enqueue";
    readonly clientId: string;
    /**
     * Grows with every enqueue of the session (its numbers are above every
     * one in its last stored state): a store may skip an enqueue numbered at
     * or below the newest it queued, which is how a replayed batch stays
     * idempotent.
     */
    readonly seq: number;
    readonly item: StoredDelivery;
  }
  | { readonly type: "dequeue"; readonly clientId: string; readonly seq: number }
  | { readonly type: "inflight"; readonly clientId: string; readonly item: StoredInflight }
  | {
    readonly type: "inflight-delete";
    readonly clientId: string;
    readonly packetId: number;
    /**
     * The cluster id of the message when its client acknowledged it (absent
     * or "" otherwise): a store that keeps `recent` adds it there, so a node
     * that takes the session from this one (which may die before its inbox
     * entry of the message is acknowledged) drops another copy of it.
     */
    readonly id?: string;
  }
  | { readonly type: "qos2-add"; readonly clientId: string; readonly packetId: number }
  | { readonly type: "qos2-delete"; readonly clientId: string; readonly packetId: number }
  /** `version`: see retain_version.ts; a shared store keeps the newest of a topic's updates. */
  | { readonly type: "retain"; readonly msg: StoredMessage; readonly version?: string }
  | {
    readonly type: "retain-delete";
    readonly topic: string;
    readonly version?: string;
    /** Keep the deletion's version for a while (retained.ts, TOMBSTONE_MS) */
    readonly tombstone?: boolean;
  }
  /**
   * Deletes every retained message whose topic lies strictly between `after` and `before` in
   * topic order ({@link compareTopics}); null leaves that side open. What a start did not keep
   * of an unshared store (retained_restore.ts): one op per gap between kept topics, so what it
   * deletes costs no memory per deleted message.
   */
  | {
    readonly type: "retain-delete-range";
    readonly after: string | null;
    readonly before: string | null;
  };

/**
 * Topic order: by UTF-16 code unit, as JavaScript compares strings (`<`). Every store hands its
 * retained messages over in this order, so a start keeps the same ones on every store and node.
 */
export function compareTopics(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** Whether `topic` lies strictly between `after` and `before` in topic order (null: open). */
export function topicBetween(topic: string, after: string | null, before: string | null): boolean {
  return (after === null || topic > after) && (before === null || topic < before);
}

/** How much one page of {@link Store.retainedPages} holds. */
export interface RetainedPageSize {
  /** Most messages in a page (at least 1). */
  readonly messages: number;
  /**
   * Payload and property bytes after which a page ends: the message that reaches it is the last
   * of its page, so a page always holds at least one message.
   */
  readonly bytes: number;
}

/** Retained messages a store holds past a topic, counted without reading them. */
export interface RetainedCount {
  /** How many. */
  readonly count: number;
  /** How many of them had expired (their `expiresAt` passed) at the time asked about. */
  readonly expired: number;
}

/** Where sessions and retained messages are kept beyond the process. */
export interface Store {
  /** "memory", "sqlite", "redis". */
  readonly name: string;
  /**
   * False for the in-memory store: the core then never calls `write` and
   * keeps everything in its own objects (no cost on the hot path).
   */
  readonly durable: boolean;
  /**
   * True when other processes change the same state (Redis shared by a
   * cluster): the core then loads a session when its client connects, after
   * the cluster has made this node its owner, instead of once at start.
   */
  readonly shared: boolean;
  /** Why writes are refused now, for `/readyz` (optional: a store without such states omits it). */
  readonly problems?: readonly string[];
  /**
   * Opens the database; a corrupt, foreign or newer-version store throws with what to do. A
   * store on a server may wait for it (Redis: `[redis] start_timeout_ms`); `close()` meanwhile
   * ends the wait, and open() then rejects.
   */
  open(): Promise<void>;
  close(): Promise<void>;
  /**
   * Applies `ops` in order, atomically. Resolves once they are durable as
   * configured. After a rejection the core writes the same ops again (with
   * later ones appended): applying a batch that was applied in part or in
   * whole must leave the state as applying it once does.
   */
  write(ops: readonly StoreOp[]): Promise<void>;
  /** Every stored session (start-up of a single node). */
  loadSessions(): Promise<SessionState[]>;
  /** One session, or null. */
  loadSession(clientId: string): Promise<SessionState | null>;
  /**
   * The retained messages in topic order ({@link compareTopics}), a page at a time, each page
   * within `size`, starting after topic `after` (from the first without). Ending the iteration
   * early (`break`) reads nothing more: what a start does not keep is not read. A retained
   * message changed while the pages are read may be seen as it was or as it is.
   */
  retainedPages(size: RetainedPageSize, after?: string): AsyncIterable<StoredMessage[]>;
  /**
   * How many retained messages the store holds whose topic comes after `after` in topic order
   * (all of them with null), and how many of those had expired at `now`, without reading their
   * payloads into memory. A store whose messages expire by themselves (Redis, by TTL) holds none
   * that has, and counts 0 expired.
   */
  countRetained(after: string | null, now: number): Promise<RetainedCount>;
  /**
   * {@link SECRET_BYTES} random bytes made the first time `name` is asked for and kept with the
   * state: the same after a restart of a durable store, and for every node sharing one (Redis).
   * What keys the broker's made-up answers for unknown users (SCRAM decoy salts), so that they
   * look as lasting as a real user's.
   */
  secret(name: string): Promise<Uint8Array>;
}

/** Size of a {@link Store.secret}. */
export const SECRET_BYTES = 32;

/**
 * What a store shared by a cluster (Redis) adds: fencing a session to the
 * node that owns it, and taking over the sessions of a node that died.
 */
export interface ClusterStore extends Store {
  /**
   * From now on only this node's writes of the session apply (others fail
   * with a 0x8E error); call it once the bus's `claimSession` resolved.
   * Returns the new epoch.
   */
  claimSession(clientId: string): Promise<number>;
  /** Client ids of the sessions the (dead) node `nodeId` owned. */
  sessionsOfNode(nodeId: string): Promise<string[]>;
  /**
   * Makes this node the owner of a dead node's session, on exactly one
   * node; a session that was connected becomes detached (expiry and will
   * delay count from now). Null when another node adopted it or it is gone.
   */
  adoptSession(clientId: string, deadNodeId: string): Promise<SessionState | null>;
  /** Removes and returns the session's will if this node owns it: each will is published once. */
  takeWill(clientId: string): Promise<StoredWill | null>;
  /** Drops what was kept to find a dead node's sessions, once they are adopted. */
  forgetNode(nodeId: string): Promise<void>;
  /**
   * Another node took the session over (it was written back): it leaves this node's index of
   * its sessions, which would otherwise keep every client id that ever moved away.
   */
  sessionLeft(clientId: string): void;
}

/** True for a store that implements {@link ClusterStore}. */
export function isClusterStore(store: Store): store is ClusterStore {
  return typeof (store as Partial<ClusterStore>).adoptSession === "function";
}
