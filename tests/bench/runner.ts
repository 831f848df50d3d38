/** Runs scenarios against brokers in interleaved rounds, a fresh broker process per run. */

import type { BenchLimits, BrokerKind, BrokerName } from "./brokers.ts";
import type { BenchOptions } from "./options.ts";
import type { Scenario, ScenarioKind } from "./scenarios.ts";
import { benchPki, type Transport } from "./tls.ts";
import type { ProtocolLevel } from "./wire.ts";

/** One broker at one protocol level over one transport. */
export interface Target {
  readonly broker: BrokerKind;
  readonly level: ProtocolLevel;
  /** Plain TCP when absent. */
  readonly transport?: Transport;
}

/** The outcome of one scenario run. */
export interface RunResult {
  readonly scenario: string;
  readonly kind: ScenarioKind;
  readonly broker: BrokerName;
  readonly level: ProtocolLevel;
  readonly transport: Transport;
  readonly round: number;
  readonly metrics: Record<string, number>;
  readonly errors: readonly string[];
  readonly rssSeries?: readonly [number, number][];
  /** Set when the run could not complete; metrics are then empty. */
  readonly failed?: string;
}

/** "5" or "3.1.1". */
export function levelName(level: ProtocolLevel): string {
  return level === 5 ? "5" : "3.1.1";
}

/**
 * Whether `broker` takes part in scenarios of `kind`: those of its `kinds` (all when it has
 * none), and a `raw` one (the floor, which speaks no MQTT) in latency runs only when the C probe
 * measures them. A target that does not take part is left out: no run, no row, no failure.
 */
export function takesPart(broker: BrokerKind, kind: ScenarioKind, options: BenchOptions): boolean {
  if (broker.kinds !== undefined && !broker.kinds.includes(kind)) return false;
  return !(kind === "latency" && broker.raw === true && options.latencyClient !== "probe");
}

/**
 * For each scenario, rounds of every target in turn, so slow drifts of the shared machine hit all
 * brokers alike instead of whichever ran last; each round starts one target later (A B C, B C A,
 * C A B, ...: `roundOrder`), so no target always runs first, right after the previous scenario's
 * last run. Targets that take no part in a scenario's kind (`takesPart`) are skipped.
 */
export async function runAll(
  scenarios: readonly Scenario[],
  targets: readonly Target[],
  options: BenchOptions,
  limits: BenchLimits,
  onResult: (result: RunResult) => void,
): Promise<RunResult[]> {
  const results: RunResult[] = [];
  for (const scenario of scenarios) {
    for (let round = 1; round <= options.rounds; round++) {
      for (const { broker, level, transport = "tcp" } of roundOrder(targets, round)) {
        if (!takesPart(broker, scenario.kind, options)) continue;
        const result = await runOne(scenario, broker, level, transport, round, options, limits);
        results.push(result);
        onResult(result);
      }
    }
  }
  return results;
}

/** The order of round `round` (from 1): `items` rotated left by `round - 1`. */
export function roundOrder<T>(items: readonly T[], round: number): T[] {
  const n = items.length;
  if (n === 0) return [];
  const k = (round - 1) % n;
  return [...items.slice(k), ...items.slice(0, k)];
}

async function runOne(
  scenario: Scenario,
  kind: BrokerKind,
  level: ProtocolLevel,
  transport: Transport,
  round: number,
  options: BenchOptions,
  limits: BenchLimits,
): Promise<RunResult> {
  const base = {
    scenario: scenario.name,
    kind: scenario.kind,
    broker: kind.name,
    level,
    transport,
    round,
  };
  const workDir = await Deno.makeTempDir({ prefix: `bench-${kind.name}-` });
  try {
    const broker = await kind.start(limits, workDir, {
      tls: transport === "tls" ? await benchPki() : undefined,
      gcTrace: options.gcTrace,
      scenario: scenario.kind,
    });
    try {
      const measured = await withDeadline(
        scenario.run({ broker, level, options }),
        deadlineMs(options),
      );
      return { ...base, ...measured };
    } catch (e) {
      const tail = await broker.logTail();
      return {
        ...base,
        metrics: {},
        errors: [],
        failed: `${message(e)}${tail ? `\n${tail}` : ""}`,
      };
    } finally {
      await broker.stop();
    }
  } catch (e) {
    return { ...base, metrics: {}, errors: [], failed: message(e) };
  } finally {
    if (!Deno.env.get("BENCH_KEEP_LOGS")) {
      await Deno.remove(workDir, { recursive: true }).catch(() => {});
    }
  }
}

/** Generous upper bound for one run; past it the run counts as failed (a hung broker). */
function deadlineMs(options: BenchOptions): number {
  const warmupS = Math.max(options.warmupS, options.pacedWarmupS);
  return (2 * (warmupS + options.durationS) + 2 * options.drainS) * 1000 + 90_000;
}

/** Thrown when a run exceeds its deadline. */
export class RunTimeout extends Error {
  override name = "RunTimeout";
}

async function withDeadline<T>(work: Promise<T>, ms: number): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new RunTimeout(`no result after ${ms / 1000} s`)), ms);
  });
  try {
    return await Promise.race([work, expired]);
  } finally {
    clearTimeout(timer);
  }
}

function message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
