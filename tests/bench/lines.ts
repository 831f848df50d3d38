/** JSON-lines plumbing for the coordinator/worker pipes. */

/** Yields the lines of a byte stream (without the trailing newline). */
export async function* readLines(stream: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  let pending = "";
  for await (const text of stream.pipeThrough(new TextDecoderStream())) {
    pending += text;
    let newline: number;
    while ((newline = pending.indexOf("\n")) >= 0) {
      yield pending.slice(0, newline);
      pending = pending.slice(newline + 1);
    }
  }
  if (pending.length > 0) yield pending;
}

const encoder = new TextEncoder();

/** Writes `value` as one JSON line to `writer`, all of it. */
export async function writeJsonLine(
  writer: WritableStreamDefaultWriter<Uint8Array>,
  value: unknown,
): Promise<void> {
  await writer.write(encoder.encode(JSON.stringify(value) + "\n"));
}
