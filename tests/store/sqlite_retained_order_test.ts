/**
 * The SQLite store's retained messages in topic order (schema 3): SQLite compares TEXT as UTF-8
 * bytes, which puts characters beyond the BMP after U+E000..U+FFFF, where JavaScript (UTF-16
 * code units, the order a start keeps) puts them before. A file of schema 2, written before the
 * order key existed, is migrated and hands its retained messages over in JavaScript's order.
 * (Files of schema 3 and later are checked by the store contract, tests/store/contract_retained.ts.)
 */
import assert from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import { DB_FILE, SqliteStore } from "../../src/store/sqlite.ts";
import { MIGRATIONS, openDatabase } from "../../src/store/sqlite_schema.ts";
import { loadRetained } from "./fixtures.ts";

const root = await Deno.makeTempDir({ prefix: "mcloudtt-sqlite-order-test-" });
globalThis.addEventListener("unload", () => Deno.removeSync(root, { recursive: true }));

const TOPICS = [
  "a",
  "A",
  "a/b",
  "a\uD7FF",
  "a\uE000",
  "a\uFF01",
  "a\uFF01/x",
  "a\uFFFD",
  "a\u{10000}",
  "a\u{1F600}",
  "a\u{1F600}/x",
  "a\u{10FFFF}",
  "\u{1F600}",
  "\uFF01",
  "温度/😀",
  "z",
];

Deno.test("sqlite: a schema 2 file's retained messages come in UTF-16 topic order after the migration", async () => {
  const dir = `${root}/v2`;
  await Deno.mkdir(dir, { recursive: true });
  const file = `${dir}/${DB_FILE}`;
  const v2 = openDatabase(file, {
    synchronous: "FULL",
    migrations: MIGRATIONS.filter((m) => m.version <= 2),
  });
  try {
    for (const topic of [...TOPICS].reverse()) {
      v2.prepare(`INSERT INTO retained (topic, payload, qos, retain, props, expires_at, origin)
        VALUES (?, ?, 1, 1, NULL, 0, 'o')`).run(topic, new TextEncoder().encode(topic));
    }
    // What SQLite's own order is: not JavaScript's, or this test tests nothing.
    const binary = v2.prepare("SELECT topic FROM retained ORDER BY topic").all().map((r) =>
      String(r.topic)
    );
    assert.notDeepEqual(binary, [...TOPICS].sort());
  } finally {
    v2.close();
  }

  const store = new SqliteStore({ dir });
  await store.open();
  try {
    const want = [...TOPICS].sort();
    for (const messages of [1, 3, 100]) {
      const got = await loadRetained(store, { messages, bytes: 1 << 20 });
      assert.deepEqual(got.map((m) => m.topic), want, `pages of ${messages}`);
      assert.deepEqual(got.map((m) => new TextDecoder().decode(m.payload)), want);
    }
    // Counted and deleted in the same order.
    assert.deepEqual(await store.countRetained("a\u{10FFFF}", 0), {
      count: want.filter((t) => t > "a\u{10FFFF}").length,
      expired: 0,
    });
    await store.write([{ type: "retain-delete-range", after: "a\uD7FF", before: "a\uFF01" }]);
    assert.deepEqual(
      (await loadRetained(store)).map((m) => m.topic),
      want.filter((t) => !(t > "a\uD7FF" && t < "a\uFF01")),
    );
  } finally {
    await store.close();
  }
  const db = new DatabaseSync(file, { readOnly: true });
  try {
    assert.equal(
      db.prepare("SELECT value FROM meta WHERE key = 'schema_version'").get()?.value,
      MIGRATIONS.at(-1)!.version,
    );
  } finally {
    db.close();
  }
});
