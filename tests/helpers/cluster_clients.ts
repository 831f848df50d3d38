/**
 * MQTT.js clients that live through node restarts the way real devices do
 * behind a load balancer: when their node goes they connect to another one.
 * A numbered QoS 1 (or 2) publisher that resends what was not acknowledged
 * (in order, on the new connection), and a persistent-session QoS 1 (or 2)
 * subscriber that records every delivery with its DUP flag, for loss, order
 * and duplicate checks. At QoS 2 MQTT.js hands a message over at PUBREL, so
 * what the subscriber records is what an application sees.
 */
import { type IClientOptions, type IPublishPacket, type MqttClient, Store } from "mqtt";
import { connectClient, delay, endClient } from "./broker.ts";

/** Connects to the first port (in rotation from `start`) that accepts, retrying until `timeoutMs`. */
export async function connectAny(
  ports: () => readonly number[],
  start: number,
  opts: IClientOptions,
  timeoutMs = 30_000,
  setup?: (client: MqttClient) => void,
): Promise<{ client: MqttClient; index: number }> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown = null;
  for (let k = start;; k++) {
    const list = ports();
    const index = k % list.length;
    try {
      const client = await connectClient(list[index], { connectTimeout: 5000, ...opts }, setup);
      return { client, index };
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`no node accepted ${opts.clientId}: ${last}`);
    await delay(50);
  }
}

/** The message a numbered publisher sends: `<publisher>:<n>`. */
export function numbered(publisher: string, n: number): string {
  return `${publisher}:${n}`;
}

/**
 * Publishes numbered QoS 1 (or 2) messages, at most `window` unacknowledged. When
 * its connection closes it connects to another node and resends every
 * unacknowledged message first, in order (so a subscriber sees the numbers'
 * first occurrences in order), then goes on.
 */
export class NumberedPublisher {
  /** Numbers whose PUBACK arrived. */
  readonly acked = new Set<number>();
  /** Numbers sent more than once (their copies may all arrive, without DUP). */
  readonly resent = new Set<number>();
  /** How often the publisher had to connect again. */
  reconnects = 0;
  /** Reason codes of DISCONNECT packets the publisher received. */
  readonly disconnects: number[] = [];
  private client: MqttClient | null = null;
  private index = 0;
  private next = 0;
  private pending: number[] = [];
  private wake: () => void = () => {};

  constructor(
    readonly id: string,
    readonly topic: string,
    private readonly ports: () => readonly number[],
    private readonly window = 20,
    readonly qos: 1 | 2 = 1,
  ) {}

  get sent(): number {
    return this.next;
  }

  /** Publishes until `done()` says stop (checked between messages) and all are acknowledged. */
  async run(done: () => boolean, timeoutMs = 60_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    try {
      while (!done() || this.pending.length > 0) {
        if (Date.now() > deadline) {
          throw new Error(
            `${this.id}: ${this.pending.length} unacknowledged after ${timeoutMs} ms`,
          );
        }
        if (this.client === null || !this.client.connected) await this.reconnect();
        const c = this.client!;
        while (!done() && this.pending.length < this.window) {
          const n = this.next++;
          this.pending.push(n);
          this.send(c, n);
        }
        await new Promise<void>((resolve) => {
          const t = setTimeout(resolve, 500);
          this.wake = () => {
            clearTimeout(t);
            resolve();
          };
        });
      }
    } finally {
      this.client?.end(true);
      this.client = null;
    }
  }

  private send(c: MqttClient, n: number): void {
    c.publish(this.topic, numbered(this.id, n), { qos: this.qos }, (err) => {
      // A late callback of a connection given up (its message was resent) does not count.
      if (err || c !== this.client) return;
      this.acked.add(n);
      const i = this.pending.indexOf(n);
      if (i >= 0) this.pending.splice(i, 1);
      this.wake();
    });
  }

  private async reconnect(): Promise<void> {
    if (this.client !== null) {
      this.client.end(true);
      this.client = null;
      this.reconnects++;
      this.index++;
    }
    const { client, index } = await connectAny(this.ports, this.index, { clientId: this.id });
    this.index = index;
    client.on("close", () => this.wake());
    client.on("disconnect", (p) => this.disconnects.push(p.reasonCode ?? 0));
    this.client = client;
    for (const n of this.pending) {
      this.resent.add(n);
      this.send(client, n);
    }
  }
}

/** One delivery as a subscriber saw it. */
export interface Delivery {
  publisher: string;
  n: number;
  dup: boolean;
  /** Which of the subscriber's connections it came on: 0 for the first, 1 after one reconnect, ... */
  connection: number;
}

const PERSISTENT: IClientOptions = {
  clean: false,
  properties: { sessionExpiryInterval: 300 },
};

/**
 * A persistent-session QoS 1 (or 2) subscriber (MQTT.js acknowledges each
 * message after it is recorded). Subscribes once; afterwards its session must carry
 * the subscription (no resubscribe). When its connection closes it connects
 * to another node; `hop` moves it on purpose.
 */
export class SessionSubscriber {
  readonly deliveries: Delivery[] = [];
  /** Distinct numbers seen per publisher. */
  private readonly seen = new Map<string, Set<number>>();
  /** When the last delivery arrived (ms since the epoch). */
  lastDeliveryAt = 0;
  /** Reason codes of DISCONNECT packets it received. */
  readonly disconnects: number[] = [];
  /** CONNACKs after the first without Session Present (a lost session). */
  sessionsLost = 0;
  reconnects = 0;
  private client: MqttClient | null = null;
  private index = 0;
  private stopped = false;
  /**
   * QoS 2 messages received (PUBREC sent) and not yet released, kept across
   * connections like a device's persistent state: MQTT.js hands a QoS 2
   * message to the application at PUBREL, which may come on the next
   * connection (the session resends PUBREL, not the PUBLISH).
   */
  private readonly incoming = new Store({ clean: false });
  private moving: Promise<void> | null = null;

  private constructor(
    readonly id: string,
    private readonly ports: () => readonly number[],
  ) {}

  static async start(
    id: string,
    ports: () => readonly number[],
    index: number,
    filter: string | string[],
    qos: 1 | 2 = 1,
  ): Promise<SessionSubscriber> {
    const s = new SessionSubscriber(id, ports);
    s.index = index;
    await s.connect(false);
    await s.client!.subscribeAsync(filter, { qos });
    return s;
  }

  /** Node index it is connected to now. */
  get at(): number {
    return this.index;
  }

  /** The numbers seen from `publisher`, in arrival order. */
  numbers(publisher: string): Delivery[] {
    return this.deliveries.filter((d) => d.publisher === publisher);
  }

  /** How many distinct numbers arrived from `publisher`. */
  distinct(publisher: string): number {
    return this.seen.get(publisher)?.size ?? 0;
  }

  /** Resolves once no delivery arrived for `ms` (what the session held has been sent). */
  async quiet(ms = 500, timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() - this.lastDeliveryAt < ms) {
      if (Date.now() > deadline) throw new Error(`${this.id}: deliveries did not stop`);
      await delay(Math.min(ms, 50));
    }
  }

  /** Disconnects normally and connects to node `index` (waits for the CONNACK). */
  async hop(index: number): Promise<void> {
    await this.moving;
    const old = this.client;
    this.client = null;
    if (old !== null) await endClient(old);
    this.index = index;
    await this.connect(true);
  }

  /**
   * Connects to node `index` while the current connection is still open, as
   * a device whose old connection lingers: the broker takes the session over
   * and closes the old connection (0x8E), which goes on receiving and
   * acknowledging until then.
   */
  async takeOver(index: number): Promise<void> {
    await this.moving;
    const old = this.client;
    // Its close is the takeover, not a reason to reconnect.
    this.client = null;
    this.index = index;
    await this.connect(true);
    if (old !== null) {
      await new Promise<void>((r) => old.connected ? old.once("close", () => r()) : r());
      old.end(true);
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.moving;
    const c = this.client;
    this.client = null;
    if (c !== null) await endClient(c);
  }

  private async connect(again: boolean): Promise<void> {
    const connection = this.reconnects + (again ? 1 : 0);
    // The listener goes on before CONNECT: a resumed session sends right after CONNACK.
    const record = (_topic: string, payload: Uint8Array, packet: IPublishPacket) => {
      const [publisher, n] = new TextDecoder().decode(payload).split(":");
      this.deliveries.push({ publisher, n: Number(n), dup: packet.dup === true, connection });
      let set = this.seen.get(publisher);
      if (set === undefined) this.seen.set(publisher, set = new Set());
      set.add(Number(n));
      this.lastDeliveryAt = Date.now();
    };
    const { client, index } = await connectAny(
      this.ports,
      this.index,
      {
        clientId: this.id,
        resubscribe: false,
        incomingStore: this.incoming,
        ...PERSISTENT,
      },
      undefined,
      (c) => c.on("message", record),
    );
    if (again) {
      this.reconnects++;
      const ack = (client as unknown as { connackPacket?: { sessionPresent?: boolean } })
        .connackPacket;
      const present = ack?.sessionPresent;
      if (present !== true) this.sessionsLost++;
    }
    this.index = index;
    this.client = client;
    client.on("disconnect", (p) => this.disconnects.push(p.reasonCode ?? 0));
    client.on("close", () => {
      if (this.client !== client || this.stopped) return;
      // Its node went away: connect to the next one.
      this.client = null;
      client.end(true);
      this.index++;
      this.moving = this.connect(true).catch((e) => {
        console.error(`${this.id} could not reconnect: ${e}`);
      });
    });
  }
}

/** What `checkOrder` found. */
export interface OrderReport {
  /** Distinct numbers received. */
  received: number;
  /** Copies beyond the first (DUP redeliveries plus publisher resends). */
  duplicates: number;
  /** Deliveries with the DUP flag. */
  dupFlagged: number;
  /** Second copies without DUP that the publisher did not resend (a takeover's overlap). */
  undupFlagged: number;
  /** Acknowledged numbers never received, ascending. */
  lost: number[];
  /** Order violations: a number arriving for the first time after a higher one. */
  disorder: string[];
}

/**
 * Checks one subscriber's deliveries from one publisher: every acknowledged
 * number arrived; the numbers' first occurrences are in publish order; a
 * number seen again without DUP was sent again by the publisher.
 */
export function checkOrder(
  deliveries: readonly Delivery[],
  acked: ReadonlySet<number>,
  resent: ReadonlySet<number> = new Set(),
): OrderReport {
  const seen = new Set<number>();
  let last = -1;
  const r: OrderReport = {
    received: 0,
    duplicates: 0,
    dupFlagged: 0,
    undupFlagged: 0,
    lost: [],
    disorder: [],
  };
  for (const d of deliveries) {
    if (d.dup) r.dupFlagged++;
    if (seen.has(d.n)) {
      // A second copy is allowed at QoS 1; a takeover can deliver one from each node (without
      // DUP: it is another PUBLISH, not a resend). Counted, not a disorder.
      r.duplicates++;
      if (!d.dup && !resent.has(d.n)) r.undupFlagged++;
      continue;
    }
    if (d.n < last) r.disorder.push(`${d.n} first arrived after ${last}`);
    seen.add(d.n);
    last = d.n;
  }
  r.received = seen.size;
  r.lost = [...acked].filter((n) => !seen.has(n)).sort((a, b) => a - b);
  return r;
}

/** `lost` as ranges: "4923-4951, 5000". */
export function ranges(ns: readonly number[]): string {
  const out: string[] = [];
  for (let i = 0; i < ns.length;) {
    let j = i;
    while (j + 1 < ns.length && ns[j + 1] === ns[j] + 1) j++;
    out.push(i === j ? `${ns[i]}` : `${ns[i]}-${ns[j]}`);
    i = j + 1;
  }
  return out.join(", ");
}
