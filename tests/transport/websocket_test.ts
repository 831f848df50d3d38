/**
 * MQTT over plain WebSocket (general.secure = false): subprotocol negotiation, path, and MQTT
 * packets that do not line up with WebSocket frames.
 */
import assert from "node:assert/strict";
import mqttPacket from "mqtt-packet";
import net from "node:net";
import {
  closeQuietly,
  collect,
  connectClient,
  delay,
  type Packet,
  startBroker,
} from "../helpers/broker.ts";
import { frame, frameHeader, RawWsClient, writeAll } from "../helpers/ws_raw.ts";
import { concatBytes as concat } from "../helpers/wire.ts";

/** A plain broker with only the WebSocket listener. */
async function wsBroker() {
  const b = await startBroker({ general: { websocket: true } });
  const ws = b.broker.addresses.find((a) => a.kind === "ws");
  if (!ws) throw new Error("no WebSocket listener");
  return Object.assign(b, { wsPort: ws.port });
}

const encode = (packet: Record<string, unknown>, protocolVersion: 4 | 5 = 5) =>
  new Uint8Array(mqttPacket.generate(packet as unknown as Packet, { protocolVersion }));

const CONNECT = {
  cmd: "connect",
  protocolId: "MQTT",
  protocolVersion: 5,
  clientId: "raw-ws",
  clean: true,
  keepalive: 60,
};

/** A WebSocket client (Deno's own) that decodes what the broker sends with mqtt-packet. */
class RawWs {
  private packets: Packet[] = [];
  private waiters: (() => void)[] = [];
  readonly closed: Promise<CloseEvent>;

  private constructor(readonly ws: WebSocket) {
    const parser = mqttPacket.parser({ protocolVersion: 5 });
    parser.on("packet", (p: Packet) => {
      this.packets.push(p);
      this.wake();
    });
    ws.onmessage = (e: MessageEvent) => parser.parse(Buffer.from(e.data as ArrayBuffer));
    this.closed = new Promise((resolve) => {
      ws.onclose = (e) => {
        this.wake();
        resolve(e);
      };
    });
  }

  /** Opens a WebSocket; resolves once open, rejects if the server refuses it. */
  static open(url: string, protocols: string | string[]): Promise<RawWs> {
    const ws = new WebSocket(url, protocols);
    ws.binaryType = "arraybuffer";
    const raw = new RawWs(ws);
    return new Promise((resolve, reject) => {
      ws.onopen = () => resolve(raw);
      ws.onerror = () => {
        // A refused upgrade reports an error, then close: wait for close so nothing leaks.
        raw.closed.then(() => reject(new Error("WebSocket refused")));
      };
    });
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  /** The next packet, which must be of type `cmd`. */
  async expect(cmd: string, timeoutMs = 3000): Promise<Packet & Record<string, unknown>> {
    const deadline = Date.now() + timeoutMs;
    while (this.packets.length === 0) {
      if (this.ws.readyState === WebSocket.CLOSED) throw new Error(`closed before ${cmd}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${cmd}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    const p = this.packets.shift()!;
    assert.equal(p.cmd, cmd, `expected ${cmd}, got ${JSON.stringify(p)}`);
    return p as Packet & Record<string, unknown>;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    if (this.ws.readyState !== WebSocket.CLOSED) this.ws.close();
    await this.closed;
  }
}

/** Sends a bare HTTP upgrade request and returns the status code and the chosen subprotocol. */
async function upgrade(
  port: number,
  path: string,
  protocols: string,
): Promise<{ status: number; protocol: string | undefined }> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await conn.write(new TextEncoder().encode(
      `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\n` +
        `Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n` +
        `Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: ${protocols}\r\n\r\n`,
    ));
    let head = "";
    const buf = new Uint8Array(4096);
    while (!head.includes("\r\n\r\n")) {
      const n = await conn.read(buf);
      if (n === null) break;
      head += new TextDecoder().decode(buf.subarray(0, n));
    }
    const status = Number(head.split(" ")[1]);
    const protocol = /^sec-websocket-protocol:\s*(.*?)\r$/im.exec(head)?.[1];
    return { status, protocol };
  } finally {
    conn.close();
  }
}

Deno.test("MQTT.js over ws exchanges QoS 1 messages", async () => {
  await using b = await wsBroker();
  const opts = { protocol: "ws" as const, path: "/mqtt" };
  await using sub = await connectClient(b.wsPort, { ...opts, clientId: "ws-sub" });
  await using pub = await connectClient(b.wsPort, { ...opts, clientId: "ws-pub" });
  const inbox = collect(sub);
  await sub.subscribeAsync("ws/t", { qos: 1 });
  await pub.publishAsync("ws/t", "over websocket", { qos: 1 });
  const m = await inbox.next();
  assert.deepEqual([m.topic, m.payload, m.packet.qos], ["ws/t", "over websocket", 1]);
});

Deno.test("MQTT.js speaking MQTT 3.1 offers mqttv3.1 and is accepted", async () => {
  await using b = await wsBroker();
  // MQTT.js offers the "mqttv3.1" subprotocol for MQIsdp / level 3.
  const opts = { protocol: "ws" as const, path: "/mqtt", protocolId: "MQIsdp" as const };
  await using sub = await connectClient(b.wsPort, { ...opts, protocolVersion: 3, clientId: "s" });
  await using pub = await connectClient(b.wsPort, { ...opts, protocolVersion: 3, clientId: "p" });
  const inbox = collect(sub);
  await sub.subscribeAsync("ws/old", { qos: 1 });
  await pub.publishAsync("ws/old", "mqtt 3.1", { qos: 1 });
  assert.equal((await inbox.next()).payload, "mqtt 3.1");
});

Deno.test("the broker selects the mqtt subprotocol [MQTT-6.0.0-4]", async () => {
  await using b = await wsBroker();
  await using ws = await RawWs.open(`ws://127.0.0.1:${b.wsPort}/mqtt`, ["chat", "mqtt"]);
  assert.equal(ws.ws.protocol, "mqtt");
  assert.deepEqual(await upgrade(b.wsPort, "/mqtt", "chat, mqtt"), {
    status: 101,
    protocol: "mqtt",
  });
});

Deno.test("the broker accepts a client offering only mqttv3.1", async () => {
  await using b = await wsBroker();
  await using ws = await RawWs.open(`ws://127.0.0.1:${b.wsPort}/mqtt`, "mqttv3.1");
  assert.equal(ws.ws.protocol, "mqttv3.1");
});

Deno.test("a WebSocket offering only another subprotocol is refused", async () => {
  await using b = await wsBroker();
  await assert.rejects(RawWs.open(`ws://127.0.0.1:${b.wsPort}/mqtt`, "chat"));
  assert.equal((await upgrade(b.wsPort, "/mqtt", "chat")).status, 400);
  // The listener still takes MQTT clients.
  await using ok = await RawWs.open(`ws://127.0.0.1:${b.wsPort}/mqtt`, "mqtt");
  ok.ws.send(encode(CONNECT));
  await ok.expect("connack");
});

Deno.test("a request for another path gets 404", async () => {
  await using b = await wsBroker();
  const res = await fetch(`http://127.0.0.1:${b.wsPort}/not-mqtt`);
  await res.body?.cancel();
  assert.equal(res.status, 404);
  assert.equal((await upgrade(b.wsPort, "/not-mqtt", "mqtt")).status, 404);
  await assert.rejects(RawWs.open(`ws://127.0.0.1:${b.wsPort}/not-mqtt`, "mqtt"));
});

Deno.test(
  "packets split across WebSocket messages and several packets in one message are all read " +
    "[MQTT-6.0.0-2]",
  async () => {
    await using b = await wsBroker();
    await using ws = await RawWs.open(`ws://127.0.0.1:${b.wsPort}/mqtt`, "mqtt");
    const connect = encode(CONNECT);
    // Cut inside the fixed header and again inside the variable header.
    ws.ws.send(connect.subarray(0, 1));
    ws.ws.send(connect.subarray(1, 5));
    ws.ws.send(connect.subarray(5));
    const connack = await ws.expect("connack");
    assert.equal(connack.reasonCode, 0);

    const subscribe = encode({
      cmd: "subscribe",
      messageId: 1,
      subscriptions: [{ topic: "frames/t", qos: 0 }],
    });
    const publish = encode({ cmd: "publish", topic: "frames/t", payload: "echo", qos: 0 });
    const both = new Uint8Array(subscribe.length + publish.length);
    both.set(subscribe);
    both.set(publish, subscribe.length);
    ws.ws.send(both);
    const suback = await ws.expect("suback");
    assert.deepEqual(suback.granted, [0]);
    const echo = await ws.expect("publish");
    assert.equal(echo.topic, "frames/t");
    assert.equal(new TextDecoder().decode(echo.payload as Uint8Array), "echo");
  },
);

Deno.test("a text frame closes the connection [MQTT-6.0.0-1]", async () => {
  await using b = await wsBroker();
  await using ws = await RawWs.open(`ws://127.0.0.1:${b.wsPort}/mqtt`, "mqtt");
  ws.ws.send(encode(CONNECT));
  await ws.expect("connack");
  ws.ws.send("not binary");
  const closed = await ws.closed;
  assert.equal(closed.code, 1003);
});

Deno.test("nothing after a text frame is acted on: a PUBLISH right behind it is not delivered [MQTT-6.0.0-1]", async () => {
  await using b = await wsBroker();
  await using watcher = await connectClient(b.port, { clientId: "text-watch" });
  const inbox = collect(watcher);
  await watcher.subscribeAsync("text/after", { qos: 0 });
  await using ws = await RawWsClient.open(b.wsPort);
  await ws.handshake("text-then-publish");
  const text = new TextEncoder().encode("not binary");
  const publish = encode({ cmd: "publish", topic: "text/after", payload: "smuggled", qos: 0 });
  await writeAll(ws.conn, concat([frameHeader(text.length, 0x1), text, frame(publish)]));
  let e = await ws.next();
  while (e.kind === "packet") e = await ws.next();
  if (e.kind === "close") assert.equal(e.code, 1003);
  await inbox.none(300);
});

Deno.test("several packets in one WebSocket message may together exceed max_packet_size [MQTT-6.0.0-2]", async () => {
  await using b = await startBroker({
    general: { websocket: true },
    limits: { max_packet_size: 1024 },
  });
  const wsPort = b.broker.addresses.find((a) => a.kind === "ws")!.port;
  await using watcher = await connectClient(b.port, { clientId: "many-watch" });
  const inbox = collect(watcher);
  await watcher.subscribeAsync("many/+", { qos: 0 });
  await using ws = await RawWsClient.open(wsPort);
  await ws.handshake("many-in-one");
  const payload = "x".repeat(700);
  const one = encode({ cmd: "publish", topic: "many/1", payload, qos: 0 });
  const two = encode({ cmd: "publish", topic: "many/2", payload, qos: 0 });
  assert.ok(one.length + two.length > 1024 && one.length < 1024);
  await ws.send(concat([one, two]));
  assert.equal((await inbox.next()).topic, "many/1");
  assert.equal((await inbox.next()).topic, "many/2");
});

Deno.test("a packet over max_packet_size in one WebSocket message gets DISCONNECT 0x95, as over TCP", async () => {
  await using b = await startBroker({
    general: { websocket: true },
    limits: { max_packet_size: 1024 },
  });
  const wsPort = b.broker.addresses.find((a) => a.kind === "ws")!.port;
  await using ws = await RawWsClient.open(wsPort);
  await ws.handshake("too-big");
  await ws.send(encode({ cmd: "publish", topic: "big", payload: "x".repeat(1100), qos: 0 }));
  const d = await ws.expect("disconnect");
  assert.equal(d.reasonCode, 0x95);
});

Deno.test("a socket that does not upgrade within limits.connect_timeout is closed: silent, or sending its headers slowly", async () => {
  await using b = await startBroker({
    general: { websocket: true },
    limits: { connect_timeout: 1 },
  });
  const wsPort = b.broker.addresses.find((a) => a.kind === "ws")!.port;
  const silent = await Deno.connect({ hostname: "127.0.0.1", port: wsPort });
  const slow = await Deno.connect({ hostname: "127.0.0.1", port: wsPort });
  const started = Date.now();
  const closedAt = async (conn: Deno.Conn) => {
    const buf = new Uint8Array(1024);
    try {
      while ((await conn.read(buf)) !== null) { /* an HTTP error, then the end */ }
    } catch {
      // reset counts as closed
    }
    return Date.now() - started;
  };
  const silentEnd = closedAt(silent);
  const slowEnd = closedAt(slow);
  const request = new TextEncoder().encode(
    `GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n`,
  );
  for (const byte of request) {
    const wrote = await slow.write(Uint8Array.of(byte)).then(() => true, () => false);
    if (!wrote || Date.now() - started > 4000) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  try {
    const [a, c] = await Promise.all([silentEnd, slowEnd]);
    assert.ok(a >= 900 && a < 3000, `the silent socket was closed after ${a} ms`);
    assert.ok(c >= 900 && c < 3000, `the slow socket was closed after ${c} ms`);
  } finally {
    closeQuietly(silent);
    closeQuietly(slow);
  }
  // The listener still serves, and an upgraded connection outlives the deadline.
  await using ws = await RawWsClient.open(wsPort);
  await ws.handshake("after-slow");
  await new Promise((r) => setTimeout(r, 1_500));
  await ws.sendPacket({ cmd: "pingreq" });
  await ws.expect("pingresp");
});

Deno.test("a peer that resets its socket after a refused upgrade does not bring the broker down", async () => {
  await using b = await wsBroker();
  const key = "dGhlIHNhbXBsZSBub25jZQ==";
  for (const [path, protocol] of [["/nope", "mqtt"], ["/mqtt", "chat"]]) {
    for (let i = 0; i < 3; i++) {
      const s = net.connect(b.wsPort, "127.0.0.1");
      await new Promise((r) => s.once("connect", r));
      s.on("error", () => {});
      s.write(
        `GET ${path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
          `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n` +
          `Sec-WebSocket-Protocol: ${protocol}\r\n\r\n`,
      );
      await delay(100);
      // A TCP reset (SO_LINGER 0), as a crashing client or a middlebox sends.
      s.resetAndDestroy();
    }
  }
  await delay(300);
  // Still serving (an uncaught ECONNRESET ended the process before; here it fails the test).
  await using c = await connectClient(b.wsPort, {
    protocol: "ws",
    path: "/mqtt",
    clientId: "after-resets",
  });
  assert.equal(c.connected, true);
});

Deno.test("before CONNECT a WebSocket peer is held to max_connect_packet_size: the largest will passes, a larger first message is cut with 1009", async () => {
  await using b = await startBroker({
    general: { websocket: true },
    limits: { max_connect_packet_size: 100_000, max_connect_backlog: 1024 },
  });
  const wsPort = b.broker.addresses.find((a) => a.kind === "ws")!.port;
  {
    await using ws = await RawWsClient.open(wsPort);
    await ws.sendPacket({
      ...CONNECT,
      clientId: "big-will",
      will: { topic: "w", payload: "x".repeat(65535), qos: 0, retain: false },
    });
    assert.equal((await ws.expect("connack")).reasonCode, 0);
  }
  // 1 MB announced before any CONNECT (under maxPayload, 2 x max_packet_size) and 150 KB of it
  // sent: cut once 100 KB and the allowances are read. Before, ws buffered it until the connect
  // timeout (10 s).
  await using ws = await RawWsClient.open(wsPort);
  await writeAll(ws.conn, concat([frameHeader(1_000_000), new Uint8Array(150_000)])).catch(
    () => {},
  );
  let e = await ws.next();
  while (e.kind === "packet") e = await ws.next();
  assert.ok(e.kind === "end" || e.code === 1009, JSON.stringify(e));
});

Deno.test("a client that sends its close frame and keeps the TCP connection open is cut after close_linger_ms: its will goes out then", async () => {
  await using b = await startBroker({
    general: { websocket: true },
    limits: { close_linger_ms: 500 },
  });
  const wsPort = b.broker.addresses.find((a) => a.kind === "ws")!.port;
  await using watcher = await connectClient(b.port, { clientId: "close-watch" });
  const inbox = collect(watcher);
  await watcher.subscribeAsync("will/#", { qos: 0 });
  await using ws = await RawWsClient.open(wsPort);
  await ws.sendPacket({
    ...CONNECT,
    clientId: "half-closer",
    will: { topic: "will/half-closer", payload: "gone", qos: 0, retain: false },
  });
  assert.equal((await ws.expect("connack")).reasonCode, 0);
  const started = Date.now();
  // A close frame (1000) and nothing more: no MQTT DISCONNECT, no FIN.
  await writeAll(ws.conn, concat([frameHeader(2, 0x8), new Uint8Array([0x03, 0xe8])]));
  assert.deepEqual(await ws.next(), { kind: "close", code: 1000 });
  const will = await inbox.next(5000);
  assert.equal(will.topic, "will/half-closer");
  // ws's own default held the connection, and the will, for 30 s.
  const waited = Date.now() - started;
  assert.ok(waited < 3000, `the will came ${waited} ms after the close frame`);
  assert.equal((await ws.next()).kind, "end");
});
