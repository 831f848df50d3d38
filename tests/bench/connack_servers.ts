/**
 * The least a Deno server can be that holds MQTT clients' idle connections: it answers the first
 * bytes of each connection (the client's CONNECT) with a CONNACK and otherwise only reads, with
 * no other MQTT (PINGREQs are read and dropped; the bench's idle clients wait for no PINGRESP).
 * Two users: `idle_floor.ts` (run by `idle_cost.ts`) measures each mode on its own, and
 * `forwarder.ts --connack` serves `deno task bench`'s connections scenario for the `floor`
 * target with `deno-tcp-rid` over plain TCP and `node-tls` over TLS: the transports mcloudtt
 * uses (src/transport/tcp.ts reads by resource id, src/transport/tls.ts is node:tls).
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
 * - `native-tcp`: the runtime's native TCP handles through mcloudtt's own listener
 *   (src/transport/tcp_native.ts, what mcloudtt's TCP transport does where the runtime has
 *   them): batch accept, every read called back into one shared buffer, writes taken at once.
 * - `node-net`: node:net server, a 'data' listener per socket.
 * - `deno-tls`: Deno.listenTls, a pending read with a 256-byte buffer per connection.
 * - `deno-tls-shared`: Deno.listenTls, one shared read buffer.
 * - `node-tls`: node:tls server, a 'data' listener per socket.
 */
import net from "node:net";
import tls from "node:tls";
import { rawIo, resourceId } from "../../src/transport/deno_io.ts";
import { listenNativeTcp } from "../../src/transport/tcp_native.ts";
import type { ByteWriter, ConnectionHandler } from "../../src/transport/types.ts";

/** Every mode `listenIdle` knows. */
export const IDLE_MODES = [
  "deno-tcp",
  "deno-tcp-shared",
  "deno-tcp-hold",
  "deno-tcp-rid",
  "native-tcp",
  "node-net",
  "deno-tls",
  "deno-tls-shared",
  "node-tls",
] as const;

/** One of `IDLE_MODES`. */
export type IdleMode = typeof IDLE_MODES[number];

/** Where and how a mode listens. */
export interface IdleListen {
  /** 127.0.0.1 when absent. */
  readonly hostname?: string;
  /** A free port of the kernel's choice when absent (or 0). */
  readonly port?: number;
  /** The TLS modes' certificate and key files. */
  readonly certFile?: string;
  readonly keyFile?: string;
  /**
   * `node-net` and `node-tls` set TCP_NODELAY on each socket, as mcloudtt's TLS listener does
   * (`deno-tcp-rid` always sets it); off unless asked, as idle_cost.ts has always measured them.
   */
  readonly noDelay?: boolean;
}

const CONNACK = new Uint8Array([0x20, 0x02, 0x00, 0x00]);
const CONNACK_V5 = new Uint8Array([0x20, 0x03, 0x00, 0x00, 0x00]);

/** The CONNECT's protocol level is byte 8 of a CONNECT whose remaining length fits one byte. */
function connackFor(first: Uint8Array): Uint8Array {
  return first.length > 8 && first[8] === 5 ? CONNACK_V5 : CONNACK;
}

const shared = new Uint8Array(16 * 1024);
const held: unknown[] = [];
const pause = () => new Promise((r) => setTimeout(r, 10));

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

/** Hands every connection `listener` accepts to `handle`, for good. */
async function acceptEach(listener: Deno.Listener, handle: (conn: Deno.Conn) => void) {
  for (;;) {
    let conn: Deno.Conn;
    try {
      conn = await listener.accept();
    } catch {
      // Out of file descriptors, say: try again shortly rather than die.
      await pause();
      continue;
    }
    handle(conn);
  }
}

/** Reads each connection by resource id, as mcloudtt's TCP transport does. */
function ridLoop(listener: Deno.Listener): void {
  acceptEach(listener, (conn) => {
    // As mcloudtt and Mosquitto (set_tcp_nodelay) do: a setsockopt per connection.
    (conn as Deno.TcpConn).setNoDelay(true);
    const rid = resourceId(conn);
    if (rid === -1) throw new Error("no resource id on Deno.Conn");
    ridRead(rid, true);
  });
}

function acceptLoop(listener: Deno.Listener, own: boolean): void {
  acceptEach(listener, (conn) => readLoop(conn, own));
}

/** Holds the connection; the CONNACK is written without reading (clients send CONNECT first). */
async function holdLoop(listener: Deno.Listener): Promise<void> {
  for (;;) {
    const conn = await listener.accept();
    held.push(conn);
    conn.write(CONNACK).catch(() => {});
  }
}

/** Answers the first read with a CONNACK and otherwise only reads (`native-tcp`). */
class IdleHandler implements ConnectionHandler {
  readonly readGate = null;
  private first = true;
  constructor(private readonly sink: ByteWriter) {}

  data(chunk: Uint8Array, length: number): void {
    if (!this.first) return;
    this.first = false;
    this.sink.writeThen!(connackFor(chunk.subarray(0, length)), noop);
  }

  closed(): void {}
}

function noop(): void {}

function nodeHandler(noDelay: boolean): (socket: net.Socket) => void {
  return (socket) => {
    if (noDelay) socket.setNoDelay(true);
    let first = true;
    socket.on("data", (chunk: Uint8Array) => {
      if (first) {
        first = false;
        socket.write(connackFor(chunk));
      }
    });
    socket.on("error", () => {});
  };
}

/** Starts `mode` listening (see the module's comment); resolves with its port. */
export async function listenIdle(mode: string, o: IdleListen = {}): Promise<number> {
  const hostname = o.hostname ?? "127.0.0.1";
  const port = o.port ?? 0;
  const certs = () => {
    if (o.certFile === undefined || o.keyFile === undefined) {
      throw new Error(`${mode} needs a certificate and a key`);
    }
    return { cert: Deno.readTextFileSync(o.certFile), key: Deno.readTextFileSync(o.keyFile) };
  };
  switch (mode) {
    case "deno-tcp":
    case "deno-tcp-shared":
    case "deno-tcp-hold":
    case "deno-tcp-rid": {
      if (mode === "deno-tcp-rid" && rawIo === null) {
        throw new Error("this Deno has no core read by resource id");
      }
      const l = Deno.listen({ hostname, port });
      if (mode === "deno-tcp-hold") holdLoop(l);
      else if (mode === "deno-tcp-rid") ridLoop(l);
      else acceptLoop(l, mode === "deno-tcp");
      return (l.addr as Deno.NetAddr).port;
    }
    case "deno-tls":
    case "deno-tls-shared": {
      const l = Deno.listenTls({ hostname, port, ...certs() });
      acceptLoop(l, mode === "deno-tls");
      return l.addr.port;
    }
    case "native-tcp": {
      const l = listenNativeTcp({ accept: (sink) => new IdleHandler(sink) }, hostname, port, 0);
      if (l === null) throw new Error("this Deno has no native TCP handles");
      return l.port;
    }
    case "node-net":
    case "node-tls": {
      const handler = nodeHandler(o.noDelay === true);
      const server = mode === "node-net"
        ? net.createServer(handler)
        : tls.createServer(certs(), handler);
      await new Promise<void>((r) => server.listen(port, hostname, r));
      return (server.address() as net.AddressInfo).port;
    }
    default:
      throw new Error(`unknown mode ${mode} (one of ${IDLE_MODES.join(", ")})`);
  }
}
