/**
 * Test helpers for the operations side: the HTTP endpoint and $SYS of an in-process broker, and
 * a parser for the Prometheus text format (src/ops/exposition.ts writes it; the tests read it back).
 */
import type { Broker } from "../../mod.ts";
import { brokerTarget } from "../../src/ops/broker_target.ts";
import { Operations } from "../../src/ops/operations.ts";

export interface TestOps extends AsyncDisposable {
  ops: Operations;
  /** http://127.0.0.1:PORT of the endpoint. */
  url: string;
}

/** Starts the HTTP endpoint (free port) and $SYS (every `sysInterval` s; 0 = off) for `broker`. */
export async function startOps(broker: Broker, sysInterval = 0): Promise<TestOps> {
  const config = {
    ...broker.config,
    http: { ...broker.config.http, enabled: true, bind: "127.0.0.1", port: 0 },
    general: { ...broker.config.general, sys_interval: sysInterval, drain_delay: 0 },
  };
  const ops = new Operations(brokerTarget(broker), { config, version: "test" });
  await ops.start();
  const addr = ops.httpAddress!;
  return {
    ops,
    url: `http://127.0.0.1:${addr.port}`,
    [Symbol.asyncDispose]: () => ops.stop(),
  };
}

/** One sample line: `name{labels} value` -> key "name{labels}" (labels as written). */
export function parseMetrics(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (\S+)$/);
    if (!m) throw new Error(`not a Prometheus sample line: ${JSON.stringify(line)}`);
    out.set(m[1], Number(m[2]));
  }
  return out;
}

/** GET `${url}/metrics`, parsed; checks status and content type. */
export async function scrape(url: string): Promise<Map<string, number>> {
  const res = await fetch(`${url}/metrics`);
  const text = await res.text();
  if (res.status !== 200) throw new Error(`/metrics answered ${res.status}: ${text}`);
  if (!res.headers.get("content-type")?.startsWith("text/plain; version=0.0.4")) {
    throw new Error(`unexpected content type ${res.headers.get("content-type")}`);
  }
  return parseMetrics(text);
}

/** A metric value that must be present. */
export function metric(m: Map<string, number>, key: string): number {
  const v = m.get(key);
  if (v === undefined) throw new Error(`metric ${key} missing; have ${[...m.keys()].join(", ")}`);
  return v;
}
