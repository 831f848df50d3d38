/**
 * A broker in its own process, for tests that read the broker's memory: started by
 * `startBrokerProcess` (broker_process.ts) with a JSON config override as its argument. It prints
 * one `READY <addresses>` line, then answers each `mem` line on stdin with
 * `MEM <Deno.memoryUsage() after a full GC>`, and stops when stdin closes.
 */
import { createBroker } from "../../mod.ts";

const broker = createBroker(JSON.parse(Deno.args[0] ?? "{}"));
await broker.start();
const out = (line: string) => Deno.stdout.writeSync(new TextEncoder().encode(line + "\n"));
out(`READY ${JSON.stringify(broker.addresses)}`);

const gc = (globalThis as { gc?: () => void }).gc;
let pending = "";
for await (const chunk of Deno.stdin.readable.pipeThrough(new TextDecoderStream())) {
  pending += chunk;
  let nl;
  while ((nl = pending.indexOf("\n")) >= 0) {
    const cmd = pending.slice(0, nl).trim();
    pending = pending.slice(nl + 1);
    if (cmd === "mem") {
      // ArrayBuffer memory is given back by a collection after the one that found it unreachable.
      gc?.();
      await new Promise((r) => setTimeout(r, 50));
      gc?.();
      const m = broker.metrics;
      // Some counters are getters (sums over QoS): name them, a spread would miss them.
      const metrics = { ...m, publishReceived: m.publishReceived, publishSent: m.publishSent };
      out(`MEM ${JSON.stringify({ ...Deno.memoryUsage(), metrics })}`);
    }
  }
}
await broker.stop();
