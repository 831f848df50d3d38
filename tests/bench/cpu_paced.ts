/**
 * CPU per message at a paced rate under the bench's own latency load (the C probe: one PUBLISH
 * per beat, 16 pairs), by the kernel's accounting: `perf stat` counts the broker's task clock,
 * context switches and system calls, per thread, over exactly the probe's measured window, for
 * mcloudtt, the bare forwarder (the runtime's floor) and Mosquitto, interleaved. The bench's own
 * CPU column reads the process's clock ticks over its window; this one separates the threads and
 * says whether a gap is in kernel crossings and wake-ups or in user space (issue 14).
 *
 *   deno run -A tests/bench/cpu_paced.ts                     # 2k msg/s, QoS 0, MQTT 5, 3 rounds
 *   deno run -A tests/bench/cpu_paced.ts --qos 1 --version 4 --rate 10000 --rounds 5
 *
 * Needs `perf` and a C compiler (for the probe); without them it says so and exits 1.
 */
import { parseArgs } from "node:util";
import { BENCH_LIMITS, BROKERS } from "./brokers.ts";
import { buildProbe, runProbe } from "./probe.ts";
import { median } from "./stats.ts";
import { HOST } from "./traced.ts";
import type { ProtocolLevel } from "./wire.ts";

type Target = "mcloudtt" | "floor" | "mosquitto";
const TARGETS: readonly Target[] = ["mcloudtt", "floor", "mosquitto"];
const EVENTS = ["task-clock", "context-switches", "raw_syscalls:sys_enter"];

/** Per delivered message over one window: µs of CPU, context switches, system calls. */
interface Cost {
  us: number;
  switches: number;
  syscalls: number;
}

/** Sums `perf stat -x, --per-thread` output (thread-tid,count,unit,event) per event. */
export function perThread(text: string): Map<string, number> {
  const sums = new Map<string, number>();
  for (const line of text.split("\n")) {
    const f = line.split(",");
    const n = Number(f[1]);
    if (f.length < 4 || f[1] === "" || !Number.isFinite(n)) continue;
    sums.set(f[3], (sums.get(f[3]) ?? 0) + n);
  }
  return sums;
}

async function measure(
  target: Target,
  probe: string,
  o: { rate: number; qos: 0 | 1; version: ProtocolLevel; warmup: number; window: number },
): Promise<Cost> {
  const dir = await Deno.makeTempDir({ prefix: "cpu-paced-" });
  // The floor is a bench target like the brokers (floor_target.ts): its forwarder, no GC trace.
  const b = await BROKERS[target].start(BENCH_LIMITS, dir, {});
  let stat: Deno.ChildProcess | undefined;
  try {
    const run = await runProbe(probe, {
      host: HOST,
      port: b.port,
      pairs: 16,
      rate: o.rate,
      qos: o.qos,
      version: o.version,
      warmupS: o.warmup,
      windowS: o.window,
      idPrefix: `cpu-${target}-${Date.now()}`,
      raw: b.raw,
    }, (mark) => {
      if (mark === "window-start") {
        stat = new Deno.Command("perf", {
          args: ["stat", "-x", ",", "-e", EVENTS.join(","), "--per-thread", "-p", String(b.pid)],
          stdout: "piped",
          stderr: "piped",
        }).spawn();
      } else stat?.kill("SIGINT");
    });
    const out = await stat!.output();
    const sums = perThread(new TextDecoder().decode(out.stderr));
    const d = run.result.window_received;
    return {
      // perf reports the task clock in ms.
      us: (sums.get("task-clock") ?? NaN) * 1000 / d,
      switches: (sums.get("context-switches") ?? NaN) / d,
      syscalls: (sums.get("raw_syscalls:sys_enter") ?? NaN) / d,
    };
  } finally {
    await b.stop();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      rate: { type: "string", default: "2000" },
      qos: { type: "string", default: "0" },
      version: { type: "string", default: "5" },
      rounds: { type: "string", default: "3" },
      warmup: { type: "string", default: "10" },
      window: { type: "string", default: "8" },
    },
  });
  const o = {
    rate: Number(values.rate),
    qos: Number(values.qos) as 0 | 1,
    version: Number(values.version) as ProtocolLevel,
    warmup: Number(values.warmup),
    window: Number(values.window),
  };
  const perfOk = await new Deno.Command("perf", { args: ["--version"], stdout: "null" }).output()
    .then((r) => r.success, () => false);
  const build = await buildProbe();
  if (!perfOk || !build.ok) {
    console.error(
      `cpu_paced: needs perf and a C compiler (${build.ok ? "no perf" : build.reason})`,
    );
    Deno.exit(1);
  }
  const costs = new Map<Target, Cost[]>(TARGETS.map((t) => [t, []]));
  for (let r = 1; r <= Number(values.rounds); r++) {
    for (const t of TARGETS) {
      const c = await measure(t, build.path, o);
      costs.get(t)!.push(c);
      console.log(
        `round ${r} ${t}: ${c.us.toFixed(1)} µs, ${c.switches.toFixed(2)} switches, ${
          c.syscalls.toFixed(2)
        } system calls per message`,
      );
    }
  }
  const med = (t: Target, k: keyof Cost) => median(costs.get(t)!.map((c) => c[k]));
  const ratios = (a: Target, b: Target) => {
    const rs = costs.get(a)!.map((c, i) => c.us / costs.get(b)![i].us);
    return `${median(rs).toFixed(2)}× (${Math.min(...rs).toFixed(2)}–${
      Math.max(...rs).toFixed(2)
    })`;
  };
  console.log(
    `\n${o.rate} msg/s, QoS ${o.qos}, MQTT ${
      o.version === 4 ? "3.1.1" : "5"
    }, ${values.rounds} rounds (medians; per-round ratios in brackets)\n`,
  );
  console.log("| target | CPU µs/msg | context switches/msg | system calls/msg |");
  console.log("| --- | --- | --- | --- |");
  for (const t of TARGETS) {
    console.log(
      `| ${t} | ${med(t, "us").toFixed(1)} | ${med(t, "switches").toFixed(2)} | ${
        med(t, "syscalls").toFixed(2)
      } |`,
    );
  }
  console.log(
    `\nmcloudtt ÷ floor ${ratios("mcloudtt", "floor")}; mcloudtt ÷ Mosquitto ${
      ratios("mcloudtt", "mosquitto")
    }; floor ÷ Mosquitto ${ratios("floor", "mosquitto")}`,
  );
  Deno.exit(0);
}
