/**
 * The runtime floor for idle connections: the least a Deno server can hold per connection, to
 * compare the broker against (`idle_cost.ts` starts it). It answers the first bytes of each
 * connection with a CONNACK and otherwise only reads. Started as
 * `deno run -A --v8-flags=--expose-gc idle_floor.ts <mode> [cert key]`; prints `READY <port>`,
 * answers each `mem` line on stdin with `MEM <Deno.memoryUsage() after a full GC>`, and exits
 * when stdin closes.
 *
 * Modes (each isolates one cost):
 * - `deno-tcp`: Deno.listen, a read pending on every connection into its own 256-byte buffer
 *   (the obvious loop).
 * - `deno-tcp-shared`: the same, all reads into one shared buffer (what a pending read costs
 *   without a buffer per connection).
 * - `deno-tcp-hold`: Deno.listen, connections accepted and held without a read (what the
 *   resource alone costs; such a server could not notice input).
 * - `deno-tcp-rid`: Deno.listen, the Deno.Conn let go after accept and the socket read by
 *   resource id through Deno's core into one shared buffer (src/transport/deno_io.ts, what
 *   mcloudtt's TCP transport does, TCP_NODELAY set as it does): the least a Deno server that
 *   notices input can hold.
 * - `node-net`: node:net server, a 'data' listener per socket.
 * - `deno-tls`: Deno.listenTls, a pending read with a 256-byte buffer per connection.
 * - `deno-tls-shared`: Deno.listenTls, one shared read buffer.
 * - `node-tls`: node:tls server, a 'data' listener per socket.
 */
import net from "node:net";
import tls from "node:tls";
import { serveMemoryRequests } from "../helpers/memory_child.ts";
import { rawIo, resourceId } from "../../src/transport/deno_io.ts";

const CONNACK = new Uint8Array([0x20, 0x02, 0x00, 0x00]);
const CONNACK_V5 = new Uint8Array([0x20, 0x03, 0x00, 0x00, 0x00]);

/** The CONNECT's protocol level is byte 8 of a CONNECT whose remaining length fits one byte. */
function connackFor(first: Uint8Array): Uint8Array {
  return first.length > 8 && first[8] === 5 ? CONNACK_V5 : CONNACK;
}

const [mode, certFile, keyFile] = Deno.args;
const shared = new Uint8Array(16 * 1024);
const conns: unknown[] = [];

async function readLoop(conn: Deno.Conn, own: boolean): Promise<void> {
  const buf = own ? new Uint8Array(256) : shared;
  let first = true;
  try {
    for (;;) {
      const n = await conn.read(buf);
      if (n === null) break;
      if (first) {
        first = false;
        await conn.write(connackFor(buf.subarray(0, n)));
      }
    }
  } catch {
    // reset
  }
  try {
    conn.close();
  } catch {
    // closed
  }
}

/** One pending read by resource id; the first read is answered with a CONNACK. */
function ridRead(rid: number, first: boolean): void {
  rawIo!.read(rid, shared).then((n) => {
    if (n === 0) return rawIo!.close(rid);
    if (first) rawIo!.write(rid, connackFor(shared.subarray(0, n))).catch(() => {});
    ridRead(rid, false);
  }, () => rawIo!.close(rid));
}

async function ridLoop(listener: Deno.Listener): Promise<void> {
  if (rawIo === null) throw new Error("this Deno has no core read by resource id");
  for (;;) {
    const conn = await listener.accept();
    // As mcloudtt and Mosquitto (set_tcp_nodelay) do: a setsockopt per connection.
    (conn as Deno.TcpConn).setNoDelay(true);
    const rid = resourceId(conn);
    if (rid === -1) throw new Error("no resource id on Deno.Conn");
    ridRead(rid, true);
  }
}

async function acceptLoop(listener: Deno.Listener, own: boolean): Promise<void> {
  for (;;) {
    let conn: Deno.Conn;
    try {
      conn = await listener.accept();
    } catch {
      await new Promise((r) => setTimeout(r, 10));
      continue;
    }
    readLoop(conn, own);
  }
}

/** Holds the connection; the CONNACK is written without reading (clients send CONNECT first). */
async function holdLoop(listener: Deno.Listener): Promise<void> {
  for (;;) {
    const conn = await listener.accept();
    conns.push(conn);
    conn.write(CONNACK).catch(() => {});
  }
}

function nodeHandler(socket: net.Socket): void {
  let first = true;
  socket.on("data", (chunk: Uint8Array) => {
    if (first) {
      first = false;
      socket.write(connackFor(chunk));
    }
  });
  socket.on("error", () => {});
}

async function start(): Promise<number> {
  switch (mode) {
    case "deno-tcp":
    case "deno-tcp-shared":
    case "deno-tcp-hold":
    case "deno-tcp-rid": {
      const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
      if (mode === "deno-tcp-hold") holdLoop(l);
      else if (mode === "deno-tcp-rid") ridLoop(l);
      else acceptLoop(l, mode === "deno-tcp");
      return (l.addr as Deno.NetAddr).port;
    }
    case "deno-tls":
    case "deno-tls-shared": {
      const l = Deno.listenTls({
        hostname: "127.0.0.1",
        port: 0,
        cert: Deno.readTextFileSync(certFile),
        key: Deno.readTextFileSync(keyFile),
      });
      acceptLoop(l, mode === "deno-tls");
      return l.addr.port;
    }
    case "node-net":
    case "node-tls": {
      const server = mode === "node-net" ? net.createServer(nodeHandler) : tls.createServer(
        { cert: Deno.readTextFileSync(certFile), key: Deno.readTextFileSync(keyFile) },
        nodeHandler,
      );
      await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
      return (server.address() as net.AddressInfo).port;
    }
    default:
      throw new Error(`unknown mode ${mode}`);
  }
}

await serveMemoryRequests(String(await start()));
Deno.exit(0);
