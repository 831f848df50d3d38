/** Loopback ports for `deno task cluster` (cluster.ts) and its test. */

/** Whether nothing listens on `port` of 127.0.0.1 yet. */
export function isFree(port: number): boolean {
  try {
    Deno.listen({ hostname: "127.0.0.1", port }).close();
    return true;
  } catch {
    return false;
  }
}

/** A port of 127.0.0.1 nothing listens on, as the kernel picks it. */
export function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}
