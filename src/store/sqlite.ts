/**
 * The embedded store: sessions and retained messages in one SQLite file
 * (`node:sqlite`, built into Deno, nothing to download) in the data
 * directory, in write-ahead-log mode.
 *
 * Each `write(ops)` is one transaction (the core batches one per event-loop
 * turn). With sync "ack-after-write" the commit fsyncs the log, so a batch
 * whose promise resolved survives kill -9 and power loss; with "async" the log
 * is fsynced only at checkpoints, which survives kill -9 but not power loss
 * (and the core does not wait for the write before acknowledging).
 *
 * `node:sqlite` is synchronous: a write blocks the event loop for its
 * transaction, fsync included. That is the group commit: while it runs,
 * incoming packets wait in the socket buffers and become the next, larger batch.
 *
 * A message enqueued to many sessions is stored once: within a batch and
 * across batches the same StoredMessage object maps to the same row (see
 * `messageId`), and rows nobody references are deleted at the end of each batch.
 * Each row keeps the message's id (`cid`, schema 4): a message loaded from the file and
 * written again by this process (a restored session written whole) refers to its row again.
 * Subscriptions are rows of their own (schema 2): a SUBSCRIBE writes one row, whatever else
 * the session holds.
 */
import type { DatabaseSync, StatementSync } from "node:sqlite";
import { getLogger } from "@logtape/logtape";
import { StoreOpenError } from "./errors.ts";
import { type Migration, openDatabase, transaction } from "./sqlite_schema.ts";
import { ORDER_KEY_SQL, orderKey } from "./sqlite_order.ts";
import {
  deliveryValues,
  messageValues,
  readDelivery,
  readMessage,
  readSubscriptions,
  type Row,
  subscriptionRow,
  subscriptionValues,
} from "./sqlite_rows.ts";
import {
  type RetainedCount,
  type RetainedPageSize,
  SECRET_BYTES,
  type SessionState,
  type Store,
  type StoredDelivery,
  type StoredInflight,
  type StoredMessage,
  type StoredSubscription,
  type StoreOp,
} from "./types.ts";

export interface SqliteStoreOptions {
  /** Data directory; created if missing. */
  readonly dir: string;
  /** `[storage] sync`. */
  readonly sync?: "ack-after-write" | "async";
  /** File name inside `dir`. */
  readonly file?: string;
  /** Schema migrations, for tests of the migration path. */
  readonly migrations?: readonly Migration[];
}

export const DB_FILE = "mcloudtt.db";

const log = getLogger(["mcloudtt", "store"]);

const KEY = ORDER_KEY_SQL;

/**
 * Above every order key: no UTF-8 byte is FF, nor any renamed lead byte (sqlite_order.ts), so
 * a range open at its end ends before this.
 */
const KEY_END = Uint8Array.of(0xFF);

const SQL = {
  // Columns named: a later migration may add columns with defaults.
  sessionPut: `INSERT OR REPLACE INTO sessions (client_id, owner, expiry_interval, expires_at,
    will_at, will_topic, will_payload, will_qos, will_retain, will_props, will_expires_at,
    will_origin, will_delay, will_expiry, subscriptions) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)`,
  sessionDelete: `DELETE FROM sessions WHERE client_id = ?`,
  queueClear: `DELETE FROM queue WHERE client_id = ? RETURNING msg_id`,
  inflightClear: `DELETE FROM inflight WHERE client_id = ? RETURNING msg_id`,
  qos2Clear: `DELETE FROM qos2 WHERE client_id = ?`,
  subsClear: `DELETE FROM subscriptions WHERE client_id = ?`,
  // An upsert keeps the row (its rowid, so its place in the load order) of a replaced one.
  subPut: `INSERT INTO subscriptions (client_id, key, qos, no_local, retain_as_published,
    retain_handling, subscription_id)
    SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7 WHERE EXISTS (SELECT 1 FROM sessions WHERE client_id = ?1)
    ON CONFLICT (client_id, key) DO UPDATE SET qos = excluded.qos,
    no_local = excluded.no_local, retain_as_published = excluded.retain_as_published,
    retain_handling = excluded.retain_handling, subscription_id = excluded.subscription_id`,
  subDelete: `DELETE FROM subscriptions WHERE client_id = ? AND key = ?`,
  // Ops on a session that does not exist are ignored, as apply.ts defines.
  enqueue: `INSERT INTO queue (client_id, seq, msg_id, qos, retain, sub_ids)
    SELECT ?1, ?2, ?3, ?4, ?5, ?6 WHERE EXISTS (SELECT 1 FROM sessions WHERE client_id = ?1)`,
  dequeue: `DELETE FROM queue WHERE client_id = ? AND seq = ? RETURNING msg_id`,
  inflightPut: `INSERT INTO inflight (client_id, packet_id, msg_id, qos, retain, sub_ids, released)
    SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7 WHERE EXISTS (SELECT 1 FROM sessions WHERE client_id = ?1)`,
  inflightDelete: `DELETE FROM inflight WHERE client_id = ? AND packet_id = ? RETURNING msg_id`,
  qos2Add: `INSERT OR IGNORE INTO qos2 (client_id, packet_id)
    SELECT ?1, ?2 WHERE EXISTS (SELECT 1 FROM sessions WHERE client_id = ?1)`,
  qos2Delete: `DELETE FROM qos2 WHERE client_id = ? AND packet_id = ?`,
  retainPut: `INSERT OR REPLACE INTO retained (topic, payload, qos, retain, props, expires_at,
    origin, okey) VALUES (?,?,?,?,?,?,?,?)`,
  retainDelete: `DELETE FROM retained WHERE topic = ?`,
  // Topic order through the index on the order key (sqlite_order.ts): a page is a seek and a
  // walk of the index, whatever the table holds.
  retainedFirst: `SELECT *, ${KEY} AS k FROM retained ORDER BY ${KEY} LIMIT ?`,
  retainedAfter: `SELECT *, ${KEY} AS k FROM retained WHERE ${KEY} > ? ORDER BY ${KEY} LIMIT ?`,
  // Count what a start does not read; expires_at is read from the rows, not the payloads.
  retainedCountAll: `SELECT count(*) AS n, total(expires_at != 0 AND ?1 >= expires_at) AS x
    FROM retained`,
  retainedCountAfter: `SELECT count(*) AS n, total(expires_at != 0 AND ?2 >= expires_at) AS x
    FROM retained WHERE ${KEY} > ?1`,
  retainedDeleteBefore: `DELETE FROM retained WHERE ${KEY} < ?`,
  retainedDeleteBetween: `DELETE FROM retained WHERE ${KEY} > ? AND ${KEY} < ?`,
  messageInsert: `INSERT INTO messages (id, cid, topic, payload, qos, retain, props, expires_at,
    origin) VALUES (?,?,?,?,?,?,?,?,?)`,
  messageExists: `SELECT 1 AS x FROM messages WHERE id = ?`,
  messageRefs: `UPDATE messages SET refs = refs + ? WHERE id = ?`,
  messageGc: `DELETE FROM messages WHERE refs <= 0`,
  messageGcIds: `DELETE FROM messages WHERE refs <= 0 RETURNING cid`,
  sessionsAll: `SELECT * FROM sessions`,
  sessionOne: `SELECT * FROM sessions WHERE client_id = ?`,
  // Queue and inflight rows name their message; each message is read once (messagesAll,
  // messagesOf). A join would read the payload again for every row that references it: a 1 MB
  // message queued to 1,000 offline sessions took 1 GB to load at start-up instead of 1 MB.
  queueAll: `SELECT client_id, seq, msg_id, qos AS d_qos, retain AS d_retain, sub_ids
    FROM queue ORDER BY rowid`,
  queueOne: `SELECT client_id, seq, msg_id, qos AS d_qos, retain AS d_retain, sub_ids
    FROM queue WHERE client_id = ? ORDER BY rowid`,
  inflightAll: `SELECT client_id, packet_id, msg_id, released, qos AS d_qos,
    retain AS d_retain, sub_ids FROM inflight ORDER BY rowid`,
  inflightOne: `SELECT client_id, packet_id, msg_id, released, qos AS d_qos,
    retain AS d_retain, sub_ids FROM inflight WHERE client_id = ? ORDER BY rowid`,
  messagesAll: `SELECT * FROM messages`,
  messagesOf: `SELECT * FROM messages WHERE id IN (SELECT msg_id FROM queue WHERE client_id = ?1
    UNION SELECT msg_id FROM inflight WHERE client_id = ?1)`,
  qos2All: `SELECT client_id, packet_id FROM qos2`,
  subsAll: `SELECT * FROM subscriptions ORDER BY rowid`,
  subsOne: `SELECT * FROM subscriptions WHERE client_id = ? ORDER BY rowid`,
  qos2One: `SELECT client_id, packet_id FROM qos2 WHERE client_id = ?`,
  maxMessageId: `SELECT max(id) AS id FROM messages`,
} as const;

type Statements = { -readonly [K in keyof typeof SQL]: StatementSync };

export class SqliteStore implements Store {
  readonly name = "sqlite";
  readonly durable = true;
  readonly shared = false;
  /** The database file. */
  readonly path: string;
  private db: DatabaseSync | null = null;
  private st: Statements | null = null;
  private nextMessageId = 1;
  /** Rows of messages written by earlier batches (they may since have been deleted). */
  private written = new WeakMap<StoredMessage, number>();
  /**
   * The row of each message id loaded from the file (-1 for an id two rows carry, which only a
   * file written by something else holds): the Message restored from it is another object than
   * the one loaded, and must find its row when a restored session is written again. An entry
   * goes with its row.
   */
  private loaded = new Map<string, number>();
  /**
   * Rows of messages known to exist during the batch being written. A new Map for every batch,
   * not `clear()`: V8 points a cleared Map's old hash table at its new one, and once an old
   * table has been promoted that chain carries every later batch's messages into the old
   * generation (see session/packet_ids.ts).
   */
  private inBatch = new Map<StoredMessage, number>();
  /** Net change of each message's reference count in the batch being written (new per batch). */
  private refDelta = new Map<number, number>();

  constructor(readonly options: SqliteStoreOptions) {
    this.path = `${options.dir.replace(/\/+$/, "") || "/"}/${options.file ?? DB_FILE}`;
  }

  open(): Promise<void> {
    if (this.db) return Promise.resolve();
    try {
      Deno.mkdirSync(this.options.dir, { recursive: true });
    } catch (e) {
      return Promise.reject(
        new StoreOpenError(
          "access",
          this.options.dir,
          `storage: cannot create the data directory ${this.options.dir} (${
            e instanceof Error ? e.message : e
          }); create it writable by the broker, or set [storage] dir (MCLOUDTT_STORAGE_DIR)`,
          { cause: e },
        ),
      );
    }
    try {
      const db = openDatabase(this.path, {
        synchronous: this.options.sync === "async" ? "NORMAL" : "FULL",
        migrations: this.options.migrations,
      });
      const st = {} as Statements;
      try {
        for (const [k, sql] of Object.entries(SQL)) st[k as keyof Statements] = db.prepare(sql);
        this.nextMessageId = Number(st.maxMessageId.get()?.id ?? 0) + 1;
      } catch (e) {
        db.close();
        throw e;
      }
      this.written = new WeakMap();
      this.loaded = new Map();
      this.db = db;
      this.st = st;
      return Promise.resolve();
    } catch (e) {
      return Promise.reject(e);
    }
  }

  close(): Promise<void> {
    if (this.db) {
      this.db.close();
      this.db = null;
      this.st = null;
    }
    return Promise.resolve();
  }

  write(ops: readonly StoreOp[]): Promise<void> {
    if (ops.length === 0) return Promise.resolve();
    try {
      const st = this.statements();
      transaction(this.db!, () => {
        for (const op of ops) this.apply(st, op);
        for (const [id, d] of this.refDelta) if (d !== 0) st.messageRefs.run(d, id);
        if (this.loaded.size === 0) st.messageGc.run();
        else for (const r of st.messageGcIds.all()) this.loaded.delete(String(r.cid));
      });
      return Promise.resolve();
    } catch (e) {
      return Promise.reject(e);
    } finally {
      if (this.inBatch.size > 0) this.inBatch = new Map();
      if (this.refDelta.size > 0) this.refDelta = new Map();
    }
  }

  loadSessions(): Promise<SessionState[]> {
    try {
      const st = this.statements();
      return Promise.resolve(
        this.assemble(
          st.sessionsAll.all(),
          st.messagesAll.iterate(),
          st.queueAll.all(),
          st.inflightAll.all(),
          st.qos2All.all(),
          st.subsAll.all(),
        ),
      );
    } catch (e) {
      return Promise.reject(e);
    }
  }

  loadSession(clientId: string): Promise<SessionState | null> {
    try {
      const st = this.statements();
      const row = st.sessionOne.get(clientId);
      if (row === undefined) return Promise.resolve(null);
      const [state] = this.assemble(
        [row],
        st.messagesOf.iterate(clientId),
        st.queueOne.all(clientId),
        st.inflightOne.all(clientId),
        st.qos2One.all(clientId),
        st.subsOne.all(clientId),
      );
      // A session skipped as unreadable is not there.
      return Promise.resolve(state ?? null);
    } catch (e) {
      return Promise.reject(e);
    }
  }

  async *retainedPages(size: RetainedPageSize, after?: string): AsyncIterable<StoredMessage[]> {
    let key = after === undefined ? null : topicKey(after);
    for (;;) {
      const page = this.retainedPage(key, size);
      if (page.messages.length > 0) yield page.messages;
      if (page.last === null) return;
      key = page.last;
    }
  }

  /**
   * One page after order key `after` (from the first with null), read row by row so that the
   * bytes bound ends it: `last` is the key to go on from, null at the end of the table.
   */
  private retainedPage(
    after: Uint8Array | null,
    size: RetainedPageSize,
  ): { messages: StoredMessage[]; last: Uint8Array | null } {
    const st = this.statements();
    const limit = Math.max(1, size.messages);
    const rows = after === null
      ? st.retainedFirst.iterate(limit)
      : st.retainedAfter.iterate(after, limit);
    const messages: StoredMessage[] = [];
    let bytes = 0;
    let last: Uint8Array | null = null;
    for (const r of rows) {
      const m = readMessage(r);
      messages.push(m);
      last = r.k as Uint8Array;
      bytes += m.payload.length + (m.props?.length ?? 0);
      // Leaving the loop resets the statement: the rows after it are not read.
      if (bytes >= size.bytes) break;
    }
    const more = messages.length === limit || bytes >= size.bytes;
    return { messages, last: more ? last : null };
  }

  countRetained(after: string | null, now: number): Promise<RetainedCount> {
    try {
      const st = this.statements();
      const r = after === null
        ? st.retainedCountAll.get(now)
        : st.retainedCountAfter.get(topicKey(after), now);
      return Promise.resolve({ count: Number(r?.n ?? 0), expired: Number(r?.x ?? 0) });
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /** A row of the `meta` table (sqlite_schema.ts), written once in its own transaction. */
  secret(name: string): Promise<Uint8Array> {
    try {
      this.statements();
      const db = this.db!;
      const key = `secret:${name}`;
      const fresh = crypto.getRandomValues(new Uint8Array(SECRET_BYTES));
      db.prepare("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)").run(key, fresh);
      const value = db.prepare("SELECT value FROM meta WHERE key = ?").get(key)?.value;
      if (!(value instanceof Uint8Array) || value.length !== SECRET_BYTES) {
        throw new Error(`storage: ${this.path}: meta row ${key} is not a secret`);
      }
      return Promise.resolve(value);
    } catch (e) {
      return Promise.reject(e);
    }
  }

  private statements(): Statements {
    if (!this.st) throw new Error(`storage: ${this.path} is not open`);
    return this.st;
  }

  private apply(st: Statements, op: StoreOp): void {
    switch (op.type) {
      case "session":
        this.putSession(st, op.state);
        return;
      case "session-delete":
        this.clearSession(st, op.clientId);
        st.sessionDelete.run(op.clientId);
        return;
      case "enqueue":
        this.enqueue(st, op.clientId, op.seq, op.item);
        return;
      case "dequeue":
        this.unref(st.dequeue.get(op.clientId, op.seq));
        return;
      case "inflight":
        this.unref(st.inflightDelete.get(op.clientId, op.item.packetId));
        this.putInflight(st, op.clientId, op.item);
        return;
      case "inflight-delete":
        this.unref(st.inflightDelete.get(op.clientId, op.packetId));
        return;
      case "qos2-add":
        st.qos2Add.run(op.clientId, op.packetId);
        return;
      case "qos2-delete":
        st.qos2Delete.run(op.clientId, op.packetId);
        return;
      case "subscribe":
        st.subPut.run(op.clientId, ...subscriptionValues(op.sub));
        return;
      case "unsubscribe":
        st.subDelete.run(op.clientId, op.key);
        return;
      case "retain":
        st.retainPut.run(...messageValues(op.msg), orderKey(op.msg.topic));
        return;
      case "retain-delete":
        st.retainDelete.run(op.topic);
        return;
      case "retain-delete-range": {
        // One statement, whatever the range holds (a start deleting what it does not keep).
        const before = op.before === null ? KEY_END : topicKey(op.before);
        if (op.after === null) st.retainedDeleteBefore.run(before);
        else st.retainedDeleteBetween.run(topicKey(op.after), before);
        return;
      }
    }
  }

  private clearSession(st: Statements, clientId: string): void {
    for (const row of st.queueClear.all(clientId)) this.unref(row);
    for (const row of st.inflightClear.all(clientId)) this.unref(row);
    st.qos2Clear.run(clientId);
    st.subsClear.run(clientId);
  }

  /** Counts a reference to message `id` if `inserted` rows were written. */
  private ref(id: number, inserted: number | bigint): void {
    if (inserted) this.refDelta.set(id, (this.refDelta.get(id) ?? 0) + 1);
  }

  /** Counts the reference a deleted queue or inflight row (`RETURNING msg_id`) held. */
  private unref(row: Row | undefined): void {
    if (row === undefined) return;
    const id = Number(row.msg_id);
    this.refDelta.set(id, (this.refDelta.get(id) ?? 0) - 1);
  }

  private enqueue(st: Statements, clientId: string, seq: number, d: StoredDelivery): void {
    const id = this.messageId(d.msg);
    this.ref(id, st.enqueue.run(...deliveryValues(clientId, seq, id, d)).changes);
  }

  private putSession(st: Statements, s: SessionState): void {
    this.clearSession(st, s.clientId);
    const w = s.will;
    const will = w === null
      ? [null, null, null, null, null, null, null, null, null]
      : [...messageValues(w.msg), w.delay, w.expiry];
    st.sessionPut.run(
      s.clientId,
      s.owner,
      s.expiryInterval,
      s.expiresAt,
      s.willAt,
      ...will,
      // Schema 1's column: the subscriptions are rows of their own now (sqlite_schema.ts, V2).
      "[]",
    );
    for (const sub of s.subscriptions) st.subPut.run(s.clientId, ...subscriptionValues(sub));
    for (const q of s.queue) this.enqueue(st, s.clientId, q.seq, q);
    for (const f of s.inflight) this.putInflight(st, s.clientId, f);
    for (const p of s.incomingQos2) st.qos2Add.run(s.clientId, p);
  }

  private putInflight(st: Statements, clientId: string, f: StoredInflight): void {
    const id = this.messageId(f.msg);
    const [c, , , qos, retain, subIds] = deliveryValues(clientId, 0, id, f);
    const { changes } = st.inflightPut.run(
      c,
      f.packetId,
      id,
      qos,
      retain,
      subIds,
      f.released ? 1 : 0,
    );
    this.ref(id, changes);
  }

  /**
   * The row of `msg`, written now unless this batch or an earlier one already holds it, or it
   * was loaded from the file (by its id).
   */
  private messageId(msg: StoredMessage): number {
    const st = this.st!;
    let id = this.inBatch.get(msg);
    if (id !== undefined) return id;
    id = this.written.get(msg);
    if (id === undefined && this.loaded.size !== 0 && msg.id !== undefined && msg.id !== "") {
      id = this.loaded.get(msg.id);
      if (id !== undefined) this.written.set(msg, id);
    }
    // A row from an earlier batch may have been deleted since (nobody referenced it).
    if (id === undefined || st.messageExists.get(id) === undefined) {
      id = this.nextMessageId++;
      st.messageInsert.run(id, msg.id ?? "", ...messageValues(msg));
      this.written.set(msg, id);
    }
    this.inBatch.set(msg, id);
    return id;
  }

  /** Builds session states from their rows; each message is read once, shared by its rows. */
  private assemble(
    sessions: Row[],
    messageRows: Iterable<Row>,
    queue: Row[],
    inflight: Row[],
    qos2: Row[],
    subs: Row[],
  ): SessionState[] {
    type Building = {
      -readonly [K in keyof SessionState]: K extends
        "queue" | "inflight" | "incomingQos2" | "subscriptions" ? SessionState[K][number][]
        : SessionState[K];
    };
    const byId = new Map<string, Building>();
    for (const r of sessions) {
      const clientId = String(r.client_id);
      let subscriptions: StoredSubscription[];
      try {
        // '[]' unless schema 1 wrote it and the migration could not read it (then this throws).
        subscriptions = readSubscriptions(r.subscriptions);
      } catch (e) {
        // A damaged value (the database checks its pages, not what we wrote in them) costs that
        // session, not the start of the broker; its client's next session replaces the rows.
        log.error(
          "skipped the stored session {clientId} in {file}: its subscriptions are unreadable " +
            "({error}); its client will start a new session",
          { clientId, file: this.path, error: e instanceof Error ? e.message : String(e) },
        );
        continue;
      }
      byId.set(clientId, {
        clientId,
        owner: r.owner === null ? null : String(r.owner),
        expiryInterval: Number(r.expiry_interval),
        expiresAt: Number(r.expires_at),
        will: r.will_topic === null ? null : {
          msg: readMessage(r, "will_"),
          delay: Number(r.will_delay),
          expiry: Number(r.will_expiry),
        },
        willAt: Number(r.will_at),
        subscriptions,
        queue: [],
        inflight: [],
        incomingQos2: [],
      });
    }
    const messages = new Map<number, StoredMessage>();
    for (const r of messageRows) {
      const m = readMessage(r);
      const row = Number(r.id);
      messages.set(row, m);
      if (m.id === undefined) continue;
      const before = this.loaded.get(m.id);
      this.loaded.set(m.id, before === undefined || before === row ? row : -1);
    }
    // A row whose message is missing (never so: a message is deleted with its last reference,
    // in the same transaction) is skipped, as the join that read them before did.
    for (const r of queue) {
      const m = messages.get(Number(r.msg_id));
      if (m === undefined) continue;
      byId.get(String(r.client_id))?.queue.push({ ...readDelivery(r, m), seq: Number(r.seq) });
    }
    for (const r of inflight) {
      const m = messages.get(Number(r.msg_id));
      if (m === undefined) continue;
      byId.get(String(r.client_id))?.inflight.push({
        ...readDelivery(r, m),
        packetId: Number(r.packet_id),
        released: r.released === 1,
      });
    }
    for (const r of qos2) byId.get(String(r.client_id))?.incomingQos2.push(Number(r.packet_id));
    for (const r of subs) {
      const s = byId.get(String(r.client_id));
      if (s === undefined) continue;
      const sub = subscriptionRow(r);
      if (sub !== null) s.subscriptions.push(sub);
      else {
        log.warn("skipped an unreadable subscription of {clientId} in {file}: {row}", {
          clientId: s.clientId,
          file: this.path,
          row: JSON.stringify(r).slice(0, 200),
        });
      }
    }
    return [...byId.values()];
  }
}

/** The order key of `topic` as the index holds it (sqlite_order.ts). */
function topicKey(topic: string): Uint8Array {
  return orderKey(topic) ?? new TextEncoder().encode(topic);
}
