import assert from "node:assert/strict";
import { getLogger } from "@logtape/logtape";
import { resolveConfig } from "../../src/config/mod.ts";
import { createSink, sinkStats } from "../../src/sinks/mod.ts";
import { info, testMessage } from "./contract.ts";
import { connectClient } from "../helpers/broker.ts";
import { copyProject, startMain } from "../helpers/main_process.ts";

Deno.test("the JSON-lines file rotates by size and keeps max_files old files", async () => {
  const dir = await Deno.makeTempDir({ prefix: "mcloudtt-jsonl-" });
  try {
    const path = `${dir}/sub/log.jsonl`;
    const sink = createSink(
      resolveConfig({
        topic_log_file: { enabled: true, path, max_bytes: 2048, max_files: 2, batch_size: 10 },
      }),
      getLogger(["mcloudtt", "test"]),
      { nodeId: "n" },
    );
    await sink.start();
    for (let i = 0; i < 100; i++) sink.offer(testMessage(`r/${i}`, "y".repeat(50)), info());
    await sink.stop(5000);
    const files = [...Deno.readDirSync(`${dir}/sub`)].map((e) => e.name).sort();
    assert.deepEqual(files, ["log.jsonl", "log.jsonl.1", "log.jsonl.2"]);
    const lines = (name: string) =>
      Deno.readTextFileSync(`${dir}/sub/${name}`).split("\n").filter((l) => l).map((l) =>
        JSON.parse(l).topic as string
      );
    for (const f of files) {
      assert.ok(Deno.statSync(`${dir}/sub/${f}`).size <= 2048, `${f} is within max_bytes`);
    }
    // The newest rows are in the current file, the oldest kept ones in .2; older ones were deleted.
    const kept = [...lines("log.jsonl.2"), ...lines("log.jsonl.1"), ...lines("log.jsonl")];
    assert.equal(kept.at(-1), "r/99");
    const first = Number(kept[0].split("/")[1]);
    assert.deepEqual(kept, Array.from({ length: 100 - first }, (_, i) => `r/${first + i}`));
    assert.equal(sinkStats(sink)[0].sent, 100);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("createSink: nothing configured is the no-op sink; both sections give both sinks", () => {
  const log = getLogger(["mcloudtt", "test"]);
  assert.equal(createSink(resolveConfig({}), log).name, "none");
  const both = createSink(
    resolveConfig({
      bigquery: { enabled: true, project_id: "p", dataset_id: "d" },
      topic_log_file: { enabled: true },
    }),
    log,
  );
  assert.equal(both.name, "bigquery+jsonl");
  assert.deepEqual(sinkStats(both).map((s) => s.sink), ["bigquery", "jsonl"]);
});

Deno.test("the JSON-lines queue is bounded in bytes too (max_queue_bytes): a stalled disk cannot pile rows up", async () => {
  const dir = await Deno.makeTempDir({ prefix: "mcloudtt-jsonl-" });
  try {
    const sink = createSink(
      resolveConfig({
        topic_log_file: { enabled: true, path: `${dir}/log.jsonl`, max_queue_bytes: 1048576 },
      }),
      getLogger(["mcloudtt", "test"]),
      { nodeId: "n" },
    );
    await sink.start();
    // 40 rows of 100 KB offered in one turn, before anything is written: 4 MB for a 1 MiB queue.
    for (let i = 0; i < 40; i++) sink.offer(testMessage(`big/${i}`, "z".repeat(100_000)), info());
    const s = sinkStats(sink)[0];
    assert.ok(s.queueBytes <= 1048576, `${s.queueBytes} bytes queued`);
    assert.ok(s.dropped >= 30, `${s.dropped} rows dropped`);
    await sink.stop(5000);
    assert.equal(sinkStats(sink)[0].sent + sinkStats(sink)[0].dropped, 40);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a row too long for JSON is refused alone; the file goes on with the rows after it", async () => {
  const cwd = await Deno.makeTempDir({ prefix: "mcloudtt-jsonl-" });
  try {
    await copyProject(cwd);
    await using broker = startMain(cwd, [
      "--general.secure=false",
      "--general.websocket=false",
      "--general.bind=127.0.0.1",
      "--ports.tcp=0",
      "--storage.enabled=false",
      "--limits.max_packet_size=268435455",
      "--topic_log_file.enabled=true",
      "--topic_log_file.path=data/log.jsonl",
      "--topic_log_file.flush_interval_ms=20",
      // Room for it: a full queue would drop it as the oldest row when the next one comes.
      "--topic_log_file.max_queue_bytes=268435456",
    ]);
    const [, port] = await broker.waitFor(/listening for MQTT over tcp on 127\.0\.0\.1:(\d+)/);
    await using pub = await connectClient(Number(port), { clientId: "huge-pub" });
    // Well-formed UTF-8, logged as text; JSON writes each byte as \u0001: 600 MB, past the
    // longest string V8 makes. The batch holding it was retried forever, and nothing after it
    // was written.
    await pub.publishAsync("huge", Buffer.alloc(100 * 1024 * 1024, 1), { qos: 1 });
    for (let i = 0; i < 3; i++) await pub.publishAsync(`after/${i}`, "x", { qos: 1 });
    const topics = () =>
      Deno.readTextFileSync(`${cwd}/data/log.jsonl`).split("\n").filter((l) => l).map((l) =>
        JSON.parse(l).topic as string
      );
    // Writing the 600 MB JSON text of the huge row (then refusing it) takes seconds on a loaded
    // machine before the rows after it reach the file.
    const deadline = Date.now() + 30_000;
    while (topics().length < 3 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.deepEqual(topics(), ["after/0", "after/1", "after/2"]);
    await broker.waitFor(/row refused \(topic huge, .*cannot be written as JSON/, 5000);
  } finally {
    await Deno.remove(cwd, { recursive: true });
  }
});
