/**
 * Fairness over TLS and secure WebSocket (issue 14): one client publishing QoS 0 flat out must
 * not starve the broker's writes to its subscriber. Deno's TLS socket reads a flooding peer
 * again and again within one event-loop turn, so the subscriber's write completions waited
 * for seconds and almost every message was dropped as not sendable (measured: ~3% delivered
 * over TLS, 4.5% over wss; then about 72-75%). With many publishers the subscriber's share fell
 * further, since each turn took a 64 KiB encrypted read from every publisher and the subscriber
 * got 48 KiB a turn (tls_read.ts, tls_write.ts): 5% from 16 publishers over TLS, 17% over wss.
 * Measured since (16 KiB encrypted reads, writes in pieces): all of it, from 1 and from 16
 * publishers, over both.
 */
import assert from "node:assert/strict";
import { makeTestPki } from "../helpers/certs.ts";
import { startBrokerProcess } from "../helpers/broker_process.ts";
import { frame, RawWsClient, writeAll } from "../helpers/ws_raw.ts";

const dir = await Deno.makeTempDir({ prefix: "mcloudtt-flood-" });
const pki = await makeTestPki(dir);
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
const caCert = Deno.readTextFileSync(pki.ca.cert);

const enc = new TextEncoder();
const TOPIC = enc.encode("t/a");

function connectPacket(id: string): Uint8Array {
  const idb = enc.encode(id);
  const body = [0, 4, 77, 81, 84, 84, 4, 2, 0, 60, 0, idb.length, ...idb];
  return new Uint8Array([0x10, body.length, ...body]);
}

const SUBSCRIBE = new Uint8Array([0x82, 5 + TOPIC.length, 0, 1, 0, TOPIC.length, ...TOPIC, 0]);

/** Reads until `n` bytes arrived. */
async function readAtLeast(conn: Deno.Conn, n: number): Promise<void> {
  const b = new Uint8Array(64);
  for (let got = 0; got < n;) {
    const r = await conn.read(b);
    if (r === null) throw new Error("closed");
    got += r;
  }
}

/** A byte stream to the broker that carries MQTT packets (in WebSocket frames or not). */
interface Side {
  conn: Deno.Conn;
  /** What goes on the wire for one MQTT packet (or a batch of them). */
  wrap(packets: Uint8Array): Uint8Array;
  /** Bytes a CONNACK and a SUBACK take on the wire. */
  connack: number;
  suback: number;
}

/**
 * Floods from `publishers` connections with 64-PUBLISH batches for 2 s while `sub` reads;
 * returns the share of the sent bytes that reached the subscriber (delivered PUBLISHes are the
 * same size as sent ones, so this is the share of messages, give or take WebSocket frame
 * headers).
 */
async function flood(
  open: () => Promise<Side>,
  publishers = 1,
): Promise<{ share: number; messages: number }> {
  const sub = await open();
  await writeAll(sub.conn, sub.wrap(connectPacket("s")));
  await readAtLeast(sub.conn, sub.connack);
  await writeAll(sub.conn, sub.wrap(SUBSCRIBE));
  await readAtLeast(sub.conn, sub.suback);
  let received = 0;
  const reading = (async () => {
    const b = new Uint8Array(65536);
    for (;;) {
      const n = await sub.conn.read(b).catch(() => null);
      if (n === null) return;
      received += n;
    }
  })();

  const pubs: Side[] = [];
  for (let i = 0; i < publishers; i++) {
    const pub = await open();
    await writeAll(pub.conn, pub.wrap(connectPacket(`p${i}`)));
    await readAtLeast(pub.conn, pub.connack);
    pubs.push(pub);
  }
  const head = new Uint8Array([0x30, 2 + TOPIC.length + 64, 0, TOPIC.length, ...TOPIC]);
  const packet = new Uint8Array(head.length + 64);
  packet.set(head);
  const batch = new Uint8Array(packet.length * 64);
  for (let i = 0; i < 64; i++) batch.set(packet, i * packet.length);
  const wire = sub.wrap(batch);
  let sent = 0;
  const until = Date.now() + 2000;
  await Promise.all(pubs.map(async (pub) => {
    while (Date.now() < until) {
      await writeAll(pub.conn, wire);
      sent += batch.length;
    }
  }));
  // Let what the broker already read reach the subscriber.
  await new Promise((r) => setTimeout(r, 500));
  for (const pub of pubs) pub.conn.close();
  sub.conn.close();
  await reading;
  return { share: received / sent, messages: sent / packet.length };
}

function assertFair(r: { share: number; messages: number }, least = 0.2): void {
  assert.ok(
    r.share > least,
    `the subscriber got ${(r.share * 100).toFixed(1)}% of ${r.messages} messages`,
  );
}

const TLS_CONFIG = {
  tls: { certfile: pki.broker.cert, keyfile: pki.broker.key, cafile: pki.ca.cert },
  listeners: { tcp: { client_certificate: "none" }, ws: { client_certificate: "none" } },
  auth: { allow_anonymous: true },
} as const;

/** A broker process with a TLS listener (`wss`: a secure WebSocket one) and how to reach it. */
async function secureBroker(
  wss: boolean,
): Promise<{ broker: AsyncDisposable; open: () => Promise<Side> }> {
  const broker = await startBrokerProcess({
    general: { secure: true, websocket: wss },
    ...TLS_CONFIG,
  });
  const open = wss
    ? async () => ({
      conn: (await RawWsClient.open(broker.ports.wss, { caCert }, false)).conn,
      // 64 PUBLISH packets per WebSocket frame, as a batching client would send them.
      wrap: frame,
      connack: 6,
      suback: 7,
    })
    : async () => ({
      conn: await Deno.connectTls({
        hostname: "localhost",
        port: broker.ports.tls,
        caCerts: [caCert],
      }),
      wrap: (p: Uint8Array) => p,
      connack: 4,
      suback: 5,
    });
  return { broker, open };
}

for (const wss of [false, true]) {
  const name = wss ? "wss" : "tls";
  Deno.test(`${name}: a QoS 0 flood from one publisher reaches its subscriber`, async () => {
    const { broker, open } = await secureBroker(wss);
    await using _ = broker;
    assertFair(await flood(open));
  });

  Deno.test(`${name}: a QoS 0 flood from 16 publishers to one subscriber reaches it`, async () => {
    const { broker, open } = await secureBroker(wss);
    await using _ = broker;
    assertFair(await flood(open, 16), 0.5);
  });
}
