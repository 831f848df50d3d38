/**
 * `deno task cluster` (infra/local/cluster.ts), as the README's "Run a local
 * cluster" tells a new user to run it: Redis and three nodes on consecutive
 * ports come up, a message published on the first node reaches a subscriber
 * on the last, and Ctrl-C (SIGINT) stops every process, Redis included.
 */
import assert from "node:assert/strict";
import { connectClient, freePort, subscriber } from "../helpers/broker.ts";
import { skipWithoutRedis } from "../helpers/redis.ts";
import { isFree } from "../../infra/local/ports.ts";
import denoJson from "../../deno.json" with { type: "json" };

const ROOT = new URL("../../", import.meta.url).pathname;

/** The first of `n` consecutive free ports. */
function freeRun(n: number): number {
  for (;;) {
    const base = freePort();
    if (base + n > 65535) continue;
    let ok = true;
    for (let i = 1; i < n && ok; i++) ok = isFree(base + i);
    if (ok) return base;
  }
}

Deno.test({
  name: "deno task cluster: three nodes on consecutive ports exchange a message; Ctrl-C stops all",
  ignore: skipWithoutRedis(),
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    // The task's own command line, so the test runs what the README says.
    const task = denoJson.tasks.cluster.split(" ");
    assert.equal(task[0], "deno");
    const base = freeRun(3);
    const redisPort = freePort();
    const child = new Deno.Command(Deno.execPath(), {
      args: [...task.slice(1), "--port", String(base), "--redis-port", String(redisPort)],
      cwd: ROOT,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).spawn();
    let out = "";
    const reading = Promise.all([child.stdout, child.stderr].map(async (s) => {
      for await (const chunk of s.pipeThrough(new TextDecoderStream())) out += chunk;
    }));
    try {
      const deadline = Date.now() + 60_000;
      while (!out.includes("cluster ready")) {
        if (Date.now() > deadline) throw new Error(`the cluster did not come up:\n${out}`);
        await new Promise((r) => setTimeout(r, 100));
      }
      assert.match(out, new RegExp(`ports ${base}, ${base + 1}, ${base + 2}`));
      for (const n of [1, 2, 3]) {
        assert.match(out, new RegExp(`\\[node-${n}\\] .*joined`));
        // A local cluster is reached from this machine only: MQTT and the HTTP endpoint alike.
        assert.match(out, new RegExp(`\\[node-${n}\\] .*HTTP endpoint .* on 127\\.0\\.0\\.1:\\d+`));
      }
      await using sub = await subscriber(base + 2, "demo/#", 1, { clientId: "readme-sub" });
      await using pub = await connectClient(base, { clientId: "readme-pub" });
      await pub.publishAsync("demo/hello", "hello across nodes", { qos: 1 });
      const m = await sub.inbox.next(5000);
      assert.equal(m.payload, "hello across nodes");
    } finally {
      child.kill("SIGINT");
      const status = await child.status;
      await reading;
      assert.equal(status.code, 0, out);
    }
    // Every process is gone: nothing listens on the nodes' ports or Redis's.
    for (const port of [base, base + 1, base + 2, redisPort]) {
      assert.ok(isFree(port), `port ${port} is free again`);
    }
  },
});

Deno.test("deno task cluster refuses a port already in use before it starts anything", async () => {
  const task = denoJson.tasks.cluster.split(" ");
  const base = freeRun(3);
  // Something else holds the second node's port, as `deno task start` holds 1883.
  const held = Deno.listen({ hostname: "127.0.0.1", port: base + 1 });
  try {
    const out = await new Deno.Command(Deno.execPath(), {
      args: [...task.slice(1), "--port", String(base)],
      cwd: ROOT,
      stdin: "null",
      env: { NO_COLOR: "1" },
    }).output();
    const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 1, text);
    assert.match(text, new RegExp(`port ${base + 1} is already in use`));
    assert.doesNotMatch(text, /cluster ready|\[redis\]|\[node-/);
    // Nothing was left listening on the other two ports.
    assert.ok(isFree(base) && isFree(base + 2));
  } finally {
    held.close();
  }
});
