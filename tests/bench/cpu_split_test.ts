// Splitting `perf script` samples into kernel, runtime, libc and JavaScript (cpu_split.ts), on an
// excerpt recorded from mcloudtt and Mosquitto under the paced load (addresses kept, chains cut).

import assert from "node:assert/strict";
import { splitSamples } from "./cpu_split.ts";

const ROOT = new URL("../../", import.meta.url).pathname;

const RECORDED = `deno 26758 
	    7ff9340dd1b1 JS:+'publishForm file://${ROOT}src/protocol/publish.ts:352:32 (/tmp/perf-26758.map)
	    7ff9340e041f JS:+'sendPublish file://${ROOT}src/session/publish_flow.ts:74:32 (/tmp/perf-26758.map)
	    7ff9340eb09d JS:*'onSettled file://${ROOT}src/transport/tcp.ts:67:12 (/tmp/perf-26758.map)
	         3724e35 [unknown] (/usr/lib/node_modules/deno/deno)

deno 26758 
	         1d99417 [unknown] (/usr/lib/node_modules/deno/deno)
	    7ff9340e82a8 JS:*'flush file://${ROOT}src/protocol/outbox.ts:219:80 (/tmp/perf-26758.map)
	         1b91042 [unknown] (/usr/lib/node_modules/deno/deno)

deno 26758 
	ffffffff8a2e1c30 pvm_irq_enable ([kernel.kallsyms])
	           f2e16 __send (/usr/lib/x86_64-linux-gnu/libc.so.6)
	    7ff9340e82a8 JS:*'flush file://${ROOT}src/protocol/outbox.ts:219:80 (/tmp/perf-26758.map)

deno 26758 
	           1a3f0 epoll_wait (/usr/lib/x86_64-linux-gnu/libc.so.6)
	         1b91042 [unknown] (/usr/lib/node_modules/deno/deno)

V8 DefaultWorke 26761 
	         360e7c4 [unknown] (/usr/lib/node_modules/deno/deno)

mosquitto 27001 
	           2f1a0 packet__read (/usr/sbin/mosquitto)
	           1b3c1 main (/usr/sbin/mosquitto)
`;

Deno.test("perf samples split by where they land, with the nearest JavaScript function", () => {
  const { total, parts, functions } = splitSamples(RECORDED);
  assert.equal(total, 6);
  assert.deepEqual(Object.fromEntries(parts), {
    "js": 1,
    "runtime under JS": 1,
    "kernel": 1,
    "libc": 1,
    "runtime (helper threads)": 1,
    "broker": 1,
  });
  // The JS leaf and the runtime below flush count for their functions; the kernel sample does not.
  assert.deepEqual(Object.fromEntries(functions), {
    "publishForm src/protocol/publish.ts:352:32": 1,
    "flush src/protocol/outbox.ts:219:80": 1,
  });
});
