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
