/** Plain TCP listener on Deno.listen: the cheapest read path Deno offers. */
import { getLogger } from "@logtape/logtape";
import { ReadBuffer } from "./read_loop.ts";
import type { Acceptor, ByteWriter, ConnectionHandler, Listener, PeerInfo } from "./types.ts";

const log = getLogger(["mcloudtt", "tcp"]);

/**
 * One accepted Deno.Conn: reads it into the broker's handler, is the handler's ByteWriter and
 * describes the peer. One object and one bound callback per connection, no async function: an
 * idle connection holds only its pending read (what a connection costs is measured by
 * tests/bench/idle_cost.ts).
 */
export class TcpConnection extends ReadBuffer implements ByteWriter, PeerInfo {
  private closed = false;
  private ended = false;
  private linger: ReturnType<typeof setTimeout> | undefined;
  private handler!: ConnectionHandler;
  /**
   * Settles every read and read gate: a byte count, null at EOF, undefined when a gate
   * opened, else an error.
   */
  private readonly settled: (r: unknown) => void;

  constructor(private readonly conn: Deno.Conn, private readonly lingerMs: number) {
    super();
    this.settled = this.onSettled.bind(this);
  }

  /** A getter, not a field: the same for every connection. */
  get transport(): "tcp" {
    return "tcp";
  }

  /**
   * "host:port" of the client, made when asked (at CONNECT, in log lines): Deno keeps the
   * address anyway, and a string held by every idle connection costs more than making it.
   */
  get remoteAddress(): string {
    const a = this.conn.remoteAddr as Deno.NetAddr;
    return `${a.hostname}:${a.port}`;
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
      this.conn.read(this.bytes).then(this.settled, this.settled);
    } catch (e) {
      this.onSettled(e);
    }
  }

  private onSettled(r: unknown): void {
    if (typeof r === "number") {
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
    return this.conn.write(bytes);
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
      this.conn.closeWrite();
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
      this.conn.close();
    } catch {
      // already closed by the peer
    }
  }
}

/** Starts a TCP listener that hands each connection to `acceptor`. */
export function listenTcp(
  acceptor: Acceptor,
  hostname: string,
  port: number,
  lingerMs: number,
): Listener {
  const listener = Deno.listen({ hostname, port, transport: "tcp" });
  const addr = listener.addr as Deno.NetAddr;
  let closed = false;
  const handle = (conn: Deno.TcpConn) => {
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
