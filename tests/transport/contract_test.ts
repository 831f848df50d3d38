/**
 * One contract for every transport: whatever carries the bytes (TCP, TLS, WebSocket, secure
 * WebSocket), a client sees the same broker. Each case runs the same exchange: both protocol
 * versions, QoS 0/1/2, a retained message, and a 512 KiB payload that spans many reads/frames.
 */
import assert from "node:assert/strict";
import type { IClientOptions } from "mqtt";
import { connectClient, startSecureBroker, subscriber } from "../helpers/broker.ts";
import { makeTestPki, type TestPki } from "../helpers/certs.ts";

interface Transport {
  name: string;
  /** Broker overrides on top of the secure test broker. */
  secure: boolean;
  /** Client options for a port of that broker. */
  client(pki: TestPki, tlsPort: number, wssPort: number): IClientOptions;
}

function tlsOptions(pki: TestPki): IClientOptions {
  return {
    ca: Deno.readTextFileSync(pki.ca.cert),
    cert: Deno.readTextFileSync(pki.alice.cert),
    key: Deno.readTextFileSync(pki.alice.key),
    servername: "localhost",
  };
}

const TRANSPORTS: Transport[] = [
  { name: "tcp", secure: false, client: (_p, port) => ({ protocol: "mqtt", port }) },
  {
    name: "tls",
    secure: true,
    client: (p, port) => ({ protocol: "mqtts", port, ...tlsOptions(p) }),
  },
  {
    name: "ws",
    secure: false,
    client: (_p, _t, port) => ({ protocol: "ws", port, path: "/mqtt" }),
  },
  {
    name: "wss",
    secure: true,
    client: (p, _t, port) => ({ protocol: "wss", port, path: "/mqtt", ...tlsOptions(p) }),
  },
];

const pkiDir = await Deno.makeTempDir({ prefix: "mcloudtt-contract-" });
const pki = await makeTestPki(pkiDir);
globalThis.addEventListener("unload", () => Deno.removeSync(pkiDir, { recursive: true }));

for (const t of TRANSPORTS) {
  for (const version of [5, 4] as const) {
    Deno.test(`transport contract over ${t.name}, MQTT ${version === 5 ? "5" : "3.1.1"}`, async () => {
      await using b = await startSecureBroker(pki, {
        general: { secure: t.secure, websocket: true },
      });
      const opts = (id: string): IClientOptions => ({
        ...t.client(pki, b.tlsPort, b.wssPort),
        host: "127.0.0.1",
        clientId: id,
        protocolVersion: version,
      });
      await using sub = await subscriber(0, "c/#", 2, opts(`sub-${t.name}`));
      await using pub = await connectClient(0, opts(`pub-${t.name}`));
      for (const qos of [0, 1, 2] as const) {
        await pub.publishAsync(`c/q${qos}`, `qos ${qos}`, { qos });
        const m = await sub.inbox.next();
        assert.equal(m.topic, `c/q${qos}`);
        assert.equal(m.payload, `qos ${qos}`);
        assert.equal(m.packet.qos, qos);
      }
      // Large enough to span many TCP reads, TLS records and WebSocket frames.
      const big = new Uint8Array(512 * 1024).map((_, i) => i % 251);
      await pub.publishAsync("c/big", big as unknown as Buffer, { qos: 1 });
      const m = await sub.inbox.next(10_000);
      assert.equal(m.topic, "c/big");
      assert.deepEqual(new Uint8Array(m.packet.payload as Uint8Array), big);
      // Retained messages reach a later subscriber with the retain flag.
      await pub.publishAsync("r/t", "kept", { qos: 1, retain: true });
      await using late = await subscriber(0, "r/#", 1, opts(`late-${t.name}`));
      const r = await late.inbox.next();
      assert.equal(r.payload, "kept");
      assert.equal(r.packet.retain, true);
    });
  }
}
