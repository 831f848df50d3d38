/**
 * Helpers for durability tests: a broker subprocess (`main.ts` in a copied
 * project) with the embedded store that can be killed with SIGKILL and
 * restarted on the same data directory, a publisher that keeps a window of
 * QoS 1/2 publishes open and counts only what it got acknowledged, and an
 * MQTT.js subscriber that counts what its application was handed.
 */
import assert from "node:assert/strict";
import mqtt, { type IClientOptions, type MqttClient } from "mqtt";
import { delay } from "./broker.ts";
import { copyProject, type MainProcess, startMain } from "./main_process.ts";

/** A copy of the project in a temporary directory, removed on dispose. */
export async function tempProject(): Promise<{ dir: string } & AsyncDisposable> {
  const dir = await Deno.makeTempDir({ prefix: "mcloudtt-durable-" });
  await copyProject(dir);
  return { dir, [Symbol.asyncDispose]: () => Deno.remove(dir, { recursive: true }) };
}

/**
 * Starts `main.ts` in `cwd` on plain TCP `port` with storage in `cwd/data`
 * (the default `[storage] dir`), and waits until it listens.
 */
export async function startDurable(
  cwd: string,
  port: number,
  args: string[] = [],
): Promise<MainProcess> {
  const p = startMain(cwd, [
    "--general.secure=false",
    "--general.websocket=false",
    "--http.enabled=false",
    `--ports.tcp=${port}`,
    "--storage.enabled=true",
    // Far above what a test sends: the queue limit drops messages by design.
    "--limits.max_queued_messages=100000",
    ...args,
  ]);
  await p.waitFor(/listening for MQTT over tcp/);
  return p;
}

/** kill -9: the broker gets no chance to flush, close or say goodbye. */
export async function kill9(p: MainProcess): Promise<void> {
  p.child.kill("SIGKILL");
  const status = await p.status;
  assert.equal(status.signal, "SIGKILL", "the broker was not killed by SIGKILL");
}

/** An MQTT.js client that reconnects by itself (to a broker restarted on the same port). */
export function mqttClient(port: number, opts: IClientOptions): MqttClient {
  return mqtt.connect({
    host: "127.0.0.1",
    port,
    protocolVersion: 5,
    reconnectPeriod: 100,
    connectTimeout: 5000,
    ...opts,
  });
}

/** Resolves on the client's next successful CONNACK, with its Session Present flag. */
export function connected(c: MqttClient, timeoutMs = 15_000): Promise<boolean> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => {
      c.off("connect", on);
      reject(new Error(`${c.options.clientId} did not connect`));
    }, timeoutMs);
    const on = (ack: mqtt.IConnackPacket) => {
      clearTimeout(t);
      resolve(ack.sessionPresent);
    };
    c.once("connect", on);
  });
}

/**
 * Publishes message `seq` (payload: the number) as `shape(seq)` says, keeping
 * `window` publishes unacknowledged at a time, until stopped. Only PUBACK
 * (QoS 1) or PUBCOMP (QoS 2) marks a message acknowledged.
 */
export class Publisher {
  next = 1;
  readonly acked = new Set<number>();
  /** QoS 2 messages completed by PUBCOMP 0x92 (Packet Identifier not found) after a restart. */
  readonly releasedBeforeCrash = new Set<number>();
  /** Publishes that failed otherwise, with the error. */
  readonly failed = new Map<number, string>();
  /** Acknowledged before `stop()` was called. */
  ackedAtStop = 0;
  private running = false;
  private outstanding = 0;
  private wake: (() => void) | null = null;
  readonly done: Promise<void>;
  private finish!: () => void;

  constructor(
    readonly client: MqttClient,
    /** Topic, QoS and retain flag of message `seq`. */
    readonly shape: (seq: number) => { topic: string; qos: 1 | 2; retain?: boolean },
    readonly window = 64,
  ) {
    this.done = new Promise((r) => this.finish = r);
  }

  get sent(): number {
    return this.next - 1;
  }

  start(): void {
    this.running = true;
    this.pump();
  }

  /** Stops issuing new publishes (those in flight may still be acknowledged). */
  stop(): void {
    this.running = false;
    this.ackedAtStop = this.acked.size;
    if (this.outstanding === 0) this.finish();
  }

  /** Resolves once `n` messages are acknowledged. */
  async until(n: number, timeoutMs = 20_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.acked.size < n) {
      if (Date.now() > deadline) throw new Error(`only ${this.acked.size} of ${n} acknowledged`);
      await new Promise<void>((r) => {
        this.wake = r;
        setTimeout(r, 50);
      });
    }
  }

  private pump(): void {
    while (this.running && this.outstanding < this.window) {
      const seq = this.next++;
      this.outstanding++;
      const { topic, qos, retain = false } = this.shape(seq);
      this.client.publish(topic, String(seq), { qos, retain }, (err) => {
        this.outstanding--;
        if (!err) this.acked.add(seq);
        else if (/Packet Identifier not found/i.test(err.message)) {
          // PUBCOMP 0x92 to a PUBREL resent after a crash: the broker had released the id
          // (and routed the message, PUBREC came first) but died before PUBCOMP left. "Not an
          // error during recovery" (MQTT 5, 3.7.2.1); MQTT.js reports it as one.
          this.acked.add(seq);
          this.releasedBeforeCrash.add(seq);
        } else this.failed.set(seq, err.message);
        this.wake?.();
        // After a failure, not from inside MQTT.js: when the connection drops it fails what is
        // queued in a loop that also takes what is published meanwhile (and the test process
        // ran out of memory publishing into it).
        if (this.running) {
          if (err) setTimeout(() => this.running && this.pump(), 10);
          else this.pump();
        } else if (this.outstanding === 0) this.finish();
      });
    }
  }
}

/** What one subscriber's application was handed: the count of each payload per topic. */
export class Inbox {
  readonly counts = new Map<string, Map<number, number>>();
  private markers = 0;
  private waiters: (() => void)[] = [];

  constructor(readonly client: MqttClient, readonly marker = "end") {
    client.on("message", (topic, payload) => {
      if (topic === marker) {
        this.markers++;
        for (const w of this.waiters.splice(0)) w();
        return;
      }
      const seq = Number(new TextDecoder().decode(payload));
      let m = this.counts.get(topic);
      if (!m) this.counts.set(topic, m = new Map());
      m.set(seq, (m.get(seq) ?? 0) + 1);
    });
  }

  /** Resolves once `n` marker messages arrived (everything queued before them came first). */
  async markersSeen(n: number, timeoutMs = 20_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.markers < n) {
      if (Date.now() > deadline) throw new Error(`${this.client.options.clientId}: no marker`);
      await new Promise<void>((r) => {
        this.waiters.push(r);
        setTimeout(r, 100);
      });
    }
  }

  /** Sequence numbers received on `topic`. */
  seqs(topic: string): number[] {
    return [...(this.counts.get(topic)?.keys() ?? [])].sort((a, b) => a - b);
  }

  /** Sequence numbers received more than once on `topic`. */
  duplicates(topic: string): number[] {
    return [...(this.counts.get(topic) ?? [])].filter(([, n]) => n > 1).map(([s]) => s);
  }

  /** How many messages (with repeats) arrived on `topic`. */
  total(topic: string): number {
    let t = 0;
    for (const n of this.counts.get(topic)?.values() ?? []) t += n;
    return t;
  }
}

/**
 * A reconnecting v5 subscriber whose acknowledgements are delayed by up to
 * `maxMs` while `slow()` holds, so that messages are in flight
 * (unacknowledged) when the broker dies. An acknowledgement whose connection
 * has gone is never sent and its message never handed to the application:
 * the broker must send it again.
 */
export function slowSubscriber(
  port: number,
  opts: IClientOptions,
  slow: () => boolean,
  maxMs = 3,
): MqttClient {
  let epoch = 0;
  const c: MqttClient = mqttClient(port, {
    ...opts,
    customHandleAcks: (_topic, _message, _packet, done) => {
      if (!slow()) return done(0);
      const mine = epoch;
      setTimeout(() => {
        if (mine === epoch && c.connected) done(0);
      }, Math.random() * maxMs);
    },
  });
  c.on("close", () => epoch++);
  return c;
}

/** Ends an MQTT.js client without waiting for anything. */
export function drop(c: MqttClient): Promise<void> {
  return new Promise((r) => c.end(true, {}, () => r()));
}

export { delay };
