/**
 * An application message as the router moves it: decoded once when it
 * arrives, then shared by every subscriber. Outgoing PUBLISH bytes are cached
 * per distinct form (protocol, QoS, retain flag, expiry), so a fan-out to many
 * subscribers encodes each form once.
 */

/** A PUBLISH encoded for one form; QoS > 0 forms get their packet id patched per receiver. */
export interface EncodedPublish {
  bytes: Uint8Array;
  /** Offset of the 2-byte packet identifier, or -1 for QoS 0. */
  pidOffset: number;
  /** The Message Expiry Interval written into the bytes, or -1. */
  expiry: number;
}

export class Message {
  /** Encoded forms, indexed by formIndex(); filled lazily. */
  forms: (EncodedPublish | undefined)[] | null = null;

  constructor(
    readonly topic: string,
    /** UTF-8 bytes of the topic. */
    readonly topicBytes: Uint8Array,
    readonly payload: Uint8Array,
    readonly qos: 0 | 1 | 2,
    readonly retain: boolean,
    /**
     * MQTT 5 properties that pass through unchanged, already encoded (payload
     * format, content type, response topic, correlation data, user properties).
     */
    readonly props: Uint8Array | null,
    /** Absolute expiry time in ms since the epoch, or 0 for none. */
    readonly expiresAt: number,
    /** Client id of the publisher, for No Local. */
    readonly origin: string,
  ) {}

  /** True when the Message Expiry Interval has run out at `now`. */
  expired(now: number): boolean {
    return this.expiresAt !== 0 && now >= this.expiresAt;
  }

  /** The copy kept as a retained message: same content, retain set. */
  withRetain(retain: boolean): Message {
    if (retain === this.retain) return this;
    return new Message(
      this.topic,
      this.topicBytes,
      this.payload,
      this.qos,
      retain,
      this.props,
      this.expiresAt,
      this.origin,
    );
  }
}
