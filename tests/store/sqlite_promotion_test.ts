/**
 * Batch after batch of messages through the SQLite store must not carry them into V8's old
 * generation (issue 14: a Map cleared per batch chained its replaced hash tables, with the
 * batch's messages, through every young-generation collection; 10k msg/s QoS 1 with storage
 * promoted ~280 B per message and scavenges took up to 18 ms). The store runs in a child
 * under V8's GC trace; one full collection early on promotes whatever is in use then, which
 * is how such a chain starts in a broker.
 */
import assert from "node:assert/strict";

const WRITER = `
import { SqliteStore } from ${
  JSON.stringify(new URL("../../src/store/sqlite.ts", import.meta.url).href)
};
const store = new SqliteStore({ dir: Deno.args[0], sync: "async" });
await store.open();
const payload = new Uint8Array(64);
let seq = 0;
for (let batch = 0; batch < 4000; batch++) {
  const ops = [];
  for (let i = 0; i < 8; i++) {
    const msg = { topic: "t/" + (i & 3), payload: payload.slice(), qos: 1, retain: false,
      props: null, expiresAt: 0, origin: "p" };
    const item = { msg, qos: 1, retain: false, subIds: null };
    ops.push({ type: "enqueue", clientId: "c" + i, seq: ++seq, item });
    ops.push({ type: "inflight", clientId: "d" + i, item: { ...item, packetId: (seq & 0xffff) || 1, released: false } });
  }
  await store.write(ops);
  if (batch === 100) globalThis.gc();
}
await store.close();
`;

Deno.test("sqlite store: batches of messages are not promoted to the old generation", async () => {
  const dir = await Deno.makeTempDir({ prefix: "mcloudtt-promotion-" });
  try {
    const file = `${dir}/writer.ts`;
    await Deno.writeTextFile(file, WRITER);
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        // The project's imports (the store logs through @logtape/logtape).
        `--config=${new URL("../../deno.json", import.meta.url).pathname}`,
        "--v8-flags=--trace-gc-nvp,--expose-gc",
        file,
        `${dir}/data`,
      ],
      stdout: "piped",
      stderr: "inherit",
    }).output();
    assert.equal(out.code, 0);
    let promoted = 0, scavenges = 0;
    for (const m of new TextDecoder().decode(out.stdout).matchAll(/"gc":"s".*?"promoted":(\d+)/g)) {
      promoted += Number(m[1]);
      scavenges++;
    }
    assert.ok(scavenges > 0, "the writer allocated enough for scavenges");
    // 32,000 messages with 64 B payloads: carrying them along would promote megabytes.
    assert.ok(promoted < 1024 * 1024, `${promoted} B promoted in ${scavenges} scavenges`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
