/** Plain sockets for transport and outbox tests. */

/**
 * A connected TCP pair on 127.0.0.1: `near` is the connecting side, `far` the accepted one.
 * `close()` closes both, whichever the test closed already.
 */
export async function socketPair(): Promise<
  { near: Deno.TcpConn; far: Deno.TcpConn; close(): void }
> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  const [near, far] = await Promise.all([
    Deno.connect({ hostname: "127.0.0.1", port }),
    listener.accept(),
  ]);
  listener.close();
  return {
    near,
    far,
    close() {
      for (const c of [near, far]) {
        try {
          c.close();
        } catch {
          // already closed
        }
      }
    },
  };
}
