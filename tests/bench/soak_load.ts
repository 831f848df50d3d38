/**
 * The soak's load (soak.ts): real MQTT clients doing, at the same time, what a broker sees for
 * hours in production, partly hostile. Idle connections, paced publisher/subscriber pairs (the
 * measured ones), connect/disconnect churn with persistent sessions that expire and wills,
 * retained set/clear churn with a wildcard subscriber, a subscriber that never reads its socket,
 * and a persistent session that goes away and comes back to drain.
 */
import type { IClientOptions, MqttClient } from "mqtt";
import type net from "node:net";
import { connectClient, endClient } from "../helpers/broker.ts";
import { closeAll, openMany } from "../helpers/idle_clients.ts";
import { LatencyRecorder } from "./stats.ts";
import { concat, encodeConnect, encodeSubscribe, PINGREQ } from "./wire.ts";

/** How much of each kind of load (soak.ts picks the full or the `--quick` plan). */
export interface SoakPlan {
  readonly idle: number;
  readonly pairs: number;
  /** Messages per second over all pairs together. */
  readonly pairRate: number;
  readonly churnLanes: number;
  readonly retainedTopics: number;
  /** Retained sets and clears per second. */
  readonly retainedRate: number;
  /** How often the wildcard subscriber comes to read the retained set. */
  readonly retainedReadEveryMs: number;
  /** Messages per second (512 bytes, QoS 0 and 1) on the topic the slow subscriber never reads. */
  readonly busyRate: number;
  readonly slowEveryMs: number;
  /** How long the offline session stays away (it then drains and stays 2 s). */
  readonly offlineEveryMs: number;
  /** QoS 1 messages per second to the offline session and to the churned persistent sessions. */
  readonly feedRate: number;
}

/** Counters the load keeps (the report reads them). */
export class LoadStats {
  readonly latency = [new LatencyRecorder(), new LatencyRecorder()];
  pairSent = [0, 0];
  pairReceived = [0, 0];
  pairDuplicates = 0;
  pairReconnects = 0;
  churned = 0;
  churnWills = 0;
  retainedSets = 0;
  retainedClears = 0;
  /** Retained messages the wildcard subscriber got, per visit. */
  retainedReads: number[] = [];
  slowVisits = 0;
  offlineVisits = 0;
  offlineAcked = 0;
  offlineReceived = 0;
  errors = 0;
  firstErrors: string[] = [];

  error(where: string, e: unknown): void {
    this.errors++;
    if (this.firstErrors.length < 5) {
      this.firstErrors.push(`${where}: ${e instanceof Error ? e.message : String(e)}`);
    }
  }
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Payload: sequence number (u32) and send time (f64, performance.now()). */
function stamp(seq: number, bytes = 16): Uint8Array {
  const out = new Uint8Array(bytes);
  const view = new DataView(out.buffer);
  view.setUint32(0, seq);
  view.setFloat64(8, performance.now());
  return out;
}

function unstamp(payload: Uint8Array): [seq: number, sentAt: number] {
  const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  return [view.getUint32(0), view.getFloat64(8)];
}

/** Calls `send(n)` so that `rate` per second go out on average, until `stop()`. */
function paced(rate: number, send: (n: number) => void): () => void {
  const start = performance.now();
  let done = 0;
  const timer = setInterval(() => {
    const due = Math.floor(((performance.now() - start) / 1000) * rate);
    const n = Math.min(due - done, Math.max(10, rate));
    done = due;
    for (let i = 0; i < n; i++) send(i);
  }, Math.max(10, Math.min(100, 1000 / rate)));
  return () => clearInterval(timer);
}

/** Seqs acknowledged (QoS 1) and received for one stream of stamped messages. */
class Stream {
  readonly acked = new Set<number>();
  readonly received = new Set<number>();
  next = 0;

  lost(): number {
    let n = 0;
    for (const s of this.acked) if (!this.received.has(s)) n++;
    return n;
  }
}

/** The whole load against one broker port. */
export class SoakLoad {
  readonly stats = new LoadStats();
  #running = true;
  #standing = new Set<MqttClient>();
  #stops: (() => void)[] = [];
  #loops: Promise<void>[] = [];
  #idle: net.Socket[] = [];
  #idleClosed = 0;
  #pairStreams: { qos: 0 | 1; stream: Stream }[] = [];
  #offline = new Stream();
  /** Set once the offline session's subscription exists: messages before it are not owed. */
  #offlineSubscribed = false;

  constructor(readonly port: number, readonly plan: SoakPlan) {}

  #connect(opts: IClientOptions, setup?: (c: MqttClient) => void): Promise<MqttClient> {
    return connectClient(this.port, { reconnectPeriod: 0, ...opts }, setup);
  }

  /** A client that stays for the whole run (counted in `standing()`), reconnecting if dropped. */
  async #stand(clientId: string, opts: IClientOptions = {}, setup?: (c: MqttClient) => void) {
    const c = await this.#connect({ clientId, reconnectPeriod: 1000, ...opts }, setup);
    c.on("error", (e) => this.stats.error(clientId, e));
    this.#standing.add(c);
    return c;
  }

  /** Connections the load holds open now (what the broker should count at the end). */
  standing(): number {
    let n = 0;
    for (const c of this.#standing) if (c.connected) n++;
    return n + this.#idle.length - this.#idleClosed;
  }

  async start(): Promise<void> {
    const p = this.plan;
    for (const level of [5, 4] as const) {
      const opened = await openMany({ port: this.port, tls: false }, p.idle / 2, {
        level,
        prefix: `soak-idle${level}-`,
        keepAliveSeconds: 60,
        onClose: () => this.#idleClosed++,
      });
      if (opened.failed > 0) this.stats.error("idle", opened.firstError);
      this.#idle.push(...opened.sockets);
    }
    const pinger = setInterval(() => this.#idle.forEach((s) => s.write(PINGREQ)), 30_000);
    this.#stops.push(() => clearInterval(pinger));
    for (let i = 0; i < p.pairs; i++) await this.#pair(i);
    await this.#feeders();
    this.#loops.push(
      ...Array.from({ length: p.churnLanes }, (_, lane) => this.#churn(lane)),
      this.#retained(),
      this.#slow(),
      this.#offlineLoop(),
    );
  }

  /** Pair i: QoS i % 2, MQTT 5 for even halves, 3.1.1 for the others. */
  async #pair(i: number): Promise<void> {
    const qos = (i % 2) as 0 | 1;
    const protocolVersion = Math.floor(i / 2) % 2 === 0 ? 5 : 4;
    const stream = new Stream();
    this.#pairStreams.push({ qos, stream });
    const topic = `soak/pair/${i}`;
    const sub = await this.#stand(`soak-sub-${i}`, {
      protocolVersion,
      clean: qos === 0,
      properties: qos === 1 && protocolVersion === 5 ? { sessionExpiryInterval: 300 } : {},
    }, (c) =>
      c.on("message", (_t, payload) => {
        const [seq, at] = unstamp(payload);
        if (stream.received.has(seq)) return void this.stats.pairDuplicates++;
        stream.received.add(seq);
        this.stats.pairReceived[qos]++;
        this.stats.latency[qos].add((performance.now() - at) * 1000);
      }));
    sub.on("reconnect", () => this.stats.pairReconnects++);
    await sub.subscribeAsync(topic, { qos });
    const pub = await this.#stand(`soak-pub-${i}`, { protocolVersion });
    pub.on("reconnect", () => this.stats.pairReconnects++);
    this.#stops.push(paced(this.plan.pairRate / this.plan.pairs, () => {
      const seq = stream.next++;
      this.stats.pairSent[qos]++;
      pub.publish(topic, stamp(seq) as Buffer, { qos }, (err) => {
        if (err) this.stats.error(`pub-${i}`, err);
        else if (qos === 1) stream.acked.add(seq);
      });
    }));
  }

  /** The standing publishers: busy topic, churned sessions' topic, retained set/clear. */
  async #feeders(): Promise<void> {
    const p = this.plan;
    const busy = await this.#stand("soak-busy-pub");
    let n = 0;
    this.#stops.push(paced(p.busyRate, () => {
      busy.publish("soak/busy", stamp(n, 512) as Buffer, { qos: (n++ % 2) as 0 | 1 });
    }));
    const feed = await this.#stand("soak-feed-pub");
    this.#stops.push(paced(p.feedRate, () => {
      feed.publish("soak/churn/all", stamp(n++) as Buffer, { qos: 1 });
      const seq = this.#offline.next++;
      const owed = this.#offlineSubscribed; // sent after the SUBACK: routed to the session
      feed.publish("soak/offline", stamp(seq) as Buffer, { qos: 1 }, (err) => {
        if (!err && owed) this.#offline.acked.add(seq);
      });
    }));
    const ret = await this.#stand("soak-retained-pub");
    this.#stops.push(paced(p.retainedRate, () => {
      const topic = `soak/ret/${Math.floor(Math.random() * p.retainedTopics)}`;
      const clear = Math.random() < 0.3;
      const payload = clear ? new Uint8Array(0) : stamp(0, 32 + Math.floor(Math.random() * 224));
      ret.publish(topic, payload as Buffer, { qos: clear ? 0 : 1, retain: true });
      if (clear) this.stats.retainedClears++;
      else this.stats.retainedSets++;
    }));
  }

  /**
   * Fresh client ids in a loop: MQTT 5 clean with a will, 3.1.1 clean, MQTT 5 persistent
   * (expiry 5 s, a QoS 1 subscription) with a delayed will, and without. Half end with
   * DISCONNECT, half by dropping the socket (the will goes out).
   */
  async #churn(lane: number): Promise<void> {
    let n = 0;
    while (this.#running) {
      const kind = n++ % 4;
      const persistent = kind >= 2;
      const protocolVersion = kind === 1 ? 4 : 5;
      const clientId = `soak-churn-${lane}-${crypto.randomUUID().slice(0, 13)}`;
      const will = kind === 0 || kind === 2
        ? {
          topic: `soak/will/${lane}`,
          payload: "gone" as unknown as Buffer,
          qos: 1 as const,
          retain: false,
          properties: kind === 2 ? { willDelayInterval: 2 } : undefined,
        }
        : undefined;
      try {
        const c = await this.#connect({
          clientId,
          protocolVersion,
          clean: !persistent,
          properties: persistent ? { sessionExpiryInterval: 5 } : undefined,
          will,
        });
        if (persistent) await c.subscribeAsync("soak/churn/all", { qos: 1 });
        await sleep(50 + Math.random() * 250);
        if (Math.random() < 0.5) await endClient(c);
        else {
          if (will) this.stats.churnWills++;
          await endClient(c, true);
        }
        this.stats.churned++;
      } catch (e) {
        this.stats.error("churn", e);
        await sleep(500);
      }
    }
  }

  /** The wildcard subscriber: comes, gets the retained set (until 1 s quiet), goes. */
  async #retained(): Promise<void> {
    while (this.#running) {
      await this.#sleepWhileRunning(this.plan.retainedReadEveryMs);
      if (!this.#running) break;
      let got = 0;
      let last = performance.now();
      try {
        const c = await this.#connect(
          { clientId: "soak-retained-reader" },
          (c) =>
            c.on("message", (_t, _p, packet) => {
              if (!packet.retain) return; // live sets and clears keep coming
              got++;
              last = performance.now();
            }),
        );
        await c.subscribeAsync("soak/ret/#", { qos: 1 });
        const until = performance.now() + 10_000;
        while (performance.now() - last < 1000 && performance.now() < until) await sleep(200);
        await endClient(c);
        this.stats.retainedReads.push(got);
      } catch (e) {
        this.stats.error("retained-reader", e);
      }
    }
  }

  /** The slow subscriber: a QoS 1 subscription to the busy topic on a socket never read. */
  async #slow(): Promise<void> {
    while (this.#running) {
      let conn: Deno.TcpConn | undefined;
      try {
        conn = await Deno.connect({ hostname: "127.0.0.1", port: this.port });
        await conn.write(
          concat([encodeConnect(5, "soak-slow", 30), encodeSubscribe(5, 1, "soak/busy", 1)]),
        );
        this.stats.slowVisits++;
        const until = performance.now() + this.plan.slowEveryMs;
        // Pings keep it from being dropped for silence: it is slow, not dead.
        while (this.#running && performance.now() < until) {
          await this.#sleepWhileRunning(Math.min(20_000, until - performance.now()));
          await conn.write(PINGREQ).catch(() => {});
        }
      } catch (e) {
        this.stats.error("slow", e);
        await sleep(1000);
      } finally {
        try {
          conn?.close();
        } catch {
          // The broker closed it.
        }
      }
    }
  }

  /**
   * The offline session: QoS 1 subscription, away while the feeder publishes to it, back to
   * drain, then away again. Its last visit is after the stop, so the run ends with it drained.
   */
  async #offlineLoop(): Promise<void> {
    const s = this.#offline;
    for (let visit = 0;; visit++) {
      try {
        const c = await this.#connect({
          clientId: "soak-offline",
          clean: visit === 0,
          properties: { sessionExpiryInterval: 600 },
        }, (c) =>
          c.on("message", (_t, payload) => {
            const [seq] = unstamp(payload);
            if (!s.received.has(seq)) this.stats.offlineReceived++;
            s.received.add(seq);
          }));
        if (visit === 0) await c.subscribeAsync("soak/offline", { qos: 1 });
        this.#offlineSubscribed = true;
        this.stats.offlineVisits++;
        const until = performance.now() + 10_000;
        while (s.lost() > 0 && performance.now() < until) await sleep(100);
        if (!this.#running) {
          this.#standing.add(c);
          return;
        }
        await sleep(2000);
        await endClient(c);
      } catch (e) {
        this.stats.error("offline", e);
      }
      await this.#sleepWhileRunning(this.plan.offlineEveryMs);
    }
  }

  async #sleepWhileRunning(ms: number): Promise<void> {
    const until = performance.now() + ms;
    while (this.#running && performance.now() < until) {
      await sleep(Math.min(250, until - performance.now()));
    }
  }

  /** QoS 1 messages acknowledged to a publisher and never delivered: pairs, offline session. */
  qos1Lost(): { pairs: number; offline: number } {
    const pairs = this.#pairStreams.filter((p) => p.qos === 1)
      .reduce((n, p) => n + p.stream.lost(), 0);
    return { pairs, offline: this.#offline.lost() };
  }

  /** QoS 0 messages sent and not (yet) received. */
  qos0Missing(): number {
    return this.#pairStreams.filter((p) => p.qos === 0)
      .reduce((n, p) => n + p.stream.next - p.stream.received.size, 0);
  }

  /**
   * Stops the churn, the retained and slow loops and every publisher; the offline session comes
   * back a last time. Resolves when the pairs' acknowledged messages arrived (or 10 s passed).
   */
  async stop(): Promise<void> {
    this.#running = false;
    this.#stops.forEach((stop) => stop());
    await Promise.all(this.#loops);
    const until = performance.now() + 10_000;
    while (this.qos1Lost().pairs > 0 && performance.now() < until) await sleep(100);
    await sleep(500);
  }

  /** Closes every connection. */
  async close(): Promise<void> {
    await Promise.all([...this.#standing].map((c) => endClient(c, true)));
    await closeAll(this.#idle);
  }
}
