/** Plain TCP listener on Deno.listen: the cheapest read path Deno offers. */
import { getLogger } from "@logtape/logtape";
import { pump } from "./read_loop.ts";
import type { Acceptor, Listener } from "./types.ts";

const log = getLogger(["mcloudtt", "tcp"]);

/** A Deno.Conn as the broker's ByteWriter (a class, not closures: one object per connection). */
export class TcpSink {
  private closed = false;
  private linger: ReturnType<typeof setTimeout> | undefined;
  constructor(private readonly conn: Deno.Conn, private readonly lingerMs: number) {}

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
    const remote = conn.remoteAddr;
    const sink = new TcpSink(conn, lingerMs);
    const handler = acceptor.accept(sink, {
      remoteAddress: `${remote.hostname}:${remote.port}`,
      transport: "tcp",
    });
    // The read loop ends at the peer's FIN or a reset: whatever the lingering close waited for.
    pump(conn, handler).then(() => sink.close());
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
