/**
 * What an idle single node costs (issue 14): the Redis bus and store, the TLS and WebSocket
 * transports and the X.509 library are imported only by configurations that use them
 * (broker.ts, dev_certs.ts). Loaded eagerly they added 25 MiB of resident memory and megabytes of
 * heap to every broker, and a larger heap makes every full collection longer.
 */
import assert from "node:assert/strict";
import { Broker, ClusterBackendNotLoaded, resolveConfig } from "../../mod.ts";
import { mib, startBrokerProcess } from "../helpers/broker_process.ts";

const MIB = 1024 * 1024;

Deno.test("an idle plain-TCP single node holds no Redis, TLS, WebSocket or X.509 code", async () => {
  await using broker = await startBrokerProcess({ general: { websocket: false } });
  const m = await broker.memory();
  console.log(`idle single node: RSS ${mib(m.rss)}, heap ${mib(m.heapUsed)} after a full GC`);
  assert(m.heapUsed < HEAP_LIMIT, `heap ${mib(m.heapUsed)} (limit ${mib(HEAP_LIMIT)})`);
  assert(m.rss < RSS_LIMIT, `RSS ${mib(m.rss)} (limit ${mib(RSS_LIMIT)})`);
});

const HEAP_LIMIT = 14.5 * MIB;
const RSS_LIMIT = 88 * MIB;

Deno.test("a broker constructed directly with [redis] enabled and no bus says to use Broker.create", () => {
  assert.throws(
    () => new Broker(resolveConfig({ redis: { enabled: true } })),
    (e: unknown) => e instanceof ClusterBackendNotLoaded && /Broker\.create\(\)/.test(e.message),
  );
});
