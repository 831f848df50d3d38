/**
 * main.ts in a subprocess, run as a user runs it: a copy of what `deno task start` needs
 * (`copyProject`), the shipped permissions (`START_PERMISSIONS`), and the process with its output
 * collected (`startMain`). Apart from broker.ts, whose brokers run inside the test process.
 */
import { PERMISSION_FLAGS } from "../../src/ops/permissions.ts";

/**
 * Copies what `deno task start` needs (main.ts, mod.ts, deno.json, deno.lock, config.toml, src/)
 * into `dest`, so a subprocess runs the broker as a user would, without certs/ or other state.
 */
export async function copyProject(dest: string): Promise<void> {
  const root = new URL("../../", import.meta.url);
  const copy = async (from: URL, to: string): Promise<void> => {
    const info = await Deno.stat(from);
    if (!info.isDirectory) return await Deno.copyFile(from, to);
    await Deno.mkdir(to, { recursive: true });
    for await (const e of Deno.readDir(from)) {
      await copy(new URL(`${e.name}${e.isDirectory ? "/" : ""}`, from), `${to}/${e.name}`);
    }
  };
  for (const name of ["main.ts", "mod.ts", "deno.json", "deno.lock", "config.toml"]) {
    await copy(new URL(name, root), `${dest}/${name}`);
  }
  await copy(new URL("src/", root), `${dest}/src`);
}

/** The permissions of `deno task start` (and of the compiled binary): the one shipped list. */
export const START_PERMISSIONS: string[] = [...PERMISSION_FLAGS];

/** main.ts running in a subprocess, with its output collected. */
export interface MainProcess extends AsyncDisposable {
  readonly child: Deno.ChildProcess;
  /** Everything written to stderr so far. */
  readonly stderr: () => string;
  /** Everything written to stdout and stderr so far (logs go to stderr). */
  readonly output: () => string;
  /** Waits until the output matches `pattern`; rejects on timeout or if the process exits first. */
  waitFor(pattern: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>;
  /** Resolves with the exit status once the process has exited and its output is read. */
  readonly status: Promise<Deno.CommandStatus>;
  /** Sends SIGTERM and waits for the exit. */
  stop(): Promise<Deno.CommandStatus>;
}

/**
 * Runs `deno run <START_PERMISSIONS> main.ts ...args` in `cwd` (a `copyProject` directory);
 * `script` replaces main.ts (e.g. a bundle of it). The HTTP endpoint gets a free port and no
 * drain delay unless `env` or `args` say otherwise, so parallel tests do not collide or wait.
 */
export function startMain(
  cwd: string,
  args: string[],
  script = "main.ts",
  env: Record<string, string> = {},
): MainProcess {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", ...START_PERMISSIONS, script, ...args],
    cwd,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: {
      NO_COLOR: "1",
      MCLOUDTT_HTTP_PORT: "0",
      MCLOUDTT_ADAPTER_HTTP_PORT: "0",
      MCLOUDTT_GENERAL_DRAIN_DELAY: "0",
      ...env,
    },
  }).spawn();
  let all = "";
  let errText = "";
  let ended = false;
  let wake: () => void = () => {};
  let changed = new Promise<void>((r) => wake = r);
  const notify = () => {
    wake();
    changed = new Promise<void>((r) => wake = r);
  };
  const drain = async (stream: ReadableStream<Uint8Array>, isErr: boolean) => {
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
      all += chunk;
      if (isErr) errText += chunk;
      notify();
    }
  };
  const status = Promise.all([child.status, drain(child.stdout, false), drain(child.stderr, true)])
    .then(([s]) => {
      ended = true;
      notify();
      return s;
    });
  const stop = async () => {
    if (!ended) {
      try {
        child.kill("SIGTERM");
      } catch {
        // exited meanwhile
      }
    }
    return await status;
  };
  return {
    child,
    stderr: () => errText,
    output: () => all,
    status,
    stop,
    async waitFor(pattern: RegExp, timeoutMs = 15_000): Promise<RegExpMatchArray> {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const m = all.match(pattern);
        if (m) return m;
        if (ended) throw new Error(`main.ts exited before printing ${pattern}:\n${all}`);
        const left = deadline - Date.now();
        if (left <= 0) throw new Error(`timed out waiting for ${pattern}:\n${all}`);
        let t: ReturnType<typeof setTimeout> | undefined;
        await Promise.race([changed, new Promise((r) => t = setTimeout(r, left))]);
        clearTimeout(t);
      }
    },
    async [Symbol.asyncDispose]() {
      await stop();
    },
  };
}
