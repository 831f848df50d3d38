/**
 * A paced pairs load for the allocation and floor measurements (alloc.ts,
 * floor.ts): N publishers, each on its own topic, and N subscribers, one per
 * topic, at a fixed total rate. One 1 ms timer sends whatever the schedule
 * says is due; subscribers acknowledge once per read. Deliberately small and
 * independent of the throughput harness (client.ts), so what it measures on
 * the broker side is the steady state of a modest-rate fleet, and so it can
 * also drive a bare TCP forwarder (`raw` mode: fixed-size frames, no MQTT).
 */
import { LatencyRecorder } from "./stats.ts";
import { type ClientTls, connectBench } from "./tls.ts";
import {
  encodePublishBatch,
  framed,
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

/** What the load does. */
export interface PacedOptions {
  host: string;
  port: number;
  version: ProtocolLevel;
  qos: 0 | 1;
  pairs: number;
  /** Messages per second over all publishers. */
  rate: number;
  payloadBytes: number;
  /** Subscribers keep their session (Session Expiry 1 h on v5, Clean Start 0 on 3.1.1). */
  persistent: boolean;
  /** Client id prefix, so runs against one broker do not take over each other's sessions. */
  idPrefix: string;
  /**
   * Talk to floor.ts's bare forwarder instead of an MQTT broker: no CONNECT or
   * SUBSCRIBE, a 2-byte hello (role, pair index) pairs the sockets; the same
   * PUBLISH and PUBACK bytes then flow through it unchanged.
   */
  raw?: boolean;
  /** Connect over TLS (Nagle off, server certificate only; see tls.ts). */
  tls?: ClientTls;
}

/** Counters of a running load. */
export interface PacedCounts {
  sent: number;
  acked: number;
  received: number;
  errors: string[];
}

/** The hello of a raw-mode client: role (0 publisher, 1 subscriber) and pair index. */
export function rawHello(role: 0 | 1, pair: number): Uint8Array {
  return new Uint8Array([role, pair]);
}

const encoder = new TextEncoder();

function str(s: string): number[] {
  const b = encoder.encode(s);
  return [b.length >> 8, b.length & 0xff, ...b];
}

/** CONNECT; `persistent` asks for a session that outlives the connection. */
function connectPacket(version: ProtocolLevel, clientId: string, persistent: boolean): Uint8Array {
  const flags = persistent && version === 4 ? 0x00 : 0x02;
  const props = version === 5 ? (persistent ? [5, 0x11, 0, 0, 0x0e, 0x10] : [0]) : [];
  return framed(0x10, [...str("MQTT"), version, flags, 0, 60, ...props, ...str(clientId)]);
}

function subscribePacket(version: ProtocolLevel, filter: string, qos: number): Uint8Array {
  return framed(0x82, [0, 1, ...(version === 5 ? [0] : []), ...str(filter), qos]);
}

/** One raw MQTT client: a read loop and a write queue. */
class PacedClient {
  received = 0;
  acked = 0;
  sent = 0;
  inflight = 0;
  readonly errors: string[] = [];
  private readonly reader = new FrameReader();
  private reply: ((body: Uint8Array) => void) | null = null;
  private acks = new Uint8Array(4096);
  private ackLength = 0;
  private writing: Promise<void> = Promise.resolve();
  closed = false;
  done: Promise<void> = Promise.resolve();

  /** Delivery latencies in µs (send time from the payload to the read that brought it). */
  latency: LatencyRecorder | null = null;
  private view: DataView | null = null;
  private nowMs = 0;

  constructor(private readonly conn: Deno.Conn, private readonly version: ProtocolLevel) {}

  static async open(
    o: PacedOptions,
    clientId: string,
    hello: Uint8Array | null = null,
  ): Promise<PacedClient> {
    const conn = await connectBench(o.host, o.port, o.tls);
    const c = new PacedClient(conn, o.version);
    c.done = c.readLoop();
    if (hello !== null) {
      c.write(hello);
      return c;
    }
    const body = await c.request(connectPacket(o.version, clientId, o.persistent));
    const info = parseConnack(body, 0, body.length, o.version);
    if (info.reasonCode !== 0) throw new Error(`CONNACK 0x${info.reasonCode.toString(16)}`);
    return c;
  }

  async subscribe(filter: string, qos: number): Promise<void> {
    const body = await this.request(subscribePacket(this.version, filter, qos));
    const codes = subackCodes(body, 0, body.length, this.version);
    if (codes[0] >= 0x80) throw new Error(`SUBACK 0x${codes[0].toString(16)}`);
  }

  private request(bytes: Uint8Array): Promise<Uint8Array> {
    const p = new Promise<Uint8Array>((resolve) => (this.reply = resolve));
    this.write(bytes);
    return p;
  }

  write(bytes: Uint8Array): void {
    this.writing = this.writing.then(async () => {
      let at = 0;
      while (at < bytes.length) at += await this.conn.write(bytes.subarray(at));
    }).catch((e) => this.fail(e));
  }

  private fail(e: unknown): void {
    if (!this.closed && this.errors.length < 5) {
      this.errors.push(e instanceof Error ? e.message : String(e));
    }
  }

  private async readLoop(): Promise<void> {
    const buf = new Uint8Array(64 * 1024);
    try {
      for (;;) {
        const n = await this.conn.read(buf);
        if (n === null) break;
        if (this.latency !== null) this.nowMs = performance.now();
        this.reader.push(buf, n, this.onPacket);
        if (this.ackLength > 0) {
          this.write(this.acks.slice(0, this.ackLength));
          this.ackLength = 0;
        }
      }
      if (!this.closed) this.fail(new Error("closed by the broker"));
    } catch (e) {
      this.fail(e);
    }
  }

  private readonly onPacket = (
    type: number,
    flags: number,
    buf: Uint8Array,
    body: number,
    end: number,
  ) => {
    switch (type) {
      case PacketType.PUBLISH: {
        this.received++;
        if (((flags >> 1) & 3) === 1) {
          if (this.ackLength + 4 > this.acks.length) {
            const bigger = new Uint8Array(this.acks.length * 2);
            bigger.set(this.acks);
            this.acks = bigger;
          }
          const id = publishPacketId(buf, body);
          this.ackLength = writeAck(this.acks, this.ackLength, PacketType.PUBACK, id);
        }
        if (this.latency !== null) {
          const at = publishPayloadAt(buf, body, (flags >> 1) & 3, this.version);
          if (this.view === null || this.view.buffer !== buf.buffer) {
            this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
          }
          this.latency.add((this.nowMs - this.view.getFloat64(at + 8)) * 1000);
        }
        break;
      }
      case PacketType.PUBACK:
        void readU16(buf, body);
        this.acked++;
        this.inflight--;
        break;
      case PacketType.CONNACK:
      case PacketType.SUBACK: {
        const r = this.reply;
        this.reply = null;
        r?.(buf.slice(body, end));
        break;
      }
      case PacketType.DISCONNECT:
        this.fail(new Error(`DISCONNECT 0x${(buf[body] ?? 0).toString(16)}`));
        break;
    }
  };

  async close(raw = false): Promise<void> {
    this.closed = true;
    if (!raw) this.write(new Uint8Array([0xe0, 0]));
    await this.writing;
    try {
      this.conn.close();
    } catch {
      // already closed
    }
    await this.done;
  }
}

/** Most QoS 1 messages a publisher leaves unacknowledged before it skips a beat. */
const WINDOW = 100;

/** A running paced load: `pairs` publishers and subscribers. */
export class PacedLoad {
  private timer: ReturnType<typeof setInterval> | undefined;
  private readonly batches: PublishBatch[] = [];
  private readonly seqs: number[] = [];
  private nextId: number[] = [];
  private start = 0;

  private constructor(
    private readonly o: PacedOptions,
    private readonly pubs: PacedClient[],
    private readonly subs: PacedClient[],
  ) {}

  /** Connects and subscribes every client (publishing starts with `go`). */
  static async open(o: PacedOptions): Promise<PacedLoad> {
    const subs: PacedClient[] = [];
    const pubs: PacedClient[] = [];
    for (let i = 0; i < o.pairs; i++) {
      const s = await PacedClient.open(o, `${o.idPrefix}-sub-${i}`, o.raw ? rawHello(1, i) : null);
      if (!o.raw) await s.subscribe(`bench/pair/${i}`, o.qos);
      subs.push(s);
      pubs.push(
        await PacedClient.open(o, `${o.idPrefix}-pub-${i}`, o.raw ? rawHello(0, i) : null),
      );
    }
    return new PacedLoad(o, pubs, subs);
  }

  /** Starts the 1 ms pacing timer. */
  go(): void {
    const o = this.o;
    for (let i = 0; i < o.pairs; i++) {
      this.batches.push(
        encodePublishBatch(o.version, `bench/pair/${i}`, o.qos, o.payloadBytes, 64, i),
      );
      this.seqs.push(0);
    }
    this.nextId = this.seqs.map(() => 1);
    this.start = performance.now();
    const perPub = o.rate / o.pairs;
    this.timer = setInterval(() => {
      const now = performance.now();
      for (let i = 0; i < this.pubs.length; i++) {
        const pub = this.pubs[i];
        let due = Math.floor((perPub * (now - this.start)) / 1000) - this.seqs[i];
        if (due <= 0) continue;
        const batch = this.batches[i];
        if (due > batch.count) due = batch.count;
        if (o.qos === 1 && pub.inflight + due > WINDOW) continue;
        for (let k = 0; k < due; k++) {
          let id = 0;
          if (o.qos === 1) {
            id = this.nextId[i];
            this.nextId[i] = id === 65535 ? 1 : id + 1;
          }
          patchPublish(batch, k, id, this.seqs[i]++, now);
        }
        pub.inflight += o.qos === 1 ? due : 0;
        pub.sent += due;
        pub.write(batch.buf.slice(0, due * batch.packetBytes));
      }
    }, 1);
  }

  /** Records delivery latencies from now on (µs); `takeLatency` returns them. */
  recordLatency(): void {
    for (const s of this.subs) s.latency = this.recorder;
  }

  private readonly recorder = new LatencyRecorder();

  /** Latency percentiles (µs) since `recordLatency` or the previous call. */
  takeLatency(): { count: number; p50: number; p99: number; p999: number; max: number } {
    return this.recorder.takeSummary();
  }

  counts(): PacedCounts {
    const c: PacedCounts = { sent: 0, acked: 0, received: 0, errors: [] };
    for (const p of this.pubs) {
      c.sent += p.sent;
      c.acked += p.acked;
      c.errors.push(...p.errors);
    }
    for (const s of this.subs) {
      c.received += s.received;
      c.errors.push(...s.errors);
    }
    return c;
  }

  async close(): Promise<void> {
    clearInterval(this.timer);
    await Promise.all([...this.pubs, ...this.subs].map((c) => c.close(this.o.raw === true)));
  }
}
