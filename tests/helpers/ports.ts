/** Free TCP ports for servers a test starts in another process (which must be told a port). */

/** Ports `freePort` returned lately, oldest first. */
const recentPorts = new Set<number>();

/**
 * Below the kernel's ephemeral range (Linux: 32768-60999), from which every outgoing connection
 * takes its local port: a port handed out from that range (listen on port 0) could be taken by a
 * test's client connection before the server bound it (seen in CI: "ports.tcp: 127.0.0.1:33397
 * is in use by another process"). Here only servers told a port bind, and each is checked free.
 */
const LOW = 20000;
const HIGH = 32000;

/**
 * A TCP port that was free a moment ago (the race until the server binds it is accepted), picked
 * at random below the ephemeral range. Ports handed out recently by this process are skipped
 * (the same port once went to a test's TCP and WebSocket listeners).
 */
export function freePort(): number {
  for (;;) {
    const port = LOW + Math.floor(Math.random() * (HIGH - LOW));
    if (recentPorts.has(port)) continue;
    try {
      Deno.listen({ hostname: "127.0.0.1", port }).close();
    } catch {
      continue;
    }
    recentPorts.add(port);
    if (recentPorts.size > 256) recentPorts.delete(recentPorts.values().next().value!);
    return port;
  }
}
