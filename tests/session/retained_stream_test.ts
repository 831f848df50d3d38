/**
 * Retained messages are delivered, not dropped: a new subscriber on `#` over 100k retained
 * messages receives every one of them, at QoS 0 and at QoS 1, streamed as its connection and
 * in-flight window drain, while other clients keep being served; a subscription that matches
 * more than limits.max_retained_per_subscription gets exactly that many, and the cut-off is
 * counted.
 */
import assert from "node:assert/strict";
import type { Config, DeepPartial } from "../../mod.ts";
import {
  connectClient,
  delay,
  endClient,
  RawClient,
  startBroker,
  type TestBroker,
} from "../helpers/broker.ts";
import { bystanders, frame, str } from "../helpers/wire.ts";

const RETAINED = 100_000;

/**
 * Stores `n` retained messages `r/<i>` (payload `<i>`) through one raw connection: pipelined
 * QoS 1 publishes (their PUBACKs read and ignored), then waits until the broker holds them all.
 */
async function fillRetained(b: TestBroker, n: number): Promise<void> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: b.port });
  try {
    const connect = frame(0x10, [...str("MQTT"), 4, 0x02, 0, 60, ...str("filler")]);
    const parts: Uint8Array[] = [connect];
    let size = connect.length;
    for (let i = 0; i < n; i++) {
      const pid = (i % 65535) + 1;
      const p = frame(0x33, [
        ...str(`r/${i}`),
        pid >> 8,
        pid & 0xff,
        ...new TextEncoder().encode(String(i)),
      ]);
      parts.push(p);
      size += p.length;
    }
    const all = new Uint8Array(size);
    let off = 0;
    for (const p of parts) {
      all.set(p, off);
      off += p.length;
    }
    const acks = (async () => {
      const buf = new Uint8Array(65536);
      try {
        while (await conn.read(buf) !== null);
      } catch { /* closed below */ }
    })();
    for (let w = 0; w < all.length;) w += await conn.write(all.subarray(w));
    const deadline = Date.now() + 20_000;
    while (b.broker.router.retained.size < n) {
      if (Date.now() > deadline) throw new Error(`only ${b.broker.router.retained.size} stored`);
      await delay(20);
    }
    conn.close();
    await acks;
  } catch (e) {
    conn.close();
    throw e;
  }
}

/** Waits until `count()` reaches `n` or stops growing for `stallMs`; returns the final count. */
async function settle(count: () => number, n: number, stallMs = 3000): Promise<number> {
  let last = -1;
  let since = Date.now();
  for (;;) {
    const c = count();
    if (c >= n) return c;
    if (c !== last) {
      last = c;
      since = Date.now();
    } else if (Date.now() - since > stallMs) return c;
    await delay(20);
  }
}

async function broker(limits: DeepPartial<Config["limits"]> = {}): Promise<TestBroker> {
  return await startBroker({ limits: { max_queued_messages: 1000, ...limits } });
}

/**
 * A QoS 0 subscriber on a raw socket that counts the retained PUBLISH packets it reads; it reads
 * slowly (a 16 KiB read every 10 ms) until `fast()` is called, so the stream lasts a while.
 */
async function slowReader(port: number, filter: string) {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  await conn.write(frame(0x10, [...str("MQTT"), 4, 0x02, 0, 60, ...str("slow-reader")]));
  await conn.write(frame(0x82, [0, 1, ...str(filter), 0]));
  let slow = true;
  let retained = 0;
  let pending = new Uint8Array(0);
  const done = (async () => {
    const buf = new Uint8Array(16 * 1024);
    for (;;) {
      if (slow) await delay(10);
      const n = await conn.read(buf).catch(() => null);
      if (n === null) return;
      const data = new Uint8Array(pending.length + n);
      data.set(pending);
      data.set(buf.subarray(0, n), pending.length);
      let p = 0;
      for (;;) {
        // Fixed header byte, then the Remaining Length as a Variable Byte Integer.
        let len = 0;
        let mul = 1;
        let q = p + 1;
        for (; q < data.length; q++) {
          len += (data[q] & 0x7f) * mul;
          mul *= 128;
          if ((data[q] & 0x80) === 0) break;
        }
        if (q >= data.length || q + 1 + len > data.length) break;
        if ((data[p] & 0xf1) === 0x31) retained++;
        p = q + 1 + len;
      }
      pending = data.slice(p);
    }
  })();
  return {
    get count(): number {
      return retained;
    },
    fast(): void {
      slow = false;
    },
    async close(): Promise<void> {
      conn.close();
      await done;
    },
  };
}

Deno.test(`a new # subscriber at QoS 0 receives all ${RETAINED} retained messages, paced by its reading, while others are served`, async () => {
  await using b = await broker();
  await fillRetained(b, RETAINED);
  await using others = await bystanders(b.port);
  const sub = await slowReader(b.port, "r/#");
  try {
    await delay(200);
    await others.assertServing();
    const midway = sub.count;
    sub.fast();
    const got = await settle(() => sub.count, RETAINED);
    console.log(`QoS 0: ${got} of ${RETAINED} retained (bystander served after ${midway})`);
    assert.equal(got, RETAINED, `received ${got} of ${RETAINED} retained messages`);
    assert.ok(midway < RETAINED, "the bystander was served while the stream went on");
    assert.equal(b.broker.metrics.droppedQos0, 0);
    await others.assertServing();
  } finally {
    await sub.close();
  }
});

Deno.test(`a new # subscriber at QoS 1 receives all ${RETAINED} retained messages while others are served`, async () => {
  await using b = await broker();
  await fillRetained(b, RETAINED);
  await using others = await bystanders(b.port);
  const sub = await connectClient(b.port, { clientId: "all-qos1" });
  try {
    const topics = new Set<string>();
    let retainFlags = 0;
    sub.on("message", (topic, _payload, packet) => {
      topics.add(topic);
      if (packet.retain && packet.qos === 1) retainFlags++;
    });
    const started = performance.now();
    await sub.subscribeAsync("r/#", { qos: 1 });
    // The in-flight window (32) paces the stream: the bystander is served in the middle of it.
    await others.assertServing();
    const midway = topics.size;
    const got = await settle(() => topics.size, RETAINED);
    const ms = performance.now() - started;
    console.log(
      `QoS 1: ${got} of ${RETAINED} retained in ${ms.toFixed(0)} ms ` +
        `(bystander served after ${midway})`,
    );
    assert.equal(got, RETAINED, `received ${got} of ${RETAINED} retained messages`);
    assert.equal(retainFlags, RETAINED, "every one at QoS 1 with RETAIN=1");
    assert.ok(midway < RETAINED, "the bystander was served while the stream went on");
    assert.equal(b.broker.metrics.droppedQueueFull, 0);
    await others.assertServing();
  } finally {
    await endClient(sub);
  }
});

Deno.test("a subscription matching more than max_retained_per_subscription gets exactly the cap, and the cut-off is counted", async () => {
  const cap = 25_000;
  await using b = await broker({ max_retained_per_subscription: cap });
  await fillRetained(b, 40_000);
  const sub = await connectClient(b.port, { clientId: "capped" });
  try {
    let n = 0;
    sub.on("message", () => n++);
    await sub.subscribeAsync("r/#", { qos: 1 });
    const got = await settle(() => n, cap + 1, 1500);
    assert.equal(got, cap);
    assert.equal(b.broker.metrics.retainedCutoffs, 1);
    // Each subscription has its own cap and its own count.
    let m = 0;
    const other = await connectClient(b.port, { clientId: "narrow" });
    other.on("message", () => m++);
    await other.subscribeAsync("r/+", { qos: 0 });
    assert.equal(await settle(() => m, cap + 1, 1500), cap);
    assert.equal(b.broker.metrics.retainedCutoffs, 2);
    await endClient(other);
  } finally {
    await endClient(sub);
  }
});

Deno.test("unsubscribing stops a retained stream that is still going", async () => {
  await using b = await broker();
  await fillRetained(b, 40_000);
  const sub = await connectClient(b.port, { clientId: "quitter" });
  try {
    let n = 0;
    let unsubscribed: Promise<unknown> | null = null;
    sub.on("message", () => {
      if (++n === 100) unsubscribed = sub.unsubscribeAsync("r/#");
    });
    await sub.subscribeAsync("r/#", { qos: 1 });
    const got = await settle(() => n, 40_000, 500);
    await unsubscribed;
    // What was in flight (the window of 32) and behind the UNSUBSCRIBE still arrives; no more.
    assert.ok(got < 500, `received ${got} after unsubscribing at 100`);
  } finally {
    await endClient(sub);
  }
});

Deno.test("a persistent session's retained stream goes on when its client reconnects", async () => {
  const total = 5000;
  await using b = await broker();
  await fillRetained(b, total);
  const topics = new Set<string>();
  {
    // A raw client acknowledges 100 messages, then its connection is lost.
    await using first = await RawClient.connect(b.port);
    await first.handshake("comeback", 5, {
      clean: false,
      properties: { sessionExpiryInterval: 60 },
    });
    await first.sendPacket({
      cmd: "subscribe",
      messageId: 1,
      subscriptions: [{ topic: "r/#", qos: 1 }],
    });
    await first.expect("suback");
    for (let i = 0; i < 100; i++) {
      const p = await first.expect("publish") as { topic: string; messageId: number };
      topics.add(p.topic);
      await first.sendPacket({ cmd: "puback", messageId: p.messageId });
    }
  }
  // The next connection gets what was in flight again (DUP), then the rest of the stream.
  await using second = await RawClient.connect(b.port);
  const ack = await second.handshake("comeback", 5, {
    clean: false,
    properties: { sessionExpiryInterval: 60 },
  });
  assert.equal(ack.sessionPresent, true);
  let dups = 0;
  while (topics.size < total) {
    const p = await second.expect("publish") as { topic: string; messageId: number; dup: boolean };
    if (p.dup) dups++;
    topics.add(p.topic);
    await second.sendPacket({ cmd: "puback", messageId: p.messageId });
  }
  assert.equal(dups, 32, "the in-flight window was sent again");
});
