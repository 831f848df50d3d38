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

export class Message {
  private owned: boolean;
  /** performance.now() when received, for the 1-in-N sampled latency metric; 0 when not sampled. */
  sampledAt = 0;
  /**
   * Cluster-wide id, given once by the node where the message entered the
   * cluster when it first forwards it, and carried with every copy (other
   * nodes, session queues, the store): a session that already holds or
   * recently completed a message with this id drops another copy (a session
   * moving between nodes, a dead node's inbox). "" for a message that never
   * left its node: nothing to tell apart, nothing allocated.
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
    this.owned = owned;
  }

  /** Makes payload and properties independent of the read buffer; call before keeping the message. */
  own(): this {
    if (!this.owned) {
      this.payload = this.payload.slice();
      if (this.props !== null) this.props = this.props.slice();
      this.owned = true;
    }
    return this;
  }

  /** True when the Message Expiry Interval has run out at `now`. */
  expired(now: number): boolean {
    return this.expiresAt !== 0 && now >= this.expiresAt;
  }
}
