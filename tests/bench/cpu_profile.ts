/**
 * V8's sampling CPU profiler over the inspector protocol: where a process
 * spends its time, by function (self time: the function's own code, not its
 * callees). Proportions, not durations: they hold on a busy machine, where
 * the absolute times do not.
 */
import { type CallFrame, Inspector } from "./heap_profile.ts";

/** One function with the share of samples spent in its own code. */
export interface CpuSite {
  /** `function file:line:col`. */
  frame: string;
  /** The caller above it (the heaviest, when there are several). */
  caller: string;
  samples: number;
}

interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
  hitCount?: number;
}

/** A running CPU profile; `stop` returns the sites. */
export class CpuSampler {
  private constructor(private readonly inspector: Inspector) {}

  static async start(host: string, port: number, intervalUs = 100): Promise<CpuSampler> {
    const inspector = await Inspector.connect(host, port);
    await inspector.call("Profiler.enable");
    await inspector.call("Profiler.setSamplingInterval", { interval: intervalUs });
    await inspector.call("Profiler.start");
    return new CpuSampler(inspector);
  }

  /** Stops profiling; the total sample count and the sites by self samples, largest first. */
  async stop(root: string): Promise<{ total: number; sites: CpuSite[] }> {
    const { profile } = await this.inspector.call<{ profile: { nodes: ProfileNode[] } }>(
      "Profiler.stop",
    );
    this.inspector.close();
    const byId = new Map<number, ProfileNode>();
    const parent = new Map<number, number>();
    for (const n of profile.nodes) {
      byId.set(n.id, n);
      for (const c of n.children ?? []) parent.set(c, n.id);
    }
    const name = (f: CallFrame) => {
      const url = f.url.startsWith(root) ? f.url.slice(root.length) : f.url.replace(/^.*\//, "");
      return `${f.functionName || "(anonymous)"} ${url}:${f.lineNumber + 1}:${f.columnNumber + 1}`;
    };
    const sites = new Map<string, { samples: number; callers: Map<string, number> }>();
    let total = 0;
    for (const n of profile.nodes) {
      const hits = n.hitCount ?? 0;
      if (hits === 0) continue;
      total += hits;
      const frame = name(n.callFrame);
      const p = parent.get(n.id);
      const caller = p === undefined ? "" : name(byId.get(p)!.callFrame);
      let s = sites.get(frame);
      if (s === undefined) sites.set(frame, s = { samples: 0, callers: new Map() });
      s.samples += hits;
      s.callers.set(caller, (s.callers.get(caller) ?? 0) + hits);
    }
    const out: CpuSite[] = [];
    for (const [frame, s] of sites) {
      const caller = [...s.callers].sort((a, b) => b[1] - a[1])[0][0];
      out.push({ frame, caller, samples: s.samples });
    }
    return { total, sites: out.sort((a, b) => b.samples - a.samples) };
  }
}
