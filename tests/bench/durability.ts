/**
 * Persistent-session scenarios (issue 12): QoS 1 to subscribers with persistent sessions on
 * mcloudtt with `[storage] sync = "ack-after-write"`, `"async"` and in memory, against Mosquitto
 * with and without `persistence true`. Each storage setting is its own "variant" of a broker:
 * a `BrokerKind` whose `start` adds the flags (or config lines), so the ordinary runner starts
 * a fresh broker with a fresh data directory (inside the run's temp dir) for every run.
 *
 * - `persistent-qos1`: 16 QoS 1 pairs flat out within flow control; the subscribers hold
 *   persistent sessions (MQTT 5: Clean Start 0, Session Expiry 3600 s; 3.1.1: Clean Session 0),
 *   so every message routed to them is written to the store (ack-after-write: before PUBACK).
 * - `persistent-qos1-offline`: the same 16 subscribers subscribe and disconnect; each publisher
 *   sends a fixed number of messages into their sessions (timed until the last PUBACK); then the
 *   subscribers connect again and the drain of what their sessions kept is timed.
 */

import {
  BENCH_LIMITS,
  type BenchLimits,
  type BrokerKind,
  type BrokerName,
  BROKERS,
  findMosquitto,
  freePort,
  launch,
  mcloudttArgs,
  mosquittoConfig,
} from "./brokers.ts";
import { type Layout, pairs } from "./layouts.ts";
import {
  brokerMetrics,
  closeAll,
  type Measured,
  measureLoad,
  type RunContext,
  startWorkers,
} from "./measure.ts";
import type { Snapshot } from "./messages.ts";
import type { BenchOptions } from "./options.ts";
import { sample } from "./procstat.ts";
import { levelName, runAll, type RunResult } from "./runner.ts";
import type { Scenario } from "./scenarios.ts";
import { sendAll } from "./workers.ts";

/** Session Expiry Interval of the persistent subscribers: far longer than any run. */
export const SESSION_EXPIRY_S = 3600;
/** Pairs in both persistent scenarios. */
export const PERSISTENT_PAIRS = 16;
/**
 * Mosquitto's autosave settings, written out explicitly although they are its defaults: the
 * in-memory database is saved every 1800 s and at shutdown, not per message (see the report).
 */
export const MOSQUITTO_AUTOSAVE = ["autosave_interval 1800", "autosave_on_changes false"];

/** The storage setting a variant runs with. */
export type Storage = "ack-after-write" | "async" | "memory" | "persistence";

/** One broker with one storage setting. */
export interface DurabilityVariant {
  /** "mcloudtt ack-after-write", "mosquitto persistence", ... */
  readonly label: string;
  readonly broker: BrokerName;
  readonly storage: Storage;
  /** The broker kind whose `start` applies the storage setting. */
  readonly kind: BrokerKind;
}

/** What a row is compared with: mcloudtt in memory and Mosquitto with persistence. */
export const BASELINES = {
  memory: "mcloudtt memory",
  mosquitto: "mosquitto persistence",
} as const;

const REPO_ROOT = new URL("../../", import.meta.url).pathname;

/** mcloudtt with `[storage]` set for `storage`; the data directory lives in the run's dir. */
export function mcloudttStorageFlags(storage: Storage, workDir: string): string[] {
  return storage === "memory" ? ["--storage.enabled=false"] : [
    "--storage.enabled=true",
    `--storage.dir=${workDir}/data`,
    `--storage.sync=${storage}`,
  ];
}

/** The bench's mosquitto.conf with persistence on, into `dataDir`, autosave as stated. */
export function mosquittoPersistentConfig(
  port: number,
  limits: BenchLimits,
  dataDir: string,
): string {
  return mosquittoConfig(port, limits).split("\n").flatMap((line) =>
    line === "persistence false"
      ? ["persistence true", `persistence_location ${dataDir}/`, ...MOSQUITTO_AUTOSAVE]
      : [line]
  ).join("\n");
}

function mcloudttVariant(storage: Exclude<Storage, "persistence">): DurabilityVariant {
  return {
    label: `mcloudtt ${storage}`,
    broker: "mcloudtt",
    storage,
    kind: {
      ...BROKERS.mcloudtt,
      start(limits, workDir) {
        const port = freePort();
        return launch(
          Deno.execPath(),
          mcloudttArgs(port, limits, mcloudttStorageFlags(storage, workDir)),
          port,
          `${workDir}/mcloudtt.log`,
          60_000,
          REPO_ROOT,
        );
      },
    },
  };
}

function mosquittoVariant(persistent: boolean): DurabilityVariant {
  return {
    label: persistent ? BASELINES.mosquitto : "mosquitto memory",
    broker: "mosquitto",
    storage: persistent ? "persistence" : "memory",
    kind: persistent
      ? {
        ...BROKERS.mosquitto,
        async start(limits, workDir) {
          const path = await findMosquitto();
          if (!path) throw new Error("mosquitto not found");
          const port = freePort();
          const conf = `${workDir}/mosquitto.conf`;
          const data = `${workDir}/mosquitto-data`;
          // Started as root, Mosquitto drops to its own user, which must reach the directory
          // (the run's temp dir is 0700) to save its database at shutdown.
          await Deno.mkdir(data);
          await Deno.chmod(workDir, 0o711);
          await Deno.chmod(data, 0o777);
          await Deno.writeTextFile(conf, mosquittoPersistentConfig(port, limits, data));
          return launch(path, ["-c", conf], port, `${workDir}/mosquitto.log`, 10_000);
        },
      }
      : BROKERS.mosquitto,
  };
}

/** Every variant, in the order rounds interleave them. */
export function durabilityVariants(): DurabilityVariant[] {
  return [
    mcloudttVariant("ack-after-write"),
    mcloudttVariant("async"),
    mcloudttVariant("memory"),
    mosquittoVariant(true),
    mosquittoVariant(false),
  ];
}

/** `pairs` whose subscribers hold persistent sessions. */
export function persistentPairs(count: number, processes: number): Layout {
  const layout = pairs(count, 1, processes);
  return {
    ...layout,
    workers: layout.workers.map((w) =>
      w.side === "pub" ? w : {
        ...w,
        clients: w.clients.map((c) => ({ ...c, sessionExpiry: SESSION_EXPIRY_S })),
      }
    ),
  };
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));
const total = (list: readonly Snapshot[], key: "sent" | "acked" | "received" | "duplicates") =>
  list.reduce((n, s) => n + s[key], 0);

/**
 * Polls `read` every 10 ms until `done` holds, nothing moved for `idleMs`, or `timeoutMs`
 * passed; returns the last snapshots.
 */
async function waitFor(
  read: () => Promise<Snapshot[]>,
  done: (s: Snapshot[]) => boolean,
  progress: (s: Snapshot[]) => number,
  idleMs: number,
  timeoutMs: number,
): Promise<Snapshot[]> {
  const deadline = performance.now() + timeoutMs;
  let last = await read();
  let movedAt = performance.now();
  while (!done(last) && performance.now() < deadline && performance.now() - movedAt < idleMs) {
    await sleep(10);
    const next = await read();
    if (progress(next) !== progress(last)) movedAt = performance.now();
    last = next;
  }
  return last;
}

/**
 * The offline drain: subscribers subscribe and disconnect; each publisher sends
 * `layout.messagesPerPublisher` messages into their sessions (timed until the last PUBACK);
 * then the subscribers connect again and the time until every message arrived is measured.
 */
export async function measureOfflineDrain(ctx: RunContext, layout: Layout): Promise<Measured> {
  const running = await startWorkers(ctx, layout, layout.workers);
  try {
    const subs = running.filter((r) => r.layout.side === "sub").map((r) => r.handle);
    const pubs = running.filter((r) => r.layout.side === "pub").map((r) => r.handle);
    const publishers = layout.workers.filter((w) => w.side === "pub")
      .reduce((n, w) => n + w.clients.length, 0);
    const target = publishers * (layout.messagesPerPublisher ?? 0);
    await sendAll(subs, { cmd: "disconnect" });
    // Generous: even 1,000 msg/s would fill every session well inside it.
    const timeoutMs = 60_000 + ctx.options.drainS * 1000;

    const b0 = await sample(ctx.broker.pid);
    await sendAll(pubs, { cmd: "go" });
    const published = await waitFor(
      () => sendAll(pubs, { cmd: "mark" }),
      (s) => total(s, "acked") >= target,
      (s) => total(s, "acked"),
      5_000,
      timeoutMs,
    );
    const b1 = await sample(ctx.broker.pid);
    const stopped = await sendAll(pubs, { cmd: "stop", timeoutMs: ctx.options.drainS * 1000 });
    const sent = total(stopped, "sent");
    const acked = total(published, "acked");

    const b2 = await sample(ctx.broker.pid);
    await sendAll(subs, { cmd: "reconnect" });
    const unique = (s: Snapshot[]) => total(s, "received") - total(s, "duplicates");
    const drained = await waitFor(
      () => sendAll(subs, { cmd: "mark" }),
      (s) => unique(s) >= sent,
      (s) => total(s, "received"),
      2_000,
      timeoutMs,
    );
    const b3 = await sample(ctx.broker.pid);
    const received = total(drained, "received");
    const duplicates = total(drained, "duplicates");
    const enqueue = brokerMetrics(b0, b1, acked);
    const drain = brokerMetrics(b2, b3, received);
    const drainS = (b3.at - b2.at) / 1000;
    return {
      metrics: {
        enqueue_per_s: acked / ((b1.at - b0.at) / 1000),
        enqueue_cpu_us_per_msg: enqueue.broker_cpu_us_per_msg,
        drain_per_s: (received - duplicates) / drainS,
        drain_s: drainS,
        broker_cpu_us_per_msg: drain.broker_cpu_us_per_msg,
        broker_cpu_pct: drain.broker_cpu_pct,
        broker_rss_mb: drain.broker_rss_mb,
        // Broker RSS with every message held for the offline sessions.
        broker_rss_queued_mb: enqueue.broker_rss_mb,
        sent,
        received,
        duplicates,
        undelivered_pct: sent > 0 ? (Math.max(0, sent - (received - duplicates)) / sent) * 100 : 0,
      },
      errors: [...new Set([...published, ...stopped, ...drained].flatMap((s) => s.errors))]
        .slice(0, 5),
    };
  } finally {
    await closeAll(running);
  }
}

/**
 * A fixed number of messages end to end, subscribers online: each publisher sends
 * `layout.messagesPerPublisher`; timed from the start to the last PUBACK (what the publishers'
 * broker took in) and to the last delivery. For a cluster, where node 1 acknowledges before node
 * 2 delivers, "flat out for a window" would only grow node 2's backlog until its queues overflow;
 * a fixed count measures what gets through, end to end, without overflowing.
 */
export async function measureFixedCount(ctx: RunContext, layout: Layout): Promise<Measured> {
  const running = await startWorkers(ctx, layout, layout.workers);
  try {
    const subs = running.filter((r) => r.layout.side === "sub").map((r) => r.handle);
    const pubs = running.filter((r) => r.layout.side === "pub").map((r) => r.handle);
    const publishers = layout.workers.filter((w) => w.side === "pub")
      .reduce((n, w) => n + w.clients.length, 0);
    const target = publishers * (layout.messagesPerPublisher ?? 0);
    const timeoutMs = 120_000;
    const unique = (s: Snapshot[]) => total(s, "received") - total(s, "duplicates");
    const b0 = await sample(ctx.broker.pid);
    await sendAll(pubs, { cmd: "go" });
    const published = await waitFor(
      () => sendAll(pubs, { cmd: "mark" }),
      (s) => total(s, "acked") >= target,
      (s) => total(s, "acked"),
      5_000,
      timeoutMs,
    );
    const b1 = await sample(ctx.broker.pid);
    const stopped = await sendAll(pubs, { cmd: "stop", timeoutMs: ctx.options.drainS * 1000 });
    const sent = total(stopped, "sent");
    const delivered = await waitFor(
      () => sendAll(subs, { cmd: "mark" }),
      (s) => unique(s) >= sent,
      (s) => total(s, "received"),
      layout.drainIdleMs ?? 2_000,
      timeoutMs,
    );
    const b2 = await sample(ctx.broker.pid);
    const received = total(delivered, "received");
    const duplicates = total(delivered, "duplicates");
    return {
      metrics: {
        delivered_per_s: (received - duplicates) / ((b2.at - b0.at) / 1000),
        published_per_s: total(published, "acked") / ((b1.at - b0.at) / 1000),
        // Delivery still going on after the last PUBACK: the receiving side's backlog.
        backlog_s: (b2.at - b1.at) / 1000,
        ...brokerMetrics(b0, b2, received),
        sent,
        received,
        duplicates,
        undelivered_pct: sent > 0 ? (Math.max(0, sent - (received - duplicates)) / sent) * 100 : 0,
      },
      errors: [...new Set([...published, ...stopped, ...delivered].flatMap((s) => s.errors))]
        .slice(0, 5),
    };
  } finally {
    await closeAll(running);
  }
}

/** Messages each publisher sends into the offline sessions (below max_queued_messages). */
export function offlineMessagesPerPublisher(options: BenchOptions): number {
  return Math.min(options.quick ? 1_000 : 5_000, BENCH_LIMITS.max_queued_messages / 2);
}

/** The persistent-session scenarios, selectable with `--only persistent`. */
export function durabilityScenarios(options: BenchOptions): Scenario[] {
  const w = options.workersPerSide;
  const perPublisher = offlineMessagesPerPublisher(options);
  return [
    {
      name: "persistent-qos1",
      kind: "throughput",
      description: `${PERSISTENT_PAIRS} QoS 1 pairs, subscribers with persistent sessions ` +
        `(MQTT 5 Session Expiry ${SESSION_EXPIRY_S} s, 3.1.1 Clean Session 0), flat out`,
      run: (ctx) => measureLoad(ctx, persistentPairs(PERSISTENT_PAIRS, w)),
    },
    {
      name: "persistent-qos1-offline",
      kind: "throughput",
      description: `${PERSISTENT_PAIRS} publishers send ${perPublisher} QoS 1 messages each ` +
        `into offline persistent sessions; then the subscribers reconnect and drain them`,
      run: (ctx) =>
        measureOfflineDrain(ctx, {
          ...persistentPairs(PERSISTENT_PAIRS, w),
          messagesPerPublisher: perPublisher,
        }),
    },
  ];
}

/** One run of a persistent scenario on one variant. */
export interface DurabilityResult extends RunResult {
  readonly variant: string;
  readonly storage: Storage;
}

/** What the durability runs produced, for the report. */
export interface DurabilityReport {
  readonly results: readonly DurabilityResult[];
  /** Where the data directories were, and on what filesystem. */
  readonly storageNote: string;
}

async function filesystemOf(dir: string): Promise<string> {
  try {
    const out = await new Deno.Command("findmnt", {
      args: ["-n", "-o", "FSTYPE,SOURCE", "--target", dir],
      stdout: "piped",
    }).output();
    // "ext4   /dev/vda" -> "ext4 on /dev/vda"
    return new TextDecoder().decode(out.stdout).trim().replace(/\s+/, " on ") || "unknown";
  } catch {
    return "unknown";
  }
}

function progressLine(r: DurabilityResult): string {
  const head = `[${r.scenario} round ${r.round}] ${r.variant} ${r.transport} MQTT ${
    levelName(r.level)
  }:`;
  if (r.failed) return `${head} FAILED ${r.failed.split("\n")[0]}`;
  const m = r.metrics;
  const n = (v: number | undefined, digits = 0) => v === undefined ? "–" : v.toFixed(digits);
  const rate = m.drain_per_s !== undefined
    ? `enqueue ${n(m.enqueue_per_s)} msg/s, drain ${n(m.drain_per_s)} msg/s`
    : `${n(m.delivered_per_s)} msg/s`;
  const errors = r.errors.length > 0 ? ` (client errors: ${r.errors[0]})` : "";
  return `${head} ${rate}, broker CPU ${n(m.broker_cpu_us_per_msg, 2)} µs/msg, undelivered ${
    n(m.undelivered_pct, 2)
  } %${errors}`;
}

/**
 * Runs `scenarios` on every variant of the `brokers` given, at the protocol levels of
 * `options.levels` each broker speaks, in interleaved rounds (round 1 of every variant, then
 * round 2, ...), a fresh broker per run. Over plain TCP only: the variants compare storage
 * settings, and TLS would add the same cost to each (the report says so).
 */
export async function runDurability(
  scenarios: readonly Scenario[],
  brokers: readonly BrokerName[],
  options: BenchOptions,
  limits: BenchLimits,
  log: (line: string) => void = console.log,
): Promise<DurabilityReport> {
  const variants = durabilityVariants().filter((v) => brokers.includes(v.broker));
  const targets = variants.flatMap((variant) => {
    const chosen = variant.kind.levels.filter((level) => options.levels.includes(level));
    const levels = chosen.length > 0 ? chosen : variant.kind.levels.slice(0, 1);
    return levels.map((level) => ({
      variant,
      target: { broker: variant.kind, level, transport: "tcp" as const },
    }));
  });
  const results: DurabilityResult[] = [];
  for (const scenario of scenarios) {
    for (let round = 1; round <= options.rounds; round++) {
      for (const { variant, target } of targets) {
        // runAll with one round and one target: its fresh broker, deadline and failure handling.
        const [result] = await runAll(
          [scenario],
          [target],
          { ...options, rounds: 1 },
          limits,
          () => {},
        );
        const tagged = { ...result, round, variant: variant.label, storage: variant.storage };
        results.push(tagged);
        log(progressLine(tagged));
      }
    }
  }
  const tmp = Deno.env.get("TMPDIR") ?? "/tmp";
  return {
    results,
    storageNote: `data directories in temp dirs under ${tmp} (filesystem: ${await filesystemOf(
      tmp,
    )})`,
  };
}
