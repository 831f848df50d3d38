/**
 * Reads a byte stream into a buffer that adapts to traffic: idle connections
 * hold a small one (memory per idle client matters at 10k+ clients), busy ones
 * grow it so a read picks up many packets at once.
 */
import type { ConnectionHandler } from "./types.ts";

const MIN = 64;
const FIRST = 256;
const MAX = 16 * 1024;

/** Something with Deno.Conn's read(). */
export interface Readable {
  read(p: Uint8Array): Promise<number | null>;
}

/** Feeds `conn` into `handler` until EOF or error, honouring its read gate. */
export async function pump(conn: Readable, handler: ConnectionHandler): Promise<void> {
  let buf = new Uint8Array(FIRST);
  // The view of the last read: reads of one client tend to have one size (a PUBLISH, a
  // PUBACK), so it is reused instead of made for every read.
  let view = buf;
  try {
    for (;;) {
      const gate = handler.readGate;
      if (gate !== null) await gate;
      const n = await conn.read(buf);
      if (n === null) break;
      if (view.length !== n) view = buf.subarray(0, n);
      handler.data(view);
      if (n === buf.length && buf.length < MAX) view = buf = new Uint8Array(buf.length * 2);
      else if (n < buf.length >> 3 && buf.length > MIN) {
        view = buf = new Uint8Array(buf.length >> 1);
      }
    }
  } catch {
    // A reset or a read after close ends the connection like EOF does.
  } finally {
    handler.closed();
  }
}
