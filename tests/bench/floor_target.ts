/**
 * `deno task bench`'s `floor` target (issue 14): the runtime's floor, forwarder.ts, no MQTT. In
 * the latency scenarios it copies the bytes the C probe (in its `--raw` mode) sends from
 * publisher i to subscriber i and back, over the transports mcloudtt uses (by resource id over
 * TCP, node:tls over TLS); in the connections scenario it answers each CONNECT with a CONNACK
 * and holds the connection (`--connack`, connack_servers.ts). It runs nothing else: the
 * throughput and slow-consumer loads need a broker. No broker on this runtime does less per
 * message or per connection, so the report's "vs floor" columns say how close each broker comes.
 */

import type { BrokerKind } from "./brokers.ts";
import { startForwarder } from "./forwarder.ts";
import type { ScenarioKind } from "./scenarios.ts";
import { clientTls } from "./tls.ts";
import { HOST } from "./traced.ts";

/** The scenario kinds the floor serves. */
export const FLOOR_KINDS: readonly ScenarioKind[] = ["latency", "connections"];

/** The runtime's floor as a bench target. */
export const floor: BrokerKind = {
  name: "floor",
  // It forwards whatever bytes the probe sends at either level.
  levels: [5, 4],
  kinds: FLOOR_KINDS,
  raw: true,
  unavailable: () => Promise.resolve(null),
  version: () => Promise.resolve(`Deno ${Deno.version.deno}`),
  async start(_limits, _workDir, options = {}) {
    const pki = options.tls;
    // Like mcloudtt: under V8's GC trace when asked (the runner asks unless --no-gc-trace).
    const gcTrace = options.gcTrace === true;
    const { port, traced } = await startForwarder(
      pki,
      options.gcMark ?? (() => 0),
      [...(options.v8Flags ?? [])],
      {
        serve: options.scenario === "connections" ? "connack" : "forward",
        gcTrace,
      },
    );
    return {
      // stdbuf and taskset exec: the pid is the forwarder's own Deno process.
      pid: traced.child.pid,
      host: HOST,
      port,
      raw: true,
      tls: pki && await clientTls(pki),
      gc: gcTrace ? traced.gc : undefined,
      stop: () => traced.stop(),
      logTail: () => Promise.resolve(traced.tail()),
    };
  },
};
