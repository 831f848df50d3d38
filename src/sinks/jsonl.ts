/**
 * The JSON-lines destination: the topic log's rows appended to a local file,
 * one JSON object per line, rotated by size (`log.jsonl` -> `log.jsonl.1` ->
 * ...). For development and for users without BigQuery.
 */
import { dirname } from "node:path";
import { type Destination, type RowRejection, type SendResult, TransientError } from "./queue.ts";
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
    const rejected: RowRejection[] = [];
    try {
      // Cut the batch where the file would pass max_bytes (a single larger row gets a file of its own).
      let chunk: Uint8Array[] = [];
      let chunkBytes = 0;
      for (const [index, row] of rows.entries()) {
        let line: Uint8Array;
        try {
          line = this.encoder.encode(JSON.stringify(row) + "\n");
        } catch (e) {
          // Longer as JSON than V8's longest string (a 100 MB payload of control characters):
          // it never will be shorter. Retried with the whole batch, it stopped the file for good.
          rejected.push({ index, reason: `cannot be written as JSON: ${e}` });
          continue;
        }
        if (
          this.size + chunkBytes > 0 && this.size + chunkBytes + line.length > this.opts.maxBytes
        ) {
          await this.write(chunk, chunkBytes);
          chunk = [];
          chunkBytes = 0;
          if (this.size > 0) await this.rotate();
        }
        chunk.push(line);
        chunkBytes += line.length;
      }
      await this.write(chunk, chunkBytes);
      return rejected.length === 0 ? OK : { rejected, retry: [] };
    } catch (e) {
      // Disk full, directory removed, ...: the queue retries with backoff.
      throw new TransientError(`writing ${this.opts.path}: ${e}`);
    }
  }

  private async write(lines: Uint8Array[], bytes: number): Promise<void> {
    if (bytes === 0) return;
    const buf = new Uint8Array(bytes);
    let pos = 0;
    for (const l of lines) {
      buf.set(l, pos);
      pos += l.length;
    }
    await Deno.writeFile(this.opts.path, buf, { append: true, create: true });
    this.size += bytes;
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
