/**
 * Reading a node:tls socket into the broker. Deno's node:tls hands each decrypted read over in
 * an ArrayBuffer of its own unless the socket has a read buffer of the caller's (node's
 * `onread.buffer`). Those ArrayBuffers die young and in thousands, and each one's backing
 * store is a malloc'd block freed when a scavenge collects it: glibc then merges the freed
 * blocks all at once, on some later allocation, which was caught inside the broker's 1-4 ms
 * p99.9 stalls over TLS (issue 14; fewer since, not gone). So a TLS connection reads into a
 * buffer of its own, sized by traffic like a TCP connection's (read_loop.ts): no allocation
 * per read.
 *
 * A server socket cannot be given `onread` through the public API (node:tls makes it), so the
 * buffer is installed the way net.Socket does it for `onread`: the socket's `kBuffer` and
 * `kBufferCb` slots, and `useUserBuffer` on its handle. These are runtime internals: where
 * they are missing, reading falls back to 'data' events.
 *
 * Under the TLS handle, the TCP handle it decrypts from did the same with the encrypted bytes: a
 * fresh ArrayBuffer per read (a copy of the read into a malloc'd block, freed by V8's sweeper
 * on a helper thread after the next scavenge), handed to the TLS engine, which copies it into
 * its own input at once. `readCipherShared` points every TLS socket's TCP handle at one shared
 * buffer instead (see there).
 */
import type { Socket } from "node:net";
import { pauseSocket, resumeSocket } from "./pause.ts";
import { ReadBuffer } from "./read_loop.ts";
import { throttle, type Throttled } from "./throttle.ts";
import type { ConnectionHandler } from "./types.ts";

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
 * The encrypted bytes of every TLS connection are read here. Safe to share: the runtime reads
 * a socket into it and calls the handle's `onread` at once, and the TLS engine copies the
 * bytes into the connection's own input before that call returns (`TLSWrap.receive`), so no
 * read lands here while another's bytes are still needed.
 *
 * 16 KiB, not the 64 KiB the runtime would have given each read, because the size of this
 * buffer is what one turn takes from a flooding TLS peer. The TLS engine decrypts all of an
 * encrypted read and hands every byte of it over before a pause can take effect (the runtime
 * calls `onread` for each piece of the cleartext in one go): a pause after the first 16 KiB of
 * cleartext still left the rest of a 64 KiB read to be decoded and routed in the same turn.
 * With 64 publishers flooding one subscriber that was 4 MB a turn, turns of ~15 ms, and the
 * subscriber's share of the loop fell with the number of publishers (issue 14, fan-in over TLS:
 * 1.2 % delivered from 64 publishers, 9 % from 8).
 */
const CIPHER_AB = new ArrayBuffer(16 * 1024);
const CIPHER = new Uint8Array(CIPHER_AB);

/**
 * A TLS read of at least this much cleartext pauses its connection for a turn (throttle.ts).
 * Half the encrypted read above: records straddle reads, so a peer sending flat out hands over
 * between a few and 16 KiB of cleartext per encrypted read, and a modest one far less.
 */
export const TLS_FLOOD_CHUNK = CIPHER.length / 2;

/** Sockets whose encrypted reads were pointed at the shared buffer, for tests. */
let cipherInstalls = 0;

/** How many TLS sockets `readCipherShared` has pointed at the shared buffer so far. */
export function cipherBufferInstalls(): number {
  return cipherInstalls;
}

/** Where a TCP handle keeps the runtime's own `onread`, which `onCipherRead` hands on to. */
const NATIVE_ONREAD = Symbol("mcloudtt.nativeOnread");

/** The TCP handle under a node:tls socket (`_nativeTcpHandle`), as far as it is used here. */
interface CipherHandle extends UserBufferHandle {
  onread: (buf?: ArrayBuffer) => unknown;
  readStop(): number;
  readStart(): number;
  [NATIVE_ONREAD]?: (buf?: ArrayBuffer) => unknown;
}

/**
 * The runtime calls `onread` without a buffer when the read went into a user buffer; its own
 * `onread` (which wraps what it is given and feeds it to the TLS engine) gets the shared one.
 */
function onCipherRead(this: CipherHandle, buf?: ArrayBuffer): unknown {
  return this[NATIVE_ONREAD]!(buf === undefined ? CIPHER_AB : buf);
}

/**
 * Makes the TCP handle under TLS socket `socket` read into the shared cipher buffer: no
 * allocation per encrypted read. Returns false (and changes nothing) where the runtime's
 * internals are not there. Call it once per socket, while it reads (after the handshake).
 */
export function readCipherShared(socket: Socket): boolean {
  const native = (socket as unknown as { _handle?: { _nativeTcpHandle?: Partial<CipherHandle> } })
    ._handle?._nativeTcpHandle;
  if (
    native == null || native[NATIVE_ONREAD] !== undefined ||
    typeof native.onread !== "function" || typeof native.useUserBuffer !== "function" ||
    typeof native.readStop !== "function" || typeof native.readStart !== "function"
  ) {
    return false;
  }
  const h = native as CipherHandle;
  const own = h.onread;
  h[NATIVE_ONREAD] = own;
  h.onread = onCipherRead;
  try {
    // The runtime takes `onread` from the handle when reading starts: restart so it takes ours
    // (which passes on a buffer it is given, so it serves before the next line too).
    h.readStop();
    h.readStart();
    h.useUserBuffer(CIPHER);
  } catch {
    // Not seen: the runtime's own `onread` back, reading as before.
    h.onread = own;
    try {
      h.readStart();
    } catch {
      // a closed handle: its end is reported as before
    }
    return false;
  }
  cipherInstalls++;
  return true;
}

/** Where a socket keeps its reader, for the listeners all sockets share. */
const READER = Symbol("mcloudtt.reader");

/** A socket with its reader; the listeners get the socket as `this`. */
type ReadSocket = Socket & { [READER]: BufferedReader | EventReader };

/**
 * Bridges a node stream socket to a broker connection handler. Reading stops while the
 * handler's read gate is closed, and for one event-loop turn after each large read, so that a
 * flooding peer shares the loop with everyone else (small reads never pause). The listeners and
 * the read callback are shared by all sockets, not closures per connection: an idle connection
 * holds its reader and its read slot.
 */
export function bridgeSocket(socket: Socket, handler: ConnectionHandler): void {
  const rs = readSlots(socket);
  const handle = rs === null ? null : userBufferHandle(socket);
  const s = socket as ReadSocket;
  readCipherShared(socket);
  if (rs !== null && handle !== null) {
    s[READER] = new BufferedReader(s, handle, rs, handler);
    (s as unknown as Record<symbol, unknown>)[rs.callback] = onBufferRead;
    s[READER].start();
  } else {
    s[READER] = new EventReader(s, handler);
    socket.on("data", onData);
  }
  socket.on("error", onError);
  socket.on("close", onClose);
}

function onBufferRead(this: ReadSocket, n: number): boolean {
  (this[READER] as BufferedReader).read(n);
  return true;
}

function onData(this: ReadSocket, chunk: Uint8Array): void {
  (this[READER] as EventReader).read(chunk);
}

function onError(): void {
  // 'close' follows and reports the end
}

function onClose(this: ReadSocket): void {
  this[READER].closed();
}

/** Reads into a ReadBuffer through the socket's user-buffer slots. */
class BufferedReader extends ReadBuffer implements Throttled {
  paused = false;

  constructor(
    readonly socket: Socket,
    private readonly handle: UserBufferHandle,
    private readonly rs: ReadSlots,
    readonly handler: ConnectionHandler,
  ) {
    super();
  }

  start(): void {
    this.point();
    // Whatever the stream took before the socket reached us goes first. Not seen in tests
    // (Deno emits 'secureConnection' before it decrypts the data after the handshake), but
    // nothing in node's contract promises that.
    for (let c: Uint8Array | null; (c = this.socket.read() as Uint8Array | null) !== null;) {
      this.handler.data(c, c.length);
    }
    // Flowing, so that the end of input is emitted ('end', then 'close').
    this.socket.resume();
  }

  /** Makes the next read land in `bytes`. */
  private point(): void {
    (this.socket as unknown as Record<symbol, unknown>)[this.rs.buffer] = this.bytes;
    this.handle.useUserBuffer(this.bytes);
  }

  pauseReading(): void {
    pauseSocket(this.socket);
  }

  resumeReading(): void {
    resumeSocket(this.socket);
  }

  read(n: number): void {
    this.handler.data(this.bytes, n);
    const before = this.bytes;
    this.afterRead(n);
    if (this.bytes !== before) this.point();
    throttle(this, n, TLS_FLOOD_CHUNK);
  }

  closed(): void {
    try {
      this.handle.useUserBuffer(DISCARD);
      (this.socket as unknown as Record<symbol, unknown>)[this.rs.buffer] = DISCARD;
      this.releaseBuffer();
    } catch {
      // A handle that cannot be re-pointed keeps its buffer: never hand it to another reader.
    }
    this.handler.closed();
  }
}

/** Reads through 'data' events (a fresh buffer per read): the fallback. */
class EventReader implements Throttled {
  paused = false;

  constructor(readonly socket: Socket, readonly handler: ConnectionHandler) {}

  pauseReading(): void {
    pauseSocket(this.socket);
  }

  resumeReading(): void {
    resumeSocket(this.socket);
  }

  read(chunk: Uint8Array): void {
    this.handler.data(chunk, chunk.length);
    throttle(this, chunk.length, TLS_FLOOD_CHUNK);
  }

  closed(): void {
    this.handler.closed();
  }
}
