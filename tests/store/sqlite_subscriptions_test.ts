/**
 * The SQLite store's subscriptions table (schema 2): a file of schema 1, which kept each
 * session's subscriptions as a JSON list in its row, loads with them (in their order) and takes
 * subscription ops; a damaged list still costs only its session; deleting a session leaves no
 * subscription row; and one subscription op writes one row, whatever the session holds.
 */
import assert from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import { DB_FILE, SqliteStore } from "../../src/store/sqlite.ts";
import { MIGRATIONS, openDatabase } from "../../src/store/sqlite_schema.ts";
import { session, subscription } from "./fixtures.ts";

const root = await Deno.makeTempDir({ prefix: "mcloudtt-sqlite-subs-test-" });
globalThis.addEventListener("unload", () => Deno.removeSync(root, { recursive: true }));
let n = 0;
const newDir = () => `${root}/d${n++}`;

function count(db: DatabaseSync, sql: string, ...args: string[]): number {
  return Number(db.prepare(sql).get(...args)?.n);
}

/** A file as schema 1 left it: the sessions' subscriptions as JSON tuples in their rows. */
async function schema1File(dir: string, rows: Record<string, string>): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  const db = openDatabase(`${dir}/${DB_FILE}`, {
    synchronous: "FULL",
    migrations: MIGRATIONS.filter((m) => m.version === 1),
  });
  try {
    for (const [clientId, subs] of Object.entries(rows)) {
      db.prepare(`INSERT INTO sessions (client_id, owner, expiry_interval, expires_at, will_at,
        subscriptions) VALUES (?, NULL, 3600, 1900000000000, 0, ?)`).run(clientId, subs);
    }
  } finally {
    db.close();
  }
}

Deno.test("sqlite: a schema 1 file loads with its subscriptions in their order, and takes subscription ops", async () => {
  const dir = newDir();
  // What schema 1 wrote (JSON.stringify of [key, qos, noLocal, rap, retainHandling, id]).
  await schema1File(dir, {
    c1: JSON.stringify([
      ["z/#", 2, 1, 0, 2, 7],
      ["$share/g/a/+", 0, 0, 1, 0, 0],
      ["温度/😀", 1, 0, 0, 1, 268435455],
    ]),
    empty: "[]",
    damaged: '[["d/#",1,0,0,0',
    "bad-tuple": JSON.stringify([["ok", 1, 0, 0, 0, 0], ["qos", 3, 0, 0, 0, 0]]),
  });
  const store = new SqliteStore({ dir });
  await store.open();
  try {
    const want = [
      subscription({ key: "z/#", qos: 2, noLocal: true, retainHandling: 2, subscriptionId: 7 }),
      subscription({ key: "$share/g/a/+", qos: 0, retainAsPublished: true }),
      subscription({ key: "温度/😀", retainHandling: 1, subscriptionId: 268435455 }),
    ];
    assert.deepEqual(await store.loadSession("c1"), session("c1", { subscriptions: want }));
    assert.deepEqual((await store.loadSession("empty"))?.subscriptions, []);
    // As schema 1's loader did: a list it cannot read costs its session (logged), nothing else.
    assert.equal(await store.loadSession("damaged"), null);
    assert.equal(await store.loadSession("bad-tuple"), null);
    assert.deepEqual(
      (await store.loadSessions()).map((s) => s.clientId).sort(),
      ["c1", "empty"],
    );
    await store.write([
      { type: "subscribe", clientId: "c1", sub: subscription({ key: "$share/g/a/+", qos: 2 }) },
      { type: "unsubscribe", clientId: "c1", key: "z/#" },
      { type: "subscribe", clientId: "c1", sub: subscription({ key: "new" }) },
    ]);
    assert.deepEqual((await store.loadSession("c1"))?.subscriptions, [
      subscription({ key: "$share/g/a/+", qos: 2 }),
      want[2],
      subscription({ key: "new" }),
    ]);
  } finally {
    await store.close();
  }
  const db = new DatabaseSync(`${dir}/${DB_FILE}`);
  try {
    // Moved, not copied: the old column holds what this version writes there.
    assert.equal(
      count(db, "SELECT count(*) AS n FROM sessions WHERE subscriptions <> '[]'"),
      2,
      "only the unreadable lists stay in the sessions table",
    );
    assert.equal(count(db, "SELECT count(*) AS n FROM subscriptions WHERE client_id = 'c1'"), 3);
  } finally {
    db.close();
  }
});

Deno.test("sqlite: deleting a session deletes its subscription rows", async () => {
  const dir = newDir();
  const store = new SqliteStore({ dir });
  await store.open();
  try {
    const subs = Array.from({ length: 50 }, (_, i) => subscription({ key: `k/${i}` }));
    await store.write([
      { type: "session", state: session("gone", { subscriptions: subs }) },
      { type: "session", state: session("kept", { subscriptions: subs.slice(0, 2) }) },
    ]);
    await store.write([{ type: "subscribe", clientId: "gone", sub: subscription({ key: "x" }) }]);
    await store.write([{ type: "session-delete", clientId: "gone" }]);
    // And one replaced whole loses the ones it no longer has.
    await store.write([{
      type: "session",
      state: session("kept", { subscriptions: [subscription({ key: "k/1" })] }),
    }]);
  } finally {
    await store.close();
  }
  const db = new DatabaseSync(`${dir}/${DB_FILE}`);
  try {
    assert.equal(
      count(db, "SELECT count(*) AS n FROM subscriptions WHERE client_id = ?", "gone"),
      0,
    );
    assert.deepEqual(
      db.prepare("SELECT client_id, key FROM subscriptions").all().map((r) => ({ ...r })),
      [{ client_id: "kept", key: "k/1" }],
    );
  } finally {
    db.close();
  }
});

Deno.test("sqlite: one subscription op adds a few pages to the write-ahead log, however many subscriptions the session has", async () => {
  const dir = newDir();
  const store = new SqliteStore({ dir });
  await store.open();
  const many = Array.from({ length: 2000 }, (_, i) => subscription({ key: `many/${i}` }));
  await store.write([
    { type: "session", state: session("big", { subscriptions: many }) },
    { type: "session", state: session("small") },
  ]);
  await store.close();
  // Observed as the pages each op adds to the write-ahead log (every page a transaction changes
  // is appended there; closing the store checkpoints and removes it): schema 1 rewrote the whole
  // session row, about 60 kB of JSON here, for every change.
  const walGrowth = async (op: Parameters<SqliteStore["write"]>[0][number]) => {
    const s = new SqliteStore({ dir, sync: "async" });
    await s.open();
    try {
      const wal = `${dir}/${DB_FILE}-wal`;
      const before = (await Deno.stat(wal).catch(() => ({ size: 0 }))).size;
      await s.write([op]);
      return (await Deno.stat(wal)).size - before;
    } finally {
      await s.close();
    }
  };
  const big = await walGrowth({ type: "subscribe", clientId: "big", sub: subscription() });
  const small = await walGrowth({ type: "subscribe", clientId: "small", sub: subscription() });
  // Two pages here (the table's leaf and its key index's), with one subscription or 2,000.
  assert.ok(
    big <= small + 8192 && big < 32768,
    `a subscribe to the big session wrote ${big} B, ${small} B small`,
  );
});
