/** Plain TCP listener: on the runtime's native handles (tcp_native.ts), else on Deno.listen. */
import { getLogger } from "@logtape/logtape";
import { rawIo, resourceId } from "./deno_io.ts";
import { ReadBuffer } from "./read_loop.ts";
import { listenNativeTcp, nativeTcp } from "./tcp_native.ts";
import type { Acceptor, ByteWriter, ConnectionHandler, Listener, PeerInfo } from "./types.ts";

const log = getLogger(["mcloudtt", "tcp"]);

/**
 * One accepted Deno.Conn: reads it into the broker's handler, is the handler's ByteWriter and
 * describes the peer. One object and one bound callback per connection, no async function: an
 * idle connection holds only its pending read (what a connection costs is measured by
 * tests/bench/idle_cost.ts and idle_heap.ts). Where Deno's core resource functions are
 * available (deno_io.ts) the Deno.Conn itself is let go after accept and the socket is read
 * and written by its resource id: the Conn object and what its async `read` keeps alive cost
 * more than the rest of an idle connection's JS objects together.
 */
export class TcpConnection extends ReadBuffer implements ByteWriter, PeerInfo {
  private closed = false;
  private ended = false;
  private linger: ReturnType<typeof setTimeout> | undefined;
  private handler!: ConnectionHandler;
  /**
   * Settles every read and read gate: a byte count, 0 or null at EOF, undefined when a gate
   * opened, else an error.
   */
  private readonly settled: (r: unknown) => void;
  /** The socket's resource id when `rawIo` serves it, else -1 and `conn` is used. */
  private readonly rid: number;
  /** The Deno.Conn, only kept when `rawIo` cannot serve it. */
  private readonly conn: Deno.Conn | null;
  /** The client's address (the Deno.Conn's address object is a dictionary of ~290 B). */
  private readonly remoteHost: string;
  private readonly remotePort: number;

  constructor(conn: Deno.Conn, private readonly lingerMs: number) {
    super();
    this.settled = this.onSettled.bind(this);
    const a = conn.remoteAddr as Deno.NetAddr;
    this.remoteHost = a.hostname;
    this.remotePort = a.port;
    const rid = rawIo === null ? -1 : resourceId(conn);
    this.rid = rid;
    this.conn = rid === -1 ? conn : null;
  }

  /** A getter, not a field: the same for every connection. */
  get transport(): "tcp" {
    return "tcp";
  }

  /**
   * "host:port" of the client, made when asked (at CONNECT, in log lines): a string held by
   * every idle connection costs more than making it.
   */
  get remoteAddress(): string {
    return `${this.remoteHost}:${this.remotePort}`;
  }

  /** Starts reading into `handler` until EOF or an error; then the handler is told and the conn closed. */
  start(handler: ConnectionHandler): void {
    this.handler = handler;
    this.read();
  }

  private read(): void {
    const gate = this.handler.readGate;
    if (gate !== null) {
      gate.then(this.settled);
      return;
    }
    try {
      const rid = this.rid;
      const read = rid !== -1 ? rawIo!.read(rid, this.bytes) : this.conn!.read(this.bytes);
      read.then(this.settled, this.settled);
    } catch (e) {
      this.onSettled(e);
    }
  }

  private onSettled(r: unknown): void {
    // A read into a non-empty buffer resolves with 0 (by resource id) or null (Deno.Conn) at EOF.
    if (typeof r === "number" && r !== 0) {
      try {
        this.handler.data(this.bytes, r);
      } catch (e) {
        return this.finish(e);
      }
      this.afterRead(r);
      this.read();
    } else if (r === undefined) {
      this.read();
    } else {
      // EOF, a reset, or a read after close: the end of the connection either way.
      this.finish(r);
    }
  }

  private finish(_reason: unknown): void {
    if (this.ended) return;
    this.ended = true;
    this.releaseBuffer();
    // The read loop ends at the peer's FIN or a reset: whatever the lingering close waited for.
    this.close();
    this.handler.closed();
  }

  /** Resolves with the bytes the socket took; the outbox writes the rest (see ByteWriter). */
  write(bytes: Uint8Array): Promise<number> {
    const rid = this.rid;
    return rid !== -1 ? rawIo!.write(rid, bytes) : this.conn!.write(bytes);
  }

  /**
   * Sends FIN and lets the read loop go on (the connection discards what it
   * reads) until the peer closes or `lingerMs` pass. Closing with unread
   * input would make the kernel answer with a reset, and a client still
   * sending would get EPIPE instead of our last packet.
   */
  end(): void {
    if (this.closed || this.linger !== undefined) return;
    if (this.lingerMs === 0) return this.close();
    try {
      const rid = this.rid;
      const shut = rid !== -1 ? rawIo!.shutdown(rid) : this.conn!.closeWrite();
      // A socket the peer reset fails to shut down: close it (unhandled, it would end the process).
      shut.then(undefined, () => this.close());
    } catch {
      return this.close();
    }
    this.linger = setTimeout(() => this.close(), this.lingerMs);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.linger !== undefined) clearTimeout(this.linger);
    try {
      if (this.rid !== -1) rawIo!.close(this.rid);
      else this.conn!.close();
    } catch {
      // already closed by the peer
    }
  }
}

/** How plain TCP is read and written: the runtime's native handles, or Deno.listen's ops. */
export type TcpIo = "native" | "deno";

/**
 * Starts a TCP listener that hands each connection to `acceptor`: on the runtime's native
 * handles (tcp_native.ts) where it has them, else on Deno.listen. `io` picks one (tests run
 * both).
 */
export function listenTcp(
  acceptor: Acceptor,
  hostname: string,
  port: number,
  lingerMs: number,
  io: TcpIo = "native",
): Listener {
  if (io === "native") {
    const native = listenNativeTcp(acceptor, hostname, port, lingerMs);
    if (native !== null) return native;
    if (nativeTcp === null) {
      log.warn("this Deno has no native TCP handles: plain TCP is served with Deno.listen");
    }
  }
  const listener = Deno.listen({ hostname, port, transport: "tcp" });
  const addr = listener.addr as Deno.NetAddr;
  let closed = false;
  const handle = (conn: Deno.TcpConn) => {
    if (acceptor.admit?.(false) === false) {
      conn.close();
      return;
    }
    try {
      conn.setNoDelay(true);
    } catch {
      // the peer may already be gone
    }
    const c = new TcpConnection(conn, lingerMs);
    c.start(acceptor.accept(c, c));
  };
  const acceptLoop = async () => {
    while (!closed) {
      let conn: Deno.TcpConn;
      try {
        conn = await listener.accept();
      } catch (e) {
        if (closed || e instanceof Deno.errors.BadResource) return;
        // Out of file descriptors and similar: back off instead of spinning, keep serving.
        log.error("TCP accept failed: {error}", { error: e instanceof Error ? e.message : e });
        await new Promise((r) => setTimeout(r, 100));
        continue;
      }
      handle(conn);
    }
  };
  // One accept at a time: Deno refuses a second concurrent accept on a listener
  // ("Another accept task is ongoing").
  acceptLoop();
  return {
    kind: "tcp",
    hostname: addr.hostname,
    port: addr.port,
    close(): Promise<void> {
      closed = true;
      try {
        listener.close();
      } catch {
        // already closed
      }
      return Promise.resolve();
    },
  };
}
