/**
 * The measuring procedures: start workers against a running broker, warm up, measure a
 * window, stop, drain, and turn the counters into metrics.
 */

import type { RunningBroker } from "./brokers.ts";
import { gcMetrics } from "./gc_trace.ts";
import type { Layout, WorkerLayout } from "./layouts.ts";
import type { IdlePlan, LoadPlan, Snapshot } from "./messages.ts";
import type { BenchOptions } from "./options.ts";
import { buildProbe, type ProbeMark, runProbe, uniqueIdPrefix } from "./probe.ts";
import { type ProcSample, rssBytes, sample } from "./procstat.ts";
import type { ProtocolLevel } from "./wire.ts";
import { sendAll, WorkerHandle } from "./workers.ts";

/** What a scenario run needs to know. */
export interface RunContext {
  readonly broker: RunningBroker;
  readonly level: ProtocolLevel;
  readonly options: BenchOptions;
}

/** Named numbers of one run, plus anything worth a note. */
export interface Measured {
  readonly metrics: Record<string, number>;
  readonly errors: string[];
  /** Broker RSS over time: [seconds since load started, MiB]. */
  readonly rssSeries?: [number, number][];
}

const MIB = 1024 * 1024;
// In-flight window for QoS 1/2 publishers on 3.1.1 (no Receive Maximum there): what common
// clients such as Paho and MQTT.js use by default.
const V311_WINDOW = 20;
// The slow consumer reads 1 KiB every 50 ms: about 20 KiB/s, a few hundred messages a second.
const SLOW_READ_BYTES = 1024;
const SLOW_READ_PAUSE_MS = 50;

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** A worker process and the clients it runs. */
export interface Running {
  readonly layout: WorkerLayout;
  readonly handle: WorkerHandle;
}

function loadPlan(ctx: RunContext, layout: Layout, worker: WorkerLayout): LoadPlan {
  return {
    host: ctx.broker.host,
    port: ctx.broker.nodePorts?.[worker.node ?? 0] ?? ctx.broker.port,
    tls: ctx.broker.tls,
    version: ctx.level,
    payloadBytes: ctx.options.payloadBytes,
    batch: ctx.options.batch,
    clients: worker.clients,
    ratePerPublisher: layout.ratePerPublisher,
    messagesPerPublisher: layout.messagesPerPublisher,
    trackDuplicates: layout.trackDuplicates,
    latency: layout.latency,
    v311Window: V311_WINDOW,
    slowReadBytes: SLOW_READ_BYTES,
    slowReadPauseMs: SLOW_READ_PAUSE_MS,
  };
}

/** Spawns the workers and sets them up, subscribers first. */
export async function startWorkers(
  ctx: RunContext,
  layout: Layout,
  list: readonly WorkerLayout[],
): Promise<Running[]> {
  const running = list.map((w) => ({ layout: w, handle: WorkerHandle.spawn(w.name) }));
  try {
    // Subscribers first: a publish before every SUBACK would be counted as lost.
    for (const side of ["sub", "both", "pub"] as const) {
      await Promise.all(
        running.filter((r) => r.layout.side === side).map((r) =>
          r.handle.send({ cmd: "setup", plan: loadPlan(ctx, layout, r.layout) })
        ),
      );
    }
  } catch (e) {
    await closeAll(running);
    throw e;
  }
  return running;
}

/** Closes every worker (and its clients). */
export async function closeAll(running: readonly Running[]): Promise<void> {
  await Promise.all(running.map((r) => r.handle.close()));
}

function handles(
  running: readonly Running[],
  filter?: (w: WorkerLayout) => boolean,
): WorkerHandle[] {
  return running.filter((r) => !filter || filter(r.layout)).map((r) => r.handle);
}

const receives = (w: WorkerLayout) => w.side !== "pub";
const publishes = (w: WorkerLayout) => w.side !== "sub";

/** Sum over workers of (counter delta / that worker's own elapsed time), per second. */
function ratePerSecond(
  before: Snapshot[],
  after: Snapshot[],
  counter: "sent" | "received",
): number {
  let rate = 0;
  for (let i = 0; i < before.length; i++) {
    const ms = after[i].at - before[i].at;
    if (ms > 0) rate += ((after[i][counter] - before[i][counter]) * 1000) / ms;
  }
  return rate;
}

function sum(snapshots: readonly Snapshot[], counter: "sent" | "received" | "duplicates"): number {
  return snapshots.reduce((n, s) => n + s[counter], 0);
}

/** Generator CPU over a window: total and busiest worker, in % of one core. */
function generatorCpu(before: Snapshot[], after: Snapshot[]): { total: number; max: number } {
  let total = 0, max = 0;
  for (let i = 0; i < before.length; i++) {
    const pct =
      ((after[i].cpuMicros - before[i].cpuMicros) / ((after[i].at - before[i].at) * 1000)) * 100;
    total += pct;
    max = Math.max(max, pct);
  }
  return { total, max };
}

/** Broker CPU (%, µs per delivered message) between two samples, and RSS at the second. */
export function brokerMetrics(
  b1: ProcSample,
  b2: ProcSample,
  delivered: number,
): Record<string, number> {
  const cpu = b2.cpuMicros - b1.cpuMicros;
  return {
    broker_cpu_pct: (cpu / ((b2.at - b1.at) * 1000)) * 100,
    broker_cpu_us_per_msg: delivered > 0 ? cpu / delivered : NaN,
    broker_rss_mb: b2.rssBytes / MIB,
  };
}

/** The first 5 distinct client errors of `snapshots`. */
export function collectErrors(snapshots: readonly Snapshot[]): string[] {
  return [...new Set(snapshots.flatMap((s) => s.errors))].slice(0, 5);
}

/** A window's marks: all workers' snapshots and the broker's, taken together. */
async function markAll(
  ctx: RunContext,
  workers: WorkerHandle[],
): Promise<[Snapshot[], ProcSample, number]> {
  // Collections reported up to now belong before the mark.
  const gcCount = ctx.broker.gc?.count() ?? 0;
  const [snapshots, broker] = await Promise.all([
    sendAll(workers, { cmd: "mark" }),
    sample(ctx.broker.pid),
  ]);
  return [snapshots, broker, gcCount];
}

/** Waits until subscribers hold `expected` unique messages or their count stops moving. */
async function drain(
  subs: WorkerHandle[],
  expected: number,
  timeoutS: number,
  idleMs = 500,
): Promise<Snapshot[]> {
  const deadline = performance.now() + timeoutS * 1000;
  let last = await sendAll(subs, { cmd: "mark" });
  let stableSince = performance.now();
  while (performance.now() < deadline) {
    const unique = sum(last, "received") - sum(last, "duplicates");
    if (unique >= expected) break;
    if (performance.now() - stableSince > idleMs) break;
    await sleep(100);
    const next = await sendAll(subs, { cmd: "mark" });
    if (sum(next, "received") !== sum(last, "received")) stableSince = performance.now();
    last = next;
  }
  return last;
}

/** Runs a load layout: warm-up, one measured window, stop, drain; throughput and loss metrics. */
export async function measureLoad(ctx: RunContext, layout: Layout): Promise<Measured> {
  const { durationS, drainS } = ctx.options;
  const warmupS = layout.ratePerPublisher === undefined
    ? ctx.options.warmupS
    : ctx.options.pacedWarmupS;
  const running = await startWorkers(ctx, layout, layout.workers);
  try {
    const all = handles(running);
    const subs = handles(running, receives);
    await sendAll(handles(running, publishes), { cmd: "go" });
    await sleep(warmupS * 1000);
    const [m1, b1, gc1] = await markAll(ctx, all);
    await sleep(durationS * 1000);
    const [m2, b2, gc2] = await markAll(ctx, all);
    const stopped = await sendAll(handles(running, publishes), {
      cmd: "stop",
      timeoutMs: drainS * 1000,
    });
    const subIndex = running.map((r, i) => receives(r.layout) ? i : -1).filter((i) => i >= 0);
    const pubIndex = running.map((r, i) => publishes(r.layout) ? i : -1).filter((i) => i >= 0);
    const pick = (list: Snapshot[], idx: number[]) => idx.map((i) => list[i]);
    const sent = sum(stopped, "sent");
    const expected = sent * layout.fanout;
    const final = await drain(subs, expected, drainS, layout.drainIdleMs);
    const received = sum(final, "received");
    const duplicates = sum(final, "duplicates");
    const delivered = sum(pick(m2, subIndex), "received") - sum(pick(m1, subIndex), "received");
    const cpu = generatorCpu(m1, m2);
    const metrics: Record<string, number> = {
      delivered_per_s: ratePerSecond(pick(m1, subIndex), pick(m2, subIndex), "received"),
      published_per_s: ratePerSecond(pick(m1, pubIndex), pick(m2, pubIndex), "sent"),
      ...brokerMetrics(b1, b2, delivered),
      gen_cpu_pct: cpu.total,
      gen_max_worker_cpu_pct: cpu.max,
      sent,
      received,
      duplicates,
      undelivered_pct: expected > 0
        ? (Math.max(0, expected - (received - duplicates)) / expected) * 100
        : 0,
    };
    const gc = ctx.broker.gc;
    if (gc) {
      const events = gc.events.slice(gc1, gc2);
      Object.assign(metrics, gcMetrics(events, (b2.at - b1.at) / 1000, metrics.delivered_per_s));
    }
    const latency = m2.find((s) => s.latency)?.latency;
    if (latency) {
      Object.assign(metrics, {
        p50_us: latency.p50,
        p99_us: latency.p99,
        p999_us: latency.p999,
        max_us: latency.max,
        samples: latency.count,
      });
    }
    return { metrics, errors: collectErrors([...m2, ...final, ...stopped]) };
  } finally {
    await closeAll(running);
  }
}

/** A paced latency load for the C probe (probe.ts): pairs, total rate, QoS. */
export interface ProbeLoad {
  readonly pairs: number;
  /** Messages per second over all publishers. */
  readonly rate: number;
  readonly qos: 0 | 1;
}

/**
 * A latency run with the C probe instead of the worker clients: the same pairs, rate, QoS, MQTT
 * level, transport, warm-up (`pacedWarmupS`) and window; the broker is sampled (CPU, RSS, GC
 * trace) when the probe reports its window's start and end. The generator's CPU is the probe's
 * own over its window (one process: it is also the busiest "worker").
 */
export async function measureProbeLatency(ctx: RunContext, load: ProbeLoad): Promise<Measured> {
  const build = await buildProbe();
  if (!build.ok) throw new Error(`the latency probe cannot run: ${build.reason}`);
  const broker: Partial<Record<ProbeMark, ProcSample>> = {};
  const gcAt: Partial<Record<ProbeMark, number>> = {};
  const { result: r, stderr } = await runProbe(build.path, {
    host: ctx.broker.host,
    port: ctx.broker.port,
    pairs: load.pairs,
    rate: load.rate,
    qos: load.qos,
    version: ctx.level,
    warmupS: ctx.options.pacedWarmupS,
    windowS: ctx.options.durationS,
    drainS: ctx.options.drainS,
    payloadBytes: ctx.options.payloadBytes,
    tls: ctx.broker.tls,
    idPrefix: uniqueIdPrefix(),
    // The floor speaks no MQTT: a 2-byte hello per connection, then the same PUBLISH bytes.
    raw: ctx.broker.raw === true,
  }, async (mark) => {
    // Collections reported up to now belong before the mark (as in markAll).
    gcAt[mark] = ctx.broker.gc?.count() ?? 0;
    broker[mark] = await sample(ctx.broker.pid);
  });
  const b1 = broker["window-start"], b2 = broker["window-end"];
  if (b1 === undefined || b2 === undefined) throw new Error("the probe reported no window");
  const deliveredPerS = r.window_s > 0 ? r.window_received / r.window_s : NaN;
  // Deliveries over the broker's sampling interval (a few ms off the probe's window).
  const delivered = (deliveredPerS * (b2.at - b1.at)) / 1000;
  const genCpu = r.window_s > 0 ? (r.cpu_us / (r.window_s * 1e6)) * 100 : NaN;
  const unique = r.received - r.duplicates;
  const metrics: Record<string, number> = {
    delivered_per_s: deliveredPerS,
    published_per_s: r.window_s > 0 ? r.window_sent / r.window_s : NaN,
    ...brokerMetrics(b1, b2, delivered),
    gen_cpu_pct: genCpu,
    gen_max_worker_cpu_pct: genCpu,
    sent: r.sent,
    received: r.received,
    duplicates: r.duplicates,
    undelivered_pct: r.sent > 0 ? (Math.max(0, r.sent - unique) / r.sent) * 100 : 0,
    p50_us: r.p50,
    p90_us: r.p90,
    p99_us: r.p99,
    p999_us: r.p999,
    max_us: r.max,
    samples: r.count,
    skipped_beats: r.skipped,
  };
  const gc = ctx.broker.gc;
  if (gc) {
    const events = gc.events.slice(gcAt["window-start"], gcAt["window-end"]);
    Object.assign(metrics, gcMetrics(events, (b2.at - b1.at) / 1000, deliveredPerS));
  }
  const errors = stderr.split("\n").map((l) => l.trim()).filter((l) => l !== "").slice(0, 5);
  if (r.dropped_samples > 0) errors.push(`${r.dropped_samples} latency samples not stored`);
  return { metrics, errors };
}

/** Samples broker RSS every `everyMs` until stopped. */
function rssSampler(pid: number, everyMs: number): { stop(): Promise<[number, number][]> } {
  const start = performance.now();
  const series: [number, number][] = [];
  let active = true;
  const loop = (async () => {
    while (active) {
      try {
        series.push([(performance.now() - start) / 1000, (await rssBytes(pid)) / MIB]);
      } catch {
        break;
      }
      await sleep(everyMs);
    }
  })();
  return {
    async stop() {
      active = false;
      await loop;
      return series;
    },
  };
}

/**
 * Pairs alone for one window, then the same pairs with a slow consumer on `bench/pair/#`:
 * the pairs must keep their pace and the broker's memory must stay bounded.
 */
export async function measureSlowConsumer(
  ctx: RunContext,
  layout: Layout,
  slow: WorkerLayout,
): Promise<Measured> {
  const { durationS, warmupS, drainS } = ctx.options;
  const sampler = rssSampler(ctx.broker.pid, 250);
  const loadStart = performance.now();
  const running = await startWorkers(ctx, layout, layout.workers);
  const slowRunning: Running[] = [];
  try {
    const subs = handles(running, receives);
    await sendAll(handles(running, publishes), { cmd: "go" });
    await sleep(warmupS * 1000);
    const a1 = await sendAll(subs, { cmd: "mark" });
    await sleep(durationS * 1000);
    const a2 = await sendAll(subs, { cmd: "mark" });
    const attachedAt = (performance.now() - loadStart) / 1000;
    slowRunning.push(...await startWorkers(ctx, layout, [slow]));
    await sleep(warmupS * 1000);
    const [b1, broker1] = await markAll(ctx, subs);
    await sleep(durationS * 1000);
    const [b2, broker2] = await markAll(ctx, subs);
    const slowSnapshot = await slowRunning[0].handle.send({ cmd: "mark" });
    await sendAll(handles(running, publishes), { cmd: "stop", timeoutMs: drainS * 1000 });
    const series = await sampler.stop();
    const baseline = ratePerSecond(a1, a2, "received");
    const withSlow = ratePerSecond(b1, b2, "received");
    const rssAt = (t: number) => series.find(([s]) => s >= t)?.[1] ?? NaN;
    const end = series.length > 0 ? series[series.length - 1] : [NaN, NaN];
    const secondHalfStart = attachedAt + (end[0] - attachedAt) / 2;
    const delivered = sum(b2, "received") - sum(b1, "received");
    return {
      metrics: {
        baseline_per_s: baseline,
        with_slow_per_s: withSlow,
        slow_ratio: withSlow / baseline,
        ...brokerMetrics(broker1, broker2, delivered),
        rss_at_attach_mb: rssAt(attachedAt),
        rss_max_mb: Math.max(...series.map(([, mb]) => mb)),
        rss_end_mb: end[1],
        rss_growth_2nd_half_mb: end[1] - rssAt(secondHalfStart),
        slow_received: slowSnapshot.received,
      },
      errors: collectErrors([...b2, slowSnapshot]),
      rssSeries: series.map(([t, mb]) => [Math.round(t * 100) / 100, Math.round(mb * 10) / 10]),
    };
  } finally {
    await sampler.stop();
    await closeAll([...slowRunning, ...running]);
  }
}

/** Waves of idle connections opened by this bench process so far. */
let waves = 0;

/**
 * Loopback source addresses a wave of idle connections is spread over: 8 of them, and another 8
 * for every wave (127.0.1.2-9, 127.0.2.2-9, ...; the set comes back after 250 waves). Clients
 * close first, so each wave leaves its sockets in TIME_WAIT on the client side for 60 s: with one
 * fixed set, the third wave or so found ~7,500 of them on each source address, and the
 * generator's connect() searched so long for a free port that a reconnect wave fell from ~7,500
 * to ~2,000 CONNACK/s with the busiest worker at 84 % of a core (seen in 1 of 2 runs of the
 * fifth session and 2 of 3 of the seventh, and on an mcloudtt-only rerun, always in the
 * reconnect wave; the kernel, not the broker).
 */
export function waveSourceAddresses(): string[] {
  const third = 1 + (waves++ % 250);
  return Array.from({ length: 8 }, (_, i) => `127.0.${third}.${i + 2}`);
}

/** Opens `count` idle connections from several processes; connect rate and memory per connection. */
export async function measureConnections(ctx: RunContext, count: number): Promise<Measured> {
  const processes = ctx.options.workersPerSide;
  let workers: WorkerHandle[] = [];
  // One wave: `count` connections from fresh workers, each client id new to the broker.
  const wave = async (prefix: string) => {
    workers = Array.from({ length: processes }, (_, i) => WorkerHandle.spawn(`idle${i}`));
    const sourceAddresses = waveSourceAddresses();
    const ready = await Promise.all(workers.map((w, i) => {
      const plan: IdlePlan = {
        host: ctx.broker.host,
        port: ctx.broker.port,
        tls: ctx.broker.tls,
        version: ctx.level,
        count: Math.floor(count / processes) + (i < count % processes ? 1 : 0),
        sourceAddresses,
        // Enough to keep the broker busy; in total below Mosquitto's listen backlog of 100, since
        // an overflowing accept queue turns into 1 s SYN retransmits and measures the kernel.
        concurrency: 32,
        keepAliveSeconds: 60,
        clientIdPrefix: `${prefix}-i${i}-`,
      };
      return w.send({ cmd: "setup-idle", plan });
    }));
    // Let the broker settle (after its start, or after the previous wave closed) first.
    await sleep(300);
    const before = await sample(ctx.broker.pid);
    const results = await sendAll(workers, { cmd: "go" });
    const after = await sample(ctx.broker.pid);
    const connected = results.reduce((n, r) => n + (r.connect?.connected ?? 0), 0);
    const elapsedMs = Math.max(...results.map((r) => r.connect?.elapsedMs ?? 0));
    return {
      before,
      after,
      results,
      connected,
      failed: results.reduce((n, r) => n + (r.connect?.failed ?? 0), 0),
      rate: elapsedMs > 0 ? (connected * 1000) / elapsedMs : NaN,
      // The generator's CPU while connecting: near 100 % per worker, it (TLS handshakes on the
      // client side) and not the broker limits the connect rate.
      gen: generatorCpu(ready, results),
      cpuPerConn: connected > 0 ? (after.cpuMicros - before.cpuMicros) / connected : NaN,
    };
  };
  const closeWorkers = async () => {
    await Promise.all(workers.map((w) => w.close()));
    workers = [];
  };
  try {
    // First wave, into a broker just started: the memory per connection, and the connect rate
    // of a cold broker (a JIT-compiled one still compiles its connect path meanwhile).
    const first = await wave("b");
    await sleep(1000);
    const settled = await sample(ctx.broker.pid);
    const held = await sendAll(workers, { cmd: "mark" });
    const errors = collectErrors(first.results);
    // Second wave: all of them reconnect, as a fleet does after a network outage, to a broker
    // that has been serving (its connect path compiled). Memory is not measured here: the
    // first wave's freed memory would be reused and the figure would read low.
    await closeWorkers();
    await sleep(1000);
    const again = await wave("r");
    errors.push(...collectErrors(again.results));
    return {
      metrics: {
        connected: first.connected,
        failed: first.failed,
        still_open: held.reduce((n, r) => n + r.received, 0),
        connack_per_s: first.rate,
        kb_per_conn: first.connected > 0
          ? (settled.rssBytes - first.before.rssBytes) / 1024 / first.connected
          : NaN,
        broker_cpu_us_per_conn: first.cpuPerConn,
        broker_cpu_pct: ((first.after.cpuMicros - first.before.cpuMicros) /
          ((first.after.at - first.before.at) * 1000)) * 100,
        gen_cpu_pct: first.gen.total,
        gen_max_worker_cpu_pct: first.gen.max,
        broker_rss_mb: settled.rssBytes / MIB,
        broker_rss_before_mb: first.before.rssBytes / MIB,
        reconnected: again.connected,
        reconnect_failed: again.failed,
        reconnect_connack_per_s: again.rate,
        reconnect_broker_cpu_us_per_conn: again.cpuPerConn,
        reconnect_gen_max_worker_cpu_pct: again.gen.max,
      },
      errors,
    };
  } finally {
    await closeWorkers();
  }
}
