/**
 * Reading a node:tls socket into the broker. Deno's node:tls hands each decrypted read over in
 * an ArrayBuffer of its own unless the socket has a read buffer of the caller's (node's
 * `onread.buffer`). Those ArrayBuffers die young and in thousands, and each one's backing
 * store is a malloc'd block freed when a scavenge collects it: glibc then merges the freed
 * blocks all at once, on some later allocation, which was the broker's 1-4 ms p99.9 stalls
 * over TLS (issue 14). So a TLS connection reads into a buffer of its own, sized by traffic
 * like a TCP connection's (read_loop.ts): no allocation per read.
 *
 * A server socket cannot be given `onread` through the public API (node:tls makes it), so the
 * buffer is installed the way net.Socket does it for `onread`: the socket's `kBuffer` and
 * `kBufferCb` slots, and `useUserBuffer` on its handle. These are runtime internals: where
 * they are missing, reading falls back to 'data' events.
 */
import type { Socket } from "node:net";
import { pauseSocket, resumeSocket } from "./pause.ts";
import { ReadBuffer } from "./read_loop.ts";
import type { ConnectionHandler } from "./types.ts";

/**
 * A read at least this large means the peer sends flat out: Deno's TLS socket hands over up to
 * 64 KiB per read and reads the next one within the same event-loop turn, for as long as the
 * peer keeps up. Without a pause the loop never gets to the write completions of other
 * connections: one publisher flooding QoS 0 over TLS starved its subscriber's writes (issue 14,
 * 10k-80k of ~1M msg/s delivered, the rest dropped as congested).
 */
export const FLOOD_CHUNK = 16 * 1024;

/** The part of a TLS handle that takes a read buffer. */
interface UserBufferHandle {
  useUserBuffer(buffer: Uint8Array): void;
}

/** The socket slots net.Socket keeps `onread`'s buffer and callback in. */
interface ReadSlots {
  buffer: symbol;
  callback: symbol;
}

/**
 * Kept once found: the runtime's symbols are the same for every socket. A stream without them
 * (not a net.Socket) is not remembered, so it cannot turn the buffer off for the sockets after it.
 */
let slots: ReadSlots | undefined;

function readSlots(socket: Socket): ReadSlots | null {
  if (slots !== undefined) return slots;
  const own = Object.getOwnPropertySymbols(socket);
  const buffer = own.find((s) => s.description === "kBuffer");
  const callback = own.find((s) => s.description === "kBufferCb");
  if (buffer === undefined || callback === undefined) return null;
  return slots = { buffer, callback };
}

function userBufferHandle(socket: Socket): UserBufferHandle | null {
  const handle = (socket as unknown as { _handle?: Partial<UserBufferHandle> | null })._handle;
  return typeof handle?.useUserBuffer === "function" ? handle as UserBufferHandle : null;
}

/**
 * Where a closed connection's handle reads, if it ever reads again: its own buffer may be a
 * slot that another connection reads into next. Nobody reads this one.
 */
const DISCARD = new Uint8Array(256);

/**
 * Bridges a node stream socket to a broker connection handler. Reading stops while the
 * handler's read gate is closed, and for one event-loop turn after each large read, so that a
 * flooding peer shares the loop with everyone else (small reads never pause).
 */
export function bridgeSocket(socket: Socket, handler: ConnectionHandler): void {
  const rs = readSlots(socket);
  const handle = rs === null ? null : userBufferHandle(socket);
  if (rs !== null && handle !== null) new BufferedReader(socket, handle, rs, handler);
  else bridgeEvents(socket, handler);
  socket.on("error", () => {
    // 'close' follows and reports the end
  });
}

/** Pausing and resuming a socket for a handler's read gate and for flooding peers. */
class Throttle {
  private paused = false;
  private readonly resumeNow = (): void => this.resume();

  constructor(private readonly socket: Socket, private readonly handler: ConnectionHandler) {}

  /** After a read of `n` bytes: pause while the gate is shut, or for a turn after a big read. */
  after(n: number): void {
    if (this.paused) return;
    const gate = this.handler.readGate;
    if (gate !== null) {
      this.paused = true;
      pauseSocket(this.socket);
      gate.then(this.resumeNow);
    } else if (n >= FLOOD_CHUNK) {
      this.paused = true;
      pauseSocket(this.socket);
      setImmediate(this.resumeNow);
    }
  }

  private resume(): void {
    const gate = this.handler.readGate;
    if (gate !== null) {
      gate.then(this.resumeNow);
      return;
    }
    this.paused = false;
    resumeSocket(this.socket);
  }
}

/** Reads into a ReadBuffer through the socket's user-buffer slots. */
class BufferedReader extends ReadBuffer {
  private readonly throttle: Throttle;

  constructor(
    private readonly socket: Socket,
    private readonly handle: UserBufferHandle,
    private readonly rs: ReadSlots,
    private readonly handler: ConnectionHandler,
  ) {
    super();
    this.throttle = new Throttle(socket, handler);
    const s = socket as unknown as Record<symbol, unknown>;
    s[rs.callback] = (n: number): boolean => {
      this.read(n);
      return true;
    };
    this.point();
    // Whatever the stream took before the socket reached us goes first. Not seen in tests
    // (Deno emits 'secureConnection' before it decrypts the data after the handshake), but
    // nothing in node's contract promises that.
    for (let c: Uint8Array | null; (c = socket.read() as Uint8Array | null) !== null;) {
      handler.data(c, c.length);
    }
    // Flowing, so that the end of input is emitted ('end', then 'close').
    socket.resume();
    socket.on("close", () => {
      try {
        this.handle.useUserBuffer(DISCARD);
        (socket as unknown as Record<symbol, unknown>)[rs.buffer] = DISCARD;
        this.releaseBuffer();
      } catch {
        // A handle that cannot be re-pointed keeps its buffer: never hand it to another reader.
      }
      handler.closed();
    });
  }

  /** Makes the next read land in `bytes`. */
  private point(): void {
    (this.socket as unknown as Record<symbol, unknown>)[this.rs.buffer] = this.bytes;
    this.handle.useUserBuffer(this.bytes);
  }

  private read(n: number): void {
    this.handler.data(this.bytes, n);
    const before = this.bytes;
    this.afterRead(n);
    if (this.bytes !== before) this.point();
    this.throttle.after(n);
  }
}

/** Reads through 'data' events (a fresh buffer per read): the fallback. */
function bridgeEvents(socket: Socket, handler: ConnectionHandler): void {
  const throttle = new Throttle(socket, handler);
  socket.on("data", (chunk: Uint8Array) => {
    handler.data(chunk, chunk.length);
    throttle.after(chunk.length);
  });
  socket.on("close", () => handler.closed());
}
