import mqtt from "mqtt";
import { BENCH_LIMITS, startMcloudttCluster } from "./brokers.ts";
const dir = await Deno.makeTempDir({ prefix: "durbench-mq-" });
const durability = Deno.args[0] ?? "async";
const persistent = (Deno.args[1] ?? "1") === "1";
const N = Number(Deno.args[2] ?? 3000);
const c = await startMcloudttCluster(2, BENCH_LIMITS, dir, [`--redis.durability=${durability}`]);
try {
  const [p1, p2] = c.nodePorts!;
  const sub = await mqtt.connectAsync(`mqtt://127.0.0.1:${p2}`, {
    clientId: "s0",
    protocolVersion: 5,
    clean: !persistent,
    properties: persistent ? { sessionExpiryInterval: 3600 } : {},
  });
  await sub.subscribeAsync("t/0", { qos: 1 });
  const t0 = performance.now();
  const times: number[] = [];
  sub.on("message", () => times.push(performance.now() - t0));
  const pub = await mqtt.connectAsync(`mqtt://127.0.0.1:${p1}`, {
    clientId: "p0",
    protocolVersion: 5,
  });
  await new Promise((r) => setTimeout(r, 500));
  const sends = [];
  for (let i = 0; i < N; i++) sends.push(pub.publishAsync("t/0", "x".repeat(64), { qos: 1 }));
  await Promise.all(sends);
  const tp = performance.now() - t0;
  const deadline = performance.now() + 20000;
  while (times.length < N && performance.now() < deadline) {
    await new Promise((r) => setTimeout(r, 50));
  }
  // gaps
  const gaps = times.slice(1).map((t, i) => [t - times[i], t] as const).filter(([g]) => g > 200);
  console.log(
    JSON.stringify({
      durability,
      persistent,
      N,
      got: times.length,
      pubAckedAt: Math.round(tp),
      last: Math.round(times.at(-1) ?? 0),
      gaps: gaps.map(([g, t]) => [Math.round(g), Math.round(t)]).slice(0, 20),
    }),
  );
  await pub.endAsync();
  await sub.endAsync();
} finally {
  await c.stop();
}
Deno.exit(0);
