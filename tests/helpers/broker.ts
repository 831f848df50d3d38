/**
 * Test helpers: an in-process broker on a real socket, MQTT.js clients, and a
 * raw-socket client that speaks bytes and decodes replies with mqtt-packet
 * (the oracle, independent of our own codec). main.ts in a subprocess is in
 * main_process.ts.
 */
import mqtt, { type IClientOptions, type MqttClient } from "mqtt";
import mqttPacket from "mqtt-packet";
import {
  type Broker,
  type BrokerDeps,
  type Config,
  createBroker,
  type DeepPartial,
} from "../../mod.ts";

export interface TestBroker {
  broker: Broker;
  port: number;
  url: string;
  stop(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

/**
 * Starts a plain-TCP broker on 127.0.0.1 and a free port; `overrides` change any config key,
 * `deps` replace the in-memory bus, store, sink, clock or the authentication.
 */
export async function startBroker(
  overrides: DeepPartial<Config> = {},
  deps: BrokerDeps = {},
): Promise<TestBroker> {
  const config: DeepPartial<Config> = {
    ...overrides,
    general: { secure: false, websocket: false, bind: "127.0.0.1", ...overrides.general },
    ports: { tcp: 0, ws: 0, ...overrides.ports },
    // In memory unless a test asks for storage: tests must not share or leave a ./data directory.
    storage: { enabled: false, ...overrides.storage },
  };
  const broker = await createBroker(config, deps);
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

/**
 * Connects an MQTT.js client and waits for CONNACK; rejects on error or refusal.
 * `setup` runs before the connection opens: a listener added there sees the
 * messages a resumed session sends right after CONNACK (MQTT.js may emit them
 * before a caller awaiting this promise runs again).
 */
export function connectClient(
  port: number,
  opts: IClientOptions = {},
  setup?: (client: MqttClient) => void,
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
    setup?.(client);
    let settled = false;
    // Stays on after a failure, so an 'error' that follows the close is not thrown.
    const onError = (e: Error) => {
      if (settled) return;
      settled = true;
      client.off("close", onClose);
      client.end(true);
      reject(e);
    };
    // A connection the broker closes before its CONNACK (a node shutting down) ends without an
    // 'error': MQTT.js then clears its CONNACK timer, and the promise would never settle.
    const onClose = () => onError(new Error(`connection to port ${port} closed before CONNACK`));
    client.on("error", onError);
    client.once("close", onClose);
    client.once("connect", () => {
      settled = true;
      client.off("error", onError);
      client.off("close", onClose);
      resolve(client);
    });
  });
}

/**
 * The CONNACK reason code a CONNECT with `opts` gets (0 when accepted; the client then ends), or
 * the error when no CONNACK came (a refused TLS handshake, a connection closed first).
 */
export async function connackOf(port: number, opts: IClientOptions): Promise<number | Error> {
  try {
    const c = await connectClient(port, opts);
    await c.endAsync();
    return 0;
  } catch (e) {
    // MQTT.js refuses with the CONNACK's reason code; socket errors carry string codes.
    const code = (e as { code?: unknown }).code;
    return typeof code === "number" ? code : e as Error;
  }
}

/**
 * Ends a client and waits until its socket is closed. A client the broker
 * disconnected is ended with force: MQTT.js would otherwise wait forever for
 * its unacknowledged publishes.
 */
export function endClient(client: MqttClient, force = false): Promise<void> {
  return new Promise((resolve) => client.end(force || !client.connected, {}, () => resolve()));
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

/** What {@link collect} returns: the messages so far, `next()` and `none()`. */
export type Inbox = ReturnType<typeof collect>;

/**
 * Connects an MQTT.js client (as {@link connectClient}), collects its messages
 * in `inbox` from before the SUBACK (retained messages included) and subscribes
 * it to `filter` at `qos`.
 */
export async function subscriber(
  port: number,
  filter: string | string[],
  qos: 0 | 1 | 2,
  opts: IClientOptions = {},
): Promise<MqttClient & AsyncDisposable & { inbox: Inbox }> {
  const client = await connectClient(port, opts);
  const inbox = collect(client);
  try {
    await client.subscribeAsync(filter, { qos });
  } catch (e) {
    await endClient(client, true);
    throw e;
  }
  return Object.assign(client, { inbox });
}

export function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Closes a connection that the other side may have closed already. */
export function closeQuietly(conn: { close(): void }): void {
  try {
    conn.close();
  } catch {
    // already closed
  }
}

/** A decoded packet from the raw client (mqtt-packet's representation). */
export type Packet = mqttPacket.Packet;

/**
 * What a raw client has received and not read yet, in order: `take()` waits
 * for the next item, or returns null once `end()` was called and none is left.
 */
export class Arrivals<T> {
  private items: T[] = [];
  private waiters: (() => void)[] = [];
  private ended = false;

  constructor(private readonly what: string) {}

  push(item: T): void {
    this.items.push(item);
    this.wake();
  }

  /** Nothing more will arrive. */
  end(): void {
    this.ended = true;
    this.wake();
  }

  /** The next item, or null at the end; throws after `timeoutMs`. */
  async take(timeoutMs: number): Promise<T | null> {
    const deadline = Date.now() + timeoutMs;
    while (this.items.length === 0) {
      if (this.ended) return null;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${this.what}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    return this.items.shift()!;
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }
}

/**
 * A client on a raw socket: write exact bytes, read what the broker answers
 * decoded by mqtt-packet, and observe the close.
 */
export class RawClient {
  private packets = new Arrivals<Packet>("a packet");
  private parser: ReturnType<typeof mqttPacket.parser>;
  closed = false;
  private closedPromise: Promise<void>;

  private constructor(private conn: Deno.TcpConn, protocolVersion: 3 | 4 | 5) {
    this.parser = mqttPacket.parser({ protocolVersion });
    this.parser.on("packet", (p: Packet) => this.packets.push(p));
    this.parser.on("error", (e: Error) => {
      this.packets.push({ cmd: "parse-error", message: e.message } as unknown as Packet);
    });
    this.closedPromise = this.readLoop();
  }

  static async connect(port: number, protocolVersion: 3 | 4 | 5 = 5): Promise<RawClient> {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    return new RawClient(conn, protocolVersion);
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
    this.packets.end();
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
  next(timeoutMs = 3000): Promise<Packet | null> {
    return this.packets.take(timeoutMs);
  }

  /** Waits for the next packet and checks its type. */
  async expect(cmd: string, timeoutMs = 3000): Promise<Packet & Record<string, unknown>> {
    const p = await this.next(timeoutMs);
    if (p === null) throw new Error(`expected ${cmd}, but the connection closed`);
    if (p.cmd !== cmd) throw new Error(`expected ${cmd}, got ${JSON.stringify(p)}`);
    return p as Packet & Record<string, unknown>;
  }

  /**
   * The payloads of the PUBLISH packets that arrive until none has for `quietMs`, each QoS 1
   * one acknowledged (PUBACK) as it comes: what a resumed session had waiting.
   */
  async drainPublishes(quietMs = 1000): Promise<Uint8Array[]> {
    const got: Uint8Array[] = [];
    for (;;) {
      const p = await this.next(quietMs).catch(() => null) as
        | { cmd: string; qos?: number; messageId?: number; payload?: Uint8Array }
        | null;
      if (p === null) return got;
      if (p.cmd !== "publish") continue;
      got.push(p.payload!);
      if (p.qos === 1) await this.sendPacket({ cmd: "puback", messageId: p.messageId });
    }
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

  /**
   * Subscribes to `filter` at `qos` (SUBSCRIBE `messageId` 1, with `properties` when given) and
   * checks that the SUBACK grants exactly that QoS.
   */
  async subscribe(
    filter: string,
    qos: 0 | 1 | 2,
    protocolVersion: 3 | 4 | 5 = 5,
    properties?: Record<string, unknown>,
  ): Promise<void> {
    await this.sendPacket({
      cmd: "subscribe",
      messageId: 1,
      subscriptions: [{ topic: filter, qos, nl: false, rap: false, rh: 0 }],
      ...(properties ? { properties } : {}),
    }, protocolVersion);
    const granted = (await this.expect("suback")).granted as number[];
    if (granted.length !== 1 || granted[0] !== qos) {
      throw new Error(`SUBACK granted ${JSON.stringify(granted)} for QoS ${qos}`);
    }
  }

  /** Sends CONNECT: clean start, keep alive 60 s; `extra` sets or overrides any field. */
  sendConnect(
    clientId: string,
    protocolVersion: 3 | 4 | 5 = 5,
    extra: Record<string, unknown> = {},
  ): Promise<void> {
    return this.sendPacket({
      cmd: "connect",
      protocolId: protocolVersion === 3 ? "MQIsdp" : "MQTT",
      protocolVersion,
      clientId,
      clean: true,
      keepalive: 60,
      ...extra,
    }, protocolVersion);
  }

  /** Sends CONNECT and expects a successful CONNACK. */
  async handshake(
    clientId: string,
    protocolVersion: 3 | 4 | 5 = 5,
    extra: Record<string, unknown> = {},
  ): Promise<Packet & Record<string, unknown>> {
    await this.sendConnect(clientId, protocolVersion, extra);
    const ack = await this.expect("connack");
    const code = (ack.reasonCode ?? ack.returnCode) as number;
    if (code !== 0) throw new Error(`CONNACK refused: ${code}`);
    return ack;
  }

  close(): void {
    closeQuietly(this.conn);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.close();
    await this.closedPromise;
  }
}

/** The certificate files a secure test broker serves and trusts (fits `TestPki`). */
export interface SecureBrokerPki {
  ca: { cert: string };
  broker: { cert: string; key: string };
}

/** A secure in-process broker; a port is 0 when that listener is not running. */
export interface SecureTestBroker {
  broker: Broker;
  /** MQTT over TLS (or plain TCP if the overrides turned TLS off). */
  tlsPort: number;
  /** MQTT over secure WebSocket (or plain WebSocket if the overrides turned TLS off). */
  wssPort: number;
  stop(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

/**
 * Starts a broker with the secure defaults (TLS and WSS requiring client certificates) on
 * 127.0.0.1 and free ports, serving `pki.broker` and trusting `pki.ca`.
 */
export async function startSecureBroker(
  pki: SecureBrokerPki,
  overrides: DeepPartial<Config> = {},
  deps: BrokerDeps = {},
): Promise<SecureTestBroker> {
  const broker = await createBroker({
    ...overrides,
    general: { secure: true, websocket: true, bind: "127.0.0.1", ...overrides.general },
    ports: { tcp: 0, ws: 0, ...overrides.ports },
    // In memory, as in startBroker: tests must not share or leave a ./data directory.
    storage: { enabled: false, ...overrides.storage },
    tls: {
      certfile: pki.broker.cert,
      keyfile: pki.broker.key,
      cafile: pki.ca.cert,
      ...overrides.tls,
    },
  }, deps);
  await broker.start();
  const port = (...kinds: string[]) =>
    broker.addresses.find((a) => kinds.includes(a.kind))?.port ?? 0;
  const stop = () => broker.stop();
  return {
    broker,
    tlsPort: port("tls", "tcp"),
    wssPort: port("wss", "ws"),
    stop,
    [Symbol.asyncDispose]: stop,
  };
}

import { freePort } from "./ports.ts";

/** Re-exported: every test and the bench pick ports through the one helper. */
export { freePort };

/** Asserts that the broker sends nothing to `c` for `ms` (and keeps the connection open). */
export async function expectSilence(c: RawClient, ms = 300): Promise<void> {
  let got: Packet | null | undefined;
  try {
    got = await c.next(ms);
  } catch (e) {
    if (e instanceof Error && /timed out/.test(e.message)) return;
    throw e;
  }
  throw new Error(`expected silence, got ${got === null ? "a close" : JSON.stringify(got)}`);
}

/**
 * Messages that arrived in `inbox` before the next one on the `marker` topic
 * (the marker is consumed): publish a marker after the messages under test to
 * prove that nothing else came first.
 */
export async function receivedBefore(
  inbox: { next(timeoutMs?: number): Promise<Received> },
  marker = "end",
): Promise<Received[]> {
  const out: Received[] = [];
  for (;;) {
    const m = await inbox.next();
    if (m.topic === marker) return out;
    out.push(m);
  }
}
