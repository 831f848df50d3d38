/**
 * What a connection to the operations endpoint may hold: a request must arrive within the
 * deadline (from the connection, or from the previous response), and only so many connections
 * are open at once. Probes keep getting answers meanwhile.
 */
import assert from "node:assert/strict";
import { startHttp } from "../../src/ops/http.ts";
import { closeQuietly } from "../helpers/broker.ts";

/** An endpoint with a short deadline and a small connection bound, ready and without metrics. */
function endpoint(requestDeadlineMs: number, maxConnections = 1024) {
  return startHttp({
    hostname: "127.0.0.1",
    port: 0,
    problems: () => [],
    metrics: () => Promise.resolve({ body: "", contentType: "text/plain" }),
    requestDeadlineMs,
    maxConnections,
  });
}

/**
 * Milliseconds until the server ends `conn` (reading and discarding what it sends); after 5 s
 * the test gives up, closes it and reports the 5 s.
 */
async function endsAfter(conn: Deno.Conn, since: number): Promise<number> {
  const buf = new Uint8Array(4096);
  const read = (async () => {
    try {
      while ((await conn.read(buf)) !== null) { /* a response, then the end */ }
    } catch {
      // reset counts as the end
    }
  })();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<void>((r) => timer = setTimeout(r, 5000));
  await Promise.race([read, late]);
  clearTimeout(timer);
  const elapsed = Date.now() - since;
  closeQuietly(conn);
  await read;
  return elapsed;
}

async function healthz(port: number): Promise<number> {
  const r = await fetch(`http://127.0.0.1:${port}/healthz`, { signal: AbortSignal.timeout(2000) });
  await r.body?.cancel();
  return r.status;
}

Deno.test("a connection that sends no request, or its headers a byte at a time, is closed at the deadline", async () => {
  const http = await endpoint(1000);
  const silent = await Deno.connect({ hostname: "127.0.0.1", port: http.port });
  const slow = await Deno.connect({ hostname: "127.0.0.1", port: http.port });
  const started = Date.now();
  try {
    const silentEnd = endsAfter(silent, started);
    const slowEnd = endsAfter(slow, started);
    for (const byte of new TextEncoder().encode("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: 1")) {
      if (Date.now() - started > 4000) break;
      if (!await slow.write(Uint8Array.of(byte)).then(() => true, () => false)) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    const [a, c] = await Promise.all([silentEnd, slowEnd]);
    assert.ok(a >= 900 && a < 3000, `the silent connection ended after ${a} ms`);
    assert.ok(c >= 900 && c < 3000, `the slow connection ended after ${c} ms`);
    assert.equal(await healthz(http.port), 200);
  } finally {
    closeQuietly(silent);
    closeQuietly(slow);
    await http.close();
  }
});

Deno.test("a connection is closed once its request is answered: one request per connection", async () => {
  const http = await endpoint(5000);
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: http.port });
  try {
    await conn.write(new TextEncoder().encode("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"));
    const buf = new Uint8Array(4096);
    const n = await conn.read(buf);
    const answer = new TextDecoder().decode(buf.subarray(0, n ?? 0));
    assert.match(answer, /^HTTP\/1\.1 200/);
    assert.match(answer, /\r\nconnection: close\r\n/i);
    const ended = await endsAfter(conn, Date.now());
    // Before, an idle keep-alive connection waited out the deadline (here 5 s).
    assert.ok(ended < 1000, `the connection stayed ${ended} ms after its answer`);
  } finally {
    closeQuietly(conn);
    await http.close();
  }
});

Deno.test("a peer holding every connection does not keep probes out: the oldest connection waiting for a request makes room", async () => {
  const http = await endpoint(5000, 8);
  const held: Deno.Conn[] = [];
  try {
    // Silent, and one trickling its headers: all wait for a request.
    for (let i = 0; i < 8; i++) {
      held.push(await Deno.connect({ hostname: "127.0.0.1", port: http.port }));
    }
    await held[7].write(new TextEncoder().encode("GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: 1"));
    await new Promise((r) => setTimeout(r, 100));
    const oldestEnds = endsAfter(held[0], Date.now());
    // Before, a connection over the bound was closed at once: every probe failed until the
    // peer's connections reached their deadline (and a kubelet restarts a pod after three).
    for (let i = 0; i < 3; i++) {
      held.push(await Deno.connect({ hostname: "127.0.0.1", port: http.port }));
      assert.equal(await healthz(http.port), 200);
    }
    assert.ok((await oldestEnds) < 1000, "the oldest waiting connection was not closed");
    // The newest of the peer's connections are still open: they wait their deadline.
    const buf = new Uint8Array(16);
    const alive = await Promise.race([
      held[held.length - 1].read(buf).then(() => false, () => false),
      new Promise<boolean>((r) => setTimeout(() => r(true), 300)),
    ]);
    assert.ok(alive, "the newest connection was closed");
  } finally {
    for (const c of held) closeQuietly(c);
    await http.close();
  }
});

Deno.test("when every connection is being answered, one over the bound is closed at once", async () => {
  const http = await startHttp({
    hostname: "127.0.0.1",
    port: 0,
    problems: () => [],
    // Answers that never come: every connection that asked is being answered.
    metrics: () => new Promise(() => {}),
    requestDeadlineMs: 5000,
    maxConnections: 4,
  });
  const held: Deno.Conn[] = [];
  try {
    for (let i = 0; i < 4; i++) {
      const c = await Deno.connect({ hostname: "127.0.0.1", port: http.port });
      await c.write(new TextEncoder().encode("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"));
      held.push(c);
    }
    await new Promise((r) => setTimeout(r, 100));
    const extra = await Deno.connect({ hostname: "127.0.0.1", port: http.port });
    const ended = await endsAfter(extra, Date.now());
    assert.ok(ended < 1000, `a connection over the bound stayed ${ended} ms`);
  } finally {
    for (const c of held) closeQuietly(c);
    await http.close();
  }
});

Deno.test("HEAD gets the headers without a body; other methods 405 with Allow; query strings are ignored", async () => {
  const http = await endpoint(5000);
  try {
    const head = await fetch(`http://127.0.0.1:${http.port}/healthz`, { method: "HEAD" });
    assert.equal(head.status, 200);
    assert.equal(await head.text(), "");
    const post = await fetch(`http://127.0.0.1:${http.port}/healthz`, {
      method: "POST",
      body: "x",
    });
    assert.equal(post.status, 405);
    assert.equal(post.headers.get("allow"), "GET, HEAD");
    await post.body?.cancel();
    const q = await fetch(`http://127.0.0.1:${http.port}/readyz?verbose=1`);
    assert.equal(q.status, 200);
    assert.deepEqual(await q.json(), { status: "ready" });
  } finally {
    await http.close();
  }
});

Deno.test("a client that never reads a large response is closed at the deadline", async () => {
  // Larger than what the kernel buffers on loopback, so the response cannot go out unread.
  const body = "x".repeat(16 << 20);
  const http = await startHttp({
    hostname: "127.0.0.1",
    port: 0,
    problems: () => [],
    metrics: () => Promise.resolve({ body, contentType: "text/plain" }),
    requestDeadlineMs: 1000,
  });
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: http.port });
  try {
    await conn.write(new TextEncoder().encode("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"));
    await new Promise((r) => setTimeout(r, 2500));
    // What arrives now is what the kernel held; the server's end comes before the whole body.
    let received = 0;
    const buf = new Uint8Array(1 << 20);
    try {
      // Stops at the body's size: unbounded, the keep-alive connection would stay open after it.
      for (let n; received < body.length && (n = await conn.read(buf)) !== null;) received += n;
    } catch {
      // reset counts as the end
    }
    assert.ok(received < body.length, `the whole ${received}-byte response was kept for 2.5 s`);
  } finally {
    closeQuietly(conn);
    await http.close();
  }
});

Deno.test("pipelined requests are not all answered and buffered: the connection is cut", async () => {
  let answered = 0;
  const http = await startHttp({
    hostname: "127.0.0.1",
    port: 0,
    problems: () => [],
    metrics: () => {
      answered++;
      return Promise.resolve({ body: "m".repeat(64 * 1024), contentType: "text/plain" });
    },
    requestDeadlineMs: 1000,
  });
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: http.port });
  try {
    const burst = new TextEncoder().encode("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(500));
    for (let i = 0; i < 4; i++) {
      if (!await conn.write(burst).then(() => true, () => false)) break;
    }
    const ended = await endsAfter(conn, Date.now());
    // Unbounded, every one of the 2,000 requests was answered (128 MB of bodies held).
    assert.ok(answered < 200, `${answered} pipelined requests answered`);
    assert.ok(ended < 4000, `the connection stayed ${ended} ms`);
  } finally {
    closeQuietly(conn);
    await http.close();
  }
});
