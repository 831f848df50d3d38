/** Which clients run in which worker process, per scenario shape. */

import type { ClientPlan } from "./messages.ts";

/** Clients of one worker process. */
export interface WorkerLayout {
  readonly name: string;
  /** "sub" workers start first so nothing is published before every SUBACK. */
  readonly side: "pub" | "sub" | "both";
  readonly clients: readonly ClientPlan[];
  /** Cluster runs: which node (index into the cluster's ports) this worker connects to. */
  readonly node?: number;
}

/** The processes of a load scenario and how to account for its deliveries. */
export interface Layout {
  readonly workers: readonly WorkerLayout[];
  /** Deliveries expected per published message (1 for fan-in and pairs, N for fan-out). */
  readonly fanout: number;
  readonly qos: 0 | 1 | 2;
  /** Paced rate per publisher (latency runs); absent = flat out. */
  readonly ratePerPublisher?: number;
  /** Each publisher stops by itself after this many messages; absent = until told to stop. */
  readonly messagesPerPublisher?: number;
  /**
   * How long deliveries may pause before the wait for them after the publishers stopped ends
   * early (default 500 ms): in a cluster the other node may deliver in bursts.
   */
  readonly drainIdleMs?: number;
  readonly latency: boolean;
  readonly trackDuplicates: boolean;
}

function split<T>(items: readonly T[], parts: number): T[][] {
  const out: T[][] = Array.from({ length: Math.min(parts, items.length) }, () => []);
  items.forEach((item, i) => out[i % out.length].push(item));
  return out;
}

function workers(side: "pub" | "sub", clients: ClientPlan[], processes: number): WorkerLayout[] {
  return split(clients, processes).map((group, i) => ({
    name: `${side}${i}`,
    side,
    clients: group,
  }));
}

function publisher(i: number, topic: string, qos: 0 | 1 | 2): ClientPlan {
  return { clientId: `b-p${i}`, kind: "pub", topic, qos, publisherIndex: i };
}

function subscriber(i: number, filter: string, qos: 0 | 1 | 2): ClientPlan {
  return { clientId: `b-s${i}`, kind: "sub", topic: filter, qos };
}

const range = (n: number) => Array.from({ length: n }, (_, i) => i);

/** `publishers` clients each on their own topic, one subscriber on `bench/#`. */
export function fanIn(publishers: number, processes: number): Layout {
  return {
    workers: [
      ...workers("sub", [subscriber(0, "bench/#", 0)], 1),
      ...workers("pub", range(publishers).map((i) => publisher(i, `bench/in/${i}`, 0)), processes),
    ],
    fanout: 1,
    qos: 0,
    latency: false,
    trackDuplicates: false,
  };
}

/** One publisher, `subscribers` clients on its topic. */
export function fanOut(subscribers: number, processes: number): Layout {
  return {
    workers: [
      ...workers("sub", range(subscribers).map((i) => subscriber(i, "bench/out", 0)), processes),
      ...workers("pub", [publisher(0, "bench/out", 0)], 1),
    ],
    fanout: subscribers,
    qos: 0,
    latency: false,
    trackDuplicates: false,
  };
}

/** `pairs` publisher/subscriber pairs, pair i on `bench/pair/i`, at one QoS. */
export function pairs(count: number, qos: 0 | 1 | 2, processes: number): Layout {
  return {
    workers: [
      ...workers("sub", range(count).map((i) => subscriber(i, `bench/pair/${i}`, qos)), processes),
      ...workers("pub", range(count).map((i) => publisher(i, `bench/pair/${i}`, qos)), processes),
    ],
    fanout: 1,
    qos,
    latency: false,
    trackDuplicates: qos > 0,
  };
}

/**
 * `count` pairs at `qos` paced to `totalRate` messages/s, all in ONE process: publisher and
 * subscriber then read the same performance.now(), so latency needs no cross-process clock.
 */
export function latencyPairs(count: number, totalRate: number, qos: 0 | 1 | 2 = 0): Layout {
  const clients = range(count).flatMap((i) => [
    subscriber(i, `bench/pair/${i}`, qos),
    publisher(i, `bench/pair/${i}`, qos),
  ]);
  return {
    workers: [{ name: "latency", side: "both", clients }],
    fanout: 1,
    qos,
    ratePerPublisher: totalRate / count,
    latency: true,
    trackDuplicates: qos > 0,
  };
}

/** The slow consumer: reads everything the pairs publish, very slowly. */
export function slowConsumer(qos: 0 | 1 | 2): WorkerLayout {
  return {
    name: "slow",
    side: "sub",
    clients: [{ clientId: "b-slow", kind: "slow-sub", topic: "bench/pair/#", qos }],
  };
}

/**
 * The same layout on a cluster: publisher workers connect to node `pubNode`, subscriber
 * workers to `subNodes` in turn (so subscribers are split over them).
 */
export function onNodes(layout: Layout, pubNode: number, subNodes: readonly number[]): Layout {
  let next = 0;
  return {
    ...layout,
    workers: layout.workers.map((w) =>
      w.side === "pub"
        ? { ...w, node: pubNode }
        : { ...w, node: subNodes[next++ % subNodes.length] }
    ),
  };
}
