/**
 * A server in its own process whose memory the parent reads without counting its own clients:
 * the child prints `READY <json>` once listening, answers each `mem` line on stdin with
 * `MEM <json>` (Deno.memoryUsage() after a full GC, plus what the child adds), and stops when
 * stdin closes. The broker (broker_process_main.ts) and the bare floor servers
 * (tests/bench/idle_floor.ts) speak it.
 */

/** The parent's end of a memory child. */
export interface MemoryChild {
  readonly child: Deno.ChildProcess;
  /** The text after `READY `. */
  readonly ready: string;
  /** Sends `mem`; the parsed JSON after `MEM `. */
  memory(): Promise<Record<string, unknown>>;
  /** Closes stdin; SIGKILL when the child has not exited after `killAfterMs`. Idempotent. */
  stop(): Promise<void>;
}

/**
 * Runs `deno run --allow-all --v8-flags=--expose-gc <denoFlags> <script> <args>` and waits for
 * its READY line; `name` is for errors.
 */
export async function spawnMemoryChild(
  script: string,
  args: string[],
  name: string,
  killAfterMs: number,
  denoFlags: readonly string[] = [],
): Promise<MemoryChild> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", "--v8-flags=--expose-gc", ...denoFlags, script, ...args],
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
      if (done) throw new Error(`${name} ended before printing ${prefix}`);
      buffered += value;
    }
  };
  let stopped: Promise<void> | null = null;
  const stop = () =>
    stopped ??= (async () => {
      await stdin.close().catch(() => {});
      const t = setTimeout(() => child.kill("SIGKILL"), killAfterMs);
      await child.status;
      clearTimeout(t);
      await lines.cancel().catch(() => {});
    })();
  let ready: string;
  try {
    ready = await nextLine("READY");
  } catch (e) {
    child.kill();
    await child.status;
    throw e;
  }
  return {
    child,
    ready,
    async memory() {
      await stdin.write(new TextEncoder().encode("mem\n"));
      return JSON.parse(await nextLine("MEM"));
    },
    stop,
  };
}

/**
 * The child's end: prints `READY <ready>`, then answers each `mem` line with
 * `MEM <Deno.memoryUsage() after a full GC, and extra()>`; returns when stdin closes.
 */
export async function serveMemoryRequests(
  ready: string,
  extra: () => Record<string, unknown> = () => ({}),
): Promise<void> {
  const out = (line: string) => Deno.stdout.writeSync(new TextEncoder().encode(line + "\n"));
  out(`READY ${ready}`);
  const gc = (globalThis as { gc?: () => void }).gc;
  let pending = "";
  for await (const chunk of Deno.stdin.readable.pipeThrough(new TextDecoderStream())) {
    pending += chunk;
    let nl;
    while ((nl = pending.indexOf("\n")) >= 0) {
      const cmd = pending.slice(0, nl).trim();
      pending = pending.slice(nl + 1);
      if (cmd !== "mem") continue;
      // ArrayBuffer memory is given back by a collection after the one that found it unreachable.
      gc?.();
      await new Promise((r) => setTimeout(r, 50));
      gc?.();
      out(`MEM ${JSON.stringify({ ...Deno.memoryUsage(), ...extra() })}`);
    }
  }
}
