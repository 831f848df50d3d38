/**
 * A small MQTT 5 consumer for the BigQuery adapter: one persistent session
 * (Clean Start 0, Session Expiry), one subscription, QoS 1 deliveries that are
 * acknowledged only when the caller says so, in the order they arrived (as
 * MQTT requires). MQTT.js cannot do this: holding back one acknowledgement
 * holds back the handling of every later packet, so one batch would take one
 * message per insert.
 */
import type { Logger } from "@logtape/logtape";
import { Buffer } from "node:buffer";
import mqttPacket from "mqtt-packet";

export interface ConsumerOptions {
  /** mqtt://host:port or mqtts://host:port. */
  url: string;
  clientId: string;
  username: string;
  password: string;
  /** PEM text; "" = none (for TLS: the system's trust store, no client certificate). */
  ca: string;
  cert: string;
  key: string;
  /** Full subscription filter, e.g. `$share/bq-adapter/#`. */
  subscription: string;
  sessionExpiry: number;
  receiveMaximum: number;
  keepalive: number;
  reconnectMs: number;
}

/** One message received. */
export interface Delivery {
  readonly topic: string;
  readonly payload: Uint8Array;
  readonly qos: 0 | 1 | 2;
  readonly retain: boolean;
  readonly properties: mqttPacket.IPublishPacket["properties"];
  /** Acknowledges it (PUBACK goes out once every earlier message is acknowledged too). */
  ack(): void;
  /**
   * Says it was not kept (its row dropped): it stays unacknowledged, the consumer reconnects
   * after `reconnectMs`, and when the broker sends it again it is handed over as a new delivery.
   */
  drop(): void;
}

interface Pending {
  id: number;
  acked: boolean;
}

/**
 * A QoS 1 message of the session handed to the caller and not acknowledged to the broker yet,
 * by packet id. The broker sends it again after a reconnect (DUP, same packet id, which it
 * cannot reuse before our PUBACK): the copy is not handed over again, it is acknowledged
 * once the first is. Otherwise every reconnect during a BigQuery outage queued each
 * unacknowledged message once more, under a new row id, and it was written several times.
 */
interface Held {
  /** The caller acknowledged it (its row is written, refused for good or spilled). */
  done: boolean;
  /** Acknowledgements of copies received since, run when it is done. */
  readonly copies: (() => void)[];
}

const OPTS = { protocolVersion: 5 } as const;

/** What the consumer did so far (bq-adapter's /metrics and /readyz). */
export interface ConsumerStats {
  /** Subscribed (or resumed) on the current connection. */
  connected: boolean;
  /** Connections that got as far as a session (CONNACK 0, then SUBACK when new). */
  sessions: number;
  /** Connections that failed or were lost (dial errors, refusals, closes). */
  lost: number;
  /** Messages handed to the caller (copies of held ones not counted). */
  received: number;
  /** Copies the broker sent again of messages already handed over. */
  duplicates: number;
  /** PUBACKs sent. */
  acknowledged: number;
}

export class Consumer {
  private conn: Deno.Conn | null = null;
  private stopping = false;
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  private redeliverTimer: ReturnType<typeof setTimeout> | undefined;
  private pingTimer: ReturnType<typeof setInterval> | undefined;
  private connected: (() => void) | null = null;
  /** Number of the current connection; acks from deliveries of an older one are void. */
  private generation = 0;
  private pending: Pending[] = [];
  /** Messages handed over and not PUBACKed, across connections of one session. */
  private readonly held = new Map<number, Held>();
  private lastRead = 0;
  readonly stats: ConsumerStats = {
    connected: false,
    sessions: 0,
    lost: 0,
    received: 0,
    duplicates: 0,
    acknowledged: 0,
  };

  constructor(
    private readonly opts: ConsumerOptions,
    private readonly onMessage: (d: Delivery) => void,
    private readonly log: Logger,
  ) {}

  /** Connects (retrying every reconnect_ms) and resolves once subscribed the first time. */
  start(): Promise<void> {
    return new Promise((resolve) => {
      this.connected = resolve;
      this.connect();
    });
  }

  private connect(): void {
    if (this.stopping) return;
    this.run().catch((e) => {
      this.log.warn(`bq-adapter: connection to ${this.opts.url} failed: ${e}`);
    }).finally(() => {
      this.conn = null;
      this.stats.connected = false;
      if (!this.stopping) this.stats.lost++;
      clearInterval(this.pingTimer);
      if (!this.stopping) {
        this.reconnectTimer = setTimeout(() => this.connect(), this.opts.reconnectMs);
      }
    });
  }

  private async dial(): Promise<Deno.Conn> {
    const url = new URL(this.opts.url);
    const tls = url.protocol === "mqtts:";
    const hostname = url.hostname.replace(/^\[|\]$/g, "");
    // The config requires the port; without one, mcloudtt's own default for both (not mqtts's 8883).
    const port = Number(url.port || 1883);
    if (!tls) return await Deno.connect({ hostname, port });
    return await Deno.connectTls({
      hostname,
      port,
      ...(this.opts.ca ? { caCerts: [this.opts.ca] } : {}),
      ...(this.opts.cert ? { cert: this.opts.cert, key: this.opts.key } : {}),
    });
  }

  private send(packet: mqttPacket.Packet): void {
    const conn = this.conn;
    if (!conn) return;
    const bytes = mqttPacket.generate(packet, OPTS);
    conn.write(new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength)).catch(() => {
      conn.close();
    });
  }

  private async run(): Promise<void> {
    const conn = await this.dial();
    this.conn = conn;
    const generation = ++this.generation;
    this.pending = [];
    const parser = mqttPacket.parser(OPTS);
    let failure: Error | null = null;
    parser.on("error", (e: Error) => {
      failure = e;
      conn.close();
    });
    parser.on("packet", (p: mqttPacket.Packet) => this.handle(p, generation));
    this.send({
      cmd: "connect",
      protocolId: "MQTT",
      protocolVersion: 5,
      clientId: this.opts.clientId,
      clean: false,
      keepalive: this.opts.keepalive,
      ...(this.opts.username ? { username: this.opts.username } : {}),
      ...(this.opts.password ? { password: new TextEncoder().encode(this.opts.password) } : {}),
      properties: {
        sessionExpiryInterval: this.opts.sessionExpiry,
        receiveMaximum: this.opts.receiveMaximum,
      },
    } as mqttPacket.IConnectPacket);
    this.lastRead = Date.now();
    if (this.opts.keepalive > 0) {
      const every = this.opts.keepalive * 1000;
      this.pingTimer = setInterval(() => {
        // No packet for 1.5 keep alives: the broker (or the path to it) is gone.
        if (Date.now() - this.lastRead > every * 1.5) conn.close();
        else this.send({ cmd: "pingreq" });
      }, every);
    }
    const buf = new Uint8Array(64 * 1024);
    try {
      for (;;) {
        const n = await conn.read(buf);
        if (n === null) break;
        this.lastRead = Date.now();
        parser.parse(Buffer.from(buf.subarray(0, n)));
      }
    } catch (e) {
      if (!this.stopping) failure ??= e as Error;
    } finally {
      try {
        conn.close();
      } catch {
        // already closed
      }
    }
    if (failure && !this.stopping) throw failure;
    if (!this.stopping) this.log.warn(`bq-adapter: ${this.opts.url} closed the connection`);
  }

  private handle(p: mqttPacket.Packet, generation: number): void {
    switch (p.cmd) {
      case "connack": {
        const code = p.reasonCode ?? p.returnCode ?? 0;
        if (code !== 0) {
          this.log.error(`bq-adapter: ${this.opts.url} refused the connection (reason ${code})`);
          this.conn?.close();
          return;
        }
        // A new session: the broker sends nothing again and may reuse every packet id.
        if (!p.sessionPresent) this.held.clear();
        if (p.sessionPresent) {
          this.log.info(`bq-adapter: connected to ${this.opts.url}, session resumed`);
          this.ready();
        } else {
          this.send({
            cmd: "subscribe",
            messageId: 1,
            subscriptions: [{ topic: this.opts.subscription, qos: 1 }],
          } as mqttPacket.ISubscribePacket);
        }
        return;
      }
      case "suback": {
        const granted = p.granted[0];
        const code = typeof granted === "number"
          ? granted
          : (granted as { qos?: number } | undefined)?.qos ?? 0x80;
        if (code >= 0x80) {
          this.log.error(
            `bq-adapter: ${this.opts.url} refused the subscription ${this.opts.subscription} (reason ${code})`,
          );
          this.conn?.close();
          return;
        }
        this.log.info(
          `bq-adapter: connected to ${this.opts.url}, subscribed to ${this.opts.subscription}`,
        );
        this.ready();
        return;
      }
      case "publish": {
        const qos = p.qos;
        let entry: Pending | null = null;
        if (qos > 0) {
          entry = { id: p.messageId ?? 0, acked: false };
          this.pending.push(entry);
        }
        const ackEntry = () => {
          if (entry === null || entry.acked || generation !== this.generation) return;
          entry.acked = true;
          this.flushAcks();
        };
        const held = entry ? this.held.get(entry.id) : undefined;
        if (held) {
          this.stats.duplicates++;
          // A copy of a message handed over before a reconnect: acknowledged with it, not again.
          if (held.done) ackEntry();
          else held.copies.push(ackEntry);
          return;
        }
        let mine: Held | null = null;
        if (entry) {
          mine = { done: false, copies: [] };
          this.held.set(entry.id, mine);
        }
        this.stats.received++;
        const payload = typeof p.payload === "string"
          ? new TextEncoder().encode(p.payload)
          : new Uint8Array(p.payload);
        this.onMessage({
          topic: p.topic,
          payload,
          qos,
          retain: p.retain,
          properties: p.properties,
          ack: () => {
            if (mine !== null && !mine.done) {
              mine.done = true;
              for (const copy of mine.copies.splice(0)) copy();
            }
            ackEntry();
          },
          drop: () => {
            // Forgotten: the broker's next copy is handed over as a new message.
            if (entry && mine !== null && this.held.get(entry.id) === mine) {
              this.held.delete(entry.id);
            }
            // It holds up every acknowledgement after it (they go in order) until the broker
            // sends it again, which it does only on a new connection.
            if (entry && generation === this.generation) this.redeliverSoon(generation);
          },
        });
        return;
      }
      case "pubrel":
        // Subscribed at QoS 1: QoS 2 is never sent to us; answer anyway so the broker is not stuck.
        this.send({ cmd: "pubcomp", messageId: p.messageId });
        return;
      case "disconnect":
        this.log.warn(`bq-adapter: ${this.opts.url} sent DISCONNECT (reason ${p.reasonCode ?? 0})`);
        this.conn?.close();
        return;
      default:
        return;
    }
  }

  /**
   * Reconnects after `reconnect_ms` (once however many were dropped meanwhile): the session
   * stays, and the broker sends again what this connection did not acknowledge, the dropped
   * messages among them. Without it the connection went on with its acknowledgements stuck
   * behind a dropped message and the broker's in-flight window full: nothing more arrived.
   */
  private redeliverSoon(generation: number): void {
    if (this.redeliverTimer !== undefined || this.stopping) return;
    this.redeliverTimer = setTimeout(() => {
      this.redeliverTimer = undefined;
      const conn = this.conn;
      if (conn === null || generation !== this.generation || this.stopping) return;
      this.log.info(
        "bq-adapter: rows were dropped (the topic log queue is full): reconnecting so that " +
          "the broker sends their messages again",
      );
      this.send({ cmd: "disconnect", reasonCode: 0 } as mqttPacket.IDisconnectPacket);
      setTimeout(() => {
        try {
          conn.close();
        } catch {
          // already closed
        }
      }, 20);
    }, this.opts.reconnectMs);
  }

  private ready(): void {
    this.stats.connected = true;
    this.stats.sessions++;
    const done = this.connected;
    this.connected = null;
    done?.();
  }

  /** Sends PUBACKs for the acknowledged messages at the head of the line. */
  private flushAcks(): void {
    let i = 0;
    while (i < this.pending.length && this.pending[i].acked) {
      const { id } = this.pending[i];
      this.send({ cmd: "puback", messageId: id } as mqttPacket.IPubackPacket);
      // Acknowledged: the broker may use the id for another message now.
      this.held.delete(id);
      i++;
    }
    if (i > 0) this.pending.splice(0, i);
    this.stats.acknowledged += i;
  }

  /** Unacknowledged messages of the current connection. */
  get unacked(): number {
    return this.pending.length;
  }

  /** Sends DISCONNECT (the session stays on the broker) and closes. */
  async stop(): Promise<void> {
    this.stopping = true;
    clearTimeout(this.reconnectTimer);
    clearTimeout(this.redeliverTimer);
    clearInterval(this.pingTimer);
    const conn = this.conn;
    if (!conn) return;
    this.send({ cmd: "disconnect", reasonCode: 0 } as mqttPacket.IDisconnectPacket);
    await new Promise((r) => setTimeout(r, 20));
    try {
      conn.close();
    } catch {
      // already closed
    }
  }
}
