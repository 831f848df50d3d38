/** Free TCP ports for servers a test starts in another process (which must be told a port). */

/** Ports `freePort` returned lately, oldest first. */
const recentPorts = new Set<number>();

/**
 * A TCP port that was free a moment ago (the race until the server binds it is accepted). The
 * kernel may hand the port of a listener just closed to the next one: two calls in a row once
 * gave the same port to a test's TCP and WebSocket listeners (seen in CI). Ports handed out
 * recently by this process are skipped.
 */
export function freePort(): number {
  for (;;) {
    const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = (l.addr as Deno.NetAddr).port;
    l.close();
    if (recentPorts.has(port)) continue;
    recentPorts.add(port);
    if (recentPorts.size > 256) recentPorts.delete(recentPorts.values().next().value!);
    return port;
  }
}
