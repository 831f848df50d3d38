/** Command-line options of `deno task bench`. */

import { BROKER_NAMES, type BrokerName } from "./brokers.ts";
import { type Transport, TRANSPORTS } from "./tls.ts";
import type { ProtocolLevel } from "./wire.ts";

/**
 * Who measures the latency scenarios: the C probe (probe/*.c, one epoll thread) or the
 * Deno worker clients (client.ts; their own event loop and GC put p50 at 300-600 µs).
 */
export type LatencyClient = "probe" | "deno";

/** All latency clients. */
export const LATENCY_CLIENTS: readonly LatencyClient[] = ["probe", "deno"];

/** Everything that shapes one bench invocation. */
export interface BenchOptions {
  /** Measure window per run, seconds. */
  readonly durationS: number;
  /** Load before the measure window starts, seconds. */
  readonly warmupS: number;
  /**
   * The same for paced (latency) runs, seconds: at a modest rate a JIT-compiled broker takes
   * longer to reach steady state (mcloudtt's last optimising compiles come about 12 s into a
   * 2 000 msg/s load), so these warm up longer.
   */
  readonly pacedWarmupS: number;
  /** Longest wait for in-flight deliveries after publishers stop, seconds. */
  readonly drainS: number;
  readonly rounds: number;
  /** Scenario name substrings; empty = all. */
  readonly only: readonly string[];
  readonly brokers: readonly BrokerName[];
  /**
   * MQTT levels compared (each broker runs those it speaks; one that speaks none of them runs
   * its first).
   */
  readonly levels: readonly ProtocolLevel[];
  /** Every scenario runs over each of these (plain TCP, TLS). */
  readonly transports: readonly Transport[];
  /** Run mcloudtt (and the floor) with V8's GC trace (allocation per message, GC pauses). */
  readonly gcTrace: boolean;
  readonly payloadBytes: number;
  /** PUBLISH packets per write call. */
  readonly batch: number;
  /** Idle connections in the connections scenario. */
  readonly connections: number;
  /** Worker processes per side (publishers, subscribers). */
  readonly workersPerSide: number;
  readonly quick: boolean;
  /** Run the cluster scenarios (mcloudtt on one node vs two, with Redis) instead. */
  readonly cluster: boolean;
  /** Servers on CPUs of their own, the bench and its workers on the others (pin.ts). */
  readonly pin: boolean;
  /** Client of the latency scenarios ("probe" unless the command line says otherwise). */
  readonly latencyClient: LatencyClient;
  /** `--latency-client` was given (no fallback to "deno" when the probe cannot be built). */
  readonly latencyClientGiven: boolean;
  /** Why "deno" runs although "probe" was the default (set by main.ts). */
  readonly latencyClientNote?: string;
}

/** Bad command line. */
export class UsageError extends Error {
  override name = "UsageError";
}

/** Help text printed for --help and on usage errors. */
export const USAGE = `deno task bench [options]
  --duration <s>        measure window per run (default 5; --quick: 1)
  --warmup <s>          load before measuring (default 2; --quick: 0.5)
  --paced-warmup <s>    the same for the paced latency runs (default 15; --quick: 0.5)
  --rounds <n>          interleaved rounds per scenario (default 3; --quick: 1)
  --only <a,b>          run scenarios whose name contains any of these substrings
  --brokers <a,b>       any of ${BROKER_NAMES.join(",")} (default: all; floor: the runtime's
                        floor, a bare Deno forwarder, in latency and connections runs only)
  --transport <a,b>     any of ${TRANSPORTS.join(",")} (default: both)
  --levels <a,b>        MQTT levels, any of 5,3.1.1 (default: both; --quick: 5)
  --no-gc-trace         mcloudtt and floor without V8's GC trace (no allocation/GC pause figures)
  --payload <bytes>     payload size, at least 16 (default 64)
  --batch <n>           PUBLISH packets per write (default 64)
  --connections <n>     idle connections in the connections scenario (default 10000; --quick: 2000)
  --workers <n>         worker processes per side (default 2)
  --quick               smoke run of every scenario: 1 round, 1 s windows
  --cluster             mcloudtt on two nodes vs one (needs redis-server), instead of the peers
  --pin                 brokers on the last half of the CPUs, the load generators on the rest
  --latency-client <c>  who measures the latency scenarios: probe (C, one epoll thread; the
                        default when cc and libssl-dev are there) or deno (the worker clients)
  --help`;

function positive(flag: string, raw: string | undefined, integer: boolean): number {
  const value = Number(raw);
  if (
    raw === undefined || !Number.isFinite(value) || value <= 0 ||
    (integer && !Number.isInteger(value))
  ) {
    throw new UsageError(`${flag} needs a positive ${integer ? "integer" : "number"}, got ${raw}`);
  }
  return value;
}

const SWITCHES = ["--quick", "--help", "--cluster", "--no-gc-trace", "--pin"];

/** Parses argv; throws `UsageError` for unknown flags or bad values. Returns null for --help. */
export function parseOptions(args: readonly string[]): BenchOptions | null {
  const raw = new Map<string, string | undefined>();
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (!arg.startsWith("--")) throw new UsageError(`unexpected argument ${arg}`);
    const eq = arg.indexOf("=");
    if (eq > 0) raw.set(arg.slice(2, eq), arg.slice(eq + 1));
    else if (SWITCHES.includes(arg)) {
      raw.set(arg.slice(2), "true");
    } else raw.set(arg.slice(2), args[++i]);
  }
  if (raw.has("help")) return null;
  const known = [
    "duration",
    "warmup",
    "paced-warmup",
    "rounds",
    "only",
    "brokers",
    "transport",
    "levels",
    "no-gc-trace",
    "payload",
    "batch",
    "connections",
    "workers",
    "quick",
    "cluster",
    "pin",
    "latency-client",
  ];
  for (const key of raw.keys()) {
    if (!known.includes(key)) throw new UsageError(`unknown option --${key}`);
  }
  const quick = raw.has("quick");
  const get = (key: string, fallback: number, quickValue: number, integer: boolean) =>
    raw.has(key) ? positive(`--${key}`, raw.get(key), integer) : quick ? quickValue : fallback;
  const brokers = (raw.get("brokers") ?? BROKER_NAMES.join(",")).split(",").map((s) => s.trim());
  for (const name of brokers) {
    if (!BROKER_NAMES.includes(name as BrokerName)) throw new UsageError(`unknown broker ${name}`);
  }
  const transports = (raw.get("transport") ?? TRANSPORTS.join(",")).split(",").map((s) => s.trim());
  for (const name of transports) {
    if (!TRANSPORTS.includes(name as Transport)) throw new UsageError(`unknown transport ${name}`);
  }
  const levelNames = (raw.get("levels") ?? (quick ? "5" : "5,3.1.1")).split(",").map((s) =>
    s.trim()
  );
  const levels = levelNames.map((name): ProtocolLevel => {
    if (name === "5") return 5;
    if (name === "3.1.1" || name === "4") return 4;
    throw new UsageError(`unknown MQTT level ${name} (5 or 3.1.1)`);
  });
  const payloadBytes = get("payload", 64, 64, true);
  if (payloadBytes < 16) {
    throw new UsageError("--payload must be at least 16 (sequence and timestamp)");
  }
  const durationS = get("duration", 5, 1, false);
  const latencyClient = raw.get("latency-client") ?? "probe";
  if (!LATENCY_CLIENTS.includes(latencyClient as LatencyClient)) {
    throw new UsageError(
      `--latency-client is ${LATENCY_CLIENTS.join(" or ")}, not ${latencyClient}`,
    );
  }
  return {
    durationS,
    // JIT-compiled brokers (Deno, Node) need a moment of load before they reach steady state.
    warmupS: get("warmup", 2, 0.5, false),
    // At 2 000 msg/s the hot functions reach V8's optimising compiler only after some 10 s.
    pacedWarmupS: get("paced-warmup", 15, 0.5, false),
    drainS: quick ? 2 : 5,
    rounds: get("rounds", 3, 1, true),
    only: (raw.get("only") ?? "").split(",").map((s) => s.trim()).filter((s) => s !== ""),
    brokers: brokers as BrokerName[],
    transports: transports as Transport[],
    levels,
    gcTrace: !raw.has("no-gc-trace"),
    payloadBytes,
    batch: get("batch", 64, 64, true),
    connections: get("connections", 10_000, 2_000, true),
    workersPerSide: get("workers", 2, 2, true),
    quick,
    cluster: raw.has("cluster"),
    pin: raw.has("pin"),
    latencyClient: latencyClient as LatencyClient,
    latencyClientGiven: raw.has("latency-client"),
  };
}
