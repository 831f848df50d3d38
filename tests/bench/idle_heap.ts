/**
 * What the JS heap of an idle connection is made of: starts mcloudtt (plain TCP) with
 * `--inspect`, takes a V8 heap snapshot, opens N idle connections (CONNECT, CONNACK, keep
 * alive 60 s), takes another, and lists the growth per connection by object kind (V8's node
 * type and constructor or function name), largest first. Counts per connection near 1 are
 * the objects every idle connection holds; the snapshot is taken after a full GC.
 *
 *   deno run -A tests/bench/idle_heap.ts [--count 2000] [--level 4|5] [--top 40] [--depth 2]
 *
 * The second table lists the new objects by their first strong retainers (`--depth` of them).
 *
 * Heap bytes hold on a loaded machine; nothing here is timed.
 */
import { parseArgs } from "node:util";
import { startBrokerProcess } from "../helpers/broker_process.ts";
import { closeAll, openMany } from "../helpers/idle_clients.ts";
import { freePort } from "./brokers.ts";
import { Inspector } from "./heap_profile.ts";
import type { ProtocolLevel } from "./wire.ts";

const HOST = "127.0.0.1";

/** Objects of one kind in a snapshot. */
export interface Kind {
  kind: string;
  count: number;
  bytes: number;
}

interface RawSnapshot {
  snapshot: {
    meta: {
      node_fields: string[];
      node_types: [string[], ...unknown[]];
      edge_fields: string[];
      edge_types: [string[], ...unknown[]];
    };
  };
  nodes: number[];
  edges: number[];
  strings: string[];
}

/** A parsed snapshot: node kinds and, for each node, one retainer (`kind.edge`). */
class Snapshot {
  readonly width: number;
  readonly ids: Set<number> = new Set();
  private readonly f: Record<string, number> = {};
  /** Node index -> the first strong retainer's node index and edge name. */
  readonly parent = new Map<number, [number, string]>();

  constructor(readonly raw: RawSnapshot) {
    const fields = raw.snapshot.meta.node_fields;
    this.width = fields.length;
    for (const name of fields) this.f[name] = fields.indexOf(name);
    for (let i = 0; i < raw.nodes.length; i += this.width) {
      this.ids.add(raw.nodes[i + this.f.id]);
    }
  }

  kind(i: number): string {
    const raw = this.raw;
    const type = raw.snapshot.meta.node_types[0][raw.nodes[i + this.f.type]];
    const byName = type !== "string" && type !== "concatenated string" &&
      type !== "sliced string" && type !== "number" && type !== "bigint";
    let name = byName ? raw.strings[raw.nodes[i + this.f.name]] : "";
    // Object shapes name their keys ("{a, b, c}"): long, but the kind worth seeing.
    if (name.length > 60) name = name.slice(0, 57) + "...";
    return `${type} ${name}`;
  }

  size(i: number): number {
    return this.raw.nodes[i + this.f.self_size];
  }

  id(i: number): number {
    return this.raw.nodes[i + this.f.id];
  }

  /** Fills `retainer` for the nodes `wanted` says are of interest. */
  findRetainers(wanted: (i: number) => boolean): void {
    const raw = this.raw;
    const ef = raw.snapshot.meta.edge_fields;
    const ew = ef.length;
    const et = raw.snapshot.meta.edge_types[0];
    const eType = ef.indexOf("type"),
      eName = ef.indexOf("name_or_index"),
      eTo = ef.indexOf("to_node");
    const countAt = this.f.edge_count;
    let e = 0;
    for (let i = 0; i < raw.nodes.length; i += this.width) {
      const n = raw.nodes[i + countAt];
      for (let k = 0; k < n; k++, e += ew) {
        const to = raw.edges[e + eTo];
        const type = et[raw.edges[e + eType]];
        if (type === "weak" || type === "shortcut" || this.parent.has(to) || !wanted(to)) {
          continue;
        }
        const nameOrIndex = raw.edges[e + eName];
        const edge = type === "element" || type === "hidden"
          ? `[${type === "hidden" ? "h" : ""}${nameOrIndex}]`
          : raw.strings[nameOrIndex];
        this.parent.set(to, [i, edge]);
      }
    }
  }

  /** `kind.edge <- kind.edge ...`: up to `depth` retainers of node `i`. */
  retainers(i: number, depth: number): string {
    const out: string[] = [];
    for (let d = 0; d < depth; d++) {
      const p = this.parent.get(i);
      if (p === undefined) break;
      out.push(`${this.kind(p[0]).replace(/^object /, "")}.${p[1]}`);
      i = p[0];
    }
    return out.join(" <- ") || "?";
  }
}

/** Self sizes by kind (`type name`; strings and numbers by type alone) and retainer. */
export function kinds(raw: RawSnapshot, before?: Set<number>, depth = 1): {
  byKind: Map<string, Kind>;
  newByRetainer: Map<string, Kind>;
  ids: Set<number>;
} {
  const s = new Snapshot(raw);
  const byKind = new Map<string, Kind>();
  const add = (m: Map<string, Kind>, key: string, bytes: number) => {
    const k = m.get(key);
    if (k === undefined) m.set(key, { kind: key, count: 1, bytes });
    else {
      k.count++;
      k.bytes += bytes;
    }
  };
  for (let i = 0; i < raw.nodes.length; i += s.width) add(byKind, s.kind(i), s.size(i));
  const newByRetainer = new Map<string, Kind>();
  if (before !== undefined) {
    s.findRetainers(() => true);
    for (let i = 0; i < raw.nodes.length; i += s.width) {
      if (before.has(s.id(i))) continue;
      add(newByRetainer, `${s.kind(i)}  <-  ${s.retainers(i, depth)}`, s.size(i));
    }
  }
  return { byKind, newByRetainer, ids: s.ids };
}

/** Takes a heap snapshot (V8 collects garbage first) and returns its kinds. */
export async function snapshotKinds(
  inspector: Inspector,
  before?: Set<number>,
  depth = 1,
): Promise<ReturnType<typeof kinds>> {
  const chunks: string[] = [];
  inspector.on("HeapProfiler.addHeapSnapshotChunk", (p) => chunks.push(p.chunk as string));
  await inspector.call("HeapProfiler.collectGarbage");
  await inspector.call("HeapProfiler.takeHeapSnapshot", { reportProgress: false });
  return kinds(JSON.parse(chunks.join("")), before, depth);
}

/** `after - before`, per connection, largest growth first. */
export function growth(
  before: Map<string, Kind>,
  after: Map<string, Kind>,
  n: number,
): Kind[] {
  const rows: Kind[] = [];
  for (const [key, a] of after) {
    const b = before.get(key);
    rows.push({
      kind: key,
      count: (a.count - (b?.count ?? 0)) / n,
      bytes: (a.bytes - (b?.bytes ?? 0)) / n,
    });
  }
  return rows.sort((x, y) => y.bytes - x.bytes);
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      count: { type: "string", default: "2000" },
      level: { type: "string", default: "4" },
      top: { type: "string", default: "40" },
      depth: { type: "string", default: "2" },
    },
  });
  const count = Number(values.count);
  const level: ProtocolLevel = Number(values.level) === 5 ? 5 : 4;
  const inspectPort = freePort();
  const broker = await startBrokerProcess({
    general: { websocket: false, sys_interval: 0, log_level: "error" },
    http: { enabled: false },
    limits: { max_connections: 100_000 },
  }, [`--inspect=${HOST}:${inspectPort}`]);
  const inspector = await Inspector.connect(HOST, inspectPort);
  try {
    await inspector.call("HeapProfiler.enable");
    const server = { port: broker.ports.tcp, tls: false };
    const warm = await openMany(server, 200, { prefix: "warm-", level });
    await closeAll(warm.sockets);
    await new Promise((r) => setTimeout(r, 500));
    const before = await snapshotKinds(inspector);
    const opened = await openMany(server, count, { level });
    await new Promise((r) => setTimeout(r, 500));
    const after = await snapshotKinds(inspector, before.ids, Number(values.depth));
    const n = opened.sockets.length;
    const rows = growth(before.byKind, after.byKind, n);
    const total = rows.reduce((s, r) => s + r.bytes, 0);
    console.log(
      `${n} idle MQTT ${level === 5 ? "5" : "3.1.1"} connections: ` +
        `${total.toFixed(0)} B of heap objects each (self sizes)\n`,
    );
    console.log("| B/conn | objects/conn | kind |\n|---:|---:|---|");
    for (const r of rows.slice(0, Number(values.top))) {
      console.log(`| ${r.bytes.toFixed(1)} | ${r.count.toFixed(2)} | ${r.kind} |`);
    }
    console.log("\nNew objects by retainer (object  <-  what holds it):\n");
    console.log("| B/conn | objects/conn | object <- retainer |\n|---:|---:|---|");
    const held = [...after.newByRetainer.values()]
      .map((k) => ({ ...k, bytes: k.bytes / n, count: k.count / n }))
      .sort((x, y) => y.bytes - x.bytes);
    for (const r of held.slice(0, Number(values.top))) {
      console.log(`| ${r.bytes.toFixed(1)} | ${r.count.toFixed(2)} | ${r.kind} |`);
    }
    await closeAll(opened.sockets);
  } finally {
    inspector.close();
    await broker.stop();
  }
}
