/**
 * Many idle MQTT connections from one process, for measuring what an idle connection costs
 * the server (tests/bench/idle_cost.ts, tests/transport/idle_memory_test.ts). node:net binds
 * a local address, which Deno.connect cannot: connections are spread over 127.0.0.2-9, each
 * with its own ephemeral port range.
 */
import net from "node:net";
import tls from "node:tls";
import { encodeConnect, type ProtocolLevel } from "../bench/wire.ts";

const HOST = "127.0.0.1";

/** Loopback source addresses the connections are spread over. */
export const SOURCE_ADDRESSES: readonly string[] = Array.from(
  { length: 8 },
  (_, i) => `127.0.0.${i + 2}`,
);

/** Connections held by the client side, and how long opening them took. */
export interface Opened {
  sockets: net.Socket[];
  failed: number;
  firstError?: string;
  elapsedMs: number;
}

/** How connections are opened (every field has a default). */
export interface OpenOptions {
  level?: ProtocolLevel;
  /** Connections being opened at once. */
  concurrency?: number;
  /** Client ids are `${prefix}${i}`. */
  prefix?: string;
  keepAliveSeconds?: number;
  /** Local addresses bound round-robin. */
  sourceAddresses?: readonly string[];
  host?: string;
  /** Over TLS: the CA to verify the broker with; without one the certificate is not checked. */
  ca?: string;
  /** Told when a connection that got its CONNACK is closed (by the broker or the network). */
  onClose?: () => void;
}

/** Opens one MQTT connection and resolves once an accepting CONNACK arrived. */
function openOne(
  server: { port: number; tls: boolean },
  i: number,
  o: OpenOptions,
): Promise<net.Socket> {
  const sources = o.sourceAddresses ?? SOURCE_ADDRESSES;
  const localAddress = sources[i % sources.length];
  const host = o.host ?? HOST;
  return new Promise((resolve, reject) => {
    const raw = net.connect({ host, port: server.port, localAddress });
    raw.setNoDelay(true);
    const socket: net.Socket = server.tls
      ? tls.connect(
        o.ca === undefined
          ? { socket: raw, rejectUnauthorized: false, servername: "localhost" }
          : { socket: raw, host, ca: o.ca },
      )
      : raw;
    const fail = (e: Error) => {
      socket.destroy();
      raw.destroy();
      reject(e);
    };
    socket.once("error", fail);
    const connect = encodeConnect(
      o.level ?? 4,
      `${o.prefix ?? "idle-"}${i}`,
      o.keepAliveSeconds ?? 60,
    );
    socket.once(server.tls ? "secureConnect" : "connect", () => socket.write(connect));
    let seen = 0;
    const onData = (chunk: Uint8Array) => {
      // Only the CONNACK's first byte and reason code matter; the connection then stays idle.
      if (seen === 0 && chunk[0] >> 4 !== 2) {
        return fail(new Error(`expected CONNACK, got type ${chunk[0] >> 4}`));
      }
      seen += chunk.length;
      if (seen < 4) return;
      socket.off("data", onData);
      socket.off("error", fail);
      socket.on("data", () => {});
      socket.on("error", () => {});
      if (o.onClose !== undefined) socket.on("close", o.onClose);
      const reason = chunk[3 - (seen - chunk.length)];
      if (reason !== 0) return fail(new Error(`CONNACK reason 0x${reason?.toString(16)}`));
      resolve(socket);
    };
    socket.on("data", onData);
  });
}

/** Opens `count` connections, `concurrency` (32) at a time. */
export async function openMany(
  server: { port: number; tls: boolean },
  count: number,
  opts: OpenOptions = {},
): Promise<Opened> {
  const concurrency = opts.concurrency ?? 32;
  const sockets: net.Socket[] = [];
  let next = 0, failed = 0;
  let firstError: string | undefined;
  const start = performance.now();
  const lane = async () => {
    while (next < count) {
      const i = next++;
      try {
        sockets.push(await openOne(server, i, opts));
      } catch (e) {
        failed++;
        firstError ??= e instanceof Error ? e.message : String(e);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, lane));
  return { sockets, failed, firstError, elapsedMs: performance.now() - start };
}

/** Closes client sockets and waits until they are gone. */
export async function closeAll(sockets: net.Socket[]): Promise<void> {
  await Promise.all(sockets.map((s) =>
    new Promise<void>((resolve) => {
      if (s.destroyed) return resolve();
      s.once("close", () => resolve());
      s.destroy();
    })
  ));
}
