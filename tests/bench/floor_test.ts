// forwarder.ts, floor.ts's bare forwarder, under the C probe's --raw mode (a 2-byte hello):
// over TCP (read and written by resource id) and TLS (node:tls), QoS 0 and 1, every message
// reaches its subscriber once and every PUBACK its publisher. Short windows: this checks that the
// floor measures a working pipe, not how fast it is.

import assert from "node:assert/strict";
import { startForwarder } from "./forwarder.ts";
import { buildProbe, runProbe } from "./probe.ts";
import { clientTls } from "./tls.ts";
import { sharedBenchPki } from "./fixtures.ts";

const build = await buildProbe();
if (!build.ok) {
  if (Deno.env.get("CI")) {
    throw new Error(`CI is set but the latency probe cannot be built: ${build.reason}`);
  }
  console.warn(`\n!!! SKIPPING the forwarder tests: ${build.reason} !!!\n`);
}

for (const transport of ["tcp", "tls"] as const) {
  for (const qos of [0, 1] as const) {
    Deno.test({
      name: `the floor's forwarder over ${transport}, QoS ${qos}: every message and PUBACK passes`,
      ignore: !build.ok,
      async fn() {
        const pki = transport === "tls" ? await sharedBenchPki() : undefined;
        const { port, traced } = await startForwarder(pki, () => 0);
        try {
          const { result: r } = await runProbe(build.ok ? build.path : "", {
            host: "127.0.0.1",
            port,
            pairs: 4,
            rate: 1_000,
            qos,
            version: 5,
            warmupS: 0.3,
            windowS: 1,
            drainS: 2,
            idPrefix: `floor-test-${qos}`,
            raw: true,
            tls: pki && await clientTls(pki),
          });
          assert.ok(r.sent > 1_000, `sent ${r.sent}`); // 1.3 s at 1000 msg/s
          assert.equal(r.received, r.sent);
          assert.equal(r.duplicates, 0);
          // The subscriber's PUBACK goes back through the forwarder as the publisher's.
          assert.equal(r.acked, qos === 1 ? r.sent : 0);
          assert.ok(r.count > 800 && r.count < 1_200, `samples ${r.count}`);
          assert.ok(r.p50 > 0 && r.p50 <= r.p99 && r.p99 <= r.max, JSON.stringify(r));
        } finally {
          await traced.stop();
        }
      },
    });
  }
}
