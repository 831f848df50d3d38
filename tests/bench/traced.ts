/**
 * A Deno process run with `--v8-flags=--trace-gc-nvp` whose collections are
 * read as they happen (alloc.ts: the broker; floor.ts: the bare forwarder).
 */
import { haveStdbuf, stopChild, track, waitForPort } from "./children.ts";
import { GcCollector } from "./gc_trace.ts";
import { onServerCpus } from "./pin.ts";

export const HOST = "127.0.0.1";

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
 * in `cwd` (on the servers' CPUs when the bench runs with `--pin`) and waits until `port`
 * accepts connections. `gcTrace: false` leaves out `--trace-gc-nvp` (`gc` then stays empty).
 */
export async function startTraced(
  script: string[],
  opts: {
    cwd: string;
    port: number;
    v8?: string[];
    denoFlags?: string[];
    mark: () => number;
    gcTrace?: boolean;
  },
): Promise<Traced> {
  const v8 = [...(opts.gcTrace === false ? [] : ["--trace-gc-nvp"]), ...(opts.v8 ?? [])];
  const args = [
    "run",
    "--allow-all",
    ...(v8.length > 0 ? [`--v8-flags=${v8.join(",")}`] : []),
    ...(opts.denoFlags ?? []),
    ...script,
  ];
  // Without stdbuf V8's block-buffered trace would arrive in bursts, late, and be counted
  // against the wrong messages.
  const stdbuf = await haveStdbuf(() =>
    console.error("stdbuf not found: GC lines may be attributed late")
  );
  const [cmd, cmdArgs] = onServerCpus(
    stdbuf ? "stdbuf" : Deno.execPath(),
    stdbuf ? ["-oL", Deno.execPath(), ...args] : args,
  );
  const child = track(
    new Deno.Command(cmd, {
      args: cmdArgs,
      cwd: opts.cwd,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn(),
  );
  const gc = new GcCollector(opts.mark);
  const errs = new GcCollector(opts.mark);
  const read = Promise.all([gc.read(child.stdout), errs.read(child.stderr)]);
  const tail = () => [...gc.tail, ...errs.tail].join("\n");
  const stop = async () => {
    await stopChild(child);
    await read;
  };
  if (await waitForPort(child, HOST, opts.port, 60_000) === "ready") {
    return { child, gc, tail, stop };
  }
  await stop();
  throw new Error(`${script.join(" ")} did not listen on ${opts.port}:\n${tail()}`);
}
