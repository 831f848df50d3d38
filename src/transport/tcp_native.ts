/**
 * Plain TCP on the runtime's native stream handles, the ones node:net is built on, without
 * node:net's streams. Deno 2.9's node:net runs on a libuv-like layer in Rust (`TCPWrap`): the
 * listener accepts every ready connection at once and calls back per connection, a read calls
 * the handle's `onread` straight from the event loop, and a write is tried on the socket at
 * once. Deno.listen's connections are read and written through async ops instead: a promise,
 * a reaction and the op's bookkeeping per read and per write (about 600 B of heap per read,
 * half of what a QoS 1 message allocated over TCP), and one accept per event-loop turn.
 *
 * Here every connection reads into one buffer shared by all of them: the runtime reads a socket
 * into it and calls `onread` at once, and the broker's handler is only given the bytes during
 * that call (ConnectionHandler.data), so no read can land while another's bytes are still
 * needed. Writes complete in the call when the socket takes them whole, which is the usual
 * case; otherwise the runtime keeps the rest and calls the connection's request object back.
 *
 * These are the runtime's internals, reached through node's `process.binding` (the
 * `tcp_wrap` and `stream_wrap` bindings: the handle class and the shared state array its reads
 * and writes report through). Where they are missing `nativeTcp` is null and tcp.ts listens with
 * Deno.listen as before. Measured (issue 14): see README, Performance.
 */
import process from "node:process";
import { getLogger } from "@logtape/logtape";
import { keepAccepting, LISTEN_BACKLOG } from "./rearm.ts";
import { throttle, type Throttled } from "./throttle.ts";
import type { Acceptor, ByteWriter, ConnectionHandler, Listener, PeerInfo } from "./types.ts";

const log = getLogger(["mcloudtt", "tcp"]);

/** A native TCP handle, as far as it is used here (node's `TCPWrap`). */
interface NativeHandle {
  bind(address: string, port: number): number;
  bind6(address: string, port: number, flags: number): number;
  listen(backlog: number): number;
  accept(client: NativeHandle): number;
  getsockname(out: { address?: string; port?: number }): number;
  getpeername(out: { address?: string; port?: number }): number;
  setNoDelay(on: boolean): number;
  useUserBuffer(buffer: Uint8Array): void;
  readStart(): number;
  readStop(): number;
  writeBuffer(req: object, bytes: Uint8Array): number;
  shutdown(req: object): number;
  close(): void;
  onconnection: ((this: NativeHandle, status: number) => void) | null;
  onread: ((this: NativeHandle) => void) | null;
  [CONNECTION]?: NativeTcpConnection;
}

/** The runtime's native TCP: the handle class and where reads and writes report. */
interface NativeTcp {
  readonly Tcp: new (type: number) => NativeHandle;
  readonly server: number;
  readonly socket: number;
  /** Reads put their byte count (or a negative error, end of stream) at `kRead`. */
  readonly state: Int32Array;
  readonly kRead: number;
  /** Non-zero after a write the socket did not take whole (completion comes later). */
  readonly kAsync: number;
}

const CONNECTION = Symbol("mcloudtt.tcpConnection");

function findNativeTcp(): NativeTcp | null {
  try {
    const binding = (process as unknown as { binding?: (name: string) => unknown }).binding;
    if (typeof binding !== "function") return null;
    const tcp = binding("tcp_wrap") as {
      TCP?: unknown;
      constants?: { SERVER?: unknown; SOCKET?: unknown };
    };
    const stream = binding("stream_wrap") as {
      streamBaseState?: unknown;
      kReadBytesOrError?: unknown;
      kLastWriteWasAsync?: unknown;
    };
    const Tcp = tcp?.TCP;
    const proto = typeof Tcp === "function"
      ? (Tcp as { prototype: Record<string, unknown> }).prototype
      : null;
    const methods = [
      "bind",
      "bind6",
      "listen",
      "accept",
      "getsockname",
      "getpeername",
      "setNoDelay",
      "useUserBuffer",
      "readStart",
      "readStop",
      "writeBuffer",
      "shutdown",
      "close",
    ];
    if (
      proto === null || methods.some((m) => typeof proto[m] !== "function") ||
      typeof tcp.constants?.SERVER !== "number" || typeof tcp.constants?.SOCKET !== "number" ||
      !(stream?.streamBaseState instanceof Int32Array) ||
      typeof stream.kReadBytesOrError !== "number" || typeof stream.kLastWriteWasAsync !== "number"
    ) {
      return null;
    }
    return {
      Tcp: Tcp as NativeTcp["Tcp"],
      server: tcp.constants.SERVER,
      socket: tcp.constants.SOCKET,
      state: stream.streamBaseState,
      kRead: stream.kReadBytesOrError,
      kAsync: stream.kLastWriteWasAsync,
    };
  } catch {
    return null;
  }
}

/**
 * Whether sockets accepted from a listener with TCP_NODELAY have it too. Linux copies the option
 * to the accepted socket; elsewhere every connection sets it (tcp_native_test.ts reads it back
 * from the broker's socket).
 */
const INHERITS_NODELAY = Deno.build.os === "linux";

/** The runtime's native TCP, or null when this Deno does not offer it (then Deno.listen). */
export const nativeTcp: NativeTcp | null = findNativeTcp();

/**
 * Every native TCP connection reads here (see the module's comment). 64 KiB, what the runtime
 * would read at once into a buffer of its own.
 */
const SHARED = new Uint8Array(64 * 1024);

/** Writes completed through the handle's callback (not at once), for tests. */
let laterWrites = 0;
/** Writes the socket took whole in the call, for tests. */
let atOnceWrites = 0;

/** How many native TCP writes completed at once and how many later, since start. */
export function nativeTcpWrites(): { atOnce: number; later: number } {
  return { atOnce: atOnceWrites, later: laterWrites };
}

/** The write request a connection hands the runtime; `oncomplete` is shared. */
interface WriteRequest {
  oncomplete(this: WriteRequest, status: number): void;
  readonly conn: NativeTcpConnection;
}

function onWriteComplete(this: WriteRequest, status: number): void {
  laterWrites++;
  this.conn.writeDone(status);
}

function onShutdownComplete(this: WriteRequest, status: number): void {
  // A socket the peer reset fails to shut down: close it.
  if (status < 0) this.conn.close();
}

/** The runtime's own error for a negative status (errno), for logs and the outbox. */
function uvError(status: number, what: string): Error {
  return new Error(`${what} failed (status ${status})`);
}

/** The handle's `onread`, shared by every connection: `this` is the handle. */
function onNativeRead(this: NativeHandle): void {
  const conn = this[CONNECTION];
  if (conn === undefined) return;
  const n = nativeTcp!.state[nativeTcp!.kRead];
  if (n > 0) conn.read(n);
  else if (n < 0) conn.finish();
  // 0: nothing read this time (the runtime lets the buffer go)
}

/**
 * One accepted connection on a native handle: reads into the broker's handler, is its
 * ByteWriter and describes the peer. One object, its request object and the handle per
 * connection; no closure per connection, no buffer of its own.
 */
export class NativeTcpConnection implements ByteWriter, PeerInfo, Throttled {
  private closed = false;
  private ended = false;
  paused = false;
  private linger: ReturnType<typeof setTimeout> | undefined;
  handler!: ConnectionHandler;
  /** The outbox's callback of the write in flight. */
  private pending: ((r: unknown) => void) | null = null;
  private req: WriteRequest | null = null;
  private readonly remoteHost: string;
  private readonly remotePort: number;

  constructor(private readonly handle: NativeHandle, private readonly lingerMs: number) {
    const peer: { address?: string; port?: number } = {};
    handle.getpeername(peer);
    this.remoteHost = peer.address ?? "unknown";
    this.remotePort = peer.port ?? 0;
  }

  get transport(): "tcp" {
    return "tcp";
  }

  get remoteAddress(): string {
    return `${this.remoteHost}:${this.remotePort}`;
  }

  start(handler: ConnectionHandler): void {
    this.handler = handler;
    const h = this.handle;
    h[CONNECTION] = this;
    h.onread = onNativeRead;
    h.useUserBuffer(SHARED);
    const err = h.readStart();
    if (err < 0) this.finish();
  }

  /** `n` bytes arrived in the shared buffer. */
  read(n: number): void {
    if (this.ended) return;
    try {
      this.handler.data(SHARED, n);
    } catch {
      return this.finish();
    }
    if (!this.ended) throttle(this, n);
  }

  pauseReading(): void {
    this.handle.readStop();
  }

  resumeReading(): void {
    if (!this.ended && this.handle.readStart() < 0) this.finish();
  }

  /**
   * End of stream, a read error, or the handle closed: the end of the connection either way,
   * reported to the handler once.
   */
  finish(): void {
    if (this.ended) return;
    this.ended = true;
    this.close();
    this.handler.closed();
  }

  write(bytes: Uint8Array): Promise<number | void> {
    return new Promise((resolve, reject) => {
      const written = this.writeThen(bytes, (r) => r instanceof Error ? reject(r) : resolve());
      if (written) resolve();
    });
  }

  /**
   * Writes `bytes`; true when the socket took them whole in this call (then `done` is not
   * called), else `done` follows once the runtime has written the rest or failed.
   */
  writeThen(bytes: Uint8Array, done: (r: unknown) => void): boolean {
    if (this.pending !== null) throw new Error("a native TCP write is already in flight");
    const req = this.req ??= { oncomplete: onWriteComplete, conn: this };
    const err = this.closed ? -9 : this.handle.writeBuffer(req, bytes);
    if (err < 0) {
      // Reported after this returns, like any other completion.
      queueMicrotask(() => done(uvError(err, "write")));
      return false;
    }
    if (nativeTcp!.state[nativeTcp!.kAsync] === 0) {
      atOnceWrites++;
      return true;
    }
    this.pending = done;
    return false;
  }

  writeDone(status: number): void {
    const done = this.pending;
    this.pending = null;
    if (done !== null) done(status < 0 ? uvError(status, "write") : undefined);
  }

  /**
   * Sends FIN and keeps reading (the handler discards what it reads) until the peer closes or
   * `lingerMs` pass: closing with unread input would make the kernel answer with a reset.
   */
  end(): void {
    if (this.closed || this.linger !== undefined) return;
    if (this.lingerMs === 0) return this.close();
    const req = { oncomplete: onShutdownComplete, conn: this };
    if (this.handle.shutdown(req) < 0) return this.close();
    this.linger = setTimeout(() => this.close(), this.lingerMs);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.linger !== undefined) clearTimeout(this.linger);
    try {
      this.handle.close();
    } catch {
      // already closed
    }
    // A closed handle reads no more, so its end is reported here; after this call, as a socket
    // reports its close.
    if (!this.ended) queueMicrotask(() => this.finish());
  }
}

/**
 * Starts a TCP listener on native handles, or returns null when the runtime has none or the
 * address cannot be bound that way (the caller then listens with Deno.listen, which reports
 * the error as Deno does).
 */
export function listenNativeTcp(
  acceptor: Acceptor,
  hostname: string,
  port: number,
  lingerMs: number,
): Listener | null {
  const nt = nativeTcp;
  if (nt === null) return null;
  const server = new nt.Tcp(nt.server);
  const v6 = hostname.includes(":");
  let err: number;
  let noDelayInherited = false;
  try {
    err = v6 ? server.bind6(hostname, port, 0) : server.bind(hostname, port);
    // Linux gives accepted sockets the listener's TCP_NODELAY: set once here, not per connect
    // (a setsockopt call, 14 % of the connect path's main-thread samples under the profiler).
    if (err === 0) noDelayInherited = INHERITS_NODELAY && server.setNoDelay(true) === 0;
    if (err === 0) err = server.listen(LISTEN_BACKLOG);
  } catch {
    // A permission the runtime checks here: Deno.listen reports it the usual way.
    err = -1;
  }
  if (err !== 0) {
    try {
      server.close();
    } catch {
      // never opened
    }
    return null;
  }
  server.onconnection = function (status: number): void {
    if (status !== 0) {
      log.error("TCP accept failed (status {status})", { status });
      return;
    }
    const client = new nt.Tcp(nt.socket);
    if (server.accept(client) !== 0) return;
    if (acceptor.admit?.(false) === false) {
      client.close();
      return;
    }
    if (!noDelayInherited) client.setNoDelay(true);
    const c = new NativeTcpConnection(client, lingerMs);
    c.start(acceptor.accept(c, c));
  };
  const addr: { address?: string; port?: number } = {};
  server.getsockname(addr);
  const stopRearm = keepAccepting(() => server);
  return {
    kind: "tcp",
    hostname: addr.address ?? hostname,
    port: addr.port ?? port,
    close(): Promise<void> {
      stopRearm();
      server.onconnection = null;
      try {
        server.close();
      } catch {
        // already closed
      }
      return Promise.resolve();
    },
  };
}
