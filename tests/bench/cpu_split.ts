/**
 * Where a broker's CPU per message goes (issue 14), by the kernel's own
 * accounting: Linux `perf` samples mcloudtt, the bare forwarder of floor.ts
 * and Mosquitto, interleaved, under the same paced load (paced.ts: 16 pairs,
 * 2 000 msg/s), and splits each one's CPU per delivered message into
 *
 * - kernel: system calls, the TCP stack, waking the peer;
 * - runtime: the `deno` binary (V8's builtins and GC, deno_core's op dispatch,
 *   tokio), split into what ran under one of our JavaScript functions and
 *   what did not (the event loop, V8's helper threads);
 * - libc: the system call wrappers and malloc;
 * - JavaScript: JIT-compiled code (named with V8's `--perf-basic-prof`);
 * - the broker's own binary (Mosquitto).
 *
 * It also counts system calls per message (`perf stat` tracepoints), which
 * tells whether a gap is in the number of kernel crossings or in user space.
 * Samples are proportions, so the split holds on a busy machine; the µs
 * figures scale them by the process's task clock over the window.
 *
 *   deno run -A tests/bench/cpu_split.ts                            # QoS 1, MQTT 3.1.1
 *   deno run -A tests/bench/cpu_split.ts --qos 0 --version 5 --rounds 2 --top 15
 *   deno run -A tests/bench/cpu_split.ts --transport tls   # every target behind TLS
 *
 * Over TLS the forwarder is floor.ts's node:tls one, as mcloudtt's listener,
 * and Mosquitto gets a TLS listener; all use the bench PKI's certificate.
 *
 * Needs `perf` (apt-get install linux-perf) and perf_event_paranoid <= 2 for
 * the user's own processes; without it the script says so and exits 1.
 */
import { parseArgs } from "node:util";
import { BENCH_LIMITS, BROKERS } from "./brokers.ts";
import { startForwarder } from "./forwarder.ts";
import { PacedLoad } from "./paced.ts";
import { median } from "./stats.ts";
import { type BenchPki, benchPki, clientTls, removeBenchPki } from "./tls.ts";
import { HOST } from "./traced.ts";
import type { ProtocolLevel } from "./wire.ts";

const REPO_ROOT = new URL("../../", import.meta.url).pathname;

type Target = "floor" | "mcloudtt" | "mosquitto";
const TARGETS: readonly Target[] = ["floor", "mcloudtt", "mosquitto"];
const SYSCALLS = [
  "epoll_wait",
  "epoll_ctl",
  "sendto",
  "recvfrom",
  "read",
  "write",
  "writev",
  "futex",
];

/** A target under load: its pid and how to stop it. */
interface Running {
  pid: number;
  port: number;
  stop(): Promise<void>;
}

/** V8 names its JIT code in /tmp/perf-<pid>.map, so samples in JavaScript get function names. */
const PERF_MAP = ["--perf-basic-prof"];

async function start(target: Target, dir: string, pki: BenchPki | undefined): Promise<Running> {
  if (target === "floor") {
    const { port, traced } = await startForwarder(pki, () => 0, PERF_MAP);
    return { pid: traced.child.pid, port, stop: () => traced.stop() };
  }
  const b = await BROKERS[target].start(BENCH_LIMITS, dir, { v8Flags: PERF_MAP, tls: pki });
  return { pid: b.pid, port: b.port, stop: () => b.stop() };
}

async function perf(args: string[]): Promise<string> {
  const out = await new Deno.Command("perf", { args, stdout: "piped", stderr: "piped" }).output();
  if (!out.success) throw new Error(`perf ${args[0]}: ${new TextDecoder().decode(out.stderr)}`);
  return new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
}

/** One measured run of one target. */
interface Split {
  target: Target;
  delivered: number;
  /** CPU per delivered message, µs, by part (see the header). */
  us: Record<string, number>;
  /** System calls per delivered message. */
  syscalls: Record<string, number>;
  /** The JavaScript functions (self time, plus the runtime time below them), µs per message. */
  functions: [string, number][];
}

/** The part a sample's leaf frame belongs to. */
function part(dso: string): string {
  if (dso.includes("kernel")) return "kernel";
  if (dso.endsWith("/deno")) return "runtime";
  if (dso.includes("libc")) return "libc";
  if (dso.includes("perf-")) return "js";
  if (dso.includes("mosquitto")) return "broker";
  return "other";
}

/** Splits `perf script` output (comm, ip, sym, dso with call chains) into parts and functions. */
export function splitSamples(text: string): {
  total: number;
  parts: Map<string, number>;
  functions: Map<string, number>;
} {
  const parts = new Map<string, number>();
  const functions = new Map<string, number>();
  let total = 0;
  const add = (m: Map<string, number>, k: string) => m.set(k, (m.get(k) ?? 0) + 1);
  for (const block of text.split(/\n\s*\n/)) {
    const lines = block.split("\n").filter((l) => l.trim() !== "");
    if (lines.length < 2) continue;
    const thread = lines[0].trim().split(/\s+/)[0];
    const frames = lines.slice(1).map((l) => {
      const m = /^\s*[0-9a-f]+\s+(.*)\s+\((.*)\)\s*$/.exec(l);
      return m === null ? { sym: "", dso: "" } : { sym: m[1], dso: m[2] };
    });
    total++;
    const leaf = part(frames[0].dso);
    const js = frames.find((f) => f.sym.startsWith("JS:"));
    if (leaf === "runtime" || leaf === "libc") {
      const helper = thread !== "deno" && thread !== "mosquitto";
      add(parts, `${leaf}${js !== undefined ? " under JS" : helper ? " (helper threads)" : ""}`);
    } else add(parts, leaf);
    if (js !== undefined && (leaf === "js" || leaf === "runtime" || leaf === "libc")) {
      const name = js.sym.replace(/^JS:[*+^~']*/, "").replace(`file://${REPO_ROOT}`, "");
      add(functions, name);
    }
  }
  return { total, parts, functions };
}

async function measure(
  target: Target,
  qos: 0 | 1,
  version: ProtocolLevel,
  warmup: number,
  seconds: number,
  pki: BenchPki | undefined,
): Promise<Split> {
  const dir = await Deno.makeTempDir({ prefix: "cpu-split-" });
  const t = await start(target, dir, pki);
  const load = await PacedLoad.open({
    host: HOST,
    port: t.port,
    version,
    qos,
    pairs: 16,
    rate: 2000,
    payloadBytes: 64,
    persistent: false,
    idPrefix: `split-${target}`,
    raw: target === "floor",
    tls: pki && await clientTls(pki),
  });
  try {
    load.go();
    await new Promise((r) => setTimeout(r, warmup * 1000));
    const events = ["task-clock", ...SYSCALLS.map((s) => `syscalls:sys_enter_${s}`)];
    // Tracepoints cost time per system call: counted in a window of their own.
    let r0 = load.counts().received;
    const stat = await perf([
      "stat",
      "-x",
      ",",
      "-e",
      events.join(","),
      "-p",
      String(t.pid),
      "--",
      "sleep",
      String(Math.max(2, seconds / 2)),
    ]);
    const statDelivered = load.counts().received - r0;
    const data = `${dir}/perf.data`;
    r0 = load.counts().received;
    const clock = perf([
      "stat",
      "-x",
      ",",
      "-e",
      "task-clock",
      "-p",
      String(t.pid),
      "--",
      "sleep",
      String(seconds),
    ]);
    await perf([
      "record",
      "-F",
      "2999",
      "-g",
      "-p",
      String(t.pid),
      "-o",
      data,
      "--",
      "sleep",
      String(seconds),
    ]);
    const delivered = load.counts().received - r0;
    const taskMs = Number(
      (await clock).split("\n").find((l) => l.includes("task-clock"))
        ?.split(",")[0],
    );
    const script = await perf(["script", "-i", data, "-F", "comm,ip,sym,dso"]);
    const { total, parts, functions } = splitSamples(script);
    const perMsg = (taskMs * 1000) / delivered;
    const us: Record<string, number> = { total: perMsg };
    for (const [k, v] of parts) us[k] = (perMsg * v) / total;
    const syscalls: Record<string, number> = {};
    for (const line of stat.split("\n")) {
      const f = line.split(",");
      if (f.length < 3 || !f[2].startsWith("syscalls:")) continue;
      const n = Number(f[0]);
      if (Number.isFinite(n) && n > 0) {
        syscalls[f[2].replace("syscalls:sys_enter_", "")] = n / statDelivered;
      }
    }
    return {
      target,
      delivered,
      us,
      syscalls,
      functions: [...functions].sort((a, b) => b[1] - a[1]).map(([k, v]) => [
        k,
        (perMsg * v) / total,
      ]),
    };
  } finally {
    await load.close();
    await t.stop();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

function table(runs: Split[], top: number): string {
  const keys = [...new Set(runs.flatMap((r) => Object.keys(r.us)))]
    .sort((a, b) => (a === "total" ? -1 : b === "total" ? 1 : a.localeCompare(b)));
  const sys = [...new Set(runs.flatMap((r) => Object.keys(r.syscalls)))].sort();
  const lines: string[] = [];
  const med = (t: Target, f: (r: Split) => number) =>
    median(runs.filter((r) => r.target === t).map(f));
  const present = TARGETS.filter((t) => runs.some((r) => r.target === t));
  lines.push(`| µs per message (median of rounds) | ${present.join(" | ")} |`);
  lines.push(`|---|${present.map(() => "---:").join("|")}|`);
  for (const k of keys) {
    lines.push(
      `| ${k} | ${present.map((t) => med(t, (r) => r.us[k] ?? 0).toFixed(1)).join(" | ")} |`,
    );
  }
  lines.push("");
  lines.push(`| system calls per message | ${present.join(" | ")} |`);
  lines.push(`|---|${present.map(() => "---:").join("|")}|`);
  for (const k of sys) {
    lines.push(
      `| ${k} | ${present.map((t) => med(t, (r) => r.syscalls[k] ?? 0).toFixed(2)).join(" | ")} |`,
    );
  }
  for (const t of present) {
    const last = runs.filter((r) => r.target === t).at(-1)!;
    if (last.functions.length === 0) continue;
    lines.push("", `${t}, last round: JavaScript functions (their code and the runtime below it)`);
    for (const [name, v] of last.functions.slice(0, top)) {
      lines.push(`- ${v.toFixed(2)} µs ${name}`);
    }
  }
  return lines.join("\n");
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      qos: { type: "string", default: "1" },
      version: { type: "string", default: "3.1.1" },
      rounds: { type: "string", default: "1" },
      warmup: { type: "string", default: "10" },
      duration: { type: "string", default: "10" },
      targets: { type: "string", default: TARGETS.join(",") },
      top: { type: "string", default: "12" },
      transport: { type: "string", default: "tcp" },
    },
  });
  if (values.transport !== "tcp" && values.transport !== "tls") {
    console.error(`cpu_split: --transport is tcp or tls, not ${values.transport}`);
    Deno.exit(2);
  }
  const which = await new Deno.Command("sh", { args: ["-c", "command -v perf"] }).output();
  if (!which.success) {
    console.error("cpu_split: perf not found (apt-get install linux-perf)");
    Deno.exit(1);
  }
  const qos = Number(values.qos) as 0 | 1;
  const version: ProtocolLevel = values.version === "5" ? 5 : 4;
  const targets = values.targets.split(",") as Target[];
  // Over TLS every target gets the bench PKI's server certificate (node:tls for the forwarder).
  const pki = values.transport === "tls" ? await benchPki() : undefined;
  const runs: Split[] = [];
  for (let round = 1; round <= Number(values.rounds); round++) {
    for (const t of targets) {
      const r = await measure(
        t,
        qos,
        version,
        Number(values.warmup),
        Number(values.duration),
        pki,
      );
      console.error(
        `[round ${round}] ${t}: ${r.delivered} delivered, ${r.us.total.toFixed(1)} µs/msg`,
      );
      runs.push(r);
    }
  }
  if (pki !== undefined) await removeBenchPki();
  console.log(
    `QoS ${qos}, MQTT ${version === 5 ? "5" : "3.1.1"}, 2000 msg/s over 16 pairs, ` +
      `${values.transport}, ${values.rounds} round(s)\n`,
  );
  console.log(table(runs, Number(values.top)));
  Deno.exit(0);
}
