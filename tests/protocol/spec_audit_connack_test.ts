/**
 * MQTT 5.0 conformance audit, connection side: what the server does with a CONNECT (sections
 * 3.1.4, 3.2, 4.1 and 6 of the specification: CONNECT actions, CONNACK, session state,
 * WebSocket), and the MQTT 3.1.1 statements that differ: the server statements no other test
 * covered, each checked over a real socket. Raw bytes where a normal client would refuse to
 * send the bad input. Statement ids are the specification's (5.0 unless marked 3.1.1); the
 * CONNECT packet's own form is in spec_audit_connect_test, the delivery side in
 * spec_audit_delivery_test.
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
import { bystanders, concatBytes, str } from "../helpers/wire.ts";
import {
  CLEAN,
  connectBytes,
  PINGREQ,
  publishQos0,
  readUntil,
  SUBSCRIBE_A,
  USERNAME,
} from "./spec_audit_connect_bytes.ts";

const enc = new TextEncoder();

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
