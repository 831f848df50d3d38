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

/** Opens one MQTT connection and resolves once its CONNACK arrived. */
function openOne(
  server: { port: number; tls: boolean },
  i: number,
  level: ProtocolLevel,
  prefix: string,
): Promise<net.Socket> {
  const localAddress = SOURCE_ADDRESSES[i % SOURCE_ADDRESSES.length];
  return new Promise((resolve, reject) => {
    const raw = net.connect({ host: HOST, port: server.port, localAddress });
    const socket: net.Socket = server.tls
      ? tls.connect({ socket: raw, rejectUnauthorized: false, servername: "localhost" })
      : raw;
    const fail = (e: Error) => {
      socket.destroy();
      raw.destroy();
      reject(e);
    };
    socket.once("error", fail);
    const connect = encodeConnect(level, `${prefix}${i}`, 60);
    if (server.tls) socket.once("secureConnect", () => socket.write(connect));
    else socket.once("connect", () => socket.write(connect));
    let seen = 0;
    const onData = (chunk: Uint8Array) => {
      if (seen === 0 && chunk[0] >> 4 !== 2) {
        return fail(new Error(`expected CONNACK, got type ${chunk[0] >> 4}`));
      }
      seen += chunk.length;
      if (seen < 4) return;
      socket.off("data", onData);
      socket.off("error", fail);
      socket.on("data", () => {});
      socket.on("error", () => {});
      resolve(socket);
    };
    socket.on("data", onData);
  });
}

/** Opens `count` connections, `concurrency` at a time. */
export async function openMany(
  server: { port: number; tls: boolean },
  count: number,
  opts: { level?: ProtocolLevel; concurrency?: number; prefix?: string } = {},
): Promise<Opened> {
  const { level = 4, concurrency = 32, prefix = "idle-" } = opts;
  const sockets: net.Socket[] = [];
  let next = 0, failed = 0;
  let firstError: string | undefined;
  const start = performance.now();
  const lane = async () => {
    while (next < count) {
      const i = next++;
      try {
        sockets.push(await openOne(server, i, level, prefix));
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
