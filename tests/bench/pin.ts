/**
 * CPU pinning for `deno task bench --pin`: the brokers (and Redis) on CPUs of their own, the bench
 * and its load generators on the others. On a small machine the paced client and the broker
 * otherwise take turns on the same cores, and a latency tail then measures the scheduler as much
 * as the broker. Pinning uses util-linux's `taskset`: the bench pins itself (every thread, so the
 * workers it spawns inherit the client CPUs) and starts each server through `taskset -c`, which
 * execs the server, so the pid stays the server's.
 */

/** Which CPUs the servers and the clients run on. */
export interface Pinning {
  /** CPU list for servers, in taskset's syntax ("1", "2-3"). */
  readonly servers: string;
  /** CPU list for the bench and its workers. */
  readonly clients: string;
}

let current: Pinning | null = null;

/** A bad pinning request. */
export class PinError extends Error {
  override name = "PinError";
}

/** The pinning in force, or null when the bench runs unpinned. */
export function pinning(): Pinning | null {
  return current;
}

/**
 * The default split of `cores` CPUs: the last half (rounded down, at least one) for the servers,
 * the rest for the clients. Two cores: servers on 1, clients on 0.
 */
export function defaultPinning(cores: number): Pinning {
  if (!Number.isInteger(cores) || cores < 2) {
    throw new PinError(`--pin needs at least 2 CPUs, this machine has ${cores}`);
  }
  const serverCount = Math.max(1, Math.floor(cores / 2));
  const first = cores - serverCount;
  return {
    servers: serverCount === 1 ? `${first}` : `${first}-${cores - 1}`,
    clients: first === 1 ? "0" : `0-${first - 1}`,
  };
}

async function taskset(args: string[]): Promise<void> {
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command("taskset", { args, stdout: "null", stderr: "piped" }).output();
  } catch (e) {
    throw new PinError(
      `--pin needs taskset (Debian package util-linux): ${e instanceof Error ? e.message : e}`,
    );
  }
  if (!out.success) {
    throw new PinError(`taskset ${args.join(" ")} failed: ${new TextDecoder().decode(out.stderr)}`);
  }
}

/** Pins this process (all its threads) to the client CPUs; servers started later get theirs. */
export async function pinBench(p: Pinning): Promise<void> {
  await taskset(["-a", "-p", "-c", p.clients, String(Deno.pid)]);
  current = p;
}

/** `cmd args` as started on the server CPUs when pinning is on, else unchanged. */
export function onServerCpus(cmd: string, args: readonly string[]): [string, string[]] {
  return current === null ? [cmd, [...args]] : ["taskset", ["-c", current.servers, cmd, ...args]];
}

/** The CPU list a process may run on (`Cpus_allowed_list` of /proc/<pid>/status). */
export function allowedCpus(pid: number): string {
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  return /^Cpus_allowed_list:\s*(\S+)/m.exec(status)?.[1] ?? "";
}
