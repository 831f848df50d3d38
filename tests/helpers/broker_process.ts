/**
 * A broker in a subprocess, so a test can read the broker's own memory (RSS from /proc, heap
 * after a full GC) without counting the test's clients.
 */
import type { Config, DeepPartial } from "../../mod.ts";

/** The broker process's memory: RSS from /proc, and what V8 reports after a full GC. */
export interface ProcessMemory {
  /** Resident set size in bytes, from /proc/<pid>/status (VmRSS). */
  rss: number;
  heapUsed: number;
  external: number;
}

export interface BrokerProcess extends AsyncDisposable {
  readonly pid: number;
  /** Listener ports by kind (tcp, tls, ws, wss). */
  readonly ports: Record<string, number>;
  /** Runs a full GC in the broker, then reads its memory. */
  memory(): Promise<ProcessMemory>;
  /** The broker's metrics counters (as of the last `memory()` call). */
  readonly metrics: Record<string, number>;
  stop(): Promise<void>;
}

const MIB = 1024 * 1024;

/** Formats bytes as MiB with one decimal, for assertion messages. */
export function mib(bytes: number): string {
  return `${(bytes / MIB).toFixed(1)} MiB`;
}

/** VmRSS of `pid` in bytes. */
export function rssOf(pid: number): number {
  return statusBytes(pid, "VmRSS");
}

/** VmHWM of `pid` in bytes: the highest RSS since start or since `resetPeakRss`. */
export function peakRssOf(pid: number): number {
  return statusBytes(pid, "VmHWM");
}

/**
 * Starts a new peak-RSS measurement for `pid` (writes 5 to /proc/<pid>/clear_refs); false
 * where the kernel does not allow it, and the peak then counts from the process start.
 */
export function resetPeakRss(pid: number): boolean {
  try {
    Deno.writeTextFileSync(`/proc/${pid}/clear_refs`, "5");
    return true;
  } catch {
    return false;
  }
}

function statusBytes(pid: number, field: string): number {
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  const m = new RegExp(`^${field}:\\s+(\\d+)\\s+kB`, "m").exec(status);
  if (!m) throw new Error(`no ${field} in /proc/${pid}/status`);
  return Number(m[1]) * 1024;
}

/**
 * Starts a plain broker (TCP on a free port, WebSocket too unless turned off) in a subprocess;
 * `overrides` change any config key.
 */
export async function startBrokerProcess(
  overrides: DeepPartial<Config> = {},
): Promise<BrokerProcess> {
  const config: DeepPartial<Config> = {
    ...overrides,
    general: { secure: false, bind: "127.0.0.1", log_level: "error", ...overrides.general },
    ports: { tcp: 0, ws: 0, ...overrides.ports },
    // In memory unless a test asks for storage: tests must not share or leave a ./data directory.
    storage: { enabled: false, ...overrides.storage },
  };
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-all",
      "--v8-flags=--expose-gc",
      new URL("./broker_process_main.ts", import.meta.url).pathname,
      JSON.stringify(config),
    ],
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const stdin = child.stdin.getWriter();
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = "";
  const nextLine = async (prefix: string): Promise<string> => {
    for (;;) {
      const nl = buffered.indexOf("\n");
      if (nl >= 0) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        if (line.startsWith(prefix + " ")) return line.slice(prefix.length + 1);
        continue;
      }
      const { value, done } = await lines.read();
      if (done) throw new Error(`broker process ended before printing ${prefix}`);
      buffered += value;
    }
  };
  const ports: Record<string, number> = {};
  try {
    for (const a of JSON.parse(await nextLine("READY"))) ports[a.kind] = a.port;
  } catch (e) {
    child.kill();
    await child.status;
    throw e;
  }
  let stopped: Promise<void> | null = null;
  const metrics: Record<string, number> = {};
  const stop = () =>
    stopped ??= (async () => {
      await stdin.close().catch(() => {});
      const t = setTimeout(() => child.kill("SIGKILL"), 5000);
      await child.status;
      clearTimeout(t);
      await lines.cancel().catch(() => {});
    })();
  return {
    pid: child.pid,
    ports,
    metrics,
    async memory(): Promise<ProcessMemory> {
      await stdin.write(new TextEncoder().encode("mem\n"));
      const m = JSON.parse(await nextLine("MEM"));
      Object.assign(metrics, m.metrics);
      return { rss: rssOf(child.pid), heapUsed: m.heapUsed, external: m.external };
    },
    stop,
    [Symbol.asyncDispose]: stop,
  };
}
