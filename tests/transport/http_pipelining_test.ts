/**
 * Requests pipelined on one connection and never read, on the two HTTP servers anyone can reach
 * before authenticating: the operations endpoint and the WebSocket port. node:http made a
 * request and its answer for every request in a read (~2,400 in 64 KiB) and kept them until the
 * connection's deadline; now each connection gets one request, whose head alone is parsed.
 * Memory is the peak RSS of the server's own process.
 */
import assert from "node:assert/strict";
import {
  mib,
  peakRssOf,
  resetPeakRss,
  rssOf,
  startBrokerProcess,
} from "../helpers/broker_process.ts";
import { spawnMemoryChild } from "../helpers/memory_child.ts";
import { headEnd } from "../../src/transport/http_reads.ts";

const MIB = 1024 * 1024;
const SOCKETS = 100;

/** Opens SOCKETS connections to `port`, each writing ~66 KB of pipelined `path` requests. */
async function pipeline(port: number, path: string): Promise<void> {
  const burst = new TextEncoder().encode(`GET ${path} HTTP/1.1\r\nHost: x\r\n\r\n`.repeat(2200));
  const conns: Deno.Conn[] = [];
  try {
    for (let i = 0; i < SOCKETS; i++) {
      const c = await Deno.connect({ hostname: "127.0.0.1", port });
      conns.push(c);
      // Not awaited: the server may stop reading, and nothing is read back.
      (async () => {
        for (let off = 0; off < burst.length;) off += await c.write(burst.subarray(off));
      })().catch(() => {});
    }
    // What the server makes of it, while the connections stay open (deadline: 10 s).
    await new Promise((r) => setTimeout(r, 3000));
  } finally {
    for (const c of conns) {
      try {
        c.close();
      } catch {
        // closed by the server
      }
    }
  }
}

/** Peak RSS growth of `pid` while `attack` runs. */
async function peakGrowth(pid: number, attack: () => Promise<void>): Promise<number> {
  const before = rssOf(pid);
  resetPeakRss(pid);
  await attack();
  return peakRssOf(pid) - before;
}

Deno.test("the operations endpoint parses one request per connection: pipelined requests never read hold bounded memory", async () => {
  const child = await spawnMemoryChild(
    new URL("../helpers/http_process_main.ts", import.meta.url).pathname,
    [JSON.stringify({})],
    "http endpoint",
    5000,
  );
  try {
    const { port } = JSON.parse(child.ready);
    const grew = await peakGrowth(child.child.pid, () => pipeline(port, "/healthz"));
    // Before: ~2,400 requests and answers per socket were made and kept: these 100 sockets of
    // 66 KB, peak RSS +277 MiB (200 against deno task start: +966 MiB). Now +18 MiB.
    assert.ok(grew < 128 * MIB, `peak RSS grew by ${mib(grew)} for ${SOCKETS} sockets`);
    const r = await fetch(`http://127.0.0.1:${port}/healthz`);
    assert.equal(r.status, 200);
    assert.equal(r.headers.get("connection"), "close");
    await r.body?.cancel();
  } finally {
    await child.stop();
  }
});

Deno.test("the WebSocket port answers one plain request per connection: pipelined requests never read hold bounded memory", async () => {
  await using broker = await startBrokerProcess({ general: { websocket: true } });
  const port = broker.ports.ws;
  const grew = await peakGrowth(broker.pid, () => pipeline(port, "/mqtt"));
  // Before: these 100 sockets of 66 KB, peak RSS +355 MiB; 200 x 600 KB, +2.8 GiB. Now +15 MiB.
  assert.ok(grew < 128 * MIB, `peak RSS grew by ${mib(grew)} for ${SOCKETS} sockets`);
  const r = await fetch(`http://127.0.0.1:${port}/mqtt`);
  assert.equal(r.status, 426);
  await r.body?.cancel();
});

Deno.test("the end of a request head is found however the reads cut it", () => {
  const head = new TextEncoder().encode("GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /next");
  const end = "GET / HTTP/1.1\r\nHost: x\r\n\r\n".length;
  for (let cut = 0; cut <= head.length; cut++) {
    const first = headEnd(head.subarray(0, cut), 0);
    if (cut >= end) {
      assert.equal(first.end, end, `cut at ${cut}`);
      continue;
    }
    assert.equal(first.end, -1, `cut at ${cut}`);
    const second = headEnd(head.subarray(cut), first.matched);
    assert.equal(second.end, end - cut, `cut at ${cut}`);
  }
  // "\r\r\n\r\n" ends a head too; lone line feeds do not.
  assert.equal(headEnd(new TextEncoder().encode("a\r\r\n\r\n"), 0).end, 6);
  assert.equal(headEnd(new TextEncoder().encode("a\n\nb\r\n\nc"), 0).end, -1);
});
