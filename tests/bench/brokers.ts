/**
 * Starting and stopping the brokers under test: mcloudtt, Mosquitto and Aedes, each as its
 * own process on a free 127.0.0.1 port, with limits aligned as far as each broker allows; and
 * the runtime's floor (floor_target.ts), no broker, to compare them with.
 */

import { V8_FLAGS } from "../../src/ops/v8_flags.ts";
import { haveStdbuf, stopChild, track, waitForPort } from "./children.ts";
import { GcCollector } from "./gc_trace.ts";
import { floor } from "./floor_target.ts";
import { allowedCpus, onServerCpus, pinning } from "./pin.ts";
import type { ScenarioKind } from "./scenarios.ts";
import { type BenchPki, type ClientTls, clientTls } from "./tls.ts";
import type { ProtocolLevel } from "./wire.ts";

/**
 * Brokers the bench knows how to run; "floor" is none, but the runtime's floor
 * (floor_target.ts: forwarder.ts, no MQTT), run beside them where it can.
 */
export type BrokerName = "mcloudtt" | "mosquitto" | "aedes" | "floor";

/** All broker names, in the order rounds interleave them. */
export const BROKER_NAMES: readonly BrokerName[] = ["mcloudtt", "mosquitto", "aedes", "floor"];

/**
 * Limits applied to every broker that has the setting, so no one wins by buffering more.
 * Keys follow mcloudtt's `[limits]` section.
 */
export interface BenchLimits {
  /** QoS 1/2 messages in flight from broker to one subscriber. */
  readonly max_inflight_messages: number;
  /** Receive Maximum the broker grants each v5 client (QoS 1/2 in flight towards it). */
  readonly receive_maximum: number;
  /** QoS 1/2 messages queued per client beyond the in-flight window. */
  readonly max_queued_messages: number;
  readonly max_connections: number;
  /** Bytes buffered towards one client before the broker sheds load. */
  readonly max_outgoing_bytes: number;
}

/** The limits every run uses (see README.md for why each value). */
export const BENCH_LIMITS: BenchLimits = {
  max_inflight_messages: 100,
  receive_maximum: 100,
  max_queued_messages: 10_000,
  max_connections: 100_000,
  max_outgoing_bytes: 1024 * 1024,
};

/** A broker process that accepts connections. */
export interface RunningBroker {
  /** The broker's own process (not a wrapper), for /proc sampling. */
  readonly pid: number;
  readonly host: string;
  readonly port: number;
  /** A cluster: every node's MQTT port (`port` is the first). */
  readonly nodePorts?: readonly number[];
  /** Stops the process (SIGTERM, then SIGKILL after 3 s). */
  stop(): Promise<void>;
  /** Last lines the broker printed, for error messages. */
  logTail(): Promise<string>;
  /** Set when the broker listens with TLS: what clients must trust. */
  readonly tls?: ClientTls;
  /** mcloudtt (or the floor) started with V8's GC trace: its collections so far. */
  readonly gc?: GcCollector;
  /** Speaks no MQTT (the floor): the latency probe talks to it in its `--raw` mode. */
  readonly raw?: boolean;
}

/** How to start a broker beyond its limits. */
export interface StartOptions {
  /** Listen with TLS (server certificate only; see tls.ts) instead of plain TCP. */
  readonly tls?: BenchPki;
  /** mcloudtt only: run with V8's `--trace-gc-nvp` and collect the collections. */
  readonly gcTrace?: boolean;
  /** With `gcTrace`: stamps each collection (e.g. messages delivered so far; see gc_trace.ts). */
  readonly gcMark?: () => number;
  /** mcloudtt only: more V8 flags (merged into the one --v8-flags Deno keeps). */
  readonly v8Flags?: readonly string[];
  /** The kind of scenario the run is for (the floor serves connections otherwise). */
  readonly scenario?: ScenarioKind;
}

/** A broker implementation the bench can run. */
export interface BrokerKind {
  readonly name: BrokerName;
  /** Protocol levels compared on this broker. */
  readonly levels: readonly ProtocolLevel[];
  /**
   * The scenario kinds it takes part in; all when absent. Others are left out without a row
   * (runner.ts: `takesPart`), as the floor leaves out those that need a broker.
   */
  readonly kinds?: readonly ScenarioKind[];
  /**
   * Speaks no MQTT: its latency runs need the C probe's `--raw` mode, so it takes no part in
   * them with `--latency-client deno`.
   */
  readonly raw?: boolean;
  /** Resolves to null when the broker can run here, else the reason (and fix) to print. */
  unavailable(): Promise<string | null>;
  /** Version string for the report. */
  version(): Promise<string>;
  start(limits: BenchLimits, workDir: string, options?: StartOptions): Promise<RunningBroker>;
}

/** A broker failed to start or to accept connections. */
export class BrokerError extends Error {
  override name = "BrokerError";
}

const REPO_ROOT = new URL("../../", import.meta.url).pathname;
const PEERS_DIR = new URL("./peers/", import.meta.url).pathname;
const AEDES_VERSION_FILE = `${PEERS_DIR}node_modules/aedes/package.json`;
const MOSQUITTO_CANDIDATES = [
  "/usr/sbin/mosquitto",
  "/usr/local/sbin/mosquitto",
  "/usr/bin/mosquitto",
];
const HOST = "127.0.0.1";

import { freePort } from "../helpers/ports.ts";

/** Re-exported: every test and the bench pick ports through the one helper. */
export { freePort };

async function run(
  cmd: string,
  args: string[],
  cwd?: string,
): Promise<{ code: number; out: string }> {
  try {
    const result = await new Deno.Command(cmd, { args, cwd, stdout: "piped", stderr: "piped" })
      .output();
    const decoder = new TextDecoder();
    return {
      code: result.code,
      out: decoder.decode(result.stdout) + decoder.decode(result.stderr),
    };
  } catch (e) {
    return { code: -1, out: e instanceof Error ? e.message : String(e) };
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

export async function findMosquitto(): Promise<string | undefined> {
  for (const path of MOSQUITTO_CANDIDATES) if (await exists(path)) return path;
  return undefined;
}

async function waitForBroker(
  child: Deno.ChildProcess,
  port: number,
  timeoutMs: number,
  log: string,
) {
  const state = await waitForPort(child, HOST, port, timeoutMs);
  if (state === "ready") return;
  try {
    child.kill("SIGKILL");
  } catch {
    // It has exited already.
  }
  const tail = await readTail(log);
  throw new BrokerError(
    `broker did not accept connections on ${port}${
      state === "exited" ? " (it exited)" : ""
    }:\n${tail}`,
  );
}

async function readTail(path: string): Promise<string> {
  try {
    return (await Deno.readTextFile(path)).split("\n").slice(-20).join("\n");
  } catch {
    return "(no log)";
  }
}

/** Spawns `cmd`, sends its output to `log`, and waits until `port` accepts connections. */
export async function launch(
  cmd: string,
  args: string[],
  port: number,
  log: string,
  startTimeoutMs: number,
  cwd?: string,
  tap?: (chunk: Uint8Array) => void,
): Promise<RunningBroker> {
  const file = await Deno.open(log, { write: true, create: true, truncate: true });
  const [program, programArgs] = onServerCpus(cmd, args);
  const child = track(
    new Deno.Command(program, {
      args: programArgs,
      cwd,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn(),
  );
  // Both streams drain into the file so a chatty broker never blocks on a full pipe. Each needs
  // its own sink: a second pipeTo into a locked stream fails, leaving that pipe unread.
  const sink = () =>
    new WritableStream<Uint8Array>({
      write: (chunk) => file.write(chunk).then(() => {}),
    });
  const stdout = tap === undefined ? child.stdout : child.stdout.pipeThrough(
    new TransformStream<Uint8Array, Uint8Array>({
      transform(chunk, out) {
        tap(chunk);
        out.enqueue(chunk);
      },
    }),
  );
  const drained = Promise.all([
    stdout.pipeTo(sink()).catch(() => {}),
    child.stderr.pipeTo(sink()).catch(() => {}),
  ]).finally(() => file.close());
  await waitForBroker(child, port, startTimeoutMs, log);
  const pin = pinning();
  const cpus = pin === null ? "" : allowedCpus(child.pid);
  if (pin !== null && cpus !== pin.servers) {
    await stopChild(child);
    throw new BrokerError(`${cmd} runs on CPUs ${cpus}, not the servers' ${pin.servers} (--pin)`);
  }
  return {
    pid: child.pid,
    host: HOST,
    port,
    async stop() {
      await stopChild(child);
      await drained;
    },
    logTail: () => readTail(log),
  };
}

const mcloudtt: BrokerKind = {
  name: "mcloudtt",
  levels: [5, 4],
  async unavailable() {
    if (!await exists(`${REPO_ROOT}main.ts`)) return "main.ts does not exist yet";
    const help = await run(Deno.execPath(), ["run", "--allow-all", "main.ts", "--help"], REPO_ROOT);
    return help.code === 0
      ? null
      : `'deno run -A main.ts --help' failed (exit ${help.code}): ${
        help.out.trim().split("\n").slice(-3).join(" | ")
      }`;
  },
  async version() {
    try {
      const config = JSON.parse(await Deno.readTextFile(`${REPO_ROOT}deno.json`));
      const rev = await run("git", ["rev-parse", "--short", "HEAD"], REPO_ROOT);
      return `${config.version}${rev.code === 0 ? ` (${rev.out.trim()})` : ""}`;
    } catch {
      return "unknown";
    }
  },
  async start(limits, workDir, options = {}) {
    const port = freePort();
    const tls = options.tls;
    const extra = tls === undefined ? [] : [
      // The TCP listener speaks TLS; secure stays false so nothing else changes (anonymous
      // clients, no client certificate: the generator presents none, see tls.ts).
      "--listeners.tcp.tls=true",
      "--listeners.tcp.client_certificate=none",
      `--tls.certfile=${tls.certFile}`,
      `--tls.keyfile=${tls.keyFile}`,
      `--tls.cafile=${tls.caFile}`,
      "--tls.generate_dev_certs=false",
    ];
    const trace = options.gcTrace === true &&
        await haveStdbuf(() =>
          console.log("!! stdbuf not found: mcloudtt runs without the GC trace")
        )
      ? new GcCollector(options.gcMark)
      : undefined;
    const v8 = [...(trace ? ["--trace-gc-nvp"] : []), ...(options.v8Flags ?? [])];
    const args = mcloudttArgs(port, limits, extra, v8);
    // stdbuf -oL makes V8's printf output line-buffered (it execs, so the pid is deno's).
    const [cmd, cmdArgs] = trace
      ? ["stdbuf", ["-oL", Deno.execPath(), ...args]]
      : [Deno.execPath(), args];
    const broker = await launch(
      cmd,
      cmdArgs,
      port,
      `${workDir}/mcloudtt.log`,
      60_000,
      REPO_ROOT,
      trace ? (chunk) => trace.push(chunk) : undefined,
    );
    return { ...broker, tls: tls && await clientTls(tls), gc: trace };
  },
};

/**
 * Deno flags: BENCH_DENO_FLAGS (for profiling runs, e.g. "--v8-flags=--max-semi-space-size=32")
 * with `v8Flags` merged into its --v8-flags, since Deno keeps only one of them.
 */
export function denoFlags(v8Flags: readonly string[]): string[] {
  const flags = Deno.env.get("BENCH_DENO_FLAGS")?.split(" ").filter(Boolean) ?? [];
  if (v8Flags.length === 0) return flags;
  const at = flags.findIndex((f) => f.startsWith("--v8-flags="));
  if (at < 0) return [...flags, `--v8-flags=${v8Flags.join(",")}`];
  flags[at] = `${flags[at]},${v8Flags.join(",")}`;
  return flags;
}

/**
 * The command line of one mcloudtt process; `extra` adds broker flags (the cluster's, TLS,
 * storage variants; later ones win), `v8Flags` V8 flags.
 */
export function mcloudttArgs(
  port: number,
  limits: BenchLimits,
  extra: string[] = [],
  v8Flags: string[] = [],
): string[] {
  // The shipped V8 flags first (src/ops/v8_flags.ts): the bench measures what ships.
  const v8 = [...V8_FLAGS, ...v8Flags];
  return ["run", "--allow-all", ...denoFlags(v8), ...mcloudttFlags(port, limits, extra)];
}

/** `main.ts` and its flags for a bench broker on `port` (see `mcloudttArgs`). */
export function mcloudttFlags(port: number, limits: BenchLimits, extra: string[] = []): string[] {
  return [
    "main.ts",
    "--general.secure=false",
    "--general.websocket=false",
    `--ports.tcp=${port}`,
    `--general.bind=${HOST}`,
    // Mosquitto runs with log_dest none; per-connection info logs would tax mcloudtt alone.
    "--general.log_level=warning",
    // Mosquitto runs with sys_interval 0 and has no HTTP endpoint.
    "--general.sys_interval=0",
    "--http.enabled=false",
    // Mosquitto runs without persistence: keep sessions in memory here too.
    "--storage.enabled=false",
    ...Object.entries(limits).map(([key, value]) => `--limits.${key}=${value}`),
    ...extra,
  ];
}

/** A running mcloudtt cluster: its nodes, and the Redis they share. */
export interface RunningCluster extends RunningBroker {
  readonly redisPort: number;
}

/**
 * `nodes` mcloudtt processes sharing one in-memory redis-server (also with one node, so a
 * one-node run pays the same Redis costs as a two-node run, except forwarding). `pid` is the
 * first node's: broker CPU and RSS metrics are that node's alone.
 */
export async function startMcloudttCluster(
  nodes: number,
  limits: BenchLimits,
  workDir: string,
  extraFlags: readonly string[] = [],
): Promise<RunningCluster> {
  const redisPort = freePort();
  const redis = await launch(
    "redis-server",
    [
      "--port",
      String(redisPort),
      "--bind",
      HOST,
      "--save",
      "",
      "--appendonly",
      "no",
      "--dir",
      workDir,
    ],
    redisPort,
    `${workDir}/redis.log`,
    10_000,
  );
  const started: RunningBroker[] = [];
  try {
    for (let i = 0; i < nodes; i++) {
      const port = freePort();
      const extra = [
        "--storage.enabled=false",
        "--redis.enabled=true",
        `--redis.url=redis://${HOST}:${redisPort}`,
        `--cluster.node_id=bench-${i + 1}`,
        ...extraFlags,
      ];
      started.push(
        await launch(
          Deno.execPath(),
          mcloudttArgs(port, limits, extra),
          port,
          `${workDir}/node-${i + 1}.log`,
          60_000,
          REPO_ROOT,
        ),
      );
    }
  } catch (e) {
    await Promise.all(started.map((b) => b.stop()));
    await redis.stop();
    throw e;
  }
  return {
    pid: started[0].pid,
    host: HOST,
    port: started[0].port,
    nodePorts: started.map((b) => b.port),
    redisPort,
    async stop() {
      await Promise.all(started.map((b) => b.stop()));
      await redis.stop();
    },
    async logTail() {
      const tails = await Promise.all(started.map((b) => b.logTail()));
      return tails.map((t, i) => `node-${i + 1}:\n${t}`).join("\n");
    },
  };
}

/** The generated mosquitto.conf; each line is aligned with one mcloudtt limit (see README). */
export function mosquittoConfig(port: number, limits: BenchLimits, tls?: BenchPki): string {
  return [
    `listener ${port} ${HOST}`,
    // TLS on this listener: the same certificate as mcloudtt's, no client certificate asked.
    ...(tls === undefined ? [] : [
      `cafile ${tls.caFile}`,
      `certfile ${tls.certFile}`,
      `keyfile ${tls.keyFile}`,
      "require_certificate false",
    ]),
    "allow_anonymous true",
    "persistence false",
    "log_dest none",
    "sys_interval 0",
    "set_tcp_nodelay true",
    // Unlimited: mcloudtt's max_connections is set above the largest scenario, so neither refuses.
    "max_connections -1",
    `max_inflight_messages ${limits.max_inflight_messages}`,
    `max_queued_messages ${limits.max_queued_messages}`,
    "max_queued_bytes 0",
    "",
  ].join("\n");
}

const mosquitto: BrokerKind = {
  name: "mosquitto",
  levels: [5, 4],
  async unavailable() {
    return await findMosquitto() ? null : "mosquitto not found (apt-get install mosquitto)";
  },
  async version() {
    const path = await findMosquitto();
    if (!path) return "missing";
    const help = await run(path, ["-h"]);
    return /mosquitto version (\S+)/.exec(help.out)?.[1] ?? "unknown";
  },
  async start(limits, workDir, options = {}) {
    const path = await findMosquitto();
    if (!path) throw new BrokerError("mosquitto not found");
    const port = freePort();
    const conf = `${workDir}/mosquitto.conf`;
    await Deno.writeTextFile(conf, mosquittoConfig(port, limits, options.tls));
    const broker = await launch(path, ["-c", conf], port, `${workDir}/mosquitto.log`, 10_000);
    return { ...broker, tls: options.tls && await clientTls(options.tls) };
  },
};

/** The exact command that installs the pinned Aedes for the bench. */
export const AEDES_INSTALL = "npm install --prefix tests/bench/peers aedes@1.2.0";

const aedes: BrokerKind = {
  name: "aedes",
  levels: [4],
  async unavailable() {
    const node = await run("node", ["--version"]);
    if (node.code !== 0) return "node is not installed";
    if (!await exists(AEDES_VERSION_FILE)) {
      return `aedes is not installed; to include it run (from the repo root): ${AEDES_INSTALL}`;
    }
    return null;
  },
  async version() {
    try {
      return JSON.parse(await Deno.readTextFile(AEDES_VERSION_FILE)).version;
    } catch {
      return "missing";
    }
  },
  async start(_limits, workDir, options = {}) {
    const port = freePort();
    const tls = options.tls;
    const broker = await launch(
      "node",
      [
        `${PEERS_DIR}aedes_server.mjs`,
        String(port),
        ...(tls === undefined ? [] : [tls.certFile, tls.keyFile]),
      ],
      port,
      `${workDir}/aedes.log`,
      10_000,
    );
    return { ...broker, tls: tls && await clientTls(tls) };
  },
};

/** The broker kinds by name. */
export const BROKERS: Readonly<Record<BrokerName, BrokerKind>> = {
  mcloudtt,
  mosquitto,
  aedes,
  floor,
};

/** Node.js version, or "missing". */
export async function nodeVersion(): Promise<string> {
  const node = await run("node", ["--version"]);
  return node.code === 0 ? node.out.trim() : "missing";
}
