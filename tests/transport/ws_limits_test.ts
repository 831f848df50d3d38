/**
 * Bounded memory on both WebSocket transports (plain on Deno, secure on node:https + ws): a
 * frame larger than the maximum packet size is refused from its header, before its payload is
 * buffered, and a client that floods without reading is stopped, as over TCP. Memory is read
 * from the broker's own process.
 */
import assert from "node:assert/strict";
import type { Config, DeepPartial } from "../../mod.ts";
import { makeTestPki } from "../helpers/certs.ts";
import { type BrokerProcess, mib, startBrokerProcess } from "../helpers/broker_process.ts";
import { frameHeader, RawWsClient, type RawWsOptions, writeAll } from "../helpers/ws_raw.ts";

const MIB = 1024 * 1024;

const dir = await Deno.makeTempDir({ prefix: "mcloudtt-ws-limits-" });
const pki = await makeTestPki(dir);
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
const caCert = Deno.readTextFileSync(pki.ca.cert);

interface Variant {
  name: "ws" | "wss";
  start(extra?: DeepPartial<Config>): Promise<BrokerProcess>;
  opts: RawWsOptions;
}

const VARIANTS: Variant[] = [
  {
    name: "ws",
    start: (extra = {}) =>
      startBrokerProcess({
        ...extra,
        general: { websocket: true },
        listeners: { tcp: { enabled: false } },
      }),
    opts: {},
  },
  {
    name: "wss",
    start: (extra = {}) =>
      startBrokerProcess({
        ...extra,
        general: { secure: true, websocket: true },
        tls: { certfile: pki.broker.cert, keyfile: pki.broker.key, cafile: pki.ca.cert },
        listeners: { tcp: { enabled: false }, ws: { client_certificate: "none" } },
        auth: { allow_anonymous: true },
      }),
    opts: { caCert },
  },
];

/** Writes `bytes` unless the peer stops taking them for `ms`; false when it stopped or failed. */
async function writeOrStall(conn: Deno.Conn, bytes: Uint8Array, ms = 2000): Promise<boolean> {
  let t: ReturnType<typeof setTimeout> | undefined;
  const stall = new Promise<false>((r) => t = setTimeout(() => r(false), ms));
  try {
    return await Promise.race([writeAll(conn, bytes).then(() => true), stall]);
  } catch {
    return false;
  } finally {
    clearTimeout(t);
  }
}

for (const v of VARIANTS) {
  Deno.test(`${v.name}: a frame over max_packet_size is refused before it is buffered`, async () => {
    await using broker = await v.start();
    const port = broker.ports[v.name];
    await using ws = await RawWsClient.open(port, v.opts);
    await ws.handshake("big-frame");
    const before = await broker.memory();
    // Announce a 60 MiB frame (under the 64 MiB Deno would take) and stream up to 48 MiB of it.
    const chunk = new Uint8Array(MIB);
    let sent = 0;
    if (await writeOrStall(ws.conn, frameHeader(60 * MIB))) {
      while (sent < 48 * MIB && await writeOrStall(ws.conn, chunk)) sent += chunk.length;
    }
    const after = await broker.memory();
    const grew = after.rss - before.rss;
    assert.ok(
      grew < 16 * MIB,
      `RSS grew by ${mib(grew)} after streaming ${mib(sent)} of an oversized frame`,
    );
    // The broker closed the WebSocket: with 1009 (message too big) or by ending the stream.
    let e = await ws.next();
    while (e.kind === "packet") e = await ws.next();
    if (e.kind === "close") assert.equal(e.code, 1009);
  });
}
