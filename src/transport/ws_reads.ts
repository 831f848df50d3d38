/**
 * Small reads of one WebSocket frame, held together before ws sees them. ws keeps every read it
 * is given (a Buffer object of its own, ~190 bytes however few bytes it holds) until the frame
 * the read belongs to is complete. A peer sending a frame's payload one byte per TCP segment so
 * made the broker hold ~190 bytes per byte sent, before any CONNECT (measured: 100 sockets that
 * each trickled 13 KB of a frame grew RSS by 248 MiB; the bytes-before-CONNECT bound allowed
 * 388 KB each, some 70 MiB per socket), and an authenticated client up to ws's chunk bound.
 *
 * Here reads are followed frame by frame from the headers alone (the payload is never looked
 * at, nor unmasked): a read that ends inside a frame's payload is copied into a buffer of the
 * connection and handed on when the frame ends or PIECE bytes are held, so ws holds one read per
 * PIECE bytes at most. Reads ending on a frame boundary pass through as they are, at no cost.
 *
 * Fragments cost the same way: ws keeps each frame of a message until its last (16,384 of them
 * by default), so 16,000 one-byte fragments, 112 KB sent before any CONNECT, held 2.3 MiB (500
 * such sockets: +1.1 GiB RSS). So the frames are also counted here as they are announced: every
 * frame of a message but its last counts at least FRAME_CHARGE bytes against the message bound
 * (2 x max_packet_size), and before CONNECT every frame does against what a peer may send
 * before it (`charged`, see websocket.ts).
 */
import { Buffer } from "node:buffer";
import type { Duplex } from "node:stream";

/** Payload bytes held in one buffer at most before it is handed on. */
export const PIECE = 16 * 1024;

/**
 * What a frame counts at least, where ws keeps it as an object of its own until a later frame
 * (measured: 150-300 bytes of memory per one-byte fragment): the bounds in bytes then bound
 * memory too. A client that fragments at all sends far larger frames (1 KiB is the smallest
 * seen, from embedded WebSocket clients).
 */
export const FRAME_CHARGE = 1024;

export class FrameReads {
  /** Payload bytes of the current frame still to come; 0 while a header is being read. */
  private remaining = 0;
  /**
   * The header being read: bytes of it seen, its size once its second byte is (2 to 14), the
   * 7-bit length and the extended length so far. Numbers, not a byte array: every WebSocket
   * connection carries them.
   */
  private headLength = 0;
  private headSize = 2;
  private len7 = 0;
  /** Where the extended length ends in the header (2: none). */
  private extendedEnd = 2;
  private extended = 0;
  /** The header's first byte: FIN and opcode. */
  private first = 0;
  /**
   * Every frame announced so far, each counted at least FRAME_CHARGE bytes (its header and
   * payload when more): what the peer may have made ws hold, for the bound before CONNECT.
   */
  charged = 0;
  /** The current message so far: its frames but the last count at least FRAME_CHARGE. */
  private message = 0;
  /** A message went over the bound: the connection is being cut, nothing more is read. */
  private refused = false;
  /** The start of the current frame's payload, not handed on yet. */
  private held: Buffer | null = null;
  private heldLength = 0;

  /**
   * `deliver` gets what ws can use, in order; `tooLarge` is called (once, and nothing is
   * handed on after it) when a message's frames count more than `maxMessage` bytes.
   */
  constructor(
    private readonly deliver: (chunk: Buffer) => void,
    private readonly maxMessage = Infinity,
    private readonly tooLarge: () => void = () => {},
    private readonly piece = PIECE,
  ) {}

  /** Takes one read from the socket; hands on, in order, what ws can use. */
  push(chunk: Buffer): void {
    if (this.refused) return;
    const n = chunk.length;
    let off = 0;
    // Where the read's last, unfinished payload starts; -1 when the read ends a frame or a header.
    let tail = -1;
    while (off < n) {
      if (this.remaining > 0) {
        if (this.remaining > n - off) {
          this.remaining -= n - off;
          tail = off;
          break;
        }
        off += this.remaining;
        this.remaining = 0;
      } else {
        off = this.readHead(chunk, off);
        if (this.refused) return;
      }
    }
    if (tail < 0) {
      this.flush();
      this.deliver(chunk);
      return;
    }
    if (tail > 0) {
      // Whole frames and the current frame's header go on now: ws checks a header (maxPayload,
      // masking, opcode) as soon as it has one, and the frames before it wait for nothing.
      this.flush();
      this.deliver(chunk.subarray(0, tail));
    }
    this.hold(tail === 0 ? chunk : chunk.subarray(tail));
  }

  /** Hands on what is held (the socket closes: ws reads the rest itself). */
  flush(): void {
    if (this.heldLength === 0) return;
    const held = this.held!.subarray(0, this.heldLength);
    // A new buffer next time: ws may keep this one (a message it ends is a view of it).
    this.held = null;
    this.heldLength = 0;
    this.deliver(held);
  }

  /** Reads header bytes from `off`; returns where the header (or the read) ends. */
  private readHead(chunk: Uint8Array, off: number): number {
    const n = chunk.length;
    while (off < n) {
      const b = chunk[off++];
      const i = this.headLength++;
      if (i === 0) this.first = b;
      else if (i === 1) {
        // MASK bit and 7-bit length; 126 and 127 announce a 2- and 8-byte length after it.
        this.len7 = b & 0x7f;
        this.extendedEnd = 2 + (this.len7 === 126 ? 2 : this.len7 === 127 ? 8 : 0);
        this.headSize = this.extendedEnd + ((b & 0x80) !== 0 ? 4 : 0);
        this.extended = 0;
      } else if (i >= 2 && i < this.extendedEnd) {
        // Imprecise above 2^53, where ws refuses the frame anyway (and far below, maxPayload).
        this.extended = this.extended * 256 + b;
      }
      if (this.headLength === this.headSize) {
        const payload = this.len7 < 126 ? this.len7 : this.extended;
        this.remaining = payload;
        this.charged += Math.max(this.headSize + payload, FRAME_CHARGE);
        if ((this.first & 0x08) === 0) this.countData(payload);
        this.headLength = 0;
        this.headSize = 2;
        return off;
      }
    }
    return off;
  }

  /** A data frame (opcode below 8: continuation, text or binary) of `payload` bytes. */
  private countData(payload: number): void {
    const fin = (this.first & 0x80) !== 0;
    // ws holds a fragment until the message ends; the last frame ends it at once.
    this.message += fin ? payload : Math.max(payload, FRAME_CHARGE);
    if (this.message > this.maxMessage) {
      this.refused = true;
      this.tooLarge();
    } else if (fin) this.message = 0;
  }

  /** Keeps `bytes`, the start of the current frame's payload (more of it is still to come). */
  private hold(bytes: Buffer): void {
    if (this.heldLength + bytes.length > this.piece) this.flush();
    if (bytes.length >= this.piece) {
      // A large read costs ws no more than its bytes: no need to copy it.
      this.deliver(bytes);
      return;
    }
    if (this.held === null) {
      // No larger than the frame needs (its payload still to come plus this), nor than a piece.
      // Not from node's pool: ws may keep it, and a pooled slice keeps 8 KiB of others alive.
      this.held = Buffer.allocUnsafeSlow(Math.min(this.piece, bytes.length + this.remaining));
    }
    this.held.set(bytes, this.heldLength);
    this.heldLength += bytes.length;
  }
}

/** Where a socket keeps its FrameReads, for the listeners all sockets share. */
const READS = Symbol("mcloudtt.frameReads");

type JoinedSocket = Duplex & { [READS]: FrameReads };

/**
 * Puts a FrameReads between `socket` and the WebSocket ws has just attached to it: ws's own
 * 'data' listener, the only one at that point, is fed through it. Changes nothing and returns
 * null where the socket has another set of listeners (a ws release that reads otherwise).
 */
export function joinFrameReads(
  socket: Duplex,
  maxMessage: number,
  tooLarge: () => void,
): FrameReads | null {
  const listeners = socket.listeners("data");
  if (listeners.length !== 1) return null;
  const wsData = listeners[0] as (this: Duplex, chunk: Buffer) => void;
  socket.removeListener("data", wsData);
  const reads = new FrameReads((c) => wsData.call(socket, c), maxMessage, tooLarge);
  (socket as JoinedSocket)[READS] = reads;
  socket.on("data", onData);
  // At a close ws reads what the stream still buffers straight into its receiver: what is held
  // here comes before it.
  socket.prependListener("close", onClose);
  return reads;
}

function onData(this: JoinedSocket, chunk: Buffer): void {
  this[READS].push(chunk);
}

function onClose(this: JoinedSocket): void {
  this[READS].flush();
}
