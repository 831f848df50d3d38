/**
 * The runtime's floor (issue 14): how fast can Deno itself move a message
 * from one socket to another at a modest paced rate? A bare TCP forwarder
 * (no MQTT: it reads from one socket and writes what it read to its partner,
 * both ways) is driven by the same paced load as the broker (paced.ts: 16
 * pairs, the same PUBLISH and PUBACK bytes), and its latency and allocation
 * are reported next to mcloudtt's (and Mosquitto's, when installed). On a
 * quiet machine the gap between the forwarder's p99 and ours is what our own
 * code costs; the forwarder's p99 is what no broker on this runtime beats.
 *
 *   deno run -A tests/bench/floor.ts                          # floor, mcloudtt, mosquitto
 *   deno run -A tests/bench/floor.ts --rates 2000,10000 --qos 0,1 --rounds 3
 *   deno run -A tests/bench/floor.ts --quick                  # checks the script only
 *
 * Latency numbers are only meaningful on a quiet machine (nothing else running).
 * `--serve <port>` runs the forwarder itself (the bench starts it that way).
 */
import { parseArgs } from "node:util";
import { brokerArgs } from "./alloc.ts";
import { BENCH_LIMITS, BROKERS, freePort, type RunningBroker } from "./brokers.ts";
import { killAll } from "./children.ts";
import { summarize } from "./gc_trace.ts";
import { PacedLoad } from "./paced.ts";
import { cpuMicros } from "./procstat.ts";
import { HOST, startTraced, type Traced } from "./traced.ts";
import type { ProtocolLevel } from "./wire.ts";

const REPO_ROOT = new URL("../../", import.meta.url).pathname;
const SELF = new URL(import.meta.url).pathname;

// ---- the forwarder ------------------------------------------------------------------

/** Copies everything `from` sends to `to` until either side ends. */
async function forward(from: Deno.Conn, to: Deno.Conn, first: Uint8Array | null): Promise<void> {
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

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  let off = 0;
  while (off < bytes.length) off += await conn.write(bytes.subarray(off));
}

/** Reads the 2-byte hello (role, pair); returns it with whatever followed it. */
async function hello(conn: Deno.Conn): Promise<{ role: number; pair: number; rest: Uint8Array }> {
  const buf = new Uint8Array(4096);
  let have = 0;
  while (have < 2) {
    const n = await conn.read(buf.subarray(have));
    if (n === null) throw new Error("closed before hello");
    have += n;
  }
  return { role: buf[0], pair: buf[1], rest: buf.slice(2, have) };
}

/** The forwarder: pairs publisher i with subscriber i and pipes them both ways. */
async function serve(port: number): Promise<void> {
  const listener = Deno.listen({ hostname: HOST, port });
  const waiting = new Map<string, { conn: Deno.Conn; rest: Uint8Array }>();
  for await (const conn of listener) {
    conn.setNoDelay(true);
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

// ---- the comparison ---------------------------------------------------------------

type Target = "floor" | "mcloudtt" | "mosquitto";

interface Options {
  targets: Target[];
  qos: (0 | 1)[];
  rates: number[];
  version: ProtocolLevel;
  pairs: number;
  payload: number;
  warmup: number;
  duration: number;
  rounds: number;
}

function options(): Options {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      targets: { type: "string", default: "floor,mcloudtt,mosquitto" },
      qos: { type: "string", default: "0,1" },
      rates: { type: "string", default: "2000" },
      version: { type: "string", default: "5" },
      pairs: { type: "string", default: "16" },
      payload: { type: "string", default: "64" },
      warmup: { type: "string", default: "3" },
      duration: { type: "string", default: "10" },
      rounds: { type: "string", default: "1" },
      quick: { type: "boolean", default: false },
    },
  });
  const nums = (s: string) => s.split(",").map(Number);
  return {
    targets: values.targets.split(",") as Target[],
    qos: nums(values.qos) as (0 | 1)[],
    rates: nums(values.rates),
    version: Number(values.version) as ProtocolLevel,
    pairs: Number(values.pairs),
    payload: Number(values.payload),
    warmup: values.quick ? 1 : Number(values.warmup),
    duration: values.quick ? 2 : Number(values.duration),
    rounds: Number(values.rounds),
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const us = (n: number) => (Number.isFinite(n) ? Math.round(n).toString() : "n/a");

/** Starts a target; `traced` is set for the Deno ones (their GC trace is read). */
async function start(
  target: Target,
  mark: () => number,
  workDir: string,
): Promise<{ port: number; traced: Traced | null; broker: RunningBroker | null }> {
  const port = freePort();
  if (target === "mosquitto") {
    const broker = await BROKERS.mosquitto.start(BENCH_LIMITS, workDir);
    return { port: broker.port, traced: null, broker };
  }
  const script = target === "floor" ? [SELF, "--serve", String(port)] : brokerArgs(port, null);
  const traced = await startTraced(script, { cwd: REPO_ROOT, port, mark });
  return { port, traced, broker: null };
}

async function run(o: Options, target: Target, qos: 0 | 1, rate: number, workDir: string) {
  let load: PacedLoad | null = null;
  const mark = () => load?.counts().received ?? 0;
  const t = await start(target, mark, workDir);
  try {
    load = await PacedLoad.open({
      host: HOST,
      port: t.port,
      version: o.version,
      qos,
      pairs: o.pairs,
      rate,
      payloadBytes: o.payload,
      persistent: false,
      idPrefix: "floor",
      raw: target === "floor",
    });
    load.go();
    await sleep(o.warmup * 1000);
    const from = t.traced?.gc.events.length ?? 0;
    load.recordLatency();
    load.takeLatency();
    const pid = t.traced?.child.pid ?? t.broker?.pid;
    const cpu0 = pid === undefined ? NaN : await cpuMicros(pid);
    const got0 = load.counts().received;
    await sleep(o.duration * 1000);
    const lat = load.takeLatency();
    const cpuPerMsg = pid === undefined
      ? NaN
      : (await cpuMicros(pid) - cpu0) / Math.max(1, load.counts().received - got0);
    const gc = t.traced === null ? null : summarize(t.traced.gc.since(from));
    const errors = load.counts().errors;
    const scav = gc?.byKind["s"];
    console.log(
      `| ${target} | QoS ${qos} | ${rate} | ${lat.count} | ${us(lat.p50)} | ${us(lat.p99)} | ${
        us(lat.p999)
      } | ${us(lat.max)} | ${cpuPerMsg.toFixed(1)} | ${
        gc === null ? "-" : Math.round(gc.bytesPerMessage)
      } | ${gc === null ? "-" : `${scav?.count ?? 0} (max ${(scav?.max ?? 0).toFixed(2)} ms)`} |${
        errors.length > 0 ? ` errors: ${errors.slice(0, 2).join("; ")}` : ""
      }`,
    );
  } finally {
    await load?.close().catch(() => {});
    await t.traced?.stop();
    await t.broker?.stop();
  }
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: { serve: { type: "string" } },
    strict: false,
  });
  if (typeof values.serve === "string") {
    await serve(Number(values.serve));
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
    console.log(
      `paced load, ${o.pairs} pairs, ${o.payload} B payload, MQTT ${o.version}, ` +
        `${o.warmup} s warm-up, ${o.duration} s window; latency in µs (quiet machine only)`,
    );
    console.log(
      "| target | load | msg/s | samples | p50 | p99 | p99.9 | max | CPU µs/msg | heap B/msg | " +
        "scavenges |",
    );
    console.log("|---|---|---|---|---|---|---|---|---|---|---|");
    for (let round = 0; round < o.rounds; round++) {
      for (const rate of o.rates) {
        for (const qos of o.qos) {
          // Interleaved, so a change in the machine's load hits every target alike.
          for (const target of o.targets) await run(o, target, qos, rate, workDir);
        }
      }
    }
    await Deno.remove(workDir, { recursive: true }).catch(() => {});
  }
}
