/** Child processes the bench started, so an interrupted run leaves none behind. */

const running = new Set<Deno.ChildProcess>();

/** Remembers `child` until it exits. */
export function track(child: Deno.ChildProcess): Deno.ChildProcess {
  running.add(child);
  child.status.finally(() => running.delete(child));
  return child;
}

/** Kills every tracked child that is still running. */
export function killAll(): void {
  for (const child of running) {
    try {
      child.kill("SIGKILL");
    } catch {
      // It exited meanwhile.
    }
  }
}

/** Stops `child`: SIGTERM, then SIGKILL when it is still running after `killAfterMs`. */
export async function stopChild(child: Deno.ChildProcess, killAfterMs = 3_000): Promise<void> {
  try {
    child.kill("SIGTERM");
  } catch {
    // Already exited.
  }
  const timer = setTimeout(() => {
    try {
      child.kill("SIGKILL");
    } catch {
      // Exited between the check and the kill.
    }
  }, killAfterMs);
  await child.status;
  clearTimeout(timer);
}

/**
 * Waits until `host:port` accepts a connection: "ready", or "exited" when `child` ends first,
 * or "timeout" after `timeoutMs`.
 */
export async function waitForPort(
  child: Deno.ChildProcess,
  host: string,
  port: number,
  timeoutMs: number,
): Promise<"ready" | "exited" | "timeout"> {
  const deadline = performance.now() + timeoutMs;
  let exited = false;
  child.status.then(() => exited = true);
  while (performance.now() < deadline) {
    if (exited) return "exited";
    try {
      const conn = await Deno.connect({ hostname: host, port });
      conn.close();
      return "ready";
    } catch {
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
  return exited ? "exited" : "timeout";
}

let stdbuf: Promise<boolean> | undefined;

/**
 * Whether coreutils' stdbuf can run: V8 prints its GC trace with stdio, block-buffered into a
 * pipe, and `stdbuf -oL` makes it line-buffered (it execs the program, so the pid is the
 * program's). Checked once; `onMissing` runs when the check finds it missing.
 */
export function haveStdbuf(onMissing: () => void): Promise<boolean> {
  stdbuf ??= new Deno.Command("stdbuf", { args: ["--version"], stdout: "null", stderr: "null" })
    .output().then((r) => r.success, () => false).then((ok) => {
      if (!ok) onMissing();
      return ok;
    });
  return stdbuf;
}
