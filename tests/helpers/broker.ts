/**
 * Test helpers: an in-process broker on a real socket, MQTT.js clients, and a
 * raw-socket client that speaks bytes and decodes replies with mqtt-packet
 * (the oracle, independent of our own codec).
 */
import mqtt, { type IClientOptions, type MqttClient } from "mqtt";
import mqttPacket from "mqtt-packet";
import { Broker, type Config, createBroker, type DeepPartial } from "../../mod.ts";

export interface TestBroker {
  broker: Broker;
  port: number;
  url: string;
  stop(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

/** Starts a plain-TCP broker on 127.0.0.1 and a free port; `overrides` change any config key. */
export async function startBroker(overrides: DeepPartial<Config> = {}): Promise<TestBroker> {
  const config: DeepPartial<Config> = {
    ...overrides,
    general: { secure: false, websocket: false, bind: "127.0.0.1", ...overrides.general },
    ports: { tcp: 0, ws: 0, ...overrides.ports },
  };
  const broker = createBroker(config);
  await broker.start();
  const tcp = broker.addresses.find((a) => a.kind === "tcp");
  if (!tcp) throw new Error("test broker has no TCP listener");
  const stop = () => broker.stop();
  return {
    broker,
    port: tcp.port,
    url: `mqtt://127.0.0.1:${tcp.port}`,
    stop,
    [Symbol.asyncDispose]: stop,
  };
}

/** Connects an MQTT.js client and waits for CONNACK; rejects on error or refusal. */
export function connectClient(
  port: number,
  opts: IClientOptions = {},
): Promise<MqttClient & AsyncDisposable> {
  return new Promise((resolve, reject) => {
    const client = mqtt.connect({
      host: "127.0.0.1",
      port,
      protocolVersion: 5,
      reconnectPeriod: 0,
      connectTimeout: 5000,
      ...opts,
    }) as MqttClient & AsyncDisposable;
    client[Symbol.asyncDispose] = () => endClient(client);
    const onError = (e: Error) => {
      client.end(true);
      reject(e);
    };
    client.once("error", onError);
    client.once("connect", () => {
      client.off("error", onError);
      resolve(client);
    });
  });
}

/** Ends a client and waits until its socket is closed. */
export function endClient(client: MqttClient, force = false): Promise<void> {
  return new Promise((resolve) => client.end(force, {}, () => resolve()));
}

/** A message as an MQTT.js subscriber saw it. */
export interface Received {
  topic: string;
  payload: string;
  packet: mqtt.IPublishPacket;
}

/** Collects messages arriving at `client`; `next()` waits for the next one. */
export function collect(client: MqttClient): {
  messages: Received[];
  next(timeoutMs?: number): Promise<Received>;
  none(ms: number): Promise<void>;
} {
  const messages: Received[] = [];
  const waiters: ((m: Received) => void)[] = [];
  let read = 0;
  client.on("message", (topic, payload, packet) => {
    const m = { topic, payload: new TextDecoder().decode(payload), packet };
    messages.push(m);
    const w = waiters.shift();
    if (w) {
      read++;
      w(m);
    }
  });
  return {
    messages,
    next(timeoutMs = 3000): Promise<Received> {
      if (read < messages.length) return Promise.resolve(messages[read++]);
      return new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error("timed out waiting for a message")), timeoutMs);
        waiters.push((m) => {
          clearTimeout(t);
          resolve(m);
        });
      });
    },
    async none(ms: number): Promise<void> {
      const before = messages.length;
      await delay(ms);
      if (messages.length !== before) {
        throw new Error(
          `expected no message, got ${JSON.stringify(messages.slice(before).map((m) => m.topic))}`,
        );
      }
    },
  };
}

export function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** A decoded packet from the raw client (mqtt-packet's representation). */
export type Packet = mqttPacket.Packet;

/**
 * A client on a raw socket: write exact bytes, read what the broker answers
 * decoded by mqtt-packet, and observe the close.
 */
export class RawClient {
  private packets: Packet[] = [];
  private waiters: (() => void)[] = [];
  private parser: ReturnType<typeof mqttPacket.parser>;
  closed = false;
  private closedPromise: Promise<void>;

  private constructor(private conn: Deno.TcpConn, protocolVersion: 3 | 4 | 5) {
    this.parser = mqttPacket.parser({ protocolVersion });
    this.parser.on("packet", (p: Packet) => {
      this.packets.push(p);
      this.wake();
    });
    this.parser.on("error", (e: Error) => {
      this.packets.push({ cmd: "parse-error", message: e.message } as unknown as Packet);
      this.wake();
    });
    this.closedPromise = this.readLoop();
  }

  static async connect(port: number, protocolVersion: 3 | 4 | 5 = 5): Promise<RawClient> {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    return new RawClient(conn, protocolVersion);
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  private async readLoop(): Promise<void> {
    const buf = new Uint8Array(65536);
    try {
      for (;;) {
        const n = await this.conn.read(buf);
        if (n === null) break;
        this.parser.parse(Buffer.from(buf.subarray(0, n)));
      }
    } catch {
      // reset by peer counts as closed
    }
    this.closed = true;
    this.wake();
  }

  /** Sends raw bytes. */
  async send(bytes: Uint8Array | number[]): Promise<void> {
    const b = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
    let off = 0;
    while (off < b.length) off += await this.conn.write(b.subarray(off));
  }

  /** Sends a packet encoded by mqtt-packet. */
  sendPacket(packet: Record<string, unknown>, protocolVersion: 3 | 4 | 5 = 5): Promise<void> {
    return this.send(
      mqttPacket.generate(packet as unknown as Packet, { protocolVersion }),
    );
  }

  /** The next packet from the broker, or null if the connection closed first. */
  async next(timeoutMs = 3000): Promise<Packet | null> {
    const deadline = Date.now() + timeoutMs;
    while (this.packets.length === 0) {
      if (this.closed) return null;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error("timed out waiting for a packet");
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    return this.packets.shift()!;
  }

  /** Waits for the next packet and checks its type. */
  async expect(cmd: string, timeoutMs = 3000): Promise<Packet & Record<string, unknown>> {
    const p = await this.next(timeoutMs);
    if (p === null) throw new Error(`expected ${cmd}, but the connection closed`);
    if (p.cmd !== cmd) throw new Error(`expected ${cmd}, got ${JSON.stringify(p)}`);
    return p as Packet & Record<string, unknown>;
  }

  /** Resolves when the broker has closed the connection (rejects after the timeout). */
  async expectClosed(timeoutMs = 3000): Promise<void> {
    let t: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      t = setTimeout(() => reject(new Error("connection was not closed")), timeoutMs);
    });
    try {
      await Promise.race([this.closedPromise, timeout]);
    } finally {
      clearTimeout(t);
    }
  }

  /** Sends CONNECT and expects a successful CONNACK. */
  async handshake(
    clientId: string,
    protocolVersion: 3 | 4 | 5 = 5,
    extra: Record<string, unknown> = {},
  ): Promise<Packet & Record<string, unknown>> {
    await this.sendPacket({
      cmd: "connect",
      protocolId: protocolVersion === 3 ? "MQIsdp" : "MQTT",
      protocolVersion,
      clientId,
      clean: true,
      keepalive: 60,
      ...extra,
    }, protocolVersion);
    const ack = await this.expect("connack");
    const code = (ack.reasonCode ?? ack.returnCode) as number;
    if (code !== 0) throw new Error(`CONNACK refused: ${code}`);
    return ack;
  }

  close(): void {
    try {
      this.conn.close();
    } catch {
      // already closed
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.close();
    await this.closedPromise;
  }
}
