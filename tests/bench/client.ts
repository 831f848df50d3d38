/**
 * One raw-socket MQTT client of the load generator: handshake, a read loop that counts and
 * acknowledges deliveries in batches, and a publisher loop that honours flow control.
 */

import { type ClientTls, connectBench } from "./tls.ts";
import {
  DISCONNECT,
  encodeConnect,
  encodeSubscribe,
  FrameReader,
  PacketType,
  parseConnack,
  patchPublish,
  type ProtocolLevel,
  type PublishBatch,
  publishPacketId,
  publishPayloadAt,
  readU16,
  subackCodes,
  writeAck,
} from "./wire.ts";

/** The broker refused or broke the conversation. */
export class ClientError extends Error {
  override name = "ClientError";
}

/** Called for each delivered PUBLISH when payload inspection is on. */
export type DeliveryObserver = (
  publisher: number,
  seq: number,
  sentAtMs: number,
  nowMs: number,
) => void;

/** How a client connects and reads. */
export interface ClientOptions {
  readonly host: string;
  readonly port: number;
  /** Speak TLS, trusting this CA; plain TCP when absent. */
  readonly tls?: ClientTls;
  readonly version: ProtocolLevel;
  readonly clientId: string;
  readonly keepAliveSeconds: number;
  /** Set: a persistent session with this Session Expiry Interval (seconds). */
  readonly sessionExpiry?: number;
  /** Window for QoS 1/2 publishing on 3.1.1 (v5 uses the broker's Receive Maximum). */
  readonly v311Window: number;
  /** Bytes per read; small values together with `readPauseMs` make a slow consumer. */
  readonly readBytes?: number;
  readonly readPauseMs?: number;
  readonly observer?: DeliveryObserver;
}

const MAX_ERRORS = 5;
// Acknowledgements written together once this many are pending (else after ~1 ms).
const ACK_FLUSH_COUNT = 32;

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** A connected MQTT client with counters the worker reports. */
export class BenchClient {
  sent = 0;
  acked = 0;
  received = 0;
  readonly errors: string[] = [];

  readonly #conn: Deno.Conn;
  readonly #options: ClientOptions;
  readonly #reader = new FrameReader();
  #writeTail: Promise<void> = Promise.resolve();
  #acks = new Uint8Array(16 * 1024);
  #ackLength = 0;
  #ackTimer: ReturnType<typeof setTimeout> | undefined;
  // PUBRELs hold our own publish window open, so they are never kept waiting.
  #urgentAcks = false;
  #nowMs = 0;
  // A DataView is made once per receive buffer, not once per message.
  #viewOf: Uint8Array | null = null;
  #view: DataView = new DataView(new ArrayBuffer(0));
  #closed = false;
  #stopping = false;
  #window = 0;
  #inflight = 0;
  readonly #idInUse = new Uint8Array(65_536);
  #nextId = 1;
  #wake: (() => void) | null = null;
  #handshake: { resolve: (v: Uint8Array) => void; reject: (e: Error) => void } | null = null;
  #readLoop: Promise<void> = Promise.resolve();
  #publishLoop: Promise<void> = Promise.resolve();

  private constructor(conn: Deno.Conn, options: ClientOptions) {
    this.#conn = conn;
    this.#options = options;
  }

  /** Opens the TCP (or TLS) connection and completes CONNECT/CONNACK. */
  static async connect(options: ClientOptions): Promise<BenchClient> {
    const conn = await connectBench(options.host, options.port, options.tls);
    const client = new BenchClient(conn, options);
    client.#readLoop = client.#read();
    const connack = await client.#request(
      encodeConnect(
        options.version,
        options.clientId,
        options.keepAliveSeconds,
        options.sessionExpiry,
      ),
    );
    const info = parseConnack(connack, 0, connack.length, options.version);
    if (info.reasonCode !== 0) {
      client.close();
      throw new ClientError(
        `CONNACK refused ${options.clientId}: reason 0x${info.reasonCode.toString(16)}`,
      );
    }
    client.#window = options.version === 5 ? (info.receiveMaximum ?? 65_535) : options.v311Window;
    return client;
  }

  /** The in-flight window used for QoS 1/2 publishing. */
  get window(): number {
    return this.#window;
  }

  /** QoS 1/2 publishes sent but not yet completed. */
  get inflight(): number {
    return this.#inflight;
  }

  /** Subscribes to one filter and waits for a successful SUBACK. */
  async subscribe(filter: string, qos: number): Promise<void> {
    const suback = await this.#request(encodeSubscribe(this.#options.version, 1, filter, qos));
    const codes = subackCodes(suback, 0, suback.length, this.#options.version);
    if (codes.length !== 1 || codes[0] >= 0x80) {
      throw new ClientError(`SUBACK refused ${filter}: ${codes.join(",")}`);
    }
  }

  /**
   * Starts publishing from `batch` until `stop()` or `limit` messages; `ratePerSecond` paces it
   * when given.
   */
  startPublishing(batch: PublishBatch, qos: number, ratePerSecond?: number, limit?: number): void {
    this.#publishLoop = this.#publish(batch, qos, ratePerSecond, limit ?? Infinity)
      .catch((e) => this.#fail(e));
  }

  /** Stops publishing and waits (up to `timeoutMs`) for outstanding acknowledgements. */
  async stop(timeoutMs: number): Promise<void> {
    this.#stopping = true;
    this.#wake?.();
    const deadline = performance.now() + timeoutMs;
    // A broker that stopped reading leaves the last write pending; do not wait for it forever.
    await Promise.race([this.#publishLoop, sleep(timeoutMs)]);
    while (this.#inflight > 0 && !this.#closed && performance.now() < deadline) await sleep(10);
  }

  /** Sends DISCONNECT (best effort) and closes the socket. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#stopping = true;
    this.#wake?.();
    // A broker that stopped reading must not hang the shutdown, hence the time limit.
    await Promise.race([this.write(DISCONNECT).catch(() => {}), sleep(500)]);
    try {
      this.#conn.close();
    } catch {
      // Already closed by the read loop.
    }
    await this.#readLoop;
  }

  /** Writes bytes after every earlier write has completed, so packets never interleave. */
  write(bytes: Uint8Array): Promise<void> {
    const next = this.#writeTail.then(() => this.#writeAll(bytes));
    this.#writeTail = next.catch(() => {});
    return next;
  }

  async #writeAll(bytes: Uint8Array): Promise<void> {
    let at = 0;
    while (at < bytes.length) at += await this.#conn.write(bytes.subarray(at));
  }

  #request(bytes: Uint8Array): Promise<Uint8Array> {
    const reply = new Promise<Uint8Array>((resolve, reject) => {
      this.#handshake = { resolve, reject };
    });
    this.write(bytes).catch((e) => this.#handshake?.reject(e));
    return reply;
  }

  async #publish(
    batch: PublishBatch,
    qos: number,
    ratePerSecond: number | undefined,
    limit: number,
  ): Promise<void> {
    const start = performance.now();
    let seq = 0;
    while (!this.#stopping && !this.#closed && seq < limit) {
      let n = Math.min(batch.count, limit - seq);
      if (qos > 0) {
        // Refill only once a good part of the window is free: topping up one slot per
        // acknowledgement would cost one write per message.
        const minFree = Math.min(batch.count, Math.ceil(this.#window / 2));
        while (this.#window - this.#inflight < minFree && !this.#stopping && !this.#closed) {
          await new Promise<void>((resolve) => this.#wake = resolve);
        }
        if (this.#stopping || this.#closed) break;
        n = Math.min(n, this.#window - this.#inflight);
      }
      if (ratePerSecond !== undefined) {
        const due = Math.floor((ratePerSecond * (performance.now() - start)) / 1000) - seq;
        if (due <= 0) {
          await sleep(1);
          continue;
        }
        n = Math.min(n, due);
      }
      const now = performance.now();
      for (let i = 0; i < n; i++) {
        patchPublish(batch, i, qos > 0 ? this.#takeId() : 0, seq++, now);
      }
      if (qos > 0) this.#inflight += n;
      await this.write(batch.buf.subarray(0, n * batch.packetBytes));
      this.sent += n;
    }
  }

  #takeId(): number {
    while (this.#idInUse[this.#nextId] === 1) {
      this.#nextId = this.#nextId === 65_535 ? 1 : this.#nextId + 1;
    }
    const id = this.#nextId;
    this.#idInUse[id] = 1;
    this.#nextId = id === 65_535 ? 1 : id + 1;
    return id;
  }

  #release(id: number): void {
    if (this.#idInUse[id] !== 1) return;
    this.#idInUse[id] = 0;
    this.#inflight--;
    this.acked++;
    const wake = this.#wake;
    this.#wake = null;
    wake?.();
  }

  #flushAcks(): Promise<void> {
    if (this.#ackLength === 0) return Promise.resolve();
    const out = this.#acks.slice(0, this.#ackLength);
    this.#ackLength = 0;
    this.#urgentAcks = false;
    return this.write(out);
  }

  #queueAck(type: number, id: number): void {
    if (this.#ackLength + 4 > this.#acks.length) {
      const bigger = new Uint8Array(this.#acks.length * 2);
      bigger.set(this.#acks.subarray(0, this.#ackLength));
      this.#acks = bigger;
    }
    this.#ackLength = writeAck(this.#acks, this.#ackLength, type, id);
  }

  #fail(e: unknown): void {
    if (this.#closed) return;
    if (this.errors.length < MAX_ERRORS) {
      this.errors.push(`${this.#options.clientId}: ${e instanceof Error ? e.message : String(e)}`);
    }
  }

  async #read(): Promise<void> {
    const buf = new Uint8Array(this.#options.readBytes ?? 64 * 1024);
    const pause = this.#options.readPauseMs ?? 0;
    const timed = this.#options.observer !== undefined;
    try {
      while (true) {
        if (pause > 0) await sleep(pause);
        const n = await this.#conn.read(buf);
        if (n === null) break;
        // One clock reading per chunk: every packet in it had arrived by the time read returned.
        if (timed) this.#nowMs = performance.now();
        this.#reader.push(buf, n, this.#onPacket);
        if (this.#ackLength >= ACK_FLUSH_COUNT * 4 || this.#urgentAcks) await this.#flushAcks();
        else if (this.#ackLength > 0 && this.#ackTimer === undefined) {
          // A few acks wait up to ~1 ms for company instead of costing a write each.
          this.#ackTimer = setTimeout(() => {
            this.#ackTimer = undefined;
            this.#flushAcks().catch((e) => this.#fail(e));
          }, 1);
        }
      }
      if (!this.#closed) this.#fail(new ClientError("connection closed by broker"));
    } catch (e) {
      this.#fail(e);
    } finally {
      this.#closed = true;
      clearTimeout(this.#ackTimer);
      this.#wake?.();
      this.#handshake?.reject(new ClientError("connection closed before reply"));
    }
  }

  readonly #onPacket = (
    type: number,
    flags: number,
    buf: Uint8Array,
    body: number,
    end: number,
  ) => {
    switch (type) {
      case PacketType.PUBLISH: {
        this.received++;
        const qos = (flags >> 1) & 3;
        if (qos === 1) this.#queueAck(PacketType.PUBACK, publishPacketId(buf, body));
        else if (qos === 2) this.#queueAck(PacketType.PUBREC, publishPacketId(buf, body));
        const observer = this.#options.observer;
        if (observer !== undefined) {
          const at = publishPayloadAt(buf, body, qos, this.#options.version);
          if (buf !== this.#viewOf) {
            this.#viewOf = buf;
            this.#view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
          }
          const view = this.#view;
          observer(
            view.getUint32(at),
            view.getUint32(at + 4),
            view.getFloat64(at + 8),
            this.#nowMs,
          );
        }
        break;
      }
      case PacketType.PUBACK:
      case PacketType.PUBCOMP:
        this.#release(readU16(buf, body));
        break;
      case PacketType.PUBREC: {
        const id = readU16(buf, body);
        if (end - body > 2 && buf[body + 2] >= 0x80) {
          this.#fail(new ClientError(`PUBREC failure 0x${buf[body + 2].toString(16)}`));
          this.#release(id);
        } else {
          this.#queueAck(PacketType.PUBREL, id);
          this.#urgentAcks = true;
        }
        break;
      }
      case PacketType.PUBREL:
        this.#queueAck(PacketType.PUBCOMP, readU16(buf, body));
        break;
      case PacketType.CONNACK:
      case PacketType.SUBACK: {
        const handshake = this.#handshake;
        this.#handshake = null;
        handshake?.resolve(buf.slice(body, end));
        break;
      }
      case PacketType.DISCONNECT:
        this.#fail(
          new ClientError(`DISCONNECT from broker, reason 0x${(buf[body] ?? 0).toString(16)}`),
        );
        break;
      default:
        break;
    }
  };
}
