/**
 * MQTT 5.0 conformance audit, connection side (sections 3.1, 3.2, 4.1, 4.2, 4.12 and 6 of the
 * specification), and the MQTT 3.1.1 CONNECT/CONNACK statements that differ: the server
 * statements no other test covered, each checked over a real socket. Raw bytes where a normal
 * client would refuse to send the bad input. Statement ids are the specification's (5.0 unless
 * marked 3.1.1); the delivery side is in spec_audit_delivery_test.
 */
import assert from "node:assert/strict";
import type { Authenticator } from "../../src/auth/types.ts";
import {
  collect,
  connectClient,
  delay,
  endClient,
  RawClient,
  startBroker,
  subscriber,
} from "../helpers/broker.ts";
import { bystanders, concatBytes, frame, str, varint } from "../helpers/wire.ts";

const enc = new TextEncoder();

const CLEAN = 0x02;
const WILL = 0x04;
const WILL_RETAIN = 0x20;
const PASSWORD = 0x40;
const USERNAME = 0x80;

/**
 * A CONNECT built by hand: `payload` is everything after the variable header (client id, will,
 * user name, password), `props` the MQTT 5 property bytes (omitted below level 5).
 */
function connectBytes(f: {
  level?: 4 | 5;
  flags?: number;
  keepAlive?: number;
  props?: number[];
  payload: number[];
}): Uint8Array {
  const level = f.level ?? 5;
  const ka = f.keepAlive ?? 60;
  return frame(0x10, [
    ...str("MQTT"),
    level,
    f.flags ?? CLEAN,
    ka >> 8,
    ka & 0xff,
    ...(level === 5 ? [...varint(f.props?.length ?? 0), ...(f.props ?? [])] : []),
    ...f.payload,
  ]);
}

/** A will's payload fields: MQTT 5 will properties, topic and message. */
function willFields(topic: string | Uint8Array, message: string, v5 = true, props: number[] = []) {
  return [...(v5 ? [...varint(props.length), ...props] : []), ...str(topic), ...str(message)];
}

const SUBSCRIBE_A = (filter: string, pid = 1, v5 = true) =>
  frame(0x82, [pid >> 8, pid & 0xff, ...(v5 ? [0] : []), ...str(filter), 1]);
const PINGREQ = new Uint8Array([0xc0, 0]);
const publishQos0 = (topic: string, payload: string, v5 = true) =>
  frame(0x30, [...str(topic), ...(v5 ? [0] : []), ...enc.encode(payload)]);

/**
 * Sends `bytes` as the first packet and expects the refusal the version owes a CONNECT that
 * does not conform to section 3.1: MQTT 5 a CONNACK with `code` then a close [MQTT-3.1.4-1],
 * MQTT 3.1.1 a close without CONNACK (3.1.1 [MQTT-3.1.4-1]).
 */
async function assertConnectRefused(port: number, bytes: Uint8Array, level: 4 | 5, code = 0x81) {
  await using c = await RawClient.connect(port, level);
  await c.send(bytes);
  if (level === 5) {
    const ack = await c.expect("connack");
    assert.equal(ack.reasonCode, code, `CONNACK 0x${(ack.reasonCode as number).toString(16)}`);
    assert.equal(ack.sessionPresent, false);
  }
  assert.equal(await c.next(), null, "still open after the refusal");
}

/** The raw bytes of the broker's first packet in answer to `bytes` (a CONNECT). */
async function rawFirstPacket(port: number, bytes: Uint8Array): Promise<Uint8Array> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await conn.write(bytes);
    const buf = new Uint8Array(256);
    let have = 0;
    for (;;) {
      const n = await conn.read(buf.subarray(have));
      if (n === null) throw new Error("closed before a whole packet came");
      have += n;
      // Remaining lengths of CONNACKs here are below 128: one length byte.
      if (have >= 2 && have >= 2 + buf[1]) return buf.slice(0, 2 + buf[1]);
    }
  } finally {
    conn.close();
  }
}

// ---- 3.1.2 CONNECT variable header ------------------------------------------------------

Deno.test("[MQTT-3.1.2-9] a CONNECT with the Will Flag set and no Will Topic and Message is malformed: MQTT 5 CONNACK 0x81, 3.1.1 a close without CONNACK", async () => {
  await using b = await startBroker();
  await using others = await bystanders(b.port);
  // The payload ends after the client id: Will Properties, Topic and Payload are missing.
  await assertConnectRefused(b.port, connectBytes({ flags: CLEAN | WILL, payload: str("w") }), 5);
  // Will properties present, topic and message missing.
  await assertConnectRefused(
    b.port,
    connectBytes({ flags: CLEAN | WILL, payload: [...str("w"), 0] }),
    5,
  );
  await assertConnectRefused(
    b.port,
    connectBytes({ level: 4, flags: CLEAN | WILL, payload: str("w") }),
    4,
  );
  await others.assertServing();
});

for (
  const [ids, what, flags, payload] of [
    ["MQTT-3.1.2-11", "Will QoS 1 without the Will Flag", CLEAN | 0x08, str("w")],
    ["MQTT-3.1.2-13", "Will Retain without the Will Flag", CLEAN | WILL_RETAIN, str("w")],
    ["MQTT-3.1.2-12", "Will QoS 3", CLEAN | WILL | 0x18, [...str("w")]],
  ] as const
) {
  Deno.test(`[${ids}] a CONNECT with ${what} is malformed: MQTT 5 CONNACK 0x81, 3.1.1 a close without CONNACK`, async () => {
    await using b = await startBroker();
    await using watcher = await subscriber(b.port, "will/#", 0, { clientId: "watch" });
    for (const level of [5, 4] as const) {
      const p = flags & WILL ? [...payload, ...willFields("will/t", "x", level === 5)] : payload;
      await assertConnectRefused(b.port, connectBytes({ level, flags, payload: [...p] }), level);
    }
    // Nothing was accepted, so there is no will to publish either [MQTT-3.1.2-12].
    await watcher.inbox.none(200);
  });
}

Deno.test("[MQTT-3.1.2-16..19] the User Name and Password Flags must match the payload: a field the flags leave out, or one they announce and that is missing, is malformed", async () => {
  await using b = await startBroker();
  await using others = await bystanders(b.port);
  const cases: [string, number, number[]][] = [
    ["a user name with the User Name Flag 0", CLEAN, [...str("u"), ...str("alice")]],
    ["the User Name Flag 1 and no user name", CLEAN | USERNAME, str("u")],
    ["a password with the Password Flag 0", CLEAN | USERNAME, [
      ...str("u"),
      ...str("alice"),
      ...str("secret"),
    ]],
    ["the Password Flag 1 and no password", CLEAN | USERNAME | PASSWORD, [
      ...str("u"),
      ...str("alice"),
    ]],
  ];
  for (const [what, flags, payload] of cases) {
    for (const level of [5, 4] as const) {
      await assertConnectRefused(b.port, connectBytes({ level, flags, payload }), level)
        .catch((e) => {
          throw new Error(`${what} (level ${level}): ${e.message}`);
        });
    }
  }
  await others.assertServing();
});

Deno.test("3.1.2.9: MQTT 5 allows a password without a user name (accepted); 3.1.1 [MQTT-3.1.2-22] does not (closed without CONNACK)", async () => {
  await using b = await startBroker();
  const payload = [...str("pw-only"), ...str("secret")];
  await using c = await RawClient.connect(b.port, 5);
  await c.send(connectBytes({ flags: CLEAN | PASSWORD, payload }));
  assert.equal((await c.expect("connack")).reasonCode, 0);
  await assertConnectRefused(
    b.port,
    connectBytes({ level: 4, flags: CLEAN | PASSWORD, payload }),
    4,
  );
});

Deno.test("[MQTT-3.1.2-10] a will is removed once published: neither resuming its session nor ending it publishes it again", async () => {
  await using b = await startBroker();
  await using watcher = await subscriber(b.port, "will/once", 1, { clientId: "watch" });
  const c = await RawClient.connect(b.port, 5);
  await c.handshake("once", 5, {
    clean: true,
    properties: { sessionExpiryInterval: 60 },
    will: { topic: "will/once", payload: "gone", qos: 1, retain: false },
  });
  c.close(); // no DISCONNECT: the will goes out at once (no Will Delay Interval)
  await c[Symbol.asyncDispose]();
  assert.equal((await watcher.inbox.next()).payload, "gone");
  // Resume the session (no will this time) and leave it with "disconnect with will".
  await using again = await RawClient.connect(b.port, 5);
  const ack = await again.handshake("once", 5, {
    clean: false,
    properties: { sessionExpiryInterval: 60 },
  });
  assert.equal(ack.sessionPresent, true);
  await again.sendPacket({ cmd: "disconnect", reasonCode: 0x04 });
  await again.expectClosed();
  // End the session with Clean Start 1.
  await using last = await RawClient.connect(b.port, 5);
  await last.handshake("once", 5, { clean: true });
  await watcher.inbox.none(300);
});

Deno.test("[MQTT-3.1.2-28, MQTT-3.2.2-20, MQTT-4.12.0-6] CONNACK carries no Response Information, no User Property and no Authentication Method, and no AUTH packet follows", async () => {
  await using b = await startBroker();
  for (const requestResponseInformation of [false, true]) {
    await using c = await RawClient.connect(b.port, 5);
    const ack = await c.handshake(`ri-${requestResponseInformation}`, 5, {
      properties: { requestResponseInformation, requestProblemInformation: true },
    });
    const props = (ack.properties ?? {}) as Record<string, unknown>;
    assert.equal(props.responseInformation, undefined);
    assert.equal(props.userProperties, undefined);
    assert.equal(props.authenticationMethod, undefined);
    assert.equal(props.authenticationData, undefined);
    await c.send(PINGREQ);
    assert.equal((await c.next())?.cmd, "pingresp", "something came before PINGRESP");
  }
});

Deno.test("[MQTT-3.1.2-29] with Request Problem Information 0, refusing PUBACK, PUBREC and SUBACK carry no Reason String or User Property", async () => {
  await using b = await startBroker();
  await using c = await RawClient.connect(b.port, 5);
  await c.handshake("rpi0", 5, { properties: { requestProblemInformation: false } });
  // A client may not publish to "$" topics here: 0x87.
  await c.sendPacket({ cmd: "publish", topic: "$x/t", qos: 1, messageId: 1, payload: "x" });
  const puback = await c.expect("puback");
  assert.equal(puback.reasonCode, 0x87);
  assert.equal(puback.properties, undefined, JSON.stringify(puback.properties));
  await c.sendPacket({ cmd: "publish", topic: "$x/t", qos: 2, messageId: 2, payload: "x" });
  const pubrec = await c.expect("pubrec");
  assert.equal(pubrec.reasonCode, 0x87);
  assert.equal(pubrec.properties, undefined, JSON.stringify(pubrec.properties));
  // An invalid filter ("#" not last): 0x8F in the SUBACK.
  await c.send(SUBSCRIBE_A("a/#/b", 3));
  const suback = await c.expect("suback");
  assert.ok((suback.granted as number[])[0] >= 0x80);
  assert.equal(suback.properties, undefined, JSON.stringify(suback.properties));
});

Deno.test("3.1.2.11: CONNECT properties out of range or given twice are Protocol Errors (CONNACK 0x82), one CONNECT may not carry is malformed (0x81); each is closed", async () => {
  await using b = await startBroker();
  await using others = await bystanders(b.port);
  const cases: [string, number[], number][] = [
    ["Receive Maximum 0", [0x21, 0, 0], 0x82],
    ["Maximum Packet Size 0", [0x27, 0, 0, 0, 0], 0x82],
    ["Request Problem Information 2", [0x17, 2], 0x82],
    ["Request Response Information 2", [0x19, 2], 0x82],
    ["Session Expiry Interval twice", [0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2], 0x82],
    ["Topic Alias Maximum twice", [0x22, 0, 1, 0x22, 0, 2], 0x82],
    ["Authentication Data without a Method", [0x16, ...str("x")], 0x82],
    ["a Will Delay Interval among the CONNECT properties", [0x18, 0, 0, 0, 1], 0x81],
    ["a Payload Format Indicator", [0x01, 1], 0x81],
  ];
  for (const [what, props, code] of cases) {
    await assertConnectRefused(b.port, connectBytes({ props, payload: str("props") }), 5, code)
      .catch((e) => {
        throw new Error(`${what}: ${e.message}`);
      });
  }
  await others.assertServing();
});

// ---- 3.1.3 CONNECT payload ---------------------------------------------------------------

Deno.test("[MQTT-3.1.3-3] a CONNECT without a Client Identifier is malformed: MQTT 5 CONNACK 0x81, 3.1.1 a close without CONNACK", async () => {
  await using b = await startBroker();
  await assertConnectRefused(b.port, connectBytes({ payload: [] }), 5);
  await assertConnectRefused(b.port, connectBytes({ level: 4, payload: [] }), 4);
  // A length that runs past the packet.
  await assertConnectRefused(b.port, connectBytes({ payload: [0, 9, 0x61] }), 5);
});

for (
  const [id, field, build] of [
    ["MQTT-3.1.3-4", "Client Identifier", (bad: Uint8Array, v5: boolean) => ({
      flags: CLEAN,
      payload: str(bad),
      v5,
    })],
    ["MQTT-3.1.3-11", "Will Topic", (bad: Uint8Array, v5: boolean) => ({
      flags: CLEAN | WILL,
      payload: [...str("w"), ...willFields(bad, "x", v5)],
      v5,
    })],
    ["MQTT-3.1.3-12", "User Name", (bad: Uint8Array, v5: boolean) => ({
      flags: CLEAN | USERNAME,
      payload: [...str("u"), ...str(bad)],
      v5,
    })],
  ] as const
) {
  Deno.test(`[${id}] a ${field} that is not a well-formed UTF-8 string (or holds U+0000) is malformed: MQTT 5 CONNACK 0x81, 3.1.1 a close without CONNACK`, async () => {
    await using b = await startBroker();
    await using watcher = await subscriber(b.port, "#", 0, { clientId: "watch" });
    const bad = [
      new Uint8Array([0x61, 0xc3, 0x28]), // a lone lead byte
      new Uint8Array([0x61, 0xed, 0xa0, 0x80]), // U+D800, a surrogate
      new Uint8Array([0x61, 0x00]), // U+0000
    ];
    for (const bytes of bad) {
      for (const level of [5, 4] as const) {
        const f = build(bytes, level === 5);
        await assertConnectRefused(
          b.port,
          connectBytes({ level, flags: f.flags, payload: [...f.payload] }),
          level,
        );
      }
    }
    await watcher.inbox.none(200);
  });
}

Deno.test("[MQTT-3.1.3-5] (also 3.1.1) Client Identifiers of 1 and of 23 characters from 0-9, a-z, A-Z are accepted", async () => {
  await using b = await startBroker();
  const ids = ["Z", "0123456789abcdefghijkLM", "zyxwvutsrqponmNOPQRSTUV", "9"];
  for (const level of [5, 4] as const) {
    for (const id of ids) {
      assert.equal(enc.encode(id).length <= 23, true);
      await using c = await RawClient.connect(b.port, level);
      const ack = await c.handshake(id, level);
      if (level === 5) {
        const props = (ack.properties ?? {}) as Record<string, unknown>;
        assert.equal(props.assignedClientIdentifier, undefined);
      }
    }
  }
});

Deno.test("[MQTT-3.1.3-10] the will is published with its User Properties in their order, a name given twice included", async () => {
  await using b = await startBroker();
  // A raw subscriber: the byte order of the properties is what is checked.
  const sub = await Deno.connect({ hostname: "127.0.0.1", port: b.port });
  try {
    await sub.write(concatBytes([
      connectBytes({ payload: str("order-sub") }),
      SUBSCRIBE_A("will/order"),
    ]));
    const userProps = [
      [0x26, ...str("b"), ...str("1")],
      [0x26, ...str("a"), ...str("2")],
      [0x26, ...str("b"), ...str("3")],
    ].flat();
    await readUntil(sub, new Uint8Array([0x90])); // the SUBACK
    await using w = await RawClient.connect(b.port, 5);
    await w.send(connectBytes({
      flags: CLEAN | WILL,
      payload: [...str("order-will"), ...willFields("will/order", "bye", true, userProps)],
    }));
    assert.equal((await w.expect("connack")).reasonCode, 0);
    w.close();
    // Everything the subscriber gets until the will's payload: the properties come before it.
    const got = await readUntil(sub, enc.encode("bye"));
    assert.ok(
      indexOf(got, new Uint8Array(userProps)) >= 0,
      "the will's User Properties are not there in their order",
    );
  } finally {
    sub.close();
  }
});

/** Reads from `conn` until the bytes read contain `needle`; returns them. */
async function readUntil(conn: Deno.Conn, needle: Uint8Array, timeoutMs = 3000) {
  const chunks: Uint8Array[] = [];
  const buf = new Uint8Array(4096);
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const all = concatBytes(chunks);
    if (indexOf(all, needle) >= 0) return all;
    if (Date.now() > deadline) throw new Error("timed out reading");
    const n = await conn.read(buf);
    if (n === null) throw new Error("closed");
    chunks.push(buf.slice(0, n));
  }
}

function indexOf(hay: Uint8Array, needle: Uint8Array): number {
  outer: for (let i = 0; i + needle.length <= hay.length; i++) {
    for (let j = 0; j < needle.length; j++) if (hay[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

// ---- 3.1.4 CONNECT actions ---------------------------------------------------------------

/** An authenticator that answers later: "bad" users are refused with 0x86. */
const slowAuth: Authenticator = {
  authenticate: async (req) => {
    await delay(20);
    return req.username === "bad"
      ? { ok: false, reasonCode: 0x86, reason: "bad user name or password" }
      : { ok: true, username: req.username };
  },
};

Deno.test("[MQTT-3.1.4-6] (3.1.1 [MQTT-3.1.4-5]) nothing a client sent behind a refused CONNECT is processed: refused at once, or after an asynchronous authentication", async () => {
  await using b = await startBroker({}, { authenticator: slowAuth });
  await using watcher = await subscriber(b.port, "smuggled/#", 0, { clientId: "watch" });
  const refusals: [string, 4 | 5, Uint8Array, number][] = [
    // Refused while negotiating (enhanced authentication is not offered).
    [
      "an Authentication Method",
      5,
      connectBytes({
        props: [0x15, ...str("SCRAM-SHA-1")],
        payload: str("sm1"),
      }),
      0x8c,
    ],
    // Refused by the authenticator, after an await.
    [
      "a bad login",
      5,
      connectBytes({
        flags: CLEAN | USERNAME,
        payload: [...str("sm2"), ...str("bad")],
      }),
      0x86,
    ],
    [
      "a bad login (3.1.1)",
      4,
      connectBytes({
        level: 4,
        flags: CLEAN | USERNAME,
        payload: [...str("sm3"), ...str("bad")],
      }),
      4,
    ],
  ];
  for (const [what, level, connect, code] of refusals) {
    await using c = await RawClient.connect(b.port, level);
    const v5 = level === 5;
    // Pipelined in the same write: a PUBLISH, a SUBSCRIBE and a PINGREQ.
    await c.send(concatBytes([
      connect,
      publishQos0("smuggled/t", what, v5),
      SUBSCRIBE_A("smuggled/#", 1, v5),
      PINGREQ,
    ]));
    const ack = await c.expect("connack");
    assert.equal(v5 ? ack.reasonCode : ack.returnCode, code, what);
    assert.equal(ack.sessionPresent, false);
    assert.equal(await c.next(), null, `${what}: something followed the refusal`);
  }
  await watcher.inbox.none(300);
});

// ---- 3.2 CONNACK --------------------------------------------------------------------------

Deno.test("[MQTT-3.2.0-1] (also 3.1.1) CONNACK is the first packet: what the client pipelined behind CONNECT is answered after it, in order, also when authentication is asynchronous", async () => {
  for (const deps of [{}, { authenticator: slowAuth }]) {
    await using b = await startBroker({}, deps);
    for (const level of [5, 4] as const) {
      const v5 = level === 5;
      await using c = await RawClient.connect(b.port, level);
      await c.send(concatBytes([
        connectBytes({ level, payload: str(`pipe${level}`) }),
        SUBSCRIBE_A("pipe/t", 7, v5),
        PINGREQ,
        publishQos0("pipe/t", "echo", v5),
      ]));
      assert.equal((await c.expect("connack"))[v5 ? "reasonCode" : "returnCode"], 0);
      assert.equal((await c.expect("suback")).messageId, 7);
      await c.expect("pingresp");
      assert.equal((await c.expect("publish")).topic, "pipe/t");
    }
  }
});

Deno.test("[MQTT-3.2.0-2, MQTT-3.1.0-2] (3.1.1 too) a second CONNECT pipelined behind the first, while it is authenticated, gets no second CONNACK: MQTT 5 DISCONNECT 0x82, 3.1.1 a close", async () => {
  for (const deps of [{}, { authenticator: slowAuth }]) {
    await using b = await startBroker({}, deps);
    for (const level of [5, 4] as const) {
      await using c = await RawClient.connect(b.port, level);
      const connect = connectBytes({ level, payload: str(`twice${level}`) });
      await c.send(concatBytes([connect, connect]));
      const ack = await c.expect("connack");
      assert.equal(level === 5 ? ack.reasonCode : ack.returnCode, 0);
      if (level === 5) assert.equal((await c.expect("disconnect")).reasonCode, 0x82);
      assert.equal(await c.next(), null);
    }
  }
});

Deno.test("[MQTT-3.2.2-1, MQTT-3.1.2-6, MQTT-3.2.2-3] (also 3.1.1) the Connect Acknowledge Flags have bits 7-1 clear; Clean Start 0 without a session makes one (Session Present 0), and the next connection resumes it (1)", async () => {
  await using b = await startBroker();
  for (const level of [5, 4] as const) {
    const props = level === 5 ? [0x11, 0, 0, 0, 60] : []; // Session Expiry Interval 60
    const connect = connectBytes({ level, flags: 0, props, payload: str(`flags${level}`) });
    const first = await rawFirstPacket(b.port, connect);
    assert.deepEqual([first[0], first[2], first[3]], [0x20, 0x00, 0x00], `level ${level}`);
    const second = await rawFirstPacket(b.port, connect);
    assert.deepEqual([second[0], second[2], second[3]], [0x20, 0x01, 0x00], `level ${level}`);
  }
});

Deno.test("[MQTT-3.2.2-6] (3.1.1 [MQTT-3.2.2-4]) a refusal says Session Present 0 even when the client has a stored session", async () => {
  await using b = await startBroker({ limits: { max_keepalive: 60 } });
  for (const level of [5, 4] as const) {
    const id = `stored${level}`;
    await using first = await RawClient.connect(b.port, level);
    await first.handshake(id, level, {
      clean: false,
      ...(level === 5 ? { properties: { sessionExpiryInterval: 60 } } : {}),
    });
    await first.sendPacket({ cmd: "disconnect" }, level);
    await first.expectClosed();
    // MQTT 5: an Authentication Method (0x8C); 3.1.1: keep alive 0 over the cap (return code 2).
    const refused = level === 5
      ? connectBytes({ flags: 0, props: [0x15, ...str("X")], payload: str(id) })
      : connectBytes({ level: 4, flags: 0, keepAlive: 0, payload: str(id) });
    const raw = await rawFirstPacket(b.port, refused);
    assert.equal(raw[0], 0x20);
    assert.equal(raw[2], 0, `Session Present set in a refusal (level ${level})`);
    assert.equal(raw[3], level === 5 ? 0x8c : 2);
    // The session is still there.
    await using back = await RawClient.connect(b.port, level);
    const ack = await back.handshake(id, level, {
      clean: false,
      ...(level === 5 ? { properties: { sessionExpiryInterval: 60 } } : {}),
    });
    assert.equal(ack.sessionPresent, true);
  }
});

Deno.test("[MQTT-3.1.2-24] a client whose Maximum Packet Size is below the accepted CONNACK's size (16 bytes here) is refused with CONNACK 0x95 that fits it, or closed when not even that fits", async () => {
  await using b = await startBroker();
  for (const max of [4, 8, 12, 15, 16]) {
    const connect = connectBytes({ props: [0x27, 0, 0, 0, max], payload: str(`mps${max}`) });
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: b.port });
    try {
      await conn.write(connect);
      const got: number[] = [];
      const buf = new Uint8Array(256);
      for (;;) {
        const n = await conn.read(buf).catch(() => null);
        if (n === null) break;
        got.push(...buf.subarray(0, n));
        if (max === 16 && got.length >= 16) break;
      }
      if (max < 5) {
        assert.deepEqual(got, [], `max ${max}: nothing fits`);
        continue;
      }
      assert.equal(got[0] >> 4, 2, `max ${max}: the first packet is a CONNACK`);
      assert.ok(2 + got[1] <= max, `max ${max}: a ${2 + got[1]}-byte CONNACK`);
      // Accepted only where the whole CONNACK fits.
      assert.equal(got[3], max >= 16 ? 0x00 : 0x95, `max ${max}: reason code`);
    } finally {
      conn.close();
    }
  }
  await bystanders(b.port);
});

// ---- 4.1 session state --------------------------------------------------------------------

Deno.test("[MQTT-4.1.0-1] the session is not discarded while its connection is open, however long that lasts past its Session Expiry Interval", async () => {
  await using b = await startBroker({ limits: { sweep_interval_ms: 50 } });
  await using c = await connectClient(b.port, {
    clientId: "long-lived",
    clean: true,
    properties: { sessionExpiryInterval: 1 },
  });
  const inbox = collect(c);
  await c.subscribeAsync("long/t", { qos: 1 });
  // Twice the interval, with many sweeps in between.
  await delay(2000);
  await using pub = await connectClient(b.port, { clientId: "long-pub" });
  await pub.publishAsync("long/t", "still here", { qos: 1 });
  assert.equal((await inbox.next()).payload, "still here");
});

// ---- 3.1.1 statements that differ from 5.0 ------------------------------------------------

Deno.test("3.1.1 [MQTT-3.1.2-7] retained messages are not part of the session: they outlive the end of their publisher's session", async () => {
  await using b = await startBroker();
  const pub = await connectClient(b.port, { clientId: "ret-pub", protocolVersion: 4, clean: true });
  await pub.publishAsync("ret311/t", "kept", { qos: 1, retain: true });
  await endClient(pub);
  // A clean session 1 connection with the same id ends whatever was left.
  await using again = await RawClient.connect(b.port, 4);
  await again.handshake("ret-pub", 4);
  await using sub = await subscriber(b.port, "ret311/t", 1, {
    clientId: "ret-sub",
    protocolVersion: 4,
  });
  const m = await sub.inbox.next();
  assert.deepEqual([m.payload, m.packet.retain], ["kept", true]);
});

Deno.test("3.1.1 [MQTT-3.1.0-1] a first packet other than CONNECT gets nothing back: PINGREQ, SUBSCRIBE", async () => {
  await using b = await startBroker();
  for (const first of [PINGREQ, SUBSCRIBE_A("x", 1, false)]) {
    await using c = await RawClient.connect(b.port, 4);
    await c.send(first);
    assert.equal(await c.next(), null);
  }
});

// ---- 6 WebSocket --------------------------------------------------------------------------

Deno.test("6.0: an upgrade that offers no subprotocol is accepted (lenient, [MQTT-6.0.0-3] binds the client) and is answered without one, as RFC 6455 requires", async () => {
  await using b = await startBroker({ general: { websocket: true } });
  const wsPort = b.broker.addresses.find((a) => a.kind === "ws")!.port;
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: wsPort });
  try {
    await conn.write(enc.encode(
      "GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    ));
    const head = new TextDecoder().decode(await readUntil(conn, enc.encode("\r\n\r\n")));
    assert.match(head, /^HTTP\/1\.1 101 /);
    assert.doesNotMatch(head, /sec-websocket-protocol/i);
  } finally {
    conn.close();
  }
});
