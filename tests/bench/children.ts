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
