/**
 * The C latency client (the C files of probe/, main() in probe/paced_probe.c): compiled once per
 * process with the machine's C compiler against OpenSSL, run as a child process per latency run.
 *
 * Why: the Deno worker clients measured p50 of 300-600 µs on loopback for every broker, their
 * own event loop and GC dominating; the probe (epoll + timerfd, one thread) measures Mosquitto at
 * a p50 of ~45 µs on the same machine. See README.md, "Latency client".
 *
 * The probe prints `window-start` and `window-end` when its measured window begins and ends (the
 * caller samples the broker at those moments), then one JSON line with the result.
 */

import { track } from "./children.ts";
import { readLines } from "./lines.ts";
import type { ClientTls } from "./tls.ts";
import type { ProtocolLevel } from "./wire.ts";

/** The probe's sources: every `.c` file in this directory (`probe.h` beside them). */
export const PROBE_DIR = new URL("./probe/", import.meta.url).pathname;

/** The probe's C files (absolute paths, sorted): all compiled into one binary. */
export async function probeSources(): Promise<string[]> {
  const files: string[] = [];
  for await (const entry of Deno.readDir(PROBE_DIR)) {
    if (entry.isFile && entry.name.endsWith(".c")) files.push(`${PROBE_DIR}${entry.name}`);
  }
  return files.sort();
}

/** Compiler flags (the sources compile warning-free with them). */
export const PROBE_CFLAGS: readonly string[] = ["-O2", "-Wall", "-Wextra"];
const PROBE_LIBS = ["-lssl", "-lcrypto"];

/** The compiled probe, or why there is none. */
export type ProbeBuild =
  | {
    readonly ok: true;
    readonly path: string;
    readonly compiler: string;
    readonly warnings: string;
  }
  | { readonly ok: false; readonly reason: string };

let built: Promise<ProbeBuild> | undefined;

/**
 * Compiles the probe on first use (into a temporary directory removed when the process exits);
 * later calls return the same build.
 */
export function buildProbe(): Promise<ProbeBuild> {
  built ??= compile();
  return built;
}

async function runs(cmd: string): Promise<boolean> {
  try {
    const out = await new Deno.Command(cmd, { args: ["--version"], stdout: "null", stderr: "null" })
      .output();
    return out.success;
  } catch {
    return false;
  }
}

/** `cc`, else `gcc`; null when neither runs. */
export async function findCompiler(): Promise<string | null> {
  for (const cmd of ["cc", "gcc"]) if (await runs(cmd)) return cmd;
  return null;
}

async function compile(): Promise<ProbeBuild> {
  const compiler = await findCompiler();
  if (compiler === null) {
    return { ok: false, reason: "no C compiler (cc or gcc) found: apt-get install gcc" };
  }
  let sources: string[];
  try {
    sources = await probeSources();
  } catch (e) {
    return { ok: false, reason: `cannot list the probe's sources in ${PROBE_DIR}: ${e}` };
  }
  if (sources.length === 0) return { ok: false, reason: `no .c files in ${PROBE_DIR}` };
  const dir = await Deno.makeTempDir({ prefix: "bench-probe-" });
  globalThis.addEventListener("unload", () => {
    try {
      Deno.removeSync(dir, { recursive: true });
    } catch {
      // Gone already.
    }
  });
  const path = `${dir}/paced_probe`;
  const out = await new Deno.Command(compiler, {
    args: [...PROBE_CFLAGS, "-o", path, ...sources, ...PROBE_LIBS],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stderr).trim();
  if (!out.success) {
    const noSsl =
      /openssl\/\w+\.h|cannot find -l(ssl|crypto)|undefined reference to `(SSL|ERR|X509)_/
        .test(text);
    const detail = text.split("\n").slice(0, 6).join(" | ");
    return {
      ok: false,
      reason: noSsl
        ? `OpenSSL's headers or libraries are missing (apt-get install libssl-dev): ${detail}`
        : `${compiler} failed on ${PROBE_DIR}*.c: ${detail}`,
    };
  }
  return { ok: true, path, compiler, warnings: text };
}

/** What one probe run does. */
export interface ProbeOptions {
  readonly host: string;
  readonly port: number;
  readonly pairs: number;
  /** Messages per second over all publishers. */
  readonly rate: number;
  readonly qos: 0 | 1;
  readonly version: ProtocolLevel;
  readonly warmupS: number;
  readonly windowS: number;
  /** Longest wait for in-flight messages after the window (default 2 s). */
  readonly drainS?: number;
  /** At least 16 (default 64). */
  readonly payloadBytes?: number;
  /** TLS, trusting this CA (server certificate only). */
  readonly tls?: ClientTls;
  /** Client ids are `<prefix>-pub-<i>` / `<prefix>-sub-<i>`: unique per run. */
  readonly idPrefix: string;
  /** floor.ts's bare forwarder instead of an MQTT broker. */
  readonly raw?: boolean;
  /** Writes "send_ns latency_ns" per window sample to this file. */
  readonly dumpFile?: string;
}

/** The probe's JSON line (latencies in µs; counters over the whole run unless `window_`). */
export interface ProbeResult {
  /** Latency samples: deliveries received in the window. */
  readonly count: number;
  readonly p50: number;
  readonly p90: number;
  readonly p99: number;
  readonly p999: number;
  readonly max: number;
  readonly sent: number;
  readonly received: number;
  /** PUBACKs the publishers got (QoS 1). */
  readonly acked: number;
  /** Deliveries whose sequence number was not above the last of that pair. */
  readonly duplicates: number;
  /** Beats skipped: a publisher had its QoS 1 window (or its output buffer) full. */
  readonly skipped: number;
  readonly window_s: number;
  readonly window_sent: number;
  readonly window_received: number;
  /** The probe's own CPU time (user + system) over the window, µs. */
  readonly cpu_us: number;
  /** Samples beyond the preallocated store (none at the paced rate). */
  readonly dropped_samples: number;
  /** In-flight limit per publisher actually used (100, or the broker's Receive Maximum). */
  readonly receive_maximum: number;
}

/** The lines the probe prints at the window's boundaries. */
export type ProbeMark = "window-start" | "window-end";

/** A finished probe run. */
export interface ProbeRun {
  readonly result: ProbeResult;
  /** performance.now() when each mark line arrived. */
  readonly marks: Partial<Record<ProbeMark, number>>;
  /** What the probe wrote to stderr (notes such as undelivered messages). */
  readonly stderr: string;
}

/** The probe failed: bad arguments, a broker that refused or closed, a timeout. */
export class ProbeError extends Error {
  override name = "ProbeError";
}

/** The probe's command line for `o` (`caFile`: the CA written to a file). */
export function probeArgs(o: ProbeOptions, caFile?: string): string[] {
  return [
    "--host",
    o.host,
    "--port",
    String(o.port),
    "--pairs",
    String(o.pairs),
    "--rate",
    String(o.rate),
    "--qos",
    String(o.qos),
    "--mqtt",
    String(o.version),
    "--warmup",
    String(o.warmupS),
    "--window",
    String(o.windowS),
    "--drain",
    String(o.drainS ?? 2),
    "--payload",
    String(o.payloadBytes ?? 64),
    "--id-prefix",
    o.idPrefix,
    ...(caFile === undefined ? [] : ["--ca", caFile]),
    ...(o.raw ? ["--raw"] : []),
    ...(o.dumpFile === undefined ? [] : ["--dump", o.dumpFile]),
  ];
}

const STDERR_KEEP = 16 * 1024;

/**
 * Runs the probe at `binary` to completion. `onMark` runs when a mark line arrives (its promise
 * is awaited before this resolves). Throws `ProbeError` when the probe fails or outlives its
 * schedule by more than a minute (then it is killed).
 */
export async function runProbe(
  binary: string,
  o: ProbeOptions,
  onMark?: (mark: ProbeMark) => Promise<void> | void,
): Promise<ProbeRun> {
  const caFile = o.tls === undefined ? undefined : await Deno.makeTempFile({ suffix: ".pem" });
  try {
    if (caFile !== undefined) await Deno.writeTextFile(caFile, o.tls!.ca);
    const child = track(
      new Deno.Command(binary, {
        args: probeArgs(o, caFile),
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).spawn(),
    );
    // Setup has a 10 s timeout per step in the probe; a minute over the schedule is a hang.
    const limitMs = (o.warmupS + o.windowS + (o.drainS ?? 2)) * 1000 + 60_000;
    let killed = false;
    const timer = setTimeout(() => {
      killed = true;
      try {
        child.kill("SIGKILL");
      } catch {
        // Exited meanwhile.
      }
    }, limitMs);
    let stderr = "";
    const errDone = (async () => {
      for await (const text of child.stderr.pipeThrough(new TextDecoderStream())) {
        stderr = (stderr + text).slice(-STDERR_KEEP);
      }
    })();
    const marks: Partial<Record<ProbeMark, number>> = {};
    const pending: Promise<void>[] = [];
    let markError: unknown;
    let result: ProbeResult | undefined;
    let junk = "";
    for await (const line of readLines(child.stdout)) {
      if (line === "window-start" || line === "window-end") {
        marks[line] = performance.now();
        if (onMark) {
          // Failures wait until the probe has ended (never an unhandled rejection).
          pending.push(
            Promise.resolve().then(() => onMark(line)).catch((e) => {
              markError ??= e;
            }),
          );
        }
      } else if (line.startsWith("{")) {
        result = JSON.parse(line) as ProbeResult;
      } else if (junk.length < 1000) {
        junk += `${line}\n`;
      }
    }
    const status = await child.status;
    clearTimeout(timer);
    await errDone;
    await Promise.all(pending);
    const tail = stderr.trim().split("\n").slice(-5).join(" | ");
    if (killed) {
      throw new ProbeError(`paced_probe killed after ${limitMs / 1000} s: ${tail}`);
    }
    if (!status.success) {
      throw new ProbeError(
        `paced_probe exited with ${status.code}${status.signal ? ` (${status.signal})` : ""}: ${
          tail || "(no message)"
        }`,
      );
    }
    if (result === undefined) {
      throw new ProbeError(`paced_probe printed no result: ${junk.trim() || tail}`);
    }
    if (markError !== undefined) throw markError;
    return { result, marks, stderr };
  } finally {
    if (caFile !== undefined) await Deno.remove(caFile).catch(() => {});
  }
}

let prefixes = 0;

/** A client id prefix no other run of this or another bench process uses. */
export function uniqueIdPrefix(tag = "lat"): string {
  return `${tag}-${Deno.pid}-${Date.now().toString(36)}-${prefixes++}`;
}
