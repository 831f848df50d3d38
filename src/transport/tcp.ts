/** Plain TCP listener on Deno.listen: the cheapest read path Deno offers. */
import { getLogger } from "@logtape/logtape";
import { pump } from "./read_loop.ts";
import type { Acceptor, Listener } from "./types.ts";

const log = getLogger(["mcloudtt", "tcp"]);

/** Wraps a Deno.Conn as the broker's ByteSink. */
export function connSink(conn: Deno.Conn): { write(b: Uint8Array): Promise<void>; close(): void } {
  let closed = false;
  return {
    async write(bytes: Uint8Array): Promise<void> {
      let off = 0;
      while (off < bytes.length) off += await conn.write(off === 0 ? bytes : bytes.subarray(off));
    },
    close(): void {
      if (closed) return;
      closed = true;
      try {
        conn.close();
      } catch {
        // already closed by the peer
      }
    },
  };
}

/** Starts a TCP listener that hands each connection to `acceptor`. */
export function listenTcp(acceptor: Acceptor, hostname: string, port: number): Listener {
  const listener = Deno.listen({ hostname, port, transport: "tcp" });
  const addr = listener.addr as Deno.NetAddr;
  (async () => {
    try {
      for await (const conn of listener) {
        try {
          conn.setNoDelay(true);
        } catch {
          // the peer may already be gone
        }
        const remote = conn.remoteAddr as Deno.NetAddr;
        const handler = acceptor.accept(connSink(conn), {
          remoteAddress: `${remote.hostname}:${remote.port}`,
          transport: "tcp",
        });
        pump(conn, handler);
      }
    } catch (e) {
      if (!(e instanceof Deno.errors.BadResource)) log.error("TCP accept loop failed: {e}", { e });
    }
  })();
  return {
    kind: "tcp",
    hostname: addr.hostname,
    port: addr.port,
    close(): Promise<void> {
      try {
        listener.close();
      } catch {
        // already closed
      }
      return Promise.resolve();
    },
  };
}
