/** The coordinator's handle on one worker process. */

import type { Command, Reply, Snapshot } from "./messages.ts";
import { track } from "./children.ts";
import { readLines, writeJsonLine } from "./lines.ts";

const WORKER_SCRIPT = new URL("./worker.ts", import.meta.url).pathname;

/** A worker replied with a failure, or died. */
export class WorkerError extends Error {
  override name = "WorkerError";
}

/** A running worker process; one command at a time. */
export class WorkerHandle {
  readonly name: string;
  readonly #child: Deno.ChildProcess;
  readonly #stdin: WritableStreamDefaultWriter<Uint8Array>;
  readonly #lines: AsyncGenerator<string>;

  private constructor(name: string, child: Deno.ChildProcess) {
    this.name = name;
    this.#child = child;
    this.#stdin = child.stdin.getWriter();
    this.#lines = readLines(child.stdout);
  }

  /** Starts `deno run worker.ts`; stderr is shared with ours so worker crashes are visible. */
  static spawn(name: string): WorkerHandle {
    const child = track(
      new Deno.Command(Deno.execPath(), {
        args: ["run", "--allow-all", WORKER_SCRIPT],
        stdin: "piped",
        stdout: "piped",
        stderr: "inherit",
      }).spawn(),
    );
    return new WorkerHandle(name, child);
  }

  /** Process id, for reading its /proc entry. */
  get pid(): number {
    return this.#child.pid;
  }

  /** Sends a command and waits for its snapshot; throws `WorkerError` on failure. */
  async send(command: Command): Promise<Snapshot> {
    await writeJsonLine(this.#stdin, command);
    const next = await this.#lines.next();
    if (next.done) throw new WorkerError(`${this.name} exited while handling ${command.cmd}`);
    const reply = JSON.parse(next.value) as Reply;
    if (!reply.ok) throw new WorkerError(`${this.name} ${command.cmd}: ${reply.error}`);
    return reply;
  }

  /** Asks the worker to close its clients and exit; kills it if it does not within 5 s. */
  async close(): Promise<Snapshot | undefined> {
    let last: Snapshot | undefined;
    const timer = setTimeout(() => this.kill(), 5_000);
    try {
      last = await this.send({ cmd: "close" });
    } catch {
      this.kill();
    } finally {
      await this.#stdin.close().catch(() => {});
      await this.#child.status;
      clearTimeout(timer);
    }
    return last;
  }

  /** Ends the process at once. */
  kill(): void {
    try {
      this.#child.kill("SIGKILL");
    } catch {
      // Already exited.
    }
  }
}

/** Sends the same command to every worker at once. */
export function sendAll(workers: readonly WorkerHandle[], command: Command): Promise<Snapshot[]> {
  return Promise.all(workers.map((w) => w.send(command)));
}
