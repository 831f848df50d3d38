/**
 * The runtime's floor (issue 14): floor.ts's bare forwarder, and `deno task bench`'s `floor`
 * target (floor_target.ts). No MQTT. A 2-byte hello (role, pair) pairs publisher i with
 * subscriber i, then it copies bytes both ways. Over plain TCP it uses mcloudtt's native TCP
 * listener (src/transport/tcp_native.ts; where the runtime lacks native handles, `Deno.listen`
 * read and written by resource id, src/transport/deno_io.ts), over TLS `node:tls`: what
 * mcloudtt's own transports use. The bench's C probe drives it in its `--raw` mode.
 *
 * With `--connack` it forwards nothing and holds idle connections instead, answering each
 * CONNECT with a CONNACK (connack_servers.ts: `native-tcp` over TCP, else `deno-tcp-rid`;
 * `node-tls` over TLS), for the bench's connections scenario.
 *
 *   deno run -A tests/bench/forwarder.ts <port> [--cert file --key file] [--connack]
 */
import { parseArgs } from "node:util";
import tls from "node:tls";
// Not from brokers.ts, which imports this module (through floor_target.ts).
import { freePort } from "../helpers/ports.ts";
import { concat } from "./wire.ts";
import { rawIo, resourceId } from "../../src/transport/deno_io.ts";
import { bridgeSocket } from "../../src/transport/tls_read.ts";
import { writeRequest, writeTls } from "../../src/transport/tls_write.ts";
import { listenNativeTcp, nativeTcp } from "../../src/transport/tcp_native.ts";
import type { ByteWriter, ConnectionHandler } from "../../src/transport/types.ts";
import { listenIdle } from "./connack_servers.ts";
import type { BenchPki } from "./tls.ts";
import { HOST, startTraced, type Traced } from "./traced.ts";

const REPO_ROOT = new URL("../../", import.meta.url).pathname;
const SELF = new URL(import.meta.url).pathname;

/**
 * One side of a forwarded pair, read and written the cheapest way Deno offers: by resource id
 * through the runtime's core (what mcloudtt's TCP transport does, src/transport/deno_io.ts),
 * else through the Deno.Conn's own methods.
 */
interface Side {
  /** Resolves with the byte count, 0 at end of stream. */
  read(buf: Uint8Array): Promise<number>;
  write(bytes: Uint8Array): Promise<number>;
  close(): void;
}

function side(conn: Deno.Conn): Side {
  const rid = rawIo === null ? -1 : resourceId(conn);
  if (rid === -1) {
    return {
      read: (buf) => conn.read(buf).then((n) => n ?? 0),
      write: (bytes) => conn.write(bytes),
      close: () => conn.close(),
    };
  }
  const io = rawIo!;
  return {
    read: (buf) => io.read(rid, buf),
    write: (bytes) => io.write(rid, bytes),
    close: () => io.close(rid),
  };
}

/**
 * Copies everything `from` sends to `to` until either side ends: one read, then its bytes
 * written, then the next read (a broker reads a publisher no faster than its subscriber takes
 * the bytes). Callbacks, one promise per read and per write and no async function: the least
 * JavaScript a Deno program can run per message, so the floor is the runtime's and not this
 * forwarder's.
 */
function forward(from: Side, to: Side, first: Uint8Array | null): void {
  const buf = new Uint8Array(16 * 1024);
  let n = 0;
  let ended = false;
  const end = () => {
    if (ended) return;
    ended = true;
    for (const c of [from, to]) {
      try {
        c.close();
      } catch {
        // closed by the other direction
      }
    }
  };
  const read = () => from.read(buf).then(onRead, end);
  const onRead = (r: number) => {
    if (r === 0) return end();
    n = r;
    to.write(buf.subarray(0, n)).then(onWrote, end);
  };
  const onWrote = (w: number) => {
    if (w >= n) return read();
    // A partial write: the rest first.
    buf.copyWithin(0, w, n);
    n -= w;
    to.write(buf.subarray(0, n)).then(onWrote, end);
  };
  if (first !== null && first.length > 0) {
    buf.set(first);
    n = first.length;
    to.write(buf.subarray(0, n)).then(onWrote, end);
  } else read();
}

/** Reads the 2-byte hello (role, pair); returns it with whatever followed it. */
async function hello(conn: Side): Promise<{ role: number; pair: number; rest: Uint8Array }> {
  const buf = new Uint8Array(4096);
  let have = 0;
  while (have < 2) {
    const n = await conn.read(buf.subarray(have));
    if (n === 0) throw new Error("closed before hello");
    have += n;
  }
  return { role: buf[0], pair: buf[1], rest: buf.slice(2, have) };
}

/** The plain forwarder: pairs publisher i with subscriber i and pipes them both ways. */
async function serve(port: number): Promise<void> {
  const listener = Deno.listen({ hostname: HOST, port });
  const waiting = new Map<string, { conn: Side; rest: Uint8Array }>();
  for await (const tcp of listener) {
    tcp.setNoDelay(true);
    const conn = side(tcp);
    hello(conn).then(({ role, pair, rest }) => {
      const peerKey = `${1 - role}:${pair}`;
      const peer = waiting.get(peerKey);
      if (peer === undefined) {
        waiting.set(`${role}:${pair}`, { conn, rest });
        return;
      }
      waiting.delete(peerKey);
      forward(conn, peer.conn, rest);
      forward(peer.conn, conn, peer.rest);
    }, () => conn.close());
  }
}

/**
 * One side of a pair, read and written through mcloudtt's own transports: as a
 * ConnectionHandler of the TLS listener's reader (src/transport/tls_read.ts: into a buffer of
 * its own, the encrypted bytes into the shared one; tls_write.ts: straight to the TLS handle) or
 * of the native TCP listener (src/transport/tcp_native.ts: reads into the shared buffer, writes
 * taken at once), so the floor is what that transport costs. Each read is copied once and
 * written to the partner; while a write to the partner is in flight what follows waits, and
 * this side stops reading (as a broker stops reading a publisher whose subscriber is behind).
 * The first two bytes are the hello.
 */
class PairedSide implements ConnectionHandler {
  partner: PairedSide | null = null;
  readGate: Promise<void> | null = null;
  private readonly hello: number[] = [];
  /** What arrived after the hello before the partner did. */
  private early: Uint8Array[] = [];
  private queued: Uint8Array[] = [];
  /** A write of this side's is in flight. */
  private writing = false;
  /** Opens the partner's read gate once what it sent is written. */
  private waiting: (() => void) | null = null;

  /**
   * `write` writes to this side's socket and returns true when it took the bytes at once,
   * else calls `done` once written (with an error when it failed).
   */
  constructor(
    private readonly write: (bytes: Uint8Array, done: (err: unknown) => void) => boolean,
    private readonly destroy: () => void,
    private readonly paired: (side: PairedSide) => void,
  ) {}

  get role(): number {
    return this.hello[0];
  }

  get pair(): number {
    return this.hello[1];
  }

  data(chunk: Uint8Array, length: number): void {
    let from = 0;
    while (this.hello.length < 2 && from < length) this.hello.push(chunk[from++]);
    if (from === length) {
      if (this.hello.length === 2 && from > 0) this.paired(this);
      return;
    }
    const copy = chunk.slice(from, length);
    if (from > 0) this.paired(this);
    if (this.partner === null) this.early.push(copy);
    else this.send(copy);
  }

  /** Becomes `partner`'s partner and sends what arrived early. */
  join(partner: PairedSide): void {
    this.partner = partner;
    for (const c of this.early) this.send(c);
    this.early = [];
  }

  private send(bytes: Uint8Array): void {
    const to = this.partner!;
    if (!to.writing) {
      to.put(bytes);
      return;
    }
    // One write at a time, as mcloudtt's outbox: the rest waits, and this side stops reading
    // until the partner has written it.
    to.queued.push(bytes);
    if (this.readGate === null) {
      this.readGate = new Promise((resolve) => to.waiting = resolve);
    }
  }

  /** Writes `bytes` to this side's socket. */
  private put(bytes: Uint8Array): void {
    this.writing = true;
    if (this.write(bytes, this.written)) this.written(undefined);
  }

  private readonly written = (err: unknown): void => {
    this.writing = false;
    if (err !== null && err !== undefined) {
      this.destroy();
      return;
    }
    if (this.queued.length > 0) {
      const next = this.queued.length === 1 ? this.queued[0] : concat(this.queued);
      this.queued = [];
      this.put(next);
      return;
    }
    const w = this.waiting;
    if (w !== null) {
      this.waiting = null;
      this.partner!.readGate = null;
      w();
    }
  };

  closed(): void {
    this.partner?.destroy();
  }
}

/** Pairs sides by their hello: publisher i with subscriber i. */
function pairing(): (side: PairedSide) => void {
  const waiting = new Map<string, PairedSide>();
  return (side) => {
    const peerKey = `${1 - side.role}:${side.pair}`;
    const peer = waiting.get(peerKey);
    if (peer === undefined) {
      waiting.set(`${side.role}:${side.pair}`, side);
      return;
    }
    waiting.delete(peerKey);
    side.join(peer);
    peer.join(side);
  };
}

/**
 * The plain forwarder on mcloudtt's native TCP listener (tcp_native.ts); false when the runtime
 * has no native handles (then `serve`).
 */
function serveNative(port: number): boolean {
  const paired = pairing();
  const acceptor = {
    accept(sink: ByteWriter): ConnectionHandler {
      return new PairedSide(
        (bytes, done) => sink.writeThen!(bytes, done) === true,
        () => sink.close(),
        paired,
      );
    },
  };
  return listenNativeTcp(acceptor, HOST, port, 0) !== null;
}

/** The TLS forwarder, on node:tls like mcloudtt's TLS listener. */
function serveTls(port: number, certFile: string, keyFile: string): void {
  const paired = pairing();
  const server = tls.createServer({
    cert: Deno.readTextFileSync(certFile),
    key: Deno.readTextFileSync(keyFile),
  }, (socket) => {
    socket.setNoDelay(true);
    const req = writeRequest();
    const side = new PairedSide(
      (bytes, done) => {
        writeTls(socket, req, bytes, done);
        return false;
      },
      () => socket.destroy(),
      paired,
    );
    bridgeSocket(socket, side);
  });
  server.listen(port, HOST);
}

/** More of how the forwarder runs. */
export interface ForwarderOptions {
  /** Forward bytes (the default), or hold idle connections and answer CONNECT (`--connack`). */
  readonly serve?: "forward" | "connack";
  /** Under V8's GC trace (the default); false for none (`deno task bench --no-gc-trace`). */
  readonly gcTrace?: boolean;
}

/**
 * Starts the forwarder in a process of its own on a free port (behind TLS with `pki`'s
 * certificate when given), traced like a broker (on the servers' CPUs under `--pin`); `v8` adds
 * V8 flags.
 */
export async function startForwarder(
  pki: BenchPki | undefined,
  mark: () => number,
  v8: string[] = [],
  options: ForwarderOptions = {},
): Promise<{ port: number; traced: Traced }> {
  const port = freePort();
  const tlsArgs = pki === undefined ? [] : ["--cert", pki.certFile, "--key", pki.keyFile];
  const serveArgs = options.serve === "connack" ? ["--connack"] : [];
  const traced = await startTraced([SELF, String(port), ...tlsArgs, ...serveArgs], {
    cwd: REPO_ROOT,
    port,
    v8,
    mark,
    gcTrace: options.gcTrace,
  });
  return { port, traced };
}

if (import.meta.main) {
  const { values, positionals } = parseArgs({
    args: Deno.args,
    options: {
      cert: { type: "string" },
      key: { type: "string" },
      connack: { type: "boolean", default: false },
    },
    allowPositionals: true,
  });
  const port = Number(positionals[0]);
  if (!Number.isInteger(port) || port <= 0) {
    throw new Error("usage: forwarder.ts <port> [--cert f --key f] [--connack]");
  }
  const secure = values.cert !== undefined && values.key !== undefined;
  if (values.connack) {
    // As mcloudtt's TCP listener: native handles where the runtime has them, else by resource
    // id, else Deno.Conn's own methods.
    const plain = nativeTcp !== null
      ? "native-tcp"
      : rawIo === null
      ? "deno-tcp-shared"
      : "deno-tcp-rid";
    await listenIdle(secure ? "node-tls" : plain, {
      hostname: HOST,
      port,
      certFile: values.cert,
      keyFile: values.key,
      noDelay: true,
    });
  } else if (secure) {
    serveTls(port, values.cert!, values.key!);
  } else if (!serveNative(port)) await serve(port);
}
