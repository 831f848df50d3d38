/**
 * The runtime's floor (issue 14): how fast can Deno itself move a message
 * from one socket to another at a modest paced rate? A bare forwarder (no
 * MQTT: it reads from one socket and writes what it read to its partner, both
 * ways) is driven by the same paced load as the brokers (paced.ts: 16 pairs,
 * the same PUBLISH and PUBACK bytes), and its latency, CPU and allocation are
 * reported next to mcloudtt's and Mosquitto's, interleaved in one run. Over
 * plain TCP the forwarder uses `Deno.listen` and reads and writes by resource
 * id (src/transport/deno_io.ts), over TLS `node:tls`: what mcloudtt's own
 * transports use. On a quiet machine the gap between the
 * forwarder and mcloudtt is what our own code costs; the forwarder's figures
 * are what no broker on this runtime beats.
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
 * `--serve <port> [--cert f --key f]` runs the forwarder itself (the bench starts it that way).
 */
import { parseArgs } from "node:util";
import tls from "node:tls";
import type { Socket } from "node:net";
import { BENCH_LIMITS, BROKERS, freePort, type RunningBroker } from "./brokers.ts";
import { killAll } from "./children.ts";
import { summarize } from "./gc_trace.ts";
import { rawIo, resourceId } from "../../src/transport/deno_io.ts";
import { PacedLoad } from "./paced.ts";
import { type ThreadCpu, threadCpuMicros } from "./procstat.ts";
import { median } from "./stats.ts";
import { type BenchPki, benchPki, clientTls, removeBenchPki, type Transport } from "./tls.ts";
import { HOST, startTraced, type Traced } from "./traced.ts";
import type { ProtocolLevel } from "./wire.ts";

const REPO_ROOT = new URL("../../", import.meta.url).pathname;
const SELF = new URL(import.meta.url).pathname;

// ---- the forwarder ------------------------------------------------------------------

/**
 * One side of a forwarded pair, read and written the cheapest way Deno offers: by resource id
 * through the runtime's core (what mcloudtt's TCP transport does, src/transport/deno_io.ts),
 * else through the Deno.Conn's own methods.
 */
interface Side {
  read(buf: Uint8Array): Promise<number | null>;
  write(bytes: Uint8Array): Promise<number>;
  close(): void;
}

function side(conn: Deno.Conn): Side {
  const rid = rawIo === null ? -1 : resourceId(conn);
  if (rid === -1) return conn;
  const io = rawIo!;
  return {
    read: (buf) => io.read(rid, buf).then((n) => (n === 0 ? null : n)),
    write: (bytes) => io.write(rid, bytes),
    close: () => io.close(rid),
  };
}

/** Copies everything `from` sends to `to` until either side ends. */
async function forward(from: Side, to: Side, first: Uint8Array | null): Promise<void> {
  const buf = new Uint8Array(16 * 1024);
  try {
    if (first !== null && first.length > 0) await writeAll(to, first);
    for (;;) {
      const n = await from.read(buf);
      if (n === null) break;
      await writeAll(to, buf.subarray(0, n));
    }
  } catch {
    // a reset ends the pair like EOF
  }
  for (const c of [from, to]) {
    try {
      c.close();
    } catch {
      // closed by the other direction
    }
  }
}

async function writeAll(conn: Side, bytes: Uint8Array): Promise<void> {
  let off = 0;
  while (off < bytes.length) off += await conn.write(bytes.subarray(off));
}

/** Reads the 2-byte hello (role, pair); returns it with whatever followed it. */
async function hello(conn: Side): Promise<{ role: number; pair: number; rest: Uint8Array }> {
  const buf = new Uint8Array(4096);
  let have = 0;
  while (have < 2) {
    const n = await conn.read(buf.subarray(have));
    if (n === null) throw new Error("closed before hello");
    have += n;
  }
  return { role: buf[0], pair: buf[1], rest: buf.slice(2, have) };
}

/** The plain forwarder: pairs publisher i with subscriber i and pipes them both ways. */
async function serve(port: number): Promise<void> {
  const listener = Deno.listen({ hostname: HOST, port });
  const waiting = new Map<string, { conn: Side; rest: Uint8Array }>();
  for await (const tcp of listener) {
    tcp.setNoDelay(true);
    const conn = side(tcp);
    hello(conn).then(({ role, pair, rest }) => {
      const peerKey = `${1 - role}:${pair}`;
      const peer = waiting.get(peerKey);
      if (peer === undefined) {
        waiting.set(`${role}:${pair}`, { conn, rest });
        return;
      }
      waiting.delete(peerKey);
      forward(conn, peer.conn, rest);
      forward(peer.conn, conn, peer.rest);
    }, () => conn.close());
  }
}

/**
 * The TLS forwarder, on node:tls like mcloudtt's TLS listener: each socket's 'data' is written
 * to its partner, with the partner's reading paused while a write is buffered (as a broker
 * stops reading a publisher whose subscriber is behind).
 */
function serveTls(port: number, certFile: string, keyFile: string): void {
  const waiting = new Map<string, Socket>();
  const pipe = (from: Socket, to: Socket) => {
    from.on("data", (chunk: Uint8Array) => {
      if (!to.write(chunk)) {
        from.pause();
        to.once("drain", () => from.resume());
      }
    });
    from.on("close", () => to.destroy());
    from.on("error", () => to.destroy());
  };
  const server = tls.createServer({
    cert: Deno.readTextFileSync(certFile),
    key: Deno.readTextFileSync(keyFile),
  }, (socket) => {
    socket.setNoDelay(true);
    socket.once("data", (first: Uint8Array) => {
      const role = first[0];
      const pair = first[1];
      const rest = first.subarray(2);
      const peerKey = `${1 - role}:${pair}`;
      const peer = waiting.get(peerKey);
      if (peer === undefined) {
        socket.pause();
        waiting.set(`${role}:${pair}`, socket);
        if (rest.length > 0) socket.unshift(rest);
        return;
      }
      waiting.delete(peerKey);
      if (rest.length > 0) peer.write(rest);
      pipe(socket, peer);
      pipe(peer, socket);
      peer.resume();
    });
    socket.on("error", () => socket.destroy());
  });
  server.listen(port, HOST);
}

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
    },
  });
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

/**
 * Starts the forwarder in a process of its own on a free port (behind TLS with `pki`'s
 * certificate when given), traced like a broker; `v8` adds V8 flags.
 */
export async function startForwarder(
  pki: BenchPki | undefined,
  mark: () => number,
  v8: string[] = [],
): Promise<{ port: number; traced: Traced }> {
  const port = freePort();
  const tlsArgs = pki === undefined ? [] : ["--cert", pki.certFile, "--key", pki.keyFile];
  const traced = await startTraced([SELF, "--serve", String(port), ...tlsArgs], {
    cwd: REPO_ROOT,
    port,
    v8,
    mark,
  });
  return { port, traced };
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
      // NaN: fewer than two collections in the window, too little allocation to measure.
      heapPerMsg: gc === null ? NaN : gc.bytesPerMessage,
      scavenges: t.gc === null
        ? "-"
        : `${scav?.count ?? 0}${scav ? ` (max ${scav.max.toFixed(2)} ms)` : ""}`,
      errors: load.counts().errors,
    };
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
  const { values } = parseArgs({
    args: Deno.args,
    options: { serve: { type: "string" }, cert: { type: "string" }, key: { type: "string" } },
    strict: false,
  });
  if (typeof values.serve === "string") {
    if (typeof values.cert === "string" && typeof values.key === "string") {
      serveTls(Number(values.serve), values.cert, values.key);
    } else {
      await serve(Number(values.serve));
    }
  } else {
    const o = options();
    if (o.targets.includes("mosquitto") && await BROKERS.mosquitto.unavailable() !== null) {
      console.error("mosquitto not found: skipped");
      o.targets = o.targets.filter((t) => t !== "mosquitto");
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
        `${o.duration} s window, ${o.rounds} round(s); latency in µs (quiet machine only); ` +
        `${new Date().toISOString()}`,
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
}
