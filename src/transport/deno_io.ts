/**
 * Reading and writing a Deno TCP connection by its resource id, under Deno.Conn.
 *
 * A Deno.TcpConn held for the life of a connection costs ~1.2 kB of JS heap per idle
 * connection beyond the socket itself (measured with tests/bench/idle_heap.ts, Deno 2.9): its
 * local and remote address objects are dictionary-mode objects of ~290 B each, it keeps a Set
 * of pending reads (~170 B), and its `read` is an async function whose suspended generator,
 * promises and reactions stay alive while the read is pending (~450 B). The runtime's own
 * resource functions (`read`, `write`, `shutdown`, `close` of its core, the ones Deno.Conn
 * calls) do the same I/O on the resource id with one promise per read. They are internal to
 * Deno: found at start-up, and when a Deno version lacks them the transport keeps the Deno.Conn
 * and uses its public methods instead (`rawIo` is null). tests/transport/deno_io_test.ts fails
 * when the pinned Deno loses them, so an upgrade cannot silently cost the memory again.
 */

/** The resource functions of Deno's core the transport uses. */
export interface RawIo {
  /** Reads into `buf`; resolves with the byte count, 0 at end of stream. */
  read(rid: number, buf: Uint8Array): Promise<number>;
  /** Writes (part of) `buf`; resolves with the bytes the socket took. */
  write(rid: number, buf: Uint8Array): Promise<number>;
  /** Half-closes the write side. */
  shutdown(rid: number): Promise<void>;
  /** Closes the resource; throws when it is already closed. */
  close(rid: number): void;
}

function findRawIo(): RawIo | null {
  try {
    const internal = (Deno as unknown as { internal?: symbol }).internal;
    if (typeof internal !== "symbol") return null;
    const core = (Deno as unknown as Record<symbol, { core?: Partial<RawIo> } | undefined>)[
      internal
    ]?.core;
    if (
      core === undefined || typeof core.read !== "function" ||
      typeof core.write !== "function" || typeof core.shutdown !== "function" ||
      typeof core.close !== "function"
    ) {
      return null;
    }
    return core as RawIo;
  } catch {
    return null;
  }
}

/** Deno's core resource functions, or null when this Deno version does not offer them. */
export const rawIo: RawIo | null = findRawIo();

/** The symbol Deno.Conn keeps its resource id under; found on the first connection. */
let ridKey: symbol | null | undefined;

/** The resource id of `conn`, or -1 when it cannot be found (then use its methods). */
export function resourceId(conn: Deno.Conn): number {
  if (ridKey === undefined) {
    ridKey = Object.getOwnPropertySymbols(conn).find((s) =>
      s.description === "Deno.internal.rid"
    ) ?? null;
  }
  if (ridKey === null) return -1;
  const rid = (conn as unknown as Record<symbol, unknown>)[ridKey];
  return typeof rid === "number" && Number.isInteger(rid) && rid >= 0 ? rid : -1;
}
