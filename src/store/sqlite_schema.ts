/**
 * The SQLite file of the embedded store: its schema, the migrations that
 * bring an older file up to date, and the checks that refuse a file that is
 * not ours (corrupt, foreign, newer) before anything is written to it.
 *
 * A file is ours when its header's application_id is APPLICATION_ID and its
 * `meta` table says magic = "mcloudtt". The schema version lives in `meta`;
 * migration N takes a file from version N-1 to N, each in its own
 * transaction together with the version bump.
 */
import { DatabaseSync } from "node:sqlite";
import { StoreOpenError } from "./errors.ts";
import { ORDER_KEY_SQL, orderKey } from "./sqlite_order.ts";

/** "MQTT" in ASCII, in the database header (`PRAGMA application_id`), so `file(1)` can tell. */
export const APPLICATION_ID = 0x4D515454;
export const MAGIC = "mcloudtt";

export interface Migration {
  /** The schema version this migration produces. */
  readonly version: number;
  /** SQL run inside the migration's transaction. */
  readonly sql: string;
  /** Run after `sql`, in the same transaction: what SQL alone cannot compute. */
  readonly run?: (db: DatabaseSync) => void;
}

/**
 * Messages are stored once and referenced by queue and inflight rows; `refs`
 * counts those rows (the store adds each batch's net change per message, once,
 * which costs a third less than triggers did) and each batch ends by deleting
 * unreferenced messages (through a partial index: nothing to scan when there
 * are none).
 * Wills and retained messages are stored inline. Times are ms since the
 * epoch as REAL, so Infinity ("never") is stored as such.
 */
const V1 = `
CREATE TABLE sessions (
  client_id TEXT PRIMARY KEY,
  owner TEXT,
  expiry_interval INTEGER NOT NULL,
  expires_at REAL NOT NULL,
  will_at REAL NOT NULL,
  will_topic TEXT,
  will_payload BLOB,
  will_qos INTEGER,
  will_retain INTEGER,
  will_props BLOB,
  will_expires_at REAL,
  will_origin TEXT,
  will_delay INTEGER,
  will_expiry INTEGER,
  subscriptions TEXT NOT NULL
);
CREATE TABLE messages (
  id INTEGER PRIMARY KEY,
  refs INTEGER NOT NULL DEFAULT 0,
  topic TEXT NOT NULL,
  payload BLOB NOT NULL,
  qos INTEGER NOT NULL,
  retain INTEGER NOT NULL,
  props BLOB,
  expires_at REAL NOT NULL,
  origin TEXT NOT NULL
);
CREATE INDEX messages_unreferenced ON messages (id) WHERE refs <= 0;
CREATE TABLE queue (
  client_id TEXT NOT NULL,
  seq INTEGER NOT NULL,
  msg_id INTEGER NOT NULL,
  qos INTEGER NOT NULL,
  retain INTEGER NOT NULL,
  sub_ids TEXT,
  PRIMARY KEY (client_id, seq)
);
CREATE TABLE inflight (
  client_id TEXT NOT NULL,
  packet_id INTEGER NOT NULL,
  msg_id INTEGER NOT NULL,
  qos INTEGER NOT NULL,
  retain INTEGER NOT NULL,
  sub_ids TEXT,
  released INTEGER NOT NULL,
  PRIMARY KEY (client_id, packet_id)
);
CREATE TABLE qos2 (
  client_id TEXT NOT NULL,
  packet_id INTEGER NOT NULL,
  PRIMARY KEY (client_id, packet_id)
) WITHOUT ROWID;
CREATE TABLE retained (
  topic TEXT PRIMARY KEY,
  payload BLOB NOT NULL,
  qos INTEGER NOT NULL,
  retain INTEGER NOT NULL,
  props BLOB,
  expires_at REAL NOT NULL,
  origin TEXT NOT NULL
);
`;

/** A stored subscription tuple (JSON) the loader of version 1 read: see readSubscriptions. */
const V1_TUPLE_OK = `CASE WHEN e.type = 'array' THEN
  json_array_length(e.value) = 6 AND json_type(e.value, '$[0]') = 'text'
  AND json_type(e.value, '$[1]') = 'integer' AND json_extract(e.value, '$[1]') BETWEEN 0 AND 2
  AND json_type(e.value, '$[2]') = 'integer' AND json_extract(e.value, '$[2]') BETWEEN 0 AND 1
  AND json_type(e.value, '$[3]') = 'integer' AND json_extract(e.value, '$[3]') BETWEEN 0 AND 1
  AND json_type(e.value, '$[4]') = 'integer' AND json_extract(e.value, '$[4]') BETWEEN 0 AND 2
  AND json_type(e.value, '$[5]') = 'integer'
  AND json_extract(e.value, '$[5]') BETWEEN 0 AND 268435455
  ELSE 0 END`;

/**
 * Subscriptions get a table of their own, one row each, so that SUBSCRIBE and UNSUBSCRIBE of a
 * stored session write one row: in version 1 they were a JSON list in the session's row,
 * rewritten whole (with the session's queue) for every change, and subscribing to N filters one
 * at a time cost N² (5,000 filters: 9 s). Rows load in rowid order: the order they were added,
 * a replaced one keeping its place (an upsert keeps the rowid), as the router keeps them.
 *
 * The lists of version 1 move into it. A list the loader could not read (a damaged value) stays
 * where it is, so the session is still skipped with an error naming it as before; every other
 * session's column becomes '[]', which is what this version writes there (the column stays:
 * SQLite drops a column by rewriting the table).
 */
const V2 = `
CREATE TABLE subscriptions (
  client_id TEXT NOT NULL,
  key TEXT NOT NULL,
  qos INTEGER NOT NULL,
  no_local INTEGER NOT NULL,
  retain_as_published INTEGER NOT NULL,
  retain_handling INTEGER NOT NULL,
  subscription_id INTEGER NOT NULL,
  PRIMARY KEY (client_id, key)
);
CREATE TEMP TABLE v2_readable AS SELECT client_id FROM sessions
  WHERE CASE WHEN json_valid(subscriptions) THEN
    CASE WHEN json_type(subscriptions) = 'array' THEN
      NOT EXISTS (SELECT 1 FROM json_each(subscriptions) e WHERE NOT (${V1_TUPLE_OK}))
    ELSE 0 END
  ELSE 0 END;
INSERT OR REPLACE INTO subscriptions (client_id, key, qos, no_local, retain_as_published,
    retain_handling, subscription_id)
  SELECT s.client_id, json_extract(j.value, '$[0]'), json_extract(j.value, '$[1]'),
    json_extract(j.value, '$[2]'), json_extract(j.value, '$[3]'), json_extract(j.value, '$[4]'),
    json_extract(j.value, '$[5]')
  FROM sessions s, json_each(CASE WHEN s.client_id IN (SELECT client_id FROM temp.v2_readable)
    THEN s.subscriptions ELSE '[]' END) j
  ORDER BY s.rowid, j.key;
UPDATE sessions SET subscriptions = '[]'
  WHERE client_id IN (SELECT client_id FROM temp.v2_readable);
DROP TABLE temp.v2_readable;
`;

/**
 * Version 3: retained messages are read in topic order (UTF-16 code units) a page at a time at
 * start, through an index on their order key (sqlite_order.ts), which is their topic's UTF-8
 * unless the topic holds a character at or above U+E000; `okey` keeps it for those (NULL for the
 * others), filled in here for the rows an older version wrote.
 */
const V3 = `
ALTER TABLE retained ADD COLUMN okey BLOB;
CREATE INDEX retained_order ON retained (${ORDER_KEY_SQL});
`;

/** The SQL function V3 fills `okey` with; registered on the migrating connection only. */
const ORDER_KEY_FN = "mcloudtt_order_key";

function fillOrderKeys(db: DatabaseSync): void {
  db.function(ORDER_KEY_FN, { deterministic: true }, (t) => orderKey(String(t)));
  // GLOB compares code points: the rows with a character from U+E000 on, one statement.
  db.exec(`UPDATE retained SET okey = ${ORDER_KEY_FN}(topic)
    WHERE topic GLOB '*[' || char(57344) || '-' || char(1114111) || ']*'`);
}

/**
 * Version 4: each stored message keeps its id (`Message.id`, given when the store first keeps it): a
 * restored session written again refers to the message's row instead of writing a copy, and the
 * sessions restored from rows of one message share one Message (session/stored.ts). Before, each
 * restart in which some restored sessions were written again (a client connecting and leaving
 * with the message still queued or in flight) added a copy, and the next one loaded them all.
 * The rows of an older file get an id of their own ("row:" and their number: `MessageIds` never
 * makes a colon), so they too are not copied when written again.
 */
const V4 = `
ALTER TABLE messages ADD COLUMN cid TEXT NOT NULL DEFAULT '';
UPDATE messages SET cid = 'row:' || id;
`;

/** Every schema version so far, oldest first; append, never edit a released one. */
export const MIGRATIONS: readonly Migration[] = [
  { version: 1, sql: V1 },
  { version: 2, sql: V2 },
  { version: 3, sql: V3, run: fillOrderKeys },
  { version: 4, sql: V4 },
];

export interface OpenOptions {
  /** "FULL" fsyncs the WAL at every commit; "NORMAL" only at checkpoints. */
  readonly synchronous: "FULL" | "NORMAL";
  /** For tests of the migration path; defaults to MIGRATIONS. */
  readonly migrations?: readonly Migration[];
}

type Fail = (kind: StoreOpenError["kind"], what: string, cause?: unknown) => never;

/**
 * Opens (creating if needed) the database at `file`, takes the exclusive lock,
 * checks it is ours and intact, and migrates it to the latest version.
 */
export function openDatabase(file: string, opts: OpenOptions): DatabaseSync {
  const migrations = opts.migrations ?? MIGRATIONS;
  const latest = migrations.at(-1)?.version ?? 0;
  const fail: Fail = (kind, what, cause) => {
    throw new StoreOpenError(kind, file, `storage: ${file}: ${what}`, { cause });
  };

  // SQLite opens a file it cannot write read-only, without a word, and the first read then fails
  // as a "disk I/O error" naming nothing: check first (a file that is not there is created).
  try {
    Deno.openSync(file, { read: true, write: true }).close();
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) {
      fail("access", `cannot be opened for writing (${errorText(e)}); ${ACCESS_FIX}`, e);
    }
  }
  let db: DatabaseSync;
  try {
    db = new DatabaseSync(file);
  } catch (e) {
    return fail("access", `cannot open (${errorText(e)}); ${ACCESS_FIX}`, e);
  }
  try {
    // One broker per data directory: the lock is held until close and dies with the process.
    db.exec("PRAGMA locking_mode = EXCLUSIVE");
    const appId = sqlite(fail, () => db.prepare("PRAGMA application_id").get()?.application_id);
    const tables = sqlite(
      fail,
      () => db.prepare("SELECT name FROM sqlite_schema WHERE type = 'table'").all(),
    ).map((r) => String(r.name));

    if (appId === 0 && tables.length === 0) {
      sqlite(fail, () => db.exec(`PRAGMA application_id = ${APPLICATION_ID}`));
      sqlite(fail, () =>
        transaction(db, () => {
          db.exec("CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID");
          db.prepare("INSERT INTO meta VALUES ('magic', ?), ('schema_version', 0)").run(MAGIC);
        }));
    } else if (appId !== APPLICATION_ID) {
      fail(
        "foreign",
        `is a database of another program (application_id ${appId}, tables ` +
          `${tables.slice(0, 5).join(", ")}); point [storage] dir ` +
          `(MCLOUDTT_STORAGE_DIR) at a directory of its own`,
      );
    }

    const meta = sqlite(fail, () => {
      if (!tables.includes("meta") && appId === APPLICATION_ID) return null;
      return new Map(
        db.prepare("SELECT key, value FROM meta").all().map((r) => [r.key, r.value]),
      );
    });
    const version = meta?.get("schema_version");
    if (meta === null || meta.get("magic") !== MAGIC || typeof version !== "number") {
      fail("corrupt", `has mcloudtt's header but no valid meta table; ${CORRUPT_FIX}`);
    }
    if (version > latest) {
      fail(
        "newer",
        `was written by a newer mcloudtt (schema version ${version}, this build knows up to ` +
          `${latest}); run that newer version, or move the directory away to start empty`,
      );
    }

    const check = sqlite(fail, () => db.prepare("PRAGMA quick_check(1)").get()?.quick_check);
    if (check !== "ok") fail("corrupt", `is damaged (integrity check: ${check}); ${CORRUPT_FIX}`);

    const mode = sqlite(fail, () => db.prepare("PRAGMA journal_mode = WAL").get()?.journal_mode);
    if (mode !== "wal") fail("access", `cannot use write-ahead logging (journal mode ${mode})`);
    db.exec(`PRAGMA synchronous = ${opts.synchronous}`);
    // Keep the WAL from staying large after a burst (it is truncated to this at checkpoints).
    db.exec("PRAGMA journal_size_limit = 67108864");

    for (const m of migrations) {
      if (m.version <= version) continue;
      sqlite(fail, () =>
        transaction(db, () => {
          db.exec(m.sql);
          m.run?.(db);
          db.prepare("UPDATE meta SET value = ? WHERE key = 'schema_version'").run(m.version);
        }));
    }
    return db;
  } catch (e) {
    db.close();
    throw e;
  }
}

const CORRUPT_FIX = "restore it from a backup, or move the directory away to start empty " +
  "(its sessions and retained messages are then lost)";
const ACCESS_FIX = "check that the directory and its files exist and are writable by the " +
  "broker (and, under Deno, --allow-read and --allow-write for it)";

/** SQLite error codes that say something about the file (primary codes, see sqlite3.h). */
const SQLITE_PERM = 3;
const SQLITE_BUSY = 5;
const SQLITE_LOCKED = 6;
const SQLITE_READONLY = 8;
const SQLITE_IOERR = 10;
const SQLITE_CORRUPT = 11;
const SQLITE_FULL = 13;
const SQLITE_CANTOPEN = 14;
const SQLITE_NOTADB = 26;

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** Runs `fn`; turns SQLite's errors about the file into StoreOpenErrors. */
function sqlite<T>(fail: Fail, fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    if (e instanceof StoreOpenError) throw e;
    const code = (e as { errcode?: number }).errcode;
    const primary = code === undefined ? undefined : code & 0xFF;
    if (primary === SQLITE_BUSY || primary === SQLITE_LOCKED) {
      return fail(
        "locked",
        "is in use by another process (is another broker running on this directory?); stop " +
          "it, or give this broker a different [storage] dir (MCLOUDTT_STORAGE_DIR)",
        e,
      );
    }
    if (primary === SQLITE_CORRUPT || primary === SQLITE_NOTADB) {
      return fail("corrupt", `is not a readable database (${errorText(e)}); ${CORRUPT_FIX}`, e);
    }
    if (primary === SQLITE_CANTOPEN || e instanceof Deno.errors.NotCapable) {
      return fail("access", `cannot open (${errorText(e)}); ${ACCESS_FIX}`, e);
    }
    // A write-ahead log it cannot write, a read-only mount, a full disk: named, with the file.
    if (
      primary === SQLITE_PERM || primary === SQLITE_READONLY || primary === SQLITE_IOERR ||
      primary === SQLITE_FULL
    ) {
      return fail("access", `cannot be read or written (${errorText(e)}); ${ACCESS_FIX}`, e);
    }
    throw e;
  }
}

/** Runs `fn` in one IMMEDIATE transaction, rolled back if it throws. */
export function transaction<T>(db: DatabaseSync, fn: () => T): T {
  db.exec("BEGIN IMMEDIATE");
  try {
    const out = fn();
    db.exec("COMMIT");
    return out;
  } catch (e) {
    if (db.isTransaction) db.exec("ROLLBACK");
    throw e;
  }
}
