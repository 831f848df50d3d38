/**
 * Test helpers for the real mosquitto command-line clients: find the binaries,
 * skip loudly when they are missing (fail instead when CI is set), run
 * mosquitto_pub to completion and mosquitto_sub in the background with output
 * in a fixed, parseable format.
 */

/** The client binaries these helpers drive. */
export type MosquittoTool = "mosquitto_pub" | "mosquitto_sub";

/** Raised when a required binary is not installed. */
export class MissingBinaryError extends Error {
  constructor(readonly binary: string) {
    super(`${binary} is not installed (apt-get install mosquitto-clients)`);
    this.name = "MissingBinaryError";
  }
}

/** Absolute path of `name` found on PATH, or null. */
export function findBinary(name: string): string | null {
  const path = Deno.env.get("PATH") ?? "";
  for (const dir of path.split(":")) {
    if (dir === "") continue;
    const candidate = `${dir}/${name}`;
    try {
      const info = Deno.statSync(candidate);
      if (info.isFile && ((info.mode ?? 0o111) & 0o111) !== 0) return candidate;
    } catch {
      // not in this directory
    }
  }
  return null;
}

/** Path of `name`; throws MissingBinaryError when it is not installed. */
export function requireBinary(name: MosquittoTool): string {
  const found = findBinary(name);
  if (found === null) throw new MissingBinaryError(name);
  return found;
}

/**
 * True when tests needing `names` should be skipped: some binary is missing and
 * the env var CI is unset. Says so loudly. In CI nothing is skipped, so the
 * tests run and fail on the missing binary.
 */
export function skipWithout(...names: MosquittoTool[]): boolean {
  const missing = names.filter((n) => findBinary(n) === null);
  if (missing.length === 0) return false;
  if (Deno.env.get("CI")) return false;
  console.warn(
    `\n!!! SKIPPING mosquitto client tests: ${missing.join(", ")} not installed ` +
      `(apt-get install mosquitto-clients). Set CI=1 to make this a failure. !!!\n`,
  );
  return true;
}

/** How a finished process ended and what it printed. */
export interface RunResult {
  code: number;
  signal: Deno.Signal | null;
  stdout: string;
  stderr: string;
}

/** A message printed by mosquitto_sub in SUB_FORMAT. */
export interface SubMessage {
  topic: string;
  qos: number;
  retain: boolean;
  payload: string;
}

/**
 * mosquitto_sub output format (-F): one line per message. `%` fields are topic,
 * QoS, retain flag and payload; the prefix keeps them apart from anything else.
 */
export const SUB_FORMAT = "MSG|%t|%q|%r|%p";

/** Messages in mosquitto_sub output printed with SUB_FORMAT, in order. */
export function parseSubOutput(stdout: string): SubMessage[] {
  const out: SubMessage[] = [];
  for (const line of stdout.split("\n")) {
    if (!line.startsWith("MSG|")) continue;
    const [, topic, qos, retain, ...payload] = line.split("|");
    out.push({ topic, qos: Number(qos), retain: retain === "1", payload: payload.join("|") });
  }
  return out;
}

/** A child process that is killed (if still running) and reaped on dispose. */
export interface Running extends AsyncDisposable {
  readonly pid: number;
  /** True once the process has exited. */
  readonly exited: boolean;
  /** Resolves when the process exits. */
  readonly done: Promise<RunResult>;
  /** Sends `signal` unless the process has already exited. */
  kill(signal?: Deno.Signal): void;
}

/** Options of `spawn`. */
export interface SpawnOptions {
  /** Killed with SIGKILL after this long, so a stuck process cannot hang a test. */
  timeoutMs?: number;
  cwd?: string;
  env?: Record<string, string>;
  clearEnv?: boolean;
}

/** Starts `binary` with `args`, capturing its output. */
export function spawn(binary: string, args: string[], options: SpawnOptions = {}): Running {
  const child = new Deno.Command(binary, {
    args,
    cwd: options.cwd,
    env: options.env,
    clearEnv: options.clearEnv,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let exited = false;
  const kill = (signal: Deno.Signal = "SIGTERM") => {
    if (exited) return;
    try {
      child.kill(signal);
    } catch {
      // exited in the meantime
    }
  };
  const timer = setTimeout(() => kill("SIGKILL"), options.timeoutMs ?? 15_000);
  const done = child.output().then((o) => {
    exited = true;
    clearTimeout(timer);
    const text = new TextDecoder();
    return {
      code: o.code,
      signal: o.signal,
      stdout: text.decode(o.stdout),
      stderr: text.decode(o.stderr),
    };
  });
  return {
    pid: child.pid,
    get exited() {
      return exited;
    },
    done,
    kill,
    async [Symbol.asyncDispose]() {
      kill("SIGKILL");
      await done;
    },
  };
}

/** Runs mosquitto_pub with `args` and waits until it exits. */
export function mosquittoPub(args: string[]): Promise<RunResult> {
  return spawn(requireBinary("mosquitto_pub"), args).done;
}

/**
 * Starts mosquitto_sub with `args` plus `-F SUB_FORMAT`; pass `-C n -W secs`
 * so it exits by itself.
 */
export function mosquittoSub(args: string[]): Running {
  return spawn(requireBinary("mosquitto_sub"), [...args, "-F", SUB_FORMAT]);
}
