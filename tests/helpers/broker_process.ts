/**
 * A broker in a subprocess, so a test can read the broker's own memory (RSS from /proc, heap
 * after a full GC) without counting the test's clients.
 */
import type { Config, DeepPartial } from "../../mod.ts";
import { spawnMemoryChild } from "./memory_child.ts";

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
 * `overrides` change any config key, `denoFlags` go to `deno run` (`--inspect=...`).
 */
export async function startBrokerProcess(
  overrides: DeepPartial<Config> = {},
  denoFlags: readonly string[] = [],
): Promise<BrokerProcess> {
  const config: DeepPartial<Config> = {
    ...overrides,
    general: { secure: false, bind: "127.0.0.1", log_level: "error", ...overrides.general },
    ports: { tcp: 0, ws: 0, ...overrides.ports },
    // In memory unless a test asks for storage: tests must not share or leave a ./data directory.
    storage: { enabled: false, ...overrides.storage },
  };
  const proc = await spawnMemoryChild(
    new URL("./broker_process_main.ts", import.meta.url).pathname,
    [JSON.stringify(config)],
    "broker process",
    5000,
    denoFlags,
  );
  const ports: Record<string, number> = {};
  for (const a of JSON.parse(proc.ready)) ports[a.kind] = a.port;
  const metrics: Record<string, number> = {};
  const pid = proc.child.pid;
  return {
    pid,
    ports,
    metrics,
    async memory(): Promise<ProcessMemory> {
      const m = await proc.memory() as { heapUsed: number; external: number; metrics: object };
      Object.assign(metrics, m.metrics);
      return { rss: rssOf(pid), heapUsed: m.heapUsed, external: m.external };
    },
    stop: proc.stop,
    [Symbol.asyncDispose]: proc.stop,
  };
}
