/**
 * An application message as the router moves it: decoded once when it
 * arrives, then shared by every subscriber.
 *
 * A message straight off the wire points into the transport's read buffer,
 * which is reused for the next read. Most messages are delivered (encoded
 * into outboxes) before that happens, so copying them would be wasted work;
 * whoever keeps a message past the current packet (retained store, session
 * queue, in-flight window, cluster bus) calls `own()` first, which copies the
 * bytes once for every holder.
 *
 * A holder that keeps a message for moments only (the in-flight window of a
 * session whose writes go nowhere else, until the receiver acknowledges)
 * calls `ownBriefly()` instead: small payloads are copied into a shared arena
 * chunk rather than each into an ArrayBuffer of its own. Every ArrayBuffer
 * young enough for a scavenge costs it a sweep of its backing store: at 10k
 * QoS 1 msg/s that sweep was 0.5 ms of a 0.8 ms scavenge pause. A chunk lives
 * while any view into it does, so that holder must call `own()` again within
 * a bounded time (the keep-alive sweep, and when the connection ends): then
 * an arena chunk holds no message for longer than a sweep interval.
 */

/** A PUBLISH encoded for one form; QoS > 0 forms get their packet id patched per receiver. */
export interface EncodedPublish {
  /**
   * The packet is `bytes[0, length)` (the buffer may be longer), followed by
   * `payload` when that is not null.
   */
  bytes: Uint8Array;
  length: number;
  /**
   * A large payload kept out of line: the message's own (owned) buffer, shared
   * by every delivery instead of copied into each; null when `bytes` holds it.
   */
  payload: Uint8Array | null;
  /** Offset of the 2-byte packet identifier, or -1 for QoS 0. */
  pidOffset: number;
  /** Offset of the 2-byte Topic Alias value (a placeholder, patched per receiver), or -1. */
  aliasOffset: number;
  /** The Message Expiry Interval written into the bytes, or -1. */
  expiry: number;
}

/** Arena chunks: small enough that a chunk kept alive by one message wastes little. */
const ARENA_CHUNK = 16 * 1024;
/** Larger payloads get a buffer of their own (at least 16 fit in a chunk). */
const ARENA_MAX = 1024;
let arena = new Uint8Array(0);
let arenaUsed = 0;

/** A copy of `src` in the current arena chunk (a fresh chunk when it is full). */
function arenaCopy(src: Uint8Array): Uint8Array {
  const n = src.length;
  if (n > ARENA_MAX) return src.slice();
  if (arenaUsed + n > arena.length) {
    // The full chunk is never written again: views into it stay valid for as long as they live.
    arena = new Uint8Array(ARENA_CHUNK);
    arenaUsed = 0;
  }
  const copy = arena.subarray(arenaUsed, arenaUsed + n);
  copy.set(src);
  arenaUsed += n;
  return copy;
}

/** Where a message's payload and properties live: views into a buffer that will be reused. */
const BORROWED = 0;
/** ... copies in an arena chunk (`ownBriefly`). */
const IN_ARENA = 1;
/** ... buffers of their own (`own`). */
const OWNED = 2;

/**
 * `Message.state` counts, from this bit up, the session queue entries and in-flight entries that
 * hold the message; the bits below say where its bytes live.
 */
const HOLD_REF = 4;
const HOME_BITS = 3;

export class Message {
  /**
   * Where payload and properties live (BORROWED, IN_ARENA, OWNED) in the low bits, and how many
   * session queue entries and in-flight entries hold the message (HOLD_REF each) above them: one
   * field, not two, since every message pays for each field. `own` and `ownBriefly` change the
   * low bits alone: where the bytes live does not change what holds them.
   */
  private state: number;
  /** performance.now() when received, for the 1-in-N sampled latency metric; 0 when not sampled. */
  sampledAt = 0;
  /**
   * Cluster-wide id (message_ids.ts), given once: by the node where the message entered the
   * cluster when it first forwards it, or by the journal when a durable store first keeps a
   * queue or in-flight entry of it. Carried with every copy (other nodes, session queues, the
   * store): sessions restored from the stored copies share one Message again, and a session
   * that already holds or recently completed a message with this id drops another copy (a
   * session moving between nodes, a dead node's inbox). "" for a message that neither left its
   * node nor was stored: nothing to tell apart, nothing allocated.
   */
  id = "";

  constructor(
    readonly topic: string,
    /** UTF-8 bytes of the topic (always owned: topics are shared and long-lived). */
    readonly topicBytes: Uint8Array,
    public payload: Uint8Array,
    readonly qos: 0 | 1 | 2,
    readonly retain: boolean,
    /**
     * MQTT 5 properties that pass through unchanged, already encoded (payload
     * format, content type, response topic, correlation data, user properties).
     */
    public props: Uint8Array | null,
    /** Absolute expiry time in ms since the epoch, or 0 for none. */
    readonly expiresAt: number,
    /** Client id of the publisher, for No Local. */
    readonly origin: string,
    /** False when payload/props are views into a buffer that will be reused. */
    owned = true,
  ) {
    this.state = owned ? OWNED : BORROWED;
  }

  /**
   * Makes payload and properties buffers of their own, independent of the read buffer and of
   * the arena; call before keeping the message.
   */
  own(): this {
    if ((this.state & HOME_BITS) !== OWNED) {
      this.payload = this.payload.slice();
      if (this.props !== null) this.props = this.props.slice();
      this.state = (this.state & ~HOME_BITS) | OWNED;
    }
    return this;
  }

  /**
   * Makes payload and properties independent of the read buffer, small ones as copies in the
   * shared arena. Only for a holder that calls `own()` again within a bounded time (see the
   * module's comment); anyone else calls `own()`.
   */
  ownBriefly(): this {
    if ((this.state & HOME_BITS) === BORROWED) {
      this.payload = arenaCopy(this.payload);
      if (this.props !== null) this.props = arenaCopy(this.props);
      this.state = (this.state & ~HOME_BITS) | IN_ARENA;
    }
    return this;
  }

  /**
   * One more session queue entry or in-flight entry holds the message; true when it is the
   * first, so its bytes count once however many sessions hold it (limits.max_queued_bytes_total).
   */
  hold(): boolean {
    const first = this.state < HOLD_REF;
    this.state += HOLD_REF;
    return first;
  }

  /** True while a session queue or in-flight window holds the message. */
  get isHeld(): boolean {
    return this.state >= HOLD_REF;
  }

  /** A queue entry or in-flight entry let it go; true when nothing holds it any more. */
  letGo(): boolean {
    this.state -= HOLD_REF;
    return this.state < HOLD_REF;
  }

  /** True when the Message Expiry Interval has run out at `now`. */
  expired(now: number): boolean {
    return this.expiresAt !== 0 && now >= this.expiresAt;
  }
}
