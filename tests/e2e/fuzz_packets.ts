/**
 * What the fuzz test (fuzz_test.ts) sends: fast-check generators of runs (one or two raw
 * clients, often on the same client id, their CONNECT and packets with mutated fields, what is
 * done to their bytes, the chunks and interleaving of their writes) and the encoding of a
 * client's packets into the byte chunks it writes. Apart from the test, which drives them over
 * real connections and checks the broker; the topics and users here are the ones its ACL names.
 */
import fc from "fast-check";
import mqttPacket from "mqtt-packet";
import type { Packet } from "../helpers/broker.ts";

// ---- generators -------------------------------------------------------------

const topicArb = fc.oneof(
  fc.constantFrom(
    "pub/a",
    "pub/b/c",
    "open/x",
    "secret/x",
    "fz/f1/t",
    "health/0",
    "$SYS/x",
    "",
    "a/+/b",
    "#",
    "x".repeat(300),
    "bad\u0000nul",
  ),
  fc.string({ maxLength: 20 }),
);
const filterArb = fc.oneof(
  { weight: 2, arbitrary: fc.constantFrom("#", "+/x", "secret/#", "+/+", "$share/g/#") },
  {
    weight: 2,
    arbitrary: fc.constantFrom(
      "#",
      "+/x",
      "+/+",
      "secret/#",
      "open/#",
      "pub/+",
      "pub/#",
      "$share/g/pub/#",
      "$share/g/#",
      "$share//x",
      "a/#/b",
      "",
      "fz/f1/#",
      "health/#",
    ),
  },
  { weight: 1, arbitrary: fc.string({ maxLength: 12 }) },
);
const pidArb = fc.integer({ min: 0, max: 6 });
const qosArb = fc.constantFrom(0, 1, 2, 3);
const u32 = fc.oneof(fc.constantFrom(0, 1, 0xffffffff), fc.nat());
const payloadArb = fc.uint8Array({ maxLength: 64 });

/** Properties of one packet type, or none; now and then one that does not belong. */
function props<T>(model: { [K in keyof T]: fc.Arbitrary<T[K]> }) {
  const stray = fc.record({
    topicAlias: fc.integer({ min: 0, max: 12 }),
    willDelayInterval: u32,
    subscriptionIdentifier: fc.integer({ min: 0, max: 300 }),
    receiveMaximum: fc.integer({ min: 0, max: 3 }),
    authenticationMethod: fc.string({ maxLength: 6 }),
  }, { requiredKeys: [] });
  return fc.oneof(
    { weight: 4, arbitrary: fc.constant(undefined) },
    { weight: 6, arbitrary: fc.record(model, { requiredKeys: [] }) },
    {
      weight: 1,
      arbitrary: fc.tuple(fc.record(model, { requiredKeys: [] }), stray).map(([a, b]) => ({
        ...a,
        ...b,
      })),
    },
  );
}
// mqtt-packet writes nothing at all for an empty user property object.
const userProps = fc.dictionary(fc.string({ maxLength: 4 }), fc.string({ maxLength: 4 }), {
  minKeys: 1,
  maxKeys: 2,
});
const connectProps = props({
  sessionExpiryInterval: u32,
  receiveMaximum: fc.integer({ min: 0, max: 0xffff }),
  maximumPacketSize: fc.oneof(fc.constantFrom(0, 20, 100), u32),
  topicAliasMaximum: fc.integer({ min: 0, max: 0xffff }),
  requestResponseInformation: fc.boolean(),
  userProperties: userProps,
});
const publishProps = props({
  topicAlias: fc.integer({ min: 0, max: 12 }),
  messageExpiryInterval: u32,
  payloadFormatIndicator: fc.boolean(),
  contentType: fc.string({ maxLength: 8 }),
  responseTopic: topicArb,
  correlationData: payloadArb.map((b) => Buffer.from(b)),
  userProperties: userProps,
});
const willProps = props({
  willDelayInterval: u32,
  messageExpiryInterval: u32,
  payloadFormatIndicator: fc.boolean(),
  contentType: fc.string({ maxLength: 8 }),
});
const subscribeProps = props({
  subscriptionIdentifier: fc.integer({ min: 0, max: 300 }),
  userProperties: userProps,
});
const otherProps = props({ reasonString: fc.string({ maxLength: 8 }), userProperties: userProps });
const disconnectProps = props({
  sessionExpiryInterval: u32,
  reasonString: fc.string({ maxLength: 8 }),
});

const connectArb = fc.record({
  cmd: fc.constant("connect"),
  protocolVersion: fc.constantFrom(3, 4, 5, 5, 5),
  clean: fc.boolean(),
  keepalive: fc.constantFrom(0, 1, 60, 60),
  password: fc.option(payloadArb.map((b) => Buffer.from(b)), { nil: undefined, freq: 1 }),
  will: fc.option(
    fc.record({
      topic: fc.constantFrom("pub/will", "fz/f1/will", "secret/will", ""),
      payload: payloadArb.map((b) => Buffer.from(b)),
      qos: qosArb,
      retain: fc.boolean(),
      properties: willProps,
    }),
    { nil: undefined, freq: 4 },
  ),
  properties: connectProps,
}).chain((c) =>
  // Mostly the ACL's fuzz user on two ids (taking each other over); sometimes someone else,
  // on an id of their own or on the fuzz user's (refused: it belongs to another user).
  fc.oneof(
    { weight: 15, arbitrary: fc.constantFrom(["fuzz", "f1"], ["fuzz", "f2"]) },
    { weight: 2, arbitrary: fc.constantFrom([undefined, ""], [undefined, "a1"], ["fuzz", ""]) },
    { weight: 2, arbitrary: fc.constantFrom(["other", "o1"], ["other", "f1"], ["fuzz", "x/y"]) },
    { weight: 1, arbitrary: fc.constant(["feeder", "feeder-x"]) },
  ).map(([username, clientId]) => ({ ...c, username, clientId }))
);

const packetArb = fc.oneof(
  {
    weight: 5,
    arbitrary: fc.record({
      cmd: fc.constant("publish"),
      topic: topicArb,
      payload: payloadArb.map((b) => Buffer.from(b)),
      qos: qosArb,
      dup: fc.boolean(),
      retain: fc.boolean(),
      messageId: pidArb,
      properties: publishProps,
    }),
  },
  {
    weight: 3,
    arbitrary: fc.record({
      cmd: fc.constant("subscribe"),
      messageId: pidArb,
      subscriptions: fc.array(
        fc.record({
          topic: filterArb,
          qos: qosArb,
          nl: fc.boolean(),
          rap: fc.boolean(),
          rh: fc.constantFrom(0, 1, 2, 3),
        }),
        { minLength: 0, maxLength: 3 },
      ),
      properties: subscribeProps,
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      cmd: fc.constant("unsubscribe"),
      messageId: pidArb,
      unsubscriptions: fc.array(filterArb, { maxLength: 3 }),
      properties: otherProps,
    }),
  },
  {
    weight: 3,
    arbitrary: fc.record({
      cmd: fc.constantFrom("puback", "pubrec", "pubrel", "pubcomp"),
      messageId: pidArb,
      reasonCode: fc.constantFrom(0, 0x10, 0x80, 0x92, 0x97),
      properties: otherProps,
    }),
  },
  { weight: 1, arbitrary: fc.record({ cmd: fc.constantFrom("pingreq", "pingresp", "connack") }) },
  {
    weight: 1,
    arbitrary: fc.record({
      cmd: fc.constant("disconnect"),
      reasonCode: fc.constantFrom(0, 4, 0x80),
      properties: disconnectProps,
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      cmd: fc.constant("auth"),
      reasonCode: fc.constantFrom(0, 0x18, 0x19),
      properties: otherProps,
    }),
  },
  { weight: 1, arbitrary: connectArb },
  { weight: 1, arbitrary: payloadArb.map((raw) => ({ cmd: "raw", raw })) },
);

/** What is done to a packet's bytes. */
const mutationArb = fc.oneof(
  { weight: 8, arbitrary: fc.constant({ kind: "none" as const }) },
  {
    weight: 1,
    arbitrary: fc.record({ kind: fc.constant("flip" as const), at: fc.nat(), value: fc.nat(255) }),
  },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant("truncate" as const), at: fc.nat() }) },
  {
    weight: 1,
    arbitrary: fc.record({ kind: fc.constant("length" as const), value: fc.nat(0x0fffffff) }),
  },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant("append" as const), bytes: payloadArb }) },
);
type Mutation = typeof mutationArb extends fc.Arbitrary<infer T> ? T : never;

const clientArb = fc.record({
  /**
   * A tame client sends its packets unmutated, without a will and without the packets that
   * end a connection at once (DISCONNECT, a second CONNECT, AUTH, server-only packets, raw
   * bytes), so that runs get past CONNECT into subscriptions and QoS flows.
   */
  tame: fc.boolean(),
  /** A tame client subscribes to this first (wide filters often: the ACL must filter). */
  wants: fc.array(fc.record({ topic: filterArb, qos: fc.constantFrom(0, 1, 2) }), {
    minLength: 1,
    maxLength: 3,
  }),
  connect: connectArb,
  connectMutation: fc.oneof(
    { weight: 6, arbitrary: fc.constant({ kind: "none" as const }) },
    { weight: 1, arbitrary: mutationArb },
  ),
  packets: fc.array(fc.tuple(packetArb, mutationArb), { maxLength: 10 }),
  /** Chunk sizes the byte stream is cut into. */
  chunks: fc.array(fc.integer({ min: 1, max: 40 }), { minLength: 1, maxLength: 6 }),
});

export const runArb = fc.record({
  clients: fc.array(clientArb, { minLength: 1, maxLength: 2 }),
  /** Which client writes next, repeated: the interleaving of two connections. */
  order: fc.array(fc.nat(1), { minLength: 1, maxLength: 20 }),
  pauses: fc.array(fc.constantFrom(0, 0, 0, 1, 3), { minLength: 1, maxLength: 8 }),
});
export type Run = typeof runArb extends fc.Arbitrary<infer T> ? T : never;
export type FuzzClient = Run["clients"][number];

// ---- encoding ---------------------------------------------------------------

function encode(packet: Record<string, unknown>, version: number): Uint8Array {
  if (packet.cmd === "raw") return packet.raw as Uint8Array;
  const p: Record<string, unknown> = { ...packet };
  if (p.cmd === "connect") p.protocolId = p.protocolVersion === 3 ? "MQIsdp" : "MQTT";
  if (p.properties === undefined || version !== 5) delete p.properties;
  // mqtt-packet will not write QoS 3: write QoS 2 and set the bits afterwards.
  const qos3 = p.cmd === "publish" && p.qos === 3;
  if (qos3) p.qos = 2;
  const gen = (q: Record<string, unknown>) => {
    const b = mqttPacket.generate(q as unknown as Packet, {
      protocolVersion: version as 3 | 4 | 5,
    });
    if (b.length === 0) throw new Error("mqtt-packet wrote nothing");
    return new Uint8Array(b);
  };
  // mqtt-packet refuses some combinations (an empty will topic or SUBSCRIBE, a client id
  // missing with Clean Session 0, some properties): repair step by step until it writes.
  const repairs = [
    () => {},
    () => delete p.properties,
    () => delete p.will,
    () => p.clientId = "fz",
    () => p.subscriptions = [{ topic: "pub/a", qos: 0 }],
    () => p.unsubscriptions = ["pub/a"],
    () => p.topic = "pub/a",
  ];
  let out: Uint8Array | null = null;
  for (const repair of repairs) {
    repair();
    try {
      out = gen(p);
      break;
    } catch {
      // next repair
    }
  }
  if (out === null) return new TextEncoder().encode(JSON.stringify(p).slice(0, 32));
  if (qos3) out[0] |= 0x06;
  return out;
}

function mutate(bytes: Uint8Array, m: Mutation): Uint8Array {
  switch (m.kind) {
    case "none":
      return bytes;
    case "flip": {
      if (bytes.length === 0) return bytes;
      const b = bytes.slice();
      b[m.at % b.length] = m.value;
      return b;
    }
    case "truncate":
      return bytes.subarray(0, m.at % (bytes.length + 1));
    case "length": {
      // A remaining length that lies: re-encode the header with `value`.
      const header = [bytes[0] ?? 0x30];
      let v = m.value;
      do {
        let d = v % 128;
        v = Math.floor(v / 128);
        if (v > 0) d |= 0x80;
        header.push(d);
      } while (v > 0);
      let i = 1;
      while (i < bytes.length && (bytes[i] & 0x80) !== 0) i++;
      const out = new Uint8Array(header.length + Math.max(0, bytes.length - i - 1));
      out.set(header);
      out.set(bytes.subarray(i + 1), header.length);
      return out;
    }
    case "append": {
      const out = new Uint8Array(bytes.length + m.bytes.length);
      out.set(bytes);
      out.set(m.bytes, bytes.length);
      return out;
    }
  }
}

/** The client's whole byte stream, cut into chunks. */
const ENDERS = new Set(["disconnect", "connect", "auth", "connack", "pingresp", "raw"]);

/** A tame client's packet: the fields a broker refuses outright brought into range. */
function tamed(packet: Record<string, unknown>): Record<string, unknown> {
  const p = { ...packet };
  if (p.qos === 3) p.qos = 1;
  if (p.messageId === 0) p.messageId = 1;
  if (
    p.cmd === "publish" &&
    (p.topic === "" || /[+#]/.test(String(p.topic)) || String(p.topic).includes("\0"))
  ) {
    p.topic = "pub/a";
  }
  if (Array.isArray(p.subscriptions)) {
    p.subscriptions = p.subscriptions.map((s: Record<string, unknown>) => ({
      ...s,
      qos: s.qos === 3 ? 2 : s.qos,
      rh: s.rh === 3 ? 0 : s.rh,
    }));
  }
  if (p.properties !== undefined) {
    const { topicAlias: _a, subscriptionIdentifier: _s, willDelayInterval: _w, ...rest } = p
      .properties as Record<string, unknown>;
    if (p.cmd === "connect") delete rest.authenticationMethod;
    if (rest.receiveMaximum === 0) delete rest.receiveMaximum;
    if (rest.maximumPacketSize === 0) delete rest.maximumPacketSize;
    p.properties = rest;
  }
  return p;
}

export function chunksOf(c: FuzzClient): Uint8Array[] {
  const version = c.connect.protocolVersion;
  const connect = c.tame ? tamed({ ...c.connect, will: undefined }) : c.connect;
  const parts = [mutate(encode(connect, version), c.tame ? { kind: "none" } : c.connectMutation)];
  if (c.tame) {
    parts.push(encode({ cmd: "subscribe", messageId: 1, subscriptions: c.wants }, version));
  }
  for (const [p, m] of c.packets) {
    if (c.tame && ENDERS.has(p.cmd)) continue;
    parts.push(c.tame ? encode(tamed(p), version) : mutate(encode(p, version), m));
  }
  const total = parts.reduce((n, p) => n + p.length, 0);
  const all = new Uint8Array(total);
  let off = 0;
  for (const p of parts) {
    all.set(p, off);
    off += p.length;
  }
  const out: Uint8Array[] = [];
  let i = 0;
  for (let k = 0; off > 0 && i < all.length; k++) {
    // Mostly whole streams per write, sometimes small pieces.
    const size = k < c.chunks.length ? c.chunks[k] * (k % 2 === 0 ? 64 : 1) : all.length;
    out.push(all.subarray(i, i + size));
    i += size;
  }
  return out;
}
