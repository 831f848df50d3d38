/**
 * A broker in its own process, for tests that read the broker's memory: started by
 * `startBrokerProcess` (broker_process.ts) with a JSON config override as its argument. It speaks
 * memory_child.ts: `READY <addresses>`, `MEM <memory after a full GC, and the metrics>` per `mem`.
 */
import { createBroker } from "../../mod.ts";
import { serveMemoryRequests } from "./memory_child.ts";

const broker = await createBroker(JSON.parse(Deno.args[0] ?? "{}"));
await broker.start();
await serveMemoryRequests(JSON.stringify(broker.addresses), () => {
  const m = broker.metrics;
  // Some counters are getters (sums over QoS): name them, a spread would miss them.
  return { metrics: { ...m, publishReceived: m.publishReceived, publishSent: m.publishSent } };
});
await broker.stop();
