/**
 * The JSON-lines destination: the topic log's rows appended to a local file,
 * one JSON object per line, rotated by size (`log.jsonl` -> `log.jsonl.1` ->
 * ...). For development and for users without BigQuery.
 */
import { dirname } from "node:path";
import { type Destination, type SendResult, TransientError } from "./queue.ts";
import type { TopicRow } from "./row.ts";

export interface JsonlDestinationOptions {
  /** The file written to; rotated files get .1, .2, ... (1 is the newest). */
  path: string;
  /** Rotate once the file would grow past this many bytes. */
  maxBytes: number;
  /** Rotated files kept besides the current one; older ones are deleted. */
  maxFiles: number;
}

const OK: SendResult = { rejected: [], retry: [] };

export class JsonlDestination implements Destination {
  readonly name = "jsonl";
  private size = 0;
  private readonly encoder = new TextEncoder();

  constructor(private readonly opts: JsonlDestinationOptions) {}

  async start(): Promise<void> {
    try {
      await Deno.mkdir(dirname(this.opts.path), { recursive: true });
      const f = await Deno.open(this.opts.path, { append: true, create: true });
      this.size = (await f.stat()).size;
      f.close();
    } catch (e) {
      throw new Error(
        `topic_log_file.path = ${JSON.stringify(this.opts.path)}: cannot write: ${e}`,
      );
    }
  }

  async send(rows: readonly TopicRow[]): Promise<SendResult> {
    const bytes = this.encoder.encode(rows.map((r) => JSON.stringify(r) + "\n").join(""));
    try {
      if (this.size > 0 && this.size + bytes.length > this.opts.maxBytes) await this.rotate();
      await Deno.writeFile(this.opts.path, bytes, { append: true, create: true });
      this.size += bytes.length;
      return OK;
    } catch (e) {
      // Disk full, directory removed, ...: the queue retries with backoff.
      throw new TransientError(`writing ${this.opts.path}: ${e}`);
    }
  }

  private async rotate(): Promise<void> {
    const { path, maxFiles } = this.opts;
    if (maxFiles === 0) {
      await Deno.remove(path).catch(ignoreNotFound);
    } else {
      await Deno.remove(`${path}.${maxFiles}`).catch(ignoreNotFound);
      for (let i = maxFiles - 1; i >= 1; i--) {
        await Deno.rename(`${path}.${i}`, `${path}.${i + 1}`).catch(ignoreNotFound);
      }
      await Deno.rename(path, `${path}.1`).catch(ignoreNotFound);
    }
    this.size = 0;
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}

function ignoreNotFound(e: unknown): void {
  if (!(e instanceof Deno.errors.NotFound)) throw e;
}
