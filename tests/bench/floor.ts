/**
 * The runtime's floor (issue 14): how fast can Deno itself move a message
 * from one socket to another at a modest paced rate? A bare forwarder (no
 * MQTT: it reads from one socket and writes what it read to its partner, both
 * ways) is driven by the same paced load as the brokers (the bench's C probe, probe.ts: 16
 * pairs, the same PUBLISH and PUBACK bytes; `--latency-client deno` for the Deno client of
 * paced.ts, whose own delays hide the brokers'), and its latency, CPU and allocation are
 * reported next to mcloudtt's and Mosquitto's, interleaved in one run. Over
 * plain TCP the forwarder uses `Deno.listen` and reads and writes by resource
 * id (src/transport/deno_io.ts), over TLS `node:tls`: what mcloudtt's own
 * transports use. On a quiet machine the gap between the
 * forwarder and mcloudtt is what our own code costs; no broker on this runtime does
 * less per message than the forwarder.
 *
 *   deno run -A tests/bench/floor.ts                          # 2k msg/s, QoS 0/1, MQTT 5, tcp
 *   deno run -A tests/bench/floor.ts --rates 2000,10000 --transports tcp,tls --versions 5,4 \
 *     --rounds 2 --out bench-results/floor.md               # the full comparison, as Markdown
 *   deno run -A tests/bench/floor.ts --quick                  # checks the script only
 *
 * Each run warms up (`--warmup`, 15 s: V8 optimises a broker's hot path 10-12 s into such a
 * load) and then measures a window (`--duration`, 10 s). CPU is split by thread: the main
 * thread runs JavaScript and the event loop, V8's helper threads ("V8 DefaultWorke") collect
 * garbage and compile. Latency numbers are only meaningful on a quiet machine.
 * The forwarder is forwarder.ts, started in a process of its own for each run.
 */
import { parseArgs } from "node:util";
import { BENCH_LIMITS, BROKERS, type RunningBroker } from "./brokers.ts";
import { startForwarder } from "./forwarder.ts";
import { killAll } from "./children.ts";
import { gcMetrics, summarize } from "./gc_trace.ts";
import { PacedLoad } from "./paced.ts";
import { buildProbe, type ProbeMark, runProbe, uniqueIdPrefix } from "./probe.ts";
import { type ThreadCpu, threadCpuMicros } from "./procstat.ts";
import { median } from "./stats.ts";
import { type BenchPki, benchPki, clientTls, removeBenchPki, type Transport } from "./tls.ts";
import { HOST, type Traced } from "./traced.ts";
import type { ProtocolLevel } from "./wire.ts";

// ---- the comparison ---------------------------------------------------------------

type Target = "floor" | "mcloudtt" | "mosquitto";

interface Options {
  targets: Target[];
  transports: Transport[];
  versions: ProtocolLevel[];
  qos: (0 | 1)[];
  rates: number[];
  pairs: number;
  payload: number;
  warmup: number;
  duration: number;
  rounds: number;
  out?: string;
  /** The paced client: the C probe (default) or the Deno one (paced.ts). */
  client: "probe" | "deno";
}

function options(): Options {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      targets: { type: "string", default: "floor,mcloudtt,mosquitto" },
      transports: { type: "string", default: "tcp" },
      versions: { type: "string", default: "5" },
      qos: { type: "string", default: "0,1" },
      rates: { type: "string", default: "2000" },
      pairs: { type: "string", default: "16" },
      payload: { type: "string", default: "64" },
      warmup: { type: "string", default: "15" },
      duration: { type: "string", default: "10" },
      rounds: { type: "string", default: "1" },
      out: { type: "string" },
      quick: { type: "boolean", default: false },
      "latency-client": { type: "string", default: "probe" },
    },
  });
  const client = values["latency-client"];
  if (client !== "probe" && client !== "deno") {
    throw new Error(`--latency-client is probe or deno, not ${client}`);
  }
  const nums = (s: string) => s.split(",").map(Number);
  return {
    targets: values.targets.split(",") as Target[],
    transports: values.transports.split(",") as Transport[],
    versions: nums(values.versions) as ProtocolLevel[],
    qos: nums(values.qos) as (0 | 1)[],
    rates: nums(values.rates),
    pairs: Number(values.pairs),
    payload: Number(values.payload),
    warmup: values.quick ? 1 : Number(values.warmup),
    duration: values.quick ? 2 : Number(values.duration),
    rounds: Number(values.rounds),
    out: values.out,
    client,
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const us = (n: number) => (Number.isFinite(n) ? Math.round(n).toString() : "n/a");
const f1 = (n: number) => (Number.isFinite(n) ? n.toFixed(1) : "n/a");

/** One cell of the comparison: what the load was. */
interface Cell {
  transport: Transport;
  version: ProtocolLevel;
  qos: 0 | 1;
  rate: number;
}

/** One target measured in one cell. */
interface Result extends Cell {
  target: Target;
  samples: number;
  p50: number;
  p99: number;
  p999: number;
  max: number;
  /** Broker CPU per delivered message, µs, in total and by thread name (user, kernel). */
  cpu: number;
  threads: Map<string, ThreadCpu>;
  heapPerMsg: number;
  scavenges: string;
  errors: string[];
}

/** A started target: its port, its pid, and its GC trace for the Deno ones. */
interface Started {
  port: number;
  pid: number;
  gc: Traced["gc"] | null;
  stop(): Promise<void>;
}

async function start(
  target: Target,
  transport: Transport,
  pki: BenchPki | undefined,
  mark: () => number,
  workDir: string,
): Promise<Started> {
  if (target === "floor") {
    const { port, traced } = await startForwarder(pki, mark);
    return { port, pid: traced.child.pid, gc: traced.gc, stop: () => traced.stop() };
  }
  const opts = { tls: transport === "tls" ? pki : undefined, gcTrace: true, gcMark: mark };
  const broker: RunningBroker = await BROKERS[target].start(BENCH_LIMITS, workDir, opts);
  return { port: broker.port, pid: broker.pid, gc: broker.gc ?? null, stop: () => broker.stop() };
}

/** CPU by thread between two readings, µs per message; threads that ended are not counted. */
function threadDelta(
  before: Map<string, ThreadCpu>,
  after: Map<string, ThreadCpu>,
  messages: number,
): Map<string, ThreadCpu> {
  const out = new Map<string, ThreadCpu>();
  for (const [name, t] of after) {
    const b = before.get(name) ?? { user: 0, sys: 0 };
    out.set(name, { user: (t.user - b.user) / messages, sys: (t.sys - b.sys) / messages });
  }
  return out;
}

async function run(o: Options, target: Target, cell: Cell, workDir: string): Promise<Result> {
  return o.client === "probe"
    ? await runWithProbe(o, target, cell, workDir)
    : await runWithDeno(o, target, cell, workDir);
}

/** One run under the C probe (probe.ts): the broker's CPU and GC are taken at its window marks. */
async function runWithProbe(
  o: Options,
  target: Target,
  cell: Cell,
  workDir: string,
): Promise<Result> {
  const build = await buildProbe();
  if (!build.ok) throw new Error(`the latency probe cannot run: ${build.reason}`);
  const pki = cell.transport === "tls" ? await benchPki() : undefined;
  const t = await start(target, cell.transport, pki, () => 0, workDir);
  try {
    const at: Partial<Record<ProbeMark, { threads: Map<string, ThreadCpu>; gc: number }>> = {};
    const { result: r, stderr } = await runProbe(build.path, {
      host: HOST,
      port: t.port,
      pairs: o.pairs,
      rate: cell.rate,
      qos: cell.qos,
      version: cell.version,
      warmupS: o.warmup,
      windowS: o.duration,
      payloadBytes: o.payload,
      tls: pki && await clientTls(pki),
      idPrefix: uniqueIdPrefix("floor"),
      raw: target === "floor",
    }, async (mark) => {
      at[mark] = { threads: await threadCpuMicros(t.pid), gc: t.gc?.events.length ?? 0 };
    });
    const w0 = at["window-start"], w1 = at["window-end"];
    if (w0 === undefined || w1 === undefined) throw new Error("the probe reported no window");
    const messages = Math.max(1, r.window_received);
    const events = t.gc === null ? null : t.gc.events.slice(w0.gc, w1.gc);
    // Bytes per message by time (the probe counts no messages as collections happen).
    const perMsg = events === null
      ? NaN
      : gcMetrics(events, r.window_s, messages / r.window_s).gc_alloc_bytes_per_msg;
    const errors = stderr.split("\n").map((l) => l.trim()).filter((l) => l !== "").slice(0, 2);
    const threads = threadDelta(w0.threads, w1.threads, messages);
    return result(
      target,
      cell,
      r,
      threads,
      events === null ? null : summarize(events),
      perMsg,
      errors,
    );
  } finally {
    await t.stop();
  }
}

/** The figures of one run, from its latency summary, CPU by thread and GC window. */
function result(
  target: Target,
  cell: Cell,
  lat: { count: number; p50: number; p99: number; p999: number; max: number },
  threads: Map<string, ThreadCpu>,
  gc: ReturnType<typeof summarize> | null,
  heapPerMsg: number,
  errors: string[],
): Result {
  const scav = gc?.byKind["s"];
  return {
    ...cell,
    target,
    samples: lat.count,
    p50: lat.p50,
    p99: lat.p99,
    p999: lat.p999,
    max: lat.max,
    cpu: [...threads.values()].reduce((a, b) => a + b.user + b.sys, 0),
    threads,
    heapPerMsg,
    scavenges: gc === null
      ? "-"
      : `${scav?.count ?? 0}${scav ? ` (max ${scav.max.toFixed(2)} ms)` : ""}`,
    errors,
  };
}

/** One run under the Deno paced client (paced.ts), the client before the probe. */
async function runWithDeno(
  o: Options,
  target: Target,
  cell: Cell,
  workDir: string,
): Promise<Result> {
  const pki = cell.transport === "tls" ? await benchPki() : undefined;
  let load: PacedLoad | null = null;
  const mark = () => load?.counts().received ?? 0;
  const t = await start(target, cell.transport, pki, mark, workDir);
  try {
    load = await PacedLoad.open({
      host: HOST,
      port: t.port,
      version: cell.version,
      qos: cell.qos,
      pairs: o.pairs,
      rate: cell.rate,
      payloadBytes: o.payload,
      persistent: false,
      idPrefix: "floor",
      raw: target === "floor",
      tls: pki && await clientTls(pki),
    });
    load.go();
    await sleep(o.warmup * 1000);
    const from = t.gc?.events.length ?? 0;
    load.recordLatency();
    load.takeLatency();
    const threads0 = await threadCpuMicros(t.pid);
    const got0 = load.counts().received;
    await sleep(o.duration * 1000);
    const lat = load.takeLatency();
    const messages = Math.max(1, load.counts().received - got0);
    const threads = threadDelta(threads0, await threadCpuMicros(t.pid), messages);
    const gc = t.gc === null ? null : summarize(t.gc.since(from));
    // NaN: fewer than two collections in the window, too little allocation to measure.
    const perMsg = gc === null ? NaN : gc.bytesPerMessage;
    return result(target, cell, lat, threads, gc, perMsg, load.counts().errors);
  } finally {
    await load?.close().catch(() => {});
    await t.stop();
  }
}

const cellName = (c: Cell) =>
  `${c.rate / 1000}k QoS ${c.qos} ${c.transport} ${c.version === 5 ? "5" : "3.1.1"}`;

/** By thread, user + kernel, e.g. "main 12.0+9.3, V8 DefaultWorke 1.2+0.1". */
function threadSplit(threads: Map<string, ThreadCpu>): string {
  return [...threads].filter(([, v]) => v.user + v.sys >= 0.05)
    .sort((a, b) => b[1].user + b[1].sys - a[1].user - a[1].sys)
    .map(([k, v]) => `${k} ${f1(v.user)}+${f1(v.sys)}`).join(", ");
}

function row(r: Result): string {
  return `| ${r.target} | ${cellName(r)} | ${r.samples} | ${us(r.p50)} | ${us(r.p99)} | ${
    us(r.p999)
  } | ${us(r.max)} | ${f1(r.cpu)} | ${threadSplit(r.threads)} | ${
    r.target === "mosquitto"
      ? "-"
      : Number.isFinite(r.heapPerMsg)
      ? Math.round(r.heapPerMsg)
      : "< 2 GCs"
  } | ${r.scavenges} |${r.errors.length > 0 ? ` errors: ${r.errors.slice(0, 2).join("; ")}` : ""}`;
}

const ROW_HEADER =
  "| target | load | samples | p50 µs | p99 µs | p99.9 µs | max µs | CPU µs/msg | " +
  "CPU by thread, user+kernel | heap B/msg | scavenges |\n|---|---|---|---|---|---|---|---|---|---|---|";

/** Medians over the rounds, with ratios: mcloudtt to Mosquitto, floor to Mosquitto, ours to floor. */
function summary(results: Result[], cells: Cell[]): string[] {
  const lines = [
    "| load | p99 µs floor / mcloudtt / Mosquitto | p99: mcloudtt ÷ Mosquitto | floor ÷ Mosquitto | " +
    "mcloudtt ÷ floor | p99.9 µs floor / mcloudtt / Mosquitto | CPU µs/msg floor / mcloudtt / " +
    "Mosquitto | CPU: mcloudtt ÷ Mosquitto | floor ÷ Mosquitto |",
    "|---|---|---|---|---|---|---|---|---|",
  ];
  const ratio = (
    a: number,
    b: number,
  ) => (b > 0 && Number.isFinite(a) ? `${(a / b).toFixed(2)}×` : "-");
  for (const c of cells) {
    const m = (target: Target, key: "p99" | "p999" | "cpu") =>
      median(
        results.filter((r) => r.target === target && cellName(r) === cellName(c)).map((r) =>
          r[key]
        ),
      );
    const [fl, mc, mo] = (["floor", "mcloudtt", "mosquitto"] as const).map((t) => ({
      p99: m(t, "p99"),
      p999: m(t, "p999"),
      cpu: m(t, "cpu"),
    }));
    lines.push(
      `| ${cellName(c)} | ${us(fl.p99)} / ${us(mc.p99)} / ${us(mo.p99)} | ${
        ratio(mc.p99, mo.p99)
      } | ${ratio(fl.p99, mo.p99)} | ${ratio(mc.p99, fl.p99)} | ${us(fl.p999)} / ${us(mc.p999)} / ${
        us(mo.p999)
      } | ${f1(fl.cpu)} / ${f1(mc.cpu)} / ${f1(mo.cpu)} | ${ratio(mc.cpu, mo.cpu)} | ${
        ratio(fl.cpu, mo.cpu)
      } |`,
    );
  }
  return lines;
}

if (import.meta.main) {
  const o = options();
  if (o.targets.includes("mosquitto") && await BROKERS.mosquitto.unavailable() !== null) {
    console.error("mosquitto not found: skipped");
    o.targets = o.targets.filter((t) => t !== "mosquitto");
  }
  if (o.client === "probe") {
    const build = await buildProbe();
    if (!build.ok) {
      console.error(`!! the C latency probe cannot be built (${build.reason}): the Deno client`);
      o.client = "deno";
    }
  }
  const workDir = await Deno.makeTempDir({ prefix: "mcloudtt-floor-" });
  Deno.addSignalListener("SIGINT", () => {
    killAll();
    Deno.exit(130);
  });
  const out: string[] = [];
  const say = (line: string) => {
    console.log(line);
    out.push(line);
  };
  say(
    `paced load, ${o.pairs} pairs, ${o.payload} B payload, ${o.warmup} s warm-up, ` +
      `${o.duration} s window, ${o.rounds} round(s); latency in µs (quiet machine only), ` +
      `measured by ${
        o.client === "probe" ? "the C probe (tests/bench/probe/)" : "the Deno paced client"
      }; ${new Date().toISOString()}`,
  );
  say("");
  say(ROW_HEADER);
  const cells: Cell[] = [];
  for (const transport of o.transports) {
    for (const version of o.versions) {
      for (const rate of o.rates) {
        for (const qos of o.qos) cells.push({ transport, version, qos, rate });
      }
    }
  }
  const results: Result[] = [];
  for (let round = 0; round < o.rounds; round++) {
    for (const cell of cells) {
      // Interleaved, so a change in the machine's load hits every target alike.
      for (const target of o.targets) {
        const r = await run(o, target, cell, workDir);
        results.push(r);
        say(row(r));
      }
    }
  }
  say("");
  say(`Medians over ${o.rounds} round(s):`);
  say("");
  for (const line of summary(results, cells)) say(line);
  await removeBenchPki();
  await Deno.remove(workDir, { recursive: true }).catch(() => {});
  if (o.out !== undefined) await Deno.writeTextFile(o.out, out.join("\n") + "\n");
}
