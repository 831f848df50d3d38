/**
 * What only the SQLite store has: a file that must be ours and intact before
 * anything is written to it, a schema with a migration path, one broker per
 * directory, messages stored once, and batches that survive kill -9 once
 * acknowledged. (What every store does is in store_contract_test.ts.)
 */
import assert from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import fc from "fast-check";
import { StoreOpenError } from "../../src/store/errors.ts";
import { DB_FILE, SqliteStore } from "../../src/store/sqlite.ts";
import { MIGRATIONS, openDatabase } from "../../src/store/sqlite_schema.ts";
import type { StoreOp } from "../../src/store/types.ts";
import { CRASH_SESSIONS, crashMessage } from "./crash_writer.ts";
import {
  delivery,
  fullSession,
  inflight,
  journalArb,
  loadRetained,
  message,
  session,
} from "./fixtures.ts";

const root = await Deno.makeTempDir({ prefix: "mcloudtt-sqlite-test-" });
globalThis.addEventListener("unload", () => Deno.removeSync(root, { recursive: true }));
let n = 0;
const newDir = () => `${root}/d${n++}`;

async function withStore<T>(dir: string, fn: (s: SqliteStore) => Promise<T>): Promise<T> {
  const store = new SqliteStore({ dir });
  await store.open();
  try {
    return await fn(store);
  } finally {
    await store.close();
  }
}

/** Opening must fail with `kind`, naming the file, and leave the file's bytes as they were. */
async function expectRefused(dir: string, kind: StoreOpenError["kind"], words: RegExp) {
  const file = `${dir}/${DB_FILE}`;
  const before = await Deno.readFile(file);
  const err = await new SqliteStore({ dir }).open().then(
    () => assert.fail("open() succeeded"),
    (e: unknown) => e,
  );
  assert.ok(err instanceof StoreOpenError, `not a StoreOpenError: ${err}`);
  assert.equal(err.kind, kind);
  assert.ok(err.message.includes(file), `message does not name ${file}: ${err.message}`);
  assert.match(err.message, words);
  assert.deepEqual(await Deno.readFile(file), before, "the refused file was changed");
  assert.deepEqual(
    [...Deno.readDirSync(dir)].map((e) => e.name).sort(),
    [DB_FILE],
    "files were added next to the refused one",
  );
}

/** Raw access to a closed store's file, for checks and for damaging it. */
function raw<T>(dir: string, fn: (db: DatabaseSync) => T): T {
  const db = new DatabaseSync(`${dir}/${DB_FILE}`);
  try {
    return fn(db);
  } finally {
    db.close();
  }
}

const count = (db: DatabaseSync, sql: string) => Number(db.prepare(sql).get()?.n);

Deno.test("sqlite: a new directory is created with a versioned schema marked as ours", async () => {
  const dir = `${newDir()}/nested/data`;
  await withStore(dir, async (s) => await s.write([{ type: "session", state: session("c1") }]));
  raw(dir, (db) => {
    assert.equal(db.prepare("PRAGMA application_id").get()?.application_id, 0x4D515454);
    const meta = Object.fromEntries(
      db.prepare("SELECT key, value FROM meta").all().map((r) => [r.key, r.value]),
    );
    assert.deepEqual(meta, { magic: "mcloudtt", schema_version: MIGRATIONS.at(-1)!.version });
    assert.equal(db.prepare("PRAGMA journal_mode").get()?.journal_mode, "wal");
  });
});

Deno.test("sqlite: a file that is not a database stops open() with a clear error", async () => {
  const dir = newDir();
  await Deno.mkdir(dir);
  await Deno.writeTextFile(`${dir}/${DB_FILE}`, "not a database\n".repeat(500));
  await expectRefused(dir, "corrupt", /not a readable database.*backup.*move the directory/);
});

Deno.test("sqlite: a damaged page stops open() with a clear error", async () => {
  const dir = newDir();
  await withStore(dir, async (s) => {
    const sessions = Array.from({ length: 200 }, (_, i) => fullSession(`client-${i}`));
    await s.write(sessions.map((state) => ({ type: "session", state })));
  });
  // Overwrite the middle of the file (b-tree pages), leaving the header valid.
  const file = `${dir}/${DB_FILE}`;
  const bytes = await Deno.readFile(file);
  bytes.fill(0xA5, 4096 * 2 + 10, 4096 * 6);
  await Deno.writeFile(file, bytes);
  await expectRefused(dir, "corrupt", /damaged|not a readable database/);
});

Deno.test("sqlite: another program's database stops open() and is left alone", async () => {
  const dir = newDir();
  await Deno.mkdir(dir);
  raw(dir, (db) => db.exec("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)"));
  await expectRefused(dir, "foreign", /another program.*invoices.*\[storage\] dir/);
  // Also when it carries some other application id.
  raw(dir, (db) => db.exec("PRAGMA application_id = 1234"));
  await expectRefused(dir, "foreign", /application_id 1234/);
});

Deno.test("sqlite: a file from a newer mcloudtt stops open() and names both versions", async () => {
  const dir = newDir();
  await withStore(dir, async (s) => await s.write([{ type: "session", state: session("c1") }]));
  raw(dir, (db) => db.exec("UPDATE meta SET value = 99 WHERE key = 'schema_version'"));
  const latest = MIGRATIONS.at(-1)!.version;
  await expectRefused(
    dir,
    "newer",
    new RegExp(`newer mcloudtt \\(schema version 99, .* up to ${latest}\\)`),
  );
});

Deno.test("sqlite: ours by header but without its meta table is corrupt, not overwritten", async () => {
  const dir = newDir();
  await withStore(dir, () => Promise.resolve());
  raw(dir, (db) => db.exec("DROP TABLE meta"));
  await expectRefused(dir, "corrupt", /no valid meta table/);
});

Deno.test("sqlite: an older file is migrated, keeping its data; the older build then refuses it", async () => {
  const dir = newDir();
  const v2 = [...MIGRATIONS, {
    version: MIGRATIONS.length + 1,
    sql: "CREATE TABLE extra (x); ALTER TABLE sessions ADD COLUMN note TEXT",
  }];
  await withStore(dir, (s) => s.write([{ type: "session", state: fullSession("c1") }]));
  const migrated = new SqliteStore({ dir, migrations: v2 });
  await migrated.open();
  assert.deepEqual(
    await migrated.loadSession("c1"),
    await (async () => {
      const m = new SqliteStore({ dir: newDir() });
      await m.open();
      await m.write([{ type: "session", state: fullSession("c1") }]);
      const got = await m.loadSession("c1");
      await m.close();
      return got;
    })(),
  );
  await migrated.close();
  raw(dir, (db) => {
    assert.equal(
      db.prepare("SELECT value FROM meta WHERE key = 'schema_version'").get()?.value,
      MIGRATIONS.length + 1,
    );
    assert.equal(count(db, "SELECT count(*) AS n FROM extra"), 0);
  });
  await expectRefused(dir, "newer", new RegExp(`schema version ${MIGRATIONS.length + 1}`));
});

Deno.test("sqlite: a schema 2 file opens; its messages get ids, and a loaded one written again keeps its row", async () => {
  const dir = newDir();
  const v2 = MIGRATIONS.filter((m) => m.version <= 2);
  // Two sessions and a message queued for both, as schema 2 stored them.
  await Deno.mkdir(dir, { recursive: true });
  const db = openDatabase(`${dir}/${DB_FILE}`, { synchronous: "FULL", migrations: v2 });
  try {
    db.exec(`INSERT INTO sessions (client_id, owner, expiry_interval, expires_at, will_at,
      subscriptions) VALUES ('a', NULL, 3600, 1900000000000, 0, '[]'),
      ('b', NULL, 3600, 1900000000000, 0, '[]')`);
    db.prepare(
      `INSERT INTO messages (id, refs, topic, payload, qos, retain, props, expires_at, origin)
        VALUES (1, 2, 't/1', ?, 1, 0, NULL, 0, 'publisher')`,
    ).run(new Uint8Array(4096).fill(3));
    db.exec(`INSERT INTO queue (client_id, seq, msg_id, qos, retain, sub_ids)
      VALUES ('a', 1, 1, 1, 0, NULL), ('b', 1, 1, 1, 0, NULL)`);
  } finally {
    db.close();
  }
  raw(dir, (db) => {
    assert.equal(db.prepare("SELECT value FROM meta WHERE key = 'schema_version'").get()?.value, 2);
  });

  await withStore(dir, async (s) => {
    const [a, b] = (await s.loadSessions()).sort((x, y) => x.clientId.localeCompare(y.clientId));
    // One object for both queues, with the id the migration gave its row.
    assert.equal(a.queue[0].msg, b.queue[0].msg);
    assert.match(a.queue[0].msg.id ?? "", /^row:\d+$/);
    // A copy of it (as a restored session holds another object) written whole: the same row.
    const again = { ...a.queue[0].msg };
    await s.write([{
      type: "session",
      state: { ...a, queue: [{ ...a.queue[0], msg: again }] },
    }]);
    // A new message with an id keeps it.
    await s.write([{
      type: "enqueue",
      clientId: "b",
      seq: 2,
      item: delivery(message({ id: "AbCdEfGh1" })),
    }]);
  });
  raw(dir, (db) => {
    assert.equal(
      db.prepare("SELECT value FROM meta WHERE key = 'schema_version'").get()?.value,
      MIGRATIONS.at(-1)!.version,
    );
    assert.deepEqual(
      db.prepare("SELECT cid, refs FROM messages ORDER BY id").all().map((r) => [r.cid, r.refs]),
      [["row:1", 2], ["AbCdEfGh1", 1]],
    );
  });
  await withStore(dir, async (s) => {
    const b = (await s.loadSession("b"))!;
    assert.deepEqual(b.queue.map((q) => q.msg.id), ["row:1", "AbCdEfGh1"]);
  });
});

Deno.test("sqlite: a second store on the same directory is refused while the first is open", async () => {
  const dir = newDir();
  await withStore(dir, async (first) => {
    await first.write([{ type: "session", state: session("c1") }]);
    const second = new SqliteStore({ dir });
    const err = await second.open().then(() => null, (e: unknown) => e);
    assert.ok(err instanceof StoreOpenError && err.kind === "locked", `got ${err}`);
    assert.match(err.message, /in use by another process/);
    // The first one keeps working.
    await first.write([{ type: "session", state: session("c2") }]);
  });
  await withStore(dir, async (s) => assert.equal((await s.loadSessions()).length, 2));
});

Deno.test("sqlite: a data directory that cannot be created is an access error naming it", async () => {
  const dir = newDir();
  await Deno.writeTextFile(dir, "a file where the directory should be");
  const err = await new SqliteStore({ dir: `${dir}/data` }).open().then(() => null, (e) => e);
  assert.ok(err instanceof StoreOpenError && err.kind === "access", `got ${err}`);
  assert.ok(err.message.includes(`${dir}/data`));
});

Deno.test("sqlite: a message enqueued to many sessions is stored once, and deleted when nobody holds it", async () => {
  const dir = newDir();
  const big = message({ payload: new Uint8Array(1 << 20).fill(7) });
  const ids = Array.from({ length: 100 }, (_, i) => `s${i}`);
  await withStore(dir, async (s) => {
    await s.write(ids.map((id) => ({ type: "session", state: session(id) })));
    await s.write(
      ids.map((id) => ({ type: "enqueue", clientId: id, seq: 1, item: delivery(big) })),
    );
    // Moved to inflight in later batches: still the same row.
    await s.write([{ type: "dequeue", clientId: "s0", seq: 1 }, {
      type: "inflight",
      clientId: "s0",
      item: inflight(1, big),
    }]);
    await s.write([{ type: "inflight", clientId: "s1", item: inflight(1, big) }]);
  });
  raw(dir, (db) => {
    assert.equal(count(db, "SELECT count(*) AS n FROM messages"), 1);
    assert.equal(count(db, "SELECT refs AS n FROM messages"), 101);
  });
  assert.ok((await Deno.stat(`${dir}/${DB_FILE}`)).size < 3 << 20, "the payload was copied");
  await withStore(dir, async (s) => {
    await s.write([
      ...ids.map((id): StoreOp => ({ type: "dequeue", clientId: id, seq: 1 })),
      { type: "inflight-delete", clientId: "s0", packetId: 1 },
      { type: "session-delete", clientId: "s1" },
    ]);
  });
  raw(dir, (db) => assert.equal(count(db, "SELECT count(*) AS n FROM messages"), 0));
});

Deno.test("sqlite: random journals leave no orphan rows and exact reference counts", async () => {
  await fc.assert(
    fc.asyncProperty(journalArb, async (batches) => {
      const dir = newDir();
      await withStore(dir, async (s) => {
        for (const b of batches) await s.write(b);
      });
      raw(dir, (db) => {
        for (const t of ["queue", "inflight", "qos2", "subscriptions"]) {
          const orphans = count(
            db,
            `SELECT count(*) AS n FROM ${t} WHERE client_id NOT IN (SELECT client_id FROM sessions)`,
          );
          assert.equal(orphans, 0, `${t} rows of sessions that do not exist`);
        }
        const wrong = db.prepare(`SELECT m.id, m.refs,
            (SELECT count(*) FROM queue WHERE msg_id = m.id) +
            (SELECT count(*) FROM inflight WHERE msg_id = m.id) AS actual
          FROM messages m WHERE m.refs <> actual OR actual = 0`).all();
        assert.deepEqual(wrong, []);
        const dangling = count(
          db,
          `SELECT count(*) AS n FROM (SELECT msg_id FROM queue UNION ALL SELECT msg_id FROM inflight)
           WHERE msg_id NOT IN (SELECT id FROM messages)`,
        );
        assert.equal(dangling, 0);
      });
    }),
    { numRuns: 25 },
  );
});

Deno.test("sqlite: kill -9 in the middle of writes loses no acknowledged batch", async (t) => {
  for (const sync of ["ack-after-write", "async"] as const) {
    await t.step(sync, async () => {
      const dir = newDir();
      const child = new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "--allow-read",
          "--allow-write",
          new URL("./crash_writer.ts", import.meta.url).pathname,
          dir,
          sync,
        ],
        stdout: "piped",
        stderr: "inherit",
      }).spawn();
      let acked = 0;
      let text = "";
      const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
      // Let it get well into its loop, then kill it wherever it is.
      while (acked < 200) {
        const { value, done } = await reader.read();
        if (done) break;
        text += value;
        const acks = [...text.matchAll(/^ack (\d+)$/gm)];
        if (acks.length) acked = Number(acks.at(-1)![1]);
      }
      child.kill("SIGKILL");
      const status = await child.status;
      assert.equal(status.signal, "SIGKILL");
      // Acknowledgements printed before the kill landed count too.
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        text += value;
      }
      acked = Number([...text.matchAll(/^ack (\d+)$/gm)].at(-1)![1]);
      assert.ok(acked >= 200, `only ${acked} batches acknowledged`);

      await withStore(dir, async (s) => {
        const sessions = new Map((await s.loadSessions()).map((x) => [x.clientId, x]));
        assert.deepEqual([...sessions.keys()].sort(), CRASH_SESSIONS);
        // The last batch written is the last acknowledged one, or the one after it (written,
        // killed before printing); every batch is whole.
        const last = sessions.get("c1")!.queue.length;
        assert.ok(last === acked || last === acked + 1, `last batch ${last}, acked ${acked}`);
        for (const id of CRASH_SESSIONS) {
          const q = sessions.get(id)!.queue;
          const from = id === "c0" ? last : 1;
          assert.deepEqual(q.map((d) => d.seq), range(from, last), `queue of ${id}`);
          for (const d of q) assert.deepEqual(d.msg.payload, crashMessage(d.seq).payload);
        }
        const c0 = sessions.get("c0")!;
        assert.equal(c0.inflight.length, last - 1);
        assert.deepEqual(c0.inflight.at(-1)!.msg.payload, crashMessage(last - 1).payload);
        const retained = await loadRetained(s);
        assert.equal(retained.length, 10);
        const r = retained.find((m) => m.topic === `r/${last % 10}`);
        assert.deepEqual(r?.payload, crashMessage(last).payload);
      });
    });
  }
});

function range(from: number, to: number): number[] {
  return Array.from({ length: Math.max(0, to - from + 1) }, (_, i) => from + i);
}
