/**
 * The runtime floor for idle connections: the least a Deno server can hold per connection, to
 * compare the broker against (`idle_cost.ts` starts it). It answers the first bytes of each
 * connection with a CONNACK and otherwise only reads. Started as
 * `deno run -A --v8-flags=--expose-gc idle_floor.ts <mode> [cert key]`; prints `READY <port>`,
 * answers each `mem` line on stdin with `MEM <Deno.memoryUsage() after a full GC>`, and exits
 * when stdin closes. The servers, and what each mode isolates, are in `connack_servers.ts`
 * (`forwarder.ts --connack` serves the bench's `floor` target with two of them).
 */
import { serveMemoryRequests } from "../helpers/memory_child.ts";
import { listenIdle } from "./connack_servers.ts";

const [mode, certFile, keyFile] = Deno.args;

await serveMemoryRequests(String(await listenIdle(mode, { certFile, keyFile })));
Deno.exit(0);
