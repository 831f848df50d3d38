/**
 * What an idle MQTT connection costs the server: opens N connections (CONNECT, CONNACK, keep
 * alive 60 s, spread over 127.0.0.2-9) to each target in turn and reports the growth of the
 * server's RSS, and for Deno servers of its JS heap and external memory after a full GC, per
 * connection. Targets: mcloudtt over plain TCP and TLS, Mosquitto over both, and bare Deno
 * servers that only accept and read (`idle_floor.ts`): the floor the runtime sets.
 *
 *   deno run -A tests/bench/idle_cost.ts [--count 10000] [--only mcloudtt,floor-deno-tcp]
 *     [--level 4|5]  (MQTT 3.1.1, the default, or 5)
 *
 * Memory figures are trustworthy on a loaded machine; the connect rate is not (indicative).
 */
import { parseArgs } from "node:util";
import { rssOf, startBrokerProcess } from "../helpers/broker_process.ts";
import { spawnMemoryChild } from "../helpers/memory_child.ts";
import { freePort } from "./brokers.ts";
import { makeTestPki } from "../helpers/certs.ts";
import { closeAll, openMany } from "../helpers/idle_clients.ts";
import type { ProtocolLevel } from "./wire.ts";
import { cpuMicros } from "./procstat.ts";

const HOST = "127.0.0.1";
const KIB = 1024;

/** A server under test, in its own process. */
export interface IdleServer {
  readonly pid: number;
  readonly port: number;
  readonly tls: boolean;
  /** RSS from /proc; heap and external after a full GC when the server can tell. */
  memory(): Promise<{ rss: number; heapUsed?: number; external?: number }>;
  stop(): Promise<void>;
}

/** Certificate files for the TLS targets. */
export interface CertPaths {
  cert: string;
  key: string;
  /** The CA that issued `cert`. */
  ca: string;
}

/** Something to measure. */
export interface IdleTarget {
  readonly name: string;
  start(certs: CertPaths, dir: string): Promise<IdleServer>;
}

function mcloudtt(secure: boolean): IdleTarget {
  return {
    name: secure ? "mcloudtt-tls" : "mcloudtt-tcp",
    async start(certs) {
      const broker = await startBrokerProcess({
        general: { secure, websocket: false, sys_interval: 0, log_level: "error" },
        http: { enabled: false },
        limits: { max_connections: 100_000 },
        ...(secure
          ? {
            tls: { certfile: certs.cert, keyfile: certs.key, cafile: certs.ca },
            listeners: { tcp: { client_certificate: "none" } },
            auth: { allow_anonymous: true },
          }
          : {}),
      });
      return {
        pid: broker.pid,
        port: broker.ports.tls ?? broker.ports.tcp,
        tls: secure,
        memory: () => broker.memory(),
        stop: () => broker.stop(),
      };
    },
  };
}

const FLOOR_SCRIPT = new URL("./idle_floor.ts", import.meta.url).pathname;

/** A bare Deno server (see idle_floor.ts for the modes). */
function floor(mode: string): IdleTarget {
  return {
    name: `floor-${mode}`,
    async start(certs) {
      const proc = await spawnMemoryChild(
        FLOOR_SCRIPT,
        [mode, certs.cert, certs.key],
        "floor server",
        3000,
      );
      const pid = proc.child.pid;
      return {
        pid,
        port: Number(proc.ready),
        tls: mode.includes("tls"),
        async memory() {
          const m = await proc.memory() as { heapUsed: number; external: number };
          return { rss: rssOf(pid), heapUsed: m.heapUsed, external: m.external };
        },
        stop: proc.stop,
      };
    },
  };
}

function mosquitto(secure: boolean): IdleTarget {
  return {
    name: secure ? "mosquitto-tls" : "mosquitto-tcp",
    async start(certs, dir) {
      const port = freePort();
      const conf = `${dir}/mosquitto-${secure ? "tls" : "tcp"}.conf`;
      await Deno.writeTextFile(
        conf,
        [
          `listener ${port} ${HOST}`,
          ...(secure ? [`certfile ${certs.cert}`, `keyfile ${certs.key}`] : []),
          // Started as root, Mosquitto would drop to its own user, which cannot read our key.
          ...(Deno.uid() === 0 ? ["user root"] : []),
          "allow_anonymous true",
          "persistence false",
          "log_dest stderr",
          "log_type error",
          "sys_interval 0",
          "max_connections -1",
          "",
        ].join("\n"),
      );
      const child = new Deno.Command("mosquitto", {
        args: ["-c", conf],
        stdin: "null",
        stdout: "null",
        stderr: "inherit",
      }).spawn();
      for (let i = 0; i < 100; i++) {
        try {
          (await Deno.connect({ hostname: HOST, port })).close();
          break;
        } catch {
          await new Promise((r) => setTimeout(r, 50));
        }
      }
      return {
        pid: child.pid,
        port,
        tls: secure,
        memory: () => Promise.resolve({ rss: rssOf(child.pid) }),
        async stop() {
          try {
            child.kill("SIGTERM");
          } catch {
            // it exited
          }
          await child.status;
        },
      };
    },
  };
}

/** Every target, in the order they run. */
export const TARGETS: readonly IdleTarget[] = [
  mcloudtt(false),
  mosquitto(false),
  floor("deno-tcp"),
  floor("deno-tcp-shared"),
  floor("deno-tcp-hold"),
  floor("deno-tcp-rid"),
  floor("node-net"),
  mcloudtt(true),
  mosquitto(true),
  floor("deno-tls"),
  floor("deno-tls-shared"),
  floor("node-tls"),
];

/** One target's figures. */
export interface IdleCost {
  target: string;
  connected: number;
  failed: number;
  rssKbPerConn: number;
  heapKbPerConn: number;
  externalKbPerConn: number;
  /** Indicative only: CONNACKs per second with 32 connects in flight. */
  connectsPerS: number;
  /**
   * The server's CPU time (user + system) per connection while connecting: unlike the rate,
   * this holds on a loaded machine.
   */
  cpuUsPerConn: number;
  rssBeforeMb: number;
  /** RSS per connection still held after all connections closed (what is not given back). */
  rssKbPerConnAfterClose: number;
  error?: string;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Measures one target: warm-up connections first, so JIT and pools are not counted. */
export async function measure(
  target: IdleTarget,
  certs: CertPaths,
  dir: string,
  count: number,
  warmup: number,
  level: ProtocolLevel = 4,
): Promise<IdleCost> {
  const server = await target.start(certs, dir);
  try {
    if (warmup > 0) {
      const w = await openMany(server, warmup, { prefix: "warm-", level });
      await closeAll(w.sockets);
      await sleep(500);
    }
    const before = await server.memory();
    const cpuBefore = await cpuMicros(server.pid);
    const opened = await openMany(server, count, { level });
    const cpuAfter = await cpuMicros(server.pid);
    await sleep(1000);
    const after = await server.memory();
    const n = opened.sockets.length;
    const per = (a: number | undefined, b: number | undefined) =>
      a === undefined || b === undefined || n === 0 ? NaN : (a - b) / KIB / n;
    await closeAll(opened.sockets);
    await sleep(1000);
    const closed = await server.memory();
    return {
      target: target.name,
      connected: n,
      failed: opened.failed,
      rssKbPerConn: per(after.rss, before.rss),
      heapKbPerConn: per(after.heapUsed, before.heapUsed),
      externalKbPerConn: per(after.external, before.external),
      connectsPerS: (n * 1000) / opened.elapsedMs,
      cpuUsPerConn: n === 0 ? NaN : (cpuAfter - cpuBefore) / n,
      rssBeforeMb: before.rss / KIB / KIB,
      rssKbPerConnAfterClose: per(closed.rss, before.rss),
      error: opened.firstError,
    };
  } finally {
    await server.stop();
  }
}

function fmt(x: number, digits = 2): string {
  return Number.isFinite(x) ? x.toFixed(digits) : "-";
}

/** The figures as a Markdown table. */
export function table(rows: readonly IdleCost[]): string {
  const head = "| target | connected | RSS kB/conn | heap kB/conn | external kB/conn | " +
    "connects/s (indicative) | CPU µs/conn | RSS before MB | RSS kB/conn after close |";
  const sep = "|---|---:|---:|---:|---:|---:|---:|---:|---:|";
  const body = rows.map((r) =>
    `| ${r.target} | ${r.connected}${r.failed ? ` (${r.failed} failed: ${r.error})` : ""} | ` +
    `${fmt(r.rssKbPerConn)} | ${fmt(r.heapKbPerConn)} | ${fmt(r.externalKbPerConn)} | ` +
    `${fmt(r.connectsPerS, 0)} | ${fmt(r.cpuUsPerConn, 0)} | ${fmt(r.rssBeforeMb, 1)} | ${
      fmt(r.rssKbPerConnAfterClose)
    } |`
  );
  return [head, sep, ...body].join("\n");
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      count: { type: "string", default: "10000" },
      warmup: { type: "string", default: "200" },
      level: { type: "string", default: "4" },
      only: { type: "string" },
      json: { type: "boolean", default: false },
    },
  });
  const count = Number(values.count);
  const only = values.only?.split(",").filter(Boolean);
  const targets = TARGETS.filter((t) => !only || only.some((o) => t.name.includes(o)));
  const dir = await Deno.makeTempDir({ prefix: "mcloudtt-idle-cost-" });
  try {
    const pki = await makeTestPki(dir);
    const rows: IdleCost[] = [];
    for (const t of targets) {
      const certs = { ...pki.broker, ca: pki.ca.cert };
      const level = Number(values.level) === 5 ? 5 : 4;
      const row = await measure(t, certs, dir, count, Number(values.warmup), level);
      console.error(`${t.name}: ${fmt(row.rssKbPerConn)} kB RSS/conn`);
      rows.push(row);
    }
    console.log(values.json ? JSON.stringify(rows, null, 2) : table(rows));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
