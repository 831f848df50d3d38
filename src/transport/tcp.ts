/** Plain TCP listener on Deno.listen: the cheapest read path Deno offers. */
import { getLogger } from "@logtape/logtape";
import { pump } from "./read_loop.ts";
import type { Acceptor, Listener } from "./types.ts";

const log = getLogger(["mcloudtt", "tcp"]);

/** A Deno.Conn as the broker's ByteSink (a class, not closures: one object per connection). */
export class TcpSink {
  private closed = false;
  constructor(private readonly conn: Deno.Conn) {}

  async write(bytes: Uint8Array): Promise<void> {
    let off = await this.conn.write(bytes);
    while (off < bytes.length) off += await this.conn.write(bytes.subarray(off));
  }

  end(): void {
    this.close();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    try {
      this.conn.close();
    } catch {
      // already closed by the peer
    }
  }
}

/** Starts a TCP listener that hands each connection to `acceptor`. */
export function listenTcp(acceptor: Acceptor, hostname: string, port: number): Listener {
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
    const handler = acceptor.accept(new TcpSink(conn), {
      remoteAddress: `${remote.hostname}:${remote.port}`,
      transport: "tcp",
    });
    pump(conn, handler);
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
