/** The publishers and subscribers one worker process runs for a scenario. */

import process from "node:process";
import { BenchClient, type DeliveryObserver } from "./client.ts";
import type { ClientPlan, LoadPlan, Snapshot } from "./messages.ts";
import { DuplicateTracker, LatencyRecorder } from "./stats.ts";
import { encodePublishBatch } from "./wire.ts";

const CONNECT_PARALLELISM = 32;

/** CPU time (user + system) of this process in microseconds. */
export function processCpuMicros(): number {
  const usage = process.cpuUsage();
  return usage.user + usage.system;
}

/** Runs the clients of one `LoadPlan` and reports their counters. */
export class LoadWorker {
  readonly #plan: LoadPlan;
  readonly #clients: { client: BenchClient; plan: ClientPlan }[] = [];
  readonly #duplicates = new DuplicateTracker();
  readonly #latency = new LatencyRecorder();
  // Latency samples count only from the first mark on, so warm-up is left out.
  #recording = false;
  // Subscribers disconnected by `disconnect`, waiting for `reconnect`.
  #offline: ClientPlan[] = [];

  private constructor(plan: LoadPlan) {
    this.#plan = plan;
  }

  /** Connects every client; subscribers have their SUBACK when this resolves. */
  static async setup(plan: LoadPlan): Promise<LoadWorker> {
    const worker = new LoadWorker(plan);
    worker.#clients.push(...await worker.#connect(plan.clients, true));
    return worker;
  }

  async #connect(
    plans: readonly ClientPlan[],
    subscribe: boolean,
  ): Promise<{ client: BenchClient; plan: ClientPlan }[]> {
    const plan = this.#plan;
    const observer = this.#observer();
    const out: { client: BenchClient; plan: ClientPlan }[] = [];
    for (let i = 0; i < plans.length; i += CONNECT_PARALLELISM) {
      const group = plans.slice(i, i + CONNECT_PARALLELISM);
      out.push(
        ...await Promise.all(group.map(async (clientPlan) => {
          const slow = clientPlan.kind === "slow-sub";
          const client = await BenchClient.connect({
            host: plan.host,
            port: plan.port,
            tls: plan.tls,
            version: plan.version,
            clientId: clientPlan.clientId,
            keepAliveSeconds: 60,
            sessionExpiry: clientPlan.sessionExpiry,
            v311Window: plan.v311Window,
            readBytes: slow ? plan.slowReadBytes : undefined,
            readPauseMs: slow ? plan.slowReadPauseMs : undefined,
            observer: clientPlan.kind === "pub" ? undefined : observer,
          });
          if (subscribe && clientPlan.kind !== "pub") {
            await client.subscribe(clientPlan.topic, clientPlan.qos);
          }
          return { client, plan: clientPlan };
        })),
      );
    }
    return out;
  }

  /** Closes the subscribers' connections; their persistent sessions stay with the broker. */
  async disconnect(): Promise<Snapshot> {
    const subs = this.#clients.filter(({ plan }) => plan.kind !== "pub");
    await Promise.all(subs.map(({ client }) => client.close()));
    // The closed clients stay in the list: their counters still count, closing again is a no-op.
    this.#offline = subs.map(({ plan }) => plan);
    return this.snapshot();
  }

  /** Connects the disconnected subscribers again (no SUBSCRIBE: their sessions hold it). */
  async reconnect(): Promise<Snapshot> {
    this.#clients.push(...await this.#connect(this.#offline, false));
    this.#offline = [];
    return this.snapshot();
  }

  #observer(): DeliveryObserver | undefined {
    const { trackDuplicates, latency } = this.#plan;
    if (!trackDuplicates && !latency) return undefined;
    const duplicates = this.#duplicates;
    const recorder = this.#latency;
    return (publisher, seq, sentAtMs, nowMs) => {
      if (trackDuplicates) duplicates.record(publisher, seq);
      if (latency && this.#recording) recorder.add((nowMs - sentAtMs) * 1000);
    };
  }

  /** Starts every publisher. */
  go(): void {
    const { version, payloadBytes, batch, ratePerPublisher, messagesPerPublisher } = this.#plan;
    for (const { client, plan } of this.#clients) {
      if (plan.kind !== "pub") continue;
      const template = encodePublishBatch(
        version,
        plan.topic,
        plan.qos,
        payloadBytes,
        batch,
        plan.publisherIndex ?? 0,
      );
      client.startPublishing(template, plan.qos, ratePerPublisher, messagesPerPublisher);
    }
  }

  /** Counters now; latency percentiles cover the samples since the previous mark. */
  mark(): Snapshot {
    const snapshot = this.snapshot();
    const latency = this.#plan.latency ? this.#latency.takeSummary() : undefined;
    this.#recording = true;
    return { ...snapshot, latency };
  }

  /** Counters summed over all clients. */
  snapshot(): Snapshot {
    let sent = 0, acked = 0, received = 0, inflight = 0;
    const errors: string[] = [];
    for (const { client } of this.#clients) {
      sent += client.sent;
      acked += client.acked;
      received += client.received;
      inflight += client.inflight;
      errors.push(...client.errors);
    }
    return {
      ok: true,
      at: performance.now(),
      cpuMicros: processCpuMicros(),
      sent,
      acked,
      received,
      duplicates: this.#duplicates.duplicates,
      inflight,
      errors: errors.slice(0, 5),
    };
  }

  /** Stops publishing and waits for outstanding acknowledgements. */
  async stop(timeoutMs: number): Promise<Snapshot> {
    await Promise.all(this.#clients.map(({ client }) => client.stop(timeoutMs)));
    return this.snapshot();
  }

  /** Disconnects every client. */
  async close(): Promise<Snapshot> {
    const snapshot = this.snapshot();
    await Promise.all(this.#clients.map(({ client }) => client.close()));
    return snapshot;
  }
}
