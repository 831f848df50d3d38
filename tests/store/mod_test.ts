/** createStore: the [storage] keys choose the store. */
import assert from "node:assert/strict";
import { loadConfig, resolveConfig } from "../../src/config/mod.ts";
import { createStore, MemoryStore, SqliteStore } from "../../src/store/mod.ts";
import { withTempDir } from "../helpers/fs.ts";

Deno.test("createStore: [storage] enabled = false is the in-memory store, journaling nothing", () => {
  const store = createStore(resolveConfig({ storage: { enabled: false } }));
  assert.ok(store instanceof MemoryStore);
  assert.equal(store.durable, false);
});

Deno.test("createStore: by default, SQLite in ./data with ack-after-write", () => {
  const store = createStore(resolveConfig());
  assert.ok(store instanceof SqliteStore);
  assert.equal(store.durable, true);
  assert.equal(store.path, "data/mcloudtt.db");
  assert.equal(store.options.sync, "ack-after-write");
});

Deno.test("createStore: MCLOUDTT_STORAGE_DIR and --storage.sync reach the SQLite store", () =>
  withTempDir(async (dir) => {
    const { config } = loadConfig({
      args: ["--storage.sync=async"],
      env: { MCLOUDTT_STORAGE_DIR: `${dir}/state` },
      cwd: dir,
    });
    const store = createStore(config);
    assert.ok(store instanceof SqliteStore);
    assert.equal(store.options.sync, "async");
    await store.open();
    await store.write([{ type: "retain-delete", topic: "x" }]);
    await store.close();
    assert.ok((await Deno.stat(`${dir}/state/mcloudtt.db`)).isFile);
  }));
