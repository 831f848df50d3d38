import v8 from "node:v8";
import { createBroker } from "../mod.ts";
const b = createBroker({ general: { secure: false, websocket: false, bind: "127.0.0.1" }, ports: { tcp: 18903 } });
await b.start();
const m0 = Deno.memoryUsage();
setTimeout(() => {
  (globalThis as any).gc?.();
  const m = Deno.memoryUsage();
  console.log(`rss +${((m.rss - m0.rss)/5000).toFixed(0)} B/conn heapUsed +${((m.heapUsed - m0.heapUsed)/5000).toFixed(0)} ext +${((m.external-m0.external)/5000).toFixed(0)}`);
  console.log(v8.writeHeapSnapshot("/tmp/perf/b.heapsnapshot")); Deno.exit(0);
}, 7000);
