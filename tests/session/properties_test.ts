/**
 * MQTT 5 message properties end to end: Message Expiry Interval (forwarded,
 * decremented, enforced on queued and retained messages), Topic Alias from the
 * client, the properties forwarded unchanged (and their absence for 3.1.1),
 * `$` topics, and the Payload Format Indicator check.
 */
import assert from "node:assert/strict";
import mqttPacket from "mqtt-packet";
import {
  closeQuietly,
  connectClient,
  delay,
  expectSilence,
  type Packet,
  RawClient,
  startBroker,
  subscriber,
} from "../helpers/broker.ts";
import { concatBytes, varint } from "../helpers/wire.ts";

type Fields = Packet & Record<string, unknown>;

const enc = new TextEncoder();
const dec = new TextDecoder();

// ---- byte-level helpers: a PUBLISH built and read by hand, to see property order

/** A length-prefixed string or binary field. */
function field(v: string | number[]): Uint8Array {
  const bytes = typeof v === "string" ? enc.encode(v) : new Uint8Array(v);
  return concatBytes([[bytes.length >> 8, bytes.length & 0xff], bytes]);
}

/** One property: identifier and its encoded value. */
type Prop = [id: number, value: Uint8Array];

/** A v5 PUBLISH (no DUP, no retain) with exactly these properties, in this order. */
function publishBytes(
  topic: string,
  qos: 0 | 1 | 2,
  packetId: number,
  props: Prop[],
  payload: Uint8Array,
): Uint8Array {
  const propBytes = concatBytes(props.map(([id, v]) => concatBytes([[id], v])));
  const body = concatBytes([
    field(topic),
    qos > 0 ? [packetId >> 8, packetId & 0xff] : [],
    varint(propBytes.length),
    propBytes,
    payload,
  ]);
  return concatBytes([[0x30 | (qos << 1)], varint(body.length), body]);
}

function readVarint(b: Uint8Array, i: number): [value: number, next: number] {
  let v = 0;
  let mul = 1;
  for (;;) {
    const x = b[i++];
    v += (x & 0x7f) * mul;
    if ((x & 0x80) === 0) return [v, i];
    mul *= 128;
  }
}

/** Splits a received v5 PUBLISH into topic, properties in wire order, and payload. */
function parsePublish(p: Uint8Array): { topic: string; props: Prop[]; payload: Uint8Array } {
  assert.equal(p[0] >> 4, 3, "not a PUBLISH");
  const qos = (p[0] >> 1) & 3;
  let [, i] = readVarint(p, 1);
  const tlen = (p[i] << 8) | p[i + 1];
  const topic = dec.decode(p.subarray(i + 2, i + 2 + tlen));
  i += 2 + tlen + (qos > 0 ? 2 : 0);
  const [plen, start] = readVarint(p, i);
  const end = start + plen;
  const props: Prop[] = [];
  const u16 = (at: number) => (p[at] << 8) | p[at + 1];
  i = start;
  while (i < end) {
    const id = p[i++];
    let next: number;
    if (id === 0x01) next = i + 1;
    else if (id === 0x02) next = i + 4;
    else if (id === 0x23) next = i + 2;
    else if (id === 0x0b) next = readVarint(p, i)[1];
    else if (id === 0x26) next = i + 2 + u16(i) + 2 + u16(i + 2 + u16(i));
    else next = i + 2 + u16(i); // content type, response topic, correlation data
    props.push([id, p.slice(i, next)]);
    i = next;
  }
  return { topic, props, payload: p.slice(end) };
}

/** A raw v5 client that hands back each packet as its exact bytes. */
class ByteClient {
  private buf: Uint8Array = new Uint8Array(0);
  private wake: (() => void) | null = null;
  private ended = false;
  private readonly done: Promise<void>;

  private constructor(private readonly conn: Deno.TcpConn) {
    this.done = this.readLoop();
  }

  /** Connects, completes CONNECT/CONNACK and subscribes to `filter` at QoS 1. */
  static async subscriber(port: number, clientId: string, filter: string): Promise<ByteClient> {
    const c = new ByteClient(await Deno.connect({ hostname: "127.0.0.1", port }));
    const gen = (p: Record<string, unknown>) =>
      mqttPacket.generate(p as unknown as Packet, { protocolVersion: 5 });
    await c.write(gen({
      cmd: "connect",
      protocolId: "MQTT",
      protocolVersion: 5,
      clientId,
      clean: true,
      keepalive: 60,
    }));
    assert.equal((await c.packet())[0], 0x20, "expected CONNACK");
    await c.write(gen({
      cmd: "subscribe",
      messageId: 1,
      subscriptions: [{ topic: filter, qos: 1, nl: false, rap: false, rh: 0 }],
    }));
    assert.equal((await c.packet())[0], 0x90, "expected SUBACK");
    return c;
  }

  private async readLoop(): Promise<void> {
    const chunk = new Uint8Array(65536);
    try {
      for (;;) {
        const n = await this.conn.read(chunk);
        if (n === null) break;
        this.buf = concatBytes([this.buf, chunk.subarray(0, n)]);
        this.wake?.();
      }
    } catch {
      // a reset counts as closed
    }
    this.ended = true;
    this.wake?.();
  }

  async write(b: Uint8Array): Promise<void> {
    let off = 0;
    while (off < b.length) off += await this.conn.write(b.subarray(off));
  }

  /** The next whole packet's bytes. */
  async packet(timeoutMs = 3000): Promise<Uint8Array> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const b = this.buf;
      if (b.length >= 2) {
        let i = 1;
        while (i < b.length && (b[i] & 0x80) !== 0) i++;
        if (i < b.length) {
          const [len, body] = readVarint(b, 1);
          if (b.length >= body + len) {
            this.buf = b.slice(body + len);
            return b.slice(0, body + len);
          }
        }
      }
      if (this.ended) throw new Error("connection closed");
      const left = deadline - Date.now();
      if (left <= 0) throw new Error("timed out waiting for a packet");
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.wake = () => {
          clearTimeout(t);
          this.wake = null;
          resolve();
        };
      });
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    closeQuietly(this.conn);
    await this.done;
  }
}

// ---- packet-level helpers

async function subscribe(
  c: RawClient,
  filter: string,
  qos: 0 | 1 | 2,
  version: 4 | 5 = 5,
): Promise<void> {
  const options = version === 5 ? { nl: false, rap: false, rh: 0 } : {};
  await c.sendPacket({
    cmd: "subscribe",
    messageId: 1,
    subscriptions: [{ topic: filter, qos, ...options }],
  }, version);
  assert.deepEqual((await c.expect("suback")).granted, [qos]);
}

function props(p: Fields): Record<string, unknown> {
  return (p.properties ?? {}) as Record<string, unknown>;
}

function text(p: Fields): string {
  return dec.decode(p.payload as Uint8Array);
}

const PERSISTENT = { properties: { sessionExpiryInterval: 60 } };
const RESUME = { clean: false, properties: { sessionExpiryInterval: 60 } };

/** Subscribes `clientId` with a persistent session to `filter`, then disconnects it. */
async function awaySubscriber(port: number, clientId: string, filter: string): Promise<void> {
  await using c = await RawClient.connect(port, 5);
  await c.handshake(clientId, 5, PERSISTENT);
  await subscribe(c, filter, 1);
  await c.sendPacket({ cmd: "disconnect" }, 5);
  await c.expectClosed();
}

// ---- Message Expiry Interval

Deno.test("Message Expiry Interval is forwarded, reduced by the time the message waited", async () => {
  // [MQTT-3.3.2-6] the forwarded value is the received one minus the waiting time.
  await using b = await startBroker();
  await awaySubscriber(b.port, "away", "exp/#");
  await using online = await RawClient.connect(b.port, 5);
  await online.handshake("online", 5);
  await subscribe(online, "exp/#", 1);

  await using pub = await connectClient(b.port, { clientId: "pub" });
  await pub.publishAsync("exp/a", "ten", { qos: 1, properties: { messageExpiryInterval: 10 } });
  const now = props(await online.expect("publish")).messageExpiryInterval as number;
  assert.ok(now >= 9 && now <= 10, `online subscriber got ${now}`);

  await delay(2000);
  await using back = await RawClient.connect(b.port, 5);
  await back.handshake("away", 5, RESUME);
  const p = await back.expect("publish");
  assert.equal(text(p), "ten");
  const left = props(p).messageExpiryInterval as number;
  assert.ok(left >= 5 && left <= 8, `after ~2 s away the expiry was ${left}`);
});

Deno.test("a queued message whose expiry passed is not delivered, the others are", async () => {
  // [MQTT-3.3.2-5] an expired message is deleted for subscribers it has not reached.
  await using b = await startBroker();
  await awaySubscriber(b.port, "away", "exp/#");
  await using pub = await connectClient(b.port, { clientId: "pub" });
  await pub.publishAsync("exp/a", "short", { qos: 1, properties: { messageExpiryInterval: 1 } });
  await pub.publishAsync("exp/a", "long", { qos: 1, properties: { messageExpiryInterval: 60 } });
  await pub.publishAsync("exp/a", "forever", { qos: 1 });

  await delay(1300);
  await using back = await RawClient.connect(b.port, 5);
  await back.handshake("away", 5, RESUME);
  const long = await back.expect("publish");
  assert.equal(text(long), "long");
  assert.ok((props(long).messageExpiryInterval as number) <= 59);
  const forever = await back.expect("publish");
  assert.equal(text(forever), "forever");
  assert.equal(props(forever).messageExpiryInterval, undefined);
  await expectSilence(back);
});

Deno.test("a retained message is no longer sent to new subscribers once it has expired", async () => {
  await using b = await startBroker();
  await using pub = await connectClient(b.port, { clientId: "pub" });
  await pub.publishAsync("ret/short", "short", {
    qos: 1,
    retain: true,
    properties: { messageExpiryInterval: 1 },
  });
  await pub.publishAsync("ret/keep", "keep", { qos: 1, retain: true });

  // Before expiry both are retained, the expiring one with its remaining interval.
  await using early = await RawClient.connect(b.port, 5);
  await early.handshake("early", 5);
  await subscribe(early, "ret/#", 1);
  const got = [await early.expect("publish"), await early.expect("publish")];
  const short = got.find((p) => p.topic === "ret/short");
  assert.ok(short, "expiring retained message missing before its expiry");
  assert.equal(short.retain, true);
  assert.equal(props(short).messageExpiryInterval, 1);

  await delay(1200);
  await using late = await RawClient.connect(b.port, 5);
  await late.handshake("late", 5);
  await subscribe(late, "ret/#", 1);
  const keep = await late.expect("publish");
  assert.equal(keep.topic, "ret/keep");
  await expectSilence(late);
});

// ---- Topic Alias

Deno.test("Topic Alias from the client: subscribers get the full topic name", async () => {
  await using b = await startBroker();
  await using sub = await RawClient.connect(b.port, 5);
  await sub.handshake("sub", 5);
  await subscribe(sub, "alias/#", 1);
  await using old = await RawClient.connect(b.port, 4);
  await old.handshake("old", 4);
  await subscribe(old, "alias/#", 0, 4);

  await using pub = await RawClient.connect(b.port, 5);
  const connack = await pub.handshake("pub", 5);
  assert.equal(props(connack).topicAliasMaximum, 10);
  const send = async (topic: string, payload: string, id: number) => {
    await pub.sendPacket({
      cmd: "publish",
      topic,
      payload,
      qos: 1,
      messageId: id,
      properties: { topicAlias: 3 },
    }, 5);
    assert.equal((await pub.expect("puback")).reasonCode ?? 0, 0);
  };
  await send("alias/one", "set", 1);
  await send("", "use", 2);
  // An alias can be pointed at another topic.
  await send("alias/two", "remap", 3);
  await send("", "use again", 4);

  const want = [
    ["alias/one", "set"],
    ["alias/one", "use"],
    ["alias/two", "remap"],
    ["alias/two", "use again"],
  ];
  for (const [topic, payload] of want) {
    const p = await sub.expect("publish");
    assert.deepEqual([p.topic, text(p)], [topic, payload]);
    // The subscriber allowed no aliases, so none is sent to it.
    assert.equal(props(p).topicAlias, undefined);
    const q = await old.expect("publish");
    assert.deepEqual([q.topic, text(q)], [topic, payload]);
  }
});

Deno.test("topic aliases do not carry over to a new connection", async () => {
  // [MQTT-3.3.2-7] alias mappings live and die with the network connection.
  await using b = await startBroker();
  const aliased = (topic: string) => ({
    cmd: "publish",
    topic,
    payload: "x",
    qos: 0,
    properties: { topicAlias: 1 },
  });
  {
    await using first = await RawClient.connect(b.port, 5);
    await first.handshake("same", 5, PERSISTENT);
    await first.sendPacket(aliased("alias/a"), 5);
    await first.sendPacket({ cmd: "disconnect" }, 5);
    await first.expectClosed();
  }
  await using second = await RawClient.connect(b.port, 5);
  await second.handshake("same", 5, RESUME);
  await second.sendPacket(aliased(""), 5);
  const d = await second.expect("disconnect");
  assert.equal(d.reasonCode, 0x82);
  await second.expectClosed();
});

for (const alias of [0, 11]) {
  Deno.test(`Topic Alias ${alias} (maximum 10) is refused with DISCONNECT 0x94`, async () => {
    // [MQTT-3.3.2-8] 0 is never valid; [MQTT-3.3.2-9] nor is a value above the maximum.
    await using b = await startBroker();
    await using bystander = await subscriber(b.port, "alias/#", 1, { clientId: "bystander" });

    await using c = await RawClient.connect(b.port, 5);
    await c.handshake("bad", 5);
    await c.sendPacket({
      cmd: "publish",
      topic: "alias/x",
      payload: "bad",
      qos: 1,
      messageId: 1,
      properties: { topicAlias: alias },
    }, 5);
    const d = await c.expect("disconnect");
    assert.equal(d.reasonCode, 0x94);
    await c.expectClosed();

    await bystander.publishAsync("alias/y", "fine", { qos: 1 });
    assert.equal((await bystander.inbox.next()).payload, "fine");
  });
}

// ---- properties forwarded as they are

/** The MQTT 5 properties the broker must pass through unchanged, in a chosen order. */
const FORWARDED: Prop[] = [
  [0x01, new Uint8Array([1])],
  [0x26, concatBytes([field("k"), field("1")])],
  [0x03, field("text/plain; charset=utf-8")],
  [0x26, concatBytes([field("z"), field("2")])],
  [0x08, field("replies/42")],
  [0x26, concatBytes([field("k"), field("3")])],
  [0x09, field([0, 1, 2, 0xfe, 0xff])],
  [0x26, concatBytes([field("k"), field("1")])],
];

Deno.test("Response Topic, Correlation Data, Content Type, Payload Format and User Properties arrive unchanged", async () => {
  // [MQTT-3.3.2-4] payload format, [MQTT-3.3.2-15] response topic, [MQTT-3.3.2-16]
  // correlation data, [MQTT-3.3.2-17] user properties, [MQTT-3.3.2-18] in their
  // order, [MQTT-3.3.2-20] content type.
  await using b = await startBroker();
  await using bytes = await ByteClient.subscriber(b.port, "bytes", "props/#");
  await using js = await subscriber(b.port, "props/#", 1, { clientId: "js" });

  await using pub = await RawClient.connect(b.port, 5);
  await pub.handshake("pub", 5);
  await pub.send(publishBytes("props/a", 1, 1, FORWARDED, enc.encode("héllo")));
  assert.equal((await pub.expect("puback")).reasonCode ?? 0, 0);

  const raw = parsePublish(await bytes.packet());
  assert.equal(raw.topic, "props/a");
  assert.equal(dec.decode(raw.payload), "héllo");
  const userProps = (list: Prop[]) => list.filter(([id]) => id === 0x26);
  assert.deepEqual(userProps(raw.props), userProps(FORWARDED));
  const others = (list: Prop[]) =>
    new Map(list.filter(([id]) => id !== 0x26 && id !== 0x02 && id !== 0x0b));
  assert.deepEqual(others(raw.props), others(FORWARDED));

  // The same seen through an independent decoder.
  const m = await js.inbox.next();
  const p = m.packet.properties!;
  assert.equal(m.payload, "héllo");
  assert.equal(p.payloadFormatIndicator, true);
  assert.equal(p.contentType, "text/plain; charset=utf-8");
  assert.equal(p.responseTopic, "replies/42");
  assert.deepEqual([...(p.correlationData as Uint8Array)], [0, 1, 2, 0xfe, 0xff]);
  assert.deepEqual({ ...p.userProperties }, { k: ["1", "3", "1"], z: "2" });
});

Deno.test("a 3.1.1 subscriber gets the same message without any MQTT 5 properties", async () => {
  await using b = await startBroker();
  await using js = await subscriber(b.port, "props/#", 1, {
    clientId: "js311",
    protocolVersion: 4,
  });
  await using raw = await RawClient.connect(b.port, 4);
  await raw.handshake("raw311", 4);
  await subscribe(raw, "props/#", 1, 4);

  await using pub = await RawClient.connect(b.port, 5);
  await pub.handshake("pub", 5);
  const withExpiry: Prop[] = [[0x02, new Uint8Array([0, 0, 0, 60])], ...FORWARDED];
  await pub.send(publishBytes("props/a", 1, 1, withExpiry, enc.encode("héllo")));
  await pub.expect("puback");

  // A 3.1.1 PUBLISH has no property block: any property bytes would show up in the payload.
  const p = await raw.expect("publish");
  assert.equal(p.topic, "props/a");
  assert.equal(text(p), "héllo");
  const m = await js.inbox.next();
  assert.equal(m.payload, "héllo");
  assert.equal(m.packet.properties, undefined);
});

// ---- $ topics and payload format

Deno.test("clients cannot publish to $ topics: 0x87 for QoS 1 and 2, QoS 0 dropped, nothing delivered", async () => {
  await using b = await startBroker();
  await using sub = await RawClient.connect(b.port, 5);
  await sub.handshake("sys-watcher", 5);
  await subscribe(sub, "$SYS/#", 1);
  await subscribe(sub, "ok/#", 1);

  await using pub = await RawClient.connect(b.port, 5);
  await pub.handshake("pub", 5);
  const publish = (topic: string, qos: 0 | 1 | 2, messageId?: number) =>
    pub.sendPacket({ cmd: "publish", topic, payload: "spoof", qos, messageId }, 5);
  await publish("$SYS/broker/uptime", 1, 1);
  assert.equal((await pub.expect("puback")).reasonCode, 0x87);
  await publish("$SYS/broker/uptime", 2, 2);
  assert.equal((await pub.expect("pubrec")).reasonCode, 0x87);
  await publish("$SYS/broker/uptime", 0);
  await using old = await RawClient.connect(b.port, 4);
  await old.handshake("old", 4);
  await old.sendPacket({
    cmd: "publish",
    topic: "$SYS/broker/uptime",
    payload: "spoof",
    qos: 1,
    messageId: 7,
  }, 4);
  // 3.1.1 cannot refuse a PUBLISH: it is acknowledged and dropped.
  assert.equal((await old.expect("puback")).messageId, 7);

  // The publisher's connection is still fine, and the first thing the watcher
  // receives is the normal message published after the refused ones.
  await publish("ok/1", 1, 3);
  assert.equal((await pub.expect("puback")).reasonCode ?? 0, 0);
  const first = await sub.expect("publish");
  assert.equal(first.topic, "ok/1");
  await expectSilence(sub, 200);
});

Deno.test("Payload Format Indicator 1 with a payload that is not UTF-8 is refused with 0x99", async () => {
  await using b = await startBroker();
  await using sub = await RawClient.connect(b.port, 5);
  await sub.handshake("sub", 5);
  await subscribe(sub, "pfi/#", 1);

  await using pub = await RawClient.connect(b.port, 5);
  await pub.handshake("pub", 5);
  const publish = (payload: number[] | string, qos: 0 | 1 | 2, messageId: number, pfi: boolean) =>
    pub.sendPacket({
      cmd: "publish",
      topic: "pfi/a",
      payload: typeof payload === "string" ? payload : Buffer.from(payload),
      qos,
      ...(qos > 0 ? { messageId } : {}),
      properties: { payloadFormatIndicator: pfi },
    }, 5);
  const invalid = [0xc3, 0x28, 0xff];
  await publish(invalid, 1, 1, true);
  assert.equal((await pub.expect("puback")).reasonCode, 0x99);
  await publish(invalid, 2, 2, true);
  assert.equal((await pub.expect("pubrec")).reasonCode, 0x99);
  await publish(invalid, 0, 0, true);
  // The same bytes declared as binary (indicator 0) are fine.
  await publish(invalid, 1, 3, false);
  assert.equal((await pub.expect("puback")).reasonCode ?? 0, 0);
  await publish("grüße", 1, 4, true);
  assert.equal((await pub.expect("puback")).reasonCode ?? 0, 0);

  const binary = await sub.expect("publish");
  assert.deepEqual([...(binary.payload as Uint8Array)], invalid);
  assert.notEqual(props(binary).payloadFormatIndicator, true);
  const utf8 = await sub.expect("publish");
  assert.equal(text(utf8), "grüße");
  assert.equal(props(utf8).payloadFormatIndicator, true);
  await expectSilence(sub, 200);
});
