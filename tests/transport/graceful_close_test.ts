/**
 * Closing after a reason code: when the broker sends DISCONNECT (or a refusing CONNACK) to a
 * client that is still sending, it half-closes and keeps reading, discarding, for
 * limits.close_linger_ms, so the client's writes do not fail and it reads the reason code and a
 * clean end of stream instead of a TCP reset (the Paho flow-control test's situation).
 */
import assert from "node:assert/strict";
import mqttPacket from "mqtt-packet";
import { delay, type Packet, startBroker, startSecureBroker } from "../helpers/broker.ts";
import { makeTestPki } from "../helpers/certs.ts";
import { writeAll } from "../helpers/ws_raw.ts";
import { concatBytes } from "../helpers/wire.ts";

const dir = await Deno.makeTempDir({ prefix: "mcloudtt-graceful-" });
const pki = await makeTestPki(dir);
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
const caCert = Deno.readTextFileSync(pki.ca.cert);

const gen = (p: Record<string, unknown>) =>
  new Uint8Array(mqttPacket.generate(p as unknown as Packet, { protocolVersion: 5 }));

const CONNECT = gen({
  cmd: "connect",
  protocolId: "MQTT",
  protocolVersion: 5,
  clientId: "eager",
  clean: true,
  keepalive: 0,
});

/** QoS 2 PUBLISH packets with ids from..to, back to back. */
function qos2(from: number, to: number): Uint8Array {
  const parts: Uint8Array[] = [];
  for (let id = from; id <= to; id++) {
    parts.push(gen({ cmd: "publish", topic: "rm", payload: "x", qos: 2, messageId: id }));
  }
  return concatBytes(parts);
}

/** What the client saw: the packets, whether its writes failed, and how the stream ended. */
interface Outcome {
  packets: Packet[];
  writeError: string | null;
  end: "eof" | string;
}

/**
 * Sends `first`, then keeps sending for a while (a 16 KiB burst every 10 ms for 300 ms, as a
 * busy client would, well within close_linger_ms) without reading, then reads everything the
 * broker sent until the stream ends.
 */
async function sendThenRead(conn: Deno.Conn, first: Uint8Array): Promise<Outcome> {
  const filler = gen({ cmd: "publish", topic: "x", payload: Buffer.alloc(1000), qos: 0 });
  const chunk = new Uint8Array(filler.length * 16);
  for (let i = 0; i < 16; i++) chunk.set(filler, i * filler.length);
  let writeError: string | null = null;
  try {
    await writeAll(conn, first);
    for (let i = 0; i < 30; i++) {
      await delay(10);
      await writeAll(conn, chunk);
    }
  } catch (e) {
    writeError = e instanceof Error ? e.name : String(e);
  }
  const packets: Packet[] = [];
  const parser = mqttPacket.parser({ protocolVersion: 5 });
  parser.on("packet", (p: Packet) => packets.push(p));
  const buf = new Uint8Array(65536);
  let end = "eof";
  try {
    for (;;) {
      const n = await conn.read(buf);
      if (n === null) break;
      parser.parse(Buffer.from(buf.subarray(0, n)));
    }
  } catch (e) {
    end = e instanceof Error ? e.name : String(e);
  }
  conn.close();
  return { packets, writeError, end };
}

interface Opened extends AsyncDisposable {
  connect(): Promise<Deno.Conn>;
}

const TRANSPORTS = [
  {
    name: "tcp",
    async start(limits: Record<string, number>): Promise<Opened> {
      const b = await startBroker({ limits });
      return {
        connect: () => Deno.connect({ hostname: "127.0.0.1", port: b.port }),
        [Symbol.asyncDispose]: () => b.stop(),
      };
    },
  },
  {
    name: "tls",
    async start(limits: Record<string, number>): Promise<Opened> {
      const b = await startSecureBroker(pki, {
        general: { websocket: false },
        listeners: { tcp: { client_certificate: "none" } },
        auth: { allow_anonymous: true },
        limits,
      });
      return {
        connect: () =>
          Deno.connectTls({ hostname: "localhost", port: b.tlsPort, caCerts: [caCert] }),
        [Symbol.asyncDispose]: () => b.stop(),
      };
    },
  },
];

for (const t of TRANSPORTS) {
  Deno.test(`${t.name}: a client still sending after a protocol violation reads DISCONNECT 0x93, not a reset`, async () => {
    await using b = await t.start({ receive_maximum: 2 });
    const conn = await b.connect();
    await writeAll(conn, CONNECT);
    // The third unacknowledged QoS 2 PUBLISH is over Receive Maximum [MQTT-3.3.4-7].
    const o = await sendThenRead(conn, qos2(1, 3));
    assert.equal(o.writeError, null, "the client's writes failed: the broker reset the connection");
    assert.equal(o.end, "eof", "the stream ended with an error instead of the broker's FIN");
    const cmds = o.packets.map((p) => p.cmd);
    assert.deepEqual(cmds, ["connack", "pubrec", "pubrec", "disconnect"]);
    assert.equal((o.packets[3] as { reasonCode?: number }).reasonCode, 0x93);
  });

  Deno.test(`${t.name}: a client still sending after a refusing CONNACK reads it, not a reset`, async () => {
    await using b = await t.start({ max_connections: 1 });
    // One connection is allowed and this is the second: CONNACK 0x97 Quota exceeded.
    const first = await b.connect();
    try {
      await writeAll(
        first,
        gen({
          cmd: "connect",
          protocolId: "MQTT",
          protocolVersion: 5,
          clientId: "first",
          clean: true,
          keepalive: 0,
        }),
      );
      await first.read(new Uint8Array(64));
      const o = await sendThenRead(await b.connect(), CONNECT);
      assert.equal(
        o.writeError,
        null,
        "the client's writes failed: the broker reset the connection",
      );
      assert.equal(o.end, "eof", "the stream ended with an error instead of the broker's FIN");
      assert.deepEqual(o.packets.map((p) => p.cmd), ["connack"]);
      assert.equal((o.packets[0] as { reasonCode?: number }).reasonCode, 0x97);
    } finally {
      first.close();
    }
  });
}
