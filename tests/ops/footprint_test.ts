/**
 * What an idle single node costs (issue 14): the Redis bus and store, the TLS and WebSocket
 * transports and the X.509 library are imported only by configurations that use them
 * (broker.ts, dev_certs.ts). Loaded eagerly they added 25 MiB of resident memory and megabytes of
 * heap to every broker, and a larger heap makes every full collection longer. Nor does a schema
 * library (config/spec.ts), nor a library cache that the first SUBACK, UNSUBACK or server
 * DISCONNECT fills (issue 14: idle heap 12.2 -> 6.7 MiB, RSS 74.9 -> 54.7 MiB).
 */
import assert from "node:assert/strict";
import { Broker, ClusterBackendNotLoaded, resolveConfig } from "../../mod.ts";
import { mib, startBrokerProcess } from "../helpers/broker_process.ts";
import { connectClient, endClient } from "../helpers/broker.ts";

const MIB = 1024 * 1024;

Deno.test("an idle plain-TCP single node holds no Redis, TLS, WebSocket or X.509 code", async () => {
  await using broker = await startBrokerProcess({ general: { websocket: false } });
  const m = await broker.memory();
  console.log(`idle single node: RSS ${mib(m.rss)}, heap ${mib(m.heapUsed)} after a full GC`);
  assert(m.heapUsed < HEAP_LIMIT, `heap ${mib(m.heapUsed)} (limit ${mib(HEAP_LIMIT)})`);
  assert(m.rss < RSS_LIMIT, `RSS ${mib(m.rss)} (limit ${mib(RSS_LIMIT)})`);
});

const HEAP_LIMIT = 8 * MIB;
const RSS_LIMIT = 68 * MIB;

Deno.test("a broker constructed directly with [redis] enabled and no bus says to use Broker.create", () => {
  assert.throws(
    () => new Broker(resolveConfig({ redis: { enabled: true } })),
    (e: unknown) => e instanceof ClusterBackendNotLoaded && /Broker\.create\(\)/.test(e.message),
  );
});

Deno.test("SUBACK, UNSUBACK and a server DISCONNECT leave the broker's heap as it was", async () => {
  await using broker = await startBrokerProcess({ general: { websocket: false } });
  const before = await broker.memory();
  for (const protocolVersion of [4, 5] as const) {
    const first = await connectClient(broker.ports.tcp, { protocolVersion, clientId: "fp" });
    await first.subscribeAsync(["a/#", "b/+"], { qos: 1 });
    await first.unsubscribeAsync(["a/#", "b/+"]);
    // A second connection with the same id takes the session over: the broker sends the first
    // one a DISCONNECT (0x8E) at MQTT 5 and closes it.
    const gone = new Promise<void>((resolve) => first.once("close", () => resolve()));
    const second = await connectClient(broker.ports.tcp, { protocolVersion, clientId: "fp" });
    await gone;
    await endClient(second);
    await endClient(first, true);
  }
  const after = await broker.memory();
  const grown = after.heapUsed - before.heapUsed;
  console.log(`heap ${mib(before.heapUsed)} idle, ${mib(after.heapUsed)} after acks and takeovers`);
  // mqtt-packet, which used to write these packets, filled a cache of 65,536 Buffers (6.8 MB) on
  // first use; what is left is the JIT's code and feedback for the paths just run.
  assert(grown < 1.5 * MIB, `heap grew ${mib(grown)}`);
});
