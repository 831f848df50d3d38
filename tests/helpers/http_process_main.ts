/**
 * The operations HTTP endpoint alone in its own process, for tests that read its memory: started
 * by `spawnMemoryChild` with a JSON object of HttpOptions overrides as its argument. It speaks
 * memory_child.ts: `READY {"port": N}`, `MEM <memory after a full GC>` per `mem`.
 */
import { startHttp } from "../../src/ops/http.ts";
import { serveMemoryRequests } from "./memory_child.ts";

const overrides = JSON.parse(Deno.args[0] ?? "{}");
const http = await startHttp({
  hostname: "127.0.0.1",
  port: 0,
  problems: () => [],
  metrics: () => Promise.resolve({ body: "m 1\n", contentType: "text/plain" }),
  ...overrides,
});
await serveMemoryRequests(JSON.stringify({ port: http.port }));
await http.close();
