/**
 * Fairness over secure WebSocket (issue 14), as tls_flood_test.ts checks it over TLS: one
 * client publishing QoS 0 flat out over wss must not starve the broker's writes to its
 * subscriber on the same listener.
 */
import assert from "node:assert/strict";
import { makeTestPki } from "../helpers/certs.ts";
import { startBrokerProcess } from "../helpers/broker_process.ts";
import { frame, RawWsClient, writeAll } from "../helpers/ws_raw.ts";

const dir = await Deno.makeTempDir({ prefix: "mcloudtt-wss-flood-" });
const pki = await makeTestPki(dir);
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
const caCert = Deno.readTextFileSync(pki.ca.cert);

const enc = new TextEncoder();

function connectPacket(id: string): Uint8Array {
  const idb = enc.encode(id);
  const body = [0, 4, 77, 81, 84, 84, 4, 2, 0, 60, 0, idb.length, ...idb];
  return new Uint8Array([0x10, body.length, ...body]);
}

/** Reads until `n` bytes (frames included) arrived. */
async function readAtLeast(conn: Deno.Conn, n: number): Promise<void> {
  const b = new Uint8Array(64);
  for (let got = 0; got < n;) {
    const r = await conn.read(b);
    if (r === null) throw new Error("closed");
    got += r;
  }
}

Deno.test("wss: a QoS 0 flood from one publisher reaches its subscriber", async () => {
  await using broker = await startBrokerProcess({
    general: { secure: true, websocket: true },
    tls: { certfile: pki.broker.cert, keyfile: pki.broker.key, cafile: pki.ca.cert },
    listeners: { tcp: { client_certificate: "none" }, ws: { client_certificate: "none" } },
    auth: { allow_anonymous: true },
  });
  const port = broker.ports.wss;
  const topic = enc.encode("t/a");

  const sub = (await RawWsClient.open(port, { caCert }, false)).conn;
  await writeAll(sub, frame(connectPacket("s")));
  await readAtLeast(sub, 6);
  await writeAll(
    sub,
    frame(new Uint8Array([0x82, 5 + topic.length, 0, 1, 0, topic.length, ...topic, 0])),
  );
  await readAtLeast(sub, 7);
  let received = 0;
  const reading = (async () => {
    const b = new Uint8Array(65536);
    for (;;) {
      const n = await sub.read(b).catch(() => null);
      if (n === null) return;
      received += n;
    }
  })();

  const pub = (await RawWsClient.open(port, { caCert }, false)).conn;
  await writeAll(pub, frame(connectPacket("p")));
  await readAtLeast(pub, 6);
  const one = new Uint8Array([0x30, 2 + topic.length + 64, 0, topic.length, ...topic]);
  const packet = new Uint8Array(one.length + 64);
  packet.set(one);
  // 64 PUBLISH packets per WebSocket frame, as a batching client would send them.
  const batch = new Uint8Array(packet.length * 64);
  for (let i = 0; i < 64; i++) batch.set(packet, i * packet.length);
  const framed = frame(batch);
  let sent = 0;
  const until = Date.now() + 2000;
  while (Date.now() < until) {
    await writeAll(pub, framed);
    sent += batch.length;
  }
  await new Promise((r) => setTimeout(r, 500));
  pub.close();
  sub.close();
  await reading;
  // Each delivery arrives in a frame of its own or with others: count payload bytes, roughly.
  const share = received / sent;
  assert.ok(
    share > 0.2,
    `the subscriber got ${(share * 100).toFixed(1)}% of ${sent / packet.length} messages`,
  );
});
