/** The benchmark scenarios, by name. */

import { fanIn, fanOut, latencyPairs, pairs, slowConsumer } from "./layouts.ts";
import {
  measureConnections,
  type Measured,
  measureLoad,
  measureProbeLatency,
  measureSlowConsumer,
  type RunContext,
} from "./measure.ts";
import type { BenchOptions } from "./options.ts";

/** How a scenario's results are tabulated. */
export type ScenarioKind = "throughput" | "latency" | "connections" | "slow-consumer";

/** One benchmark scenario; it runs against a freshly started broker each time. */
export interface Scenario {
  readonly name: string;
  readonly kind: ScenarioKind;
  readonly description: string;
  run(ctx: RunContext): Promise<Measured>;
}

/** Pairs used by the latency runs (all in one process: the C probe, or one Deno worker). */
export const LATENCY_PAIRS = 16;

/** Every scenario, in run order. */
export function allScenarios(options: BenchOptions): Scenario[] {
  const w = options.workersPerSide;
  const throughput = (
    name: string,
    description: string,
    layout: ReturnType<typeof pairs>,
  ): Scenario => ({
    name,
    kind: "throughput",
    description,
    run: (ctx) => measureLoad(ctx, layout),
  });
  // The latency client is read when the run starts: main.ts may fall back to "deno".
  const latency = (rate: number, qos: 0 | 1): Scenario => ({
    name: `latency-${rate / 1000}k-qos${qos}`,
    kind: "latency",
    description: `${LATENCY_PAIRS} pairs in one process (${
      options.latencyClient === "probe" ? "the C probe" : "a Deno worker"
    }), QoS ${qos}, paced to ${rate} msg/s in total`,
    run: (ctx) =>
      ctx.options.latencyClient === "probe"
        ? measureProbeLatency(ctx, { pairs: LATENCY_PAIRS, rate, qos })
        : measureLoad(ctx, latencyPairs(LATENCY_PAIRS, rate, qos)),
  });
  return [
    throughput("fan-in-8", "8 publishers -> 1 subscriber on bench/#, QoS 0", fanIn(8, w)),
    throughput("fan-in-64", "64 publishers -> 1 subscriber on bench/#, QoS 0", fanIn(64, w)),
    throughput("fan-out-16", "1 publisher -> 16 subscribers, QoS 0", fanOut(16, w)),
    throughput("fan-out-100", "1 publisher -> 100 subscribers, QoS 0", fanOut(100, w)),
    throughput("pairs-16-qos0", "16 publisher/subscriber pairs, QoS 0", pairs(16, 0, w)),
    throughput("pairs-16-qos1", "16 publisher/subscriber pairs, QoS 1", pairs(16, 1, w)),
    throughput("pairs-16-qos2", "16 publisher/subscriber pairs, QoS 2", pairs(16, 2, w)),
    latency(2_000, 0),
    latency(2_000, 1),
    latency(10_000, 0),
    latency(10_000, 1),
    {
      name: `connections-${options.connections}`,
      kind: "connections",
      description: `${options.connections} idle connections (keep alive 60 s) from 127.0.0.2-9`,
      run: (ctx) => measureConnections(ctx, options.connections),
    },
    {
      name: "slow-consumer",
      kind: "slow-consumer",
      description:
        "16 QoS 1 pairs, then the same with a QoS 1 subscriber on bench/pair/# reading ~20 KiB/s",
      run: (ctx) => measureSlowConsumer(ctx, pairs(16, 1, w), slowConsumer(1)),
    },
  ];
}

/** Scenarios whose name contains any of `only` (all when empty). */
export function selectScenarios(all: readonly Scenario[], only: readonly string[]): Scenario[] {
  return only.length === 0 ? [...all] : all.filter((s) => only.some((o) => s.name.includes(o)));
}
