/**
 * A Deno process run with `--v8-flags=--trace-gc-nvp` whose collections are
 * read as they happen (alloc.ts: the broker; floor.ts: the bare forwarder).
 */
import { track } from "./children.ts";
import { GcCollector } from "./gc_trace.ts";

export const HOST = "127.0.0.1";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let stdbufChecked: boolean | undefined;

async function hasStdbuf(): Promise<boolean> {
  if (stdbufChecked === undefined) {
    try {
      const r = await new Deno.Command("stdbuf", { args: ["--version"], stdout: "null" }).output();
      stdbufChecked = r.success;
    } catch {
      stdbufChecked = false;
    }
    if (!stdbufChecked) console.error("stdbuf not found: GC lines may be attributed late");
  }
  return stdbufChecked;
}

/** A running traced process. */
export interface Traced {
  readonly child: Deno.ChildProcess;
  /** Collections read from stdout, each stamped with `mark()` when it was read. */
  readonly gc: GcCollector;
  /** Last lines of stderr (and non-GC stdout), for error messages. */
  tail(): string;
  stop(): Promise<void>;
}

/**
 * Runs `deno run --allow-all --v8-flags=--trace-gc-nvp,<v8> <denoFlags> <script...>`
 * in `cwd` and waits until `port` accepts connections.
 */
export async function startTraced(
  script: string[],
  opts: { cwd: string; port: number; v8?: string[]; denoFlags?: string[]; mark: () => number },
): Promise<Traced> {
  const args = [
    "run",
    "--allow-all",
    `--v8-flags=${["--trace-gc-nvp", ...(opts.v8 ?? [])].join(",")}`,
    ...(opts.denoFlags ?? []),
    ...script,
  ];
  // V8 prints the trace with stdio, block-buffered into a pipe: lines would arrive in bursts,
  // late, and be counted against the wrong messages. stdbuf makes them line-buffered (it
  // execs the program, so the pid is the program's).
  const stdbuf = await hasStdbuf();
  const child = track(
    new Deno.Command(stdbuf ? "stdbuf" : Deno.execPath(), {
      args: stdbuf ? ["-oL", Deno.execPath(), ...args] : args,
      cwd: opts.cwd,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn(),
  );
  const gc = new GcCollector(child.stdout, opts.mark);
  const errs = new GcCollector(child.stderr, opts.mark);
  const tail = () => [...gc.tail, ...errs.tail].join("\n");
  const stop = async () => {
    try {
      child.kill("SIGTERM");
    } catch {
      // gone already
    }
    const timer = setTimeout(() => {
      try {
        child.kill("SIGKILL");
      } catch {
        // exited meanwhile
      }
    }, 3000);
    await child.status;
    clearTimeout(timer);
    await Promise.all([gc.done, errs.done]);
  };
  let exited = false;
  child.status.then(() => (exited = true));
  const deadline = performance.now() + 60_000;
  while (!exited && performance.now() < deadline) {
    try {
      (await Deno.connect({ hostname: HOST, port: opts.port })).close();
      return { child, gc, tail, stop };
    } catch {
      await sleep(50);
    }
  }
  await stop();
  throw new Error(`${script.join(" ")} did not listen on ${opts.port}:\n${tail()}`);
}
