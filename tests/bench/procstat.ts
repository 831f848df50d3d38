/** CPU time and resident memory of another process, read from /proc (Linux only). */

let ticksPerSecond: number | undefined;

/** Clock ticks per second for /proc/<pid>/stat times (`getconf CLK_TCK`, usually 100). */
export async function clockTicks(): Promise<number> {
  if (ticksPerSecond === undefined) {
    const out = await new Deno.Command("getconf", { args: ["CLK_TCK"], stdout: "piped" }).output();
    const value = Number(new TextDecoder().decode(out.stdout).trim());
    ticksPerSecond = Number.isFinite(value) && value > 0 ? value : 100;
  }
  return ticksPerSecond;
}

/** utime + stime of `pid` in microseconds (resolution: one clock tick, typically 10 ms). */
export async function cpuMicros(pid: number): Promise<number> {
  const stat = await Deno.readTextFile(`/proc/${pid}/stat`);
  // The command name (field 2) may contain spaces, so count fields after its closing paren.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const utime = Number(fields[11]);
  const stime = Number(fields[12]);
  return ((utime + stime) * 1_000_000) / await clockTicks();
}

/** Resident set size (VmRSS) of `pid` in bytes. */
export async function rssBytes(pid: number): Promise<number> {
  const status = await Deno.readTextFile(`/proc/${pid}/status`);
  const match = /^VmRSS:\s+(\d+)\s+kB/m.exec(status);
  return match ? Number(match[1]) * 1024 : NaN;
}

/** CPU and memory of a process at one moment. */
export interface ProcSample {
  readonly at: number;
  readonly cpuMicros: number;
  readonly rssBytes: number;
}

/** Samples `pid` now. */
export async function sample(pid: number): Promise<ProcSample> {
  const [cpu, rss] = await Promise.all([cpuMicros(pid), rssBytes(pid)]);
  return { at: performance.now(), cpuMicros: cpu, rssBytes: rss };
}

/** CPU time of one thread (or a group of them) in microseconds, user and kernel. */
export interface ThreadCpu {
  user: number;
  sys: number;
}

/**
 * utime and stime of each thread of `pid` in microseconds, summed by thread name (`comm`: the
 * main thread as "main", V8's "V8 DefaultWorke" helpers, tokio's pool): where a process's CPU
 * goes when the main thread is mostly idle.
 */
export async function threadCpuMicros(pid: number): Promise<Map<string, ThreadCpu>> {
  const ticks = await clockTicks();
  const byName = new Map<string, ThreadCpu>();
  for await (const entry of Deno.readDir(`/proc/${pid}/task`)) {
    let stat: string;
    try {
      stat = await Deno.readTextFile(`/proc/${pid}/task/${entry.name}/stat`);
    } catch {
      continue; // the thread ended between the listing and the read
    }
    const open = stat.indexOf("(");
    const close = stat.lastIndexOf(")");
    const name = Number(entry.name) === pid ? "main" : stat.slice(open + 1, close).trim();
    const fields = stat.slice(close + 2).split(" ");
    const t = byName.get(name) ?? { user: 0, sys: 0 };
    t.user += (Number(fields[11]) * 1_000_000) / ticks;
    t.sys += (Number(fields[12]) * 1_000_000) / ticks;
    byName.set(name, t);
  }
  return byName;
}
