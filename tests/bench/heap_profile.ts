/**
 * V8's sampling heap profiler over the inspector protocol: where the bytes a
 * process allocates come from. The process runs with `--inspect=host:port`;
 * sampling includes objects that minor and major GCs already collected, so
 * the profile covers every allocation (statistically: one sample per
 * `intervalBytes` on average, scaled), not only what is still alive.
 */

/** One allocation site (a JS frame) with what it allocated, with the callers that led to it. */
export interface AllocationSite {
  /** `function file:line:col`. */
  frame: string;
  /** The two callers above it, innermost first. */
  callers: string[];
  bytes: number;
}

/** A JS frame as the inspector names it. */
export interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
  columnNumber: number;
}

interface ProfileNode {
  callFrame: CallFrame;
  selfSize: number;
  children: ProfileNode[];
}

/** A minimal inspector client: one WebSocket, requests matched by id. */
export class Inspector {
  private next = 1;
  private readonly waiting = new Map<number, (r: { result?: unknown; error?: unknown }) => void>();
  /** Handlers of events (messages without an id), by method. */
  private readonly events = new Map<string, (params: Record<string, unknown>) => void>();

  private constructor(private readonly ws: WebSocket) {
    ws.onmessage = (ev) => {
      const msg = JSON.parse(String(ev.data));
      if (msg.id === undefined) {
        this.events.get(msg.method)?.(msg.params);
        return;
      }
      const w = this.waiting.get(msg.id);
      if (w !== undefined) {
        this.waiting.delete(msg.id);
        w(msg);
      }
    };
  }

  /** Calls `handler` with the params of every `method` event (one handler per method). */
  on(method: string, handler: (params: Record<string, unknown>) => void): void {
    this.events.set(method, handler);
  }

  static async connect(host: string, port: number): Promise<Inspector> {
    const list = await (await fetch(`http://${host}:${port}/json/list`)).json();
    const url = list[0]?.webSocketDebuggerUrl as string | undefined;
    if (url === undefined) throw new Error("no inspector target");
    const ws = new WebSocket(url);
    await new Promise<void>((resolve, reject) => {
      ws.onopen = () => resolve();
      ws.onerror = (e) => reject(new Error(`inspector: ${(e as ErrorEvent).message ?? e}`));
    });
    return new Inspector(ws);
  }

  async call<T>(method: string, params: Record<string, unknown> = {}): Promise<T> {
    const id = this.next++;
    const reply = new Promise<{ result?: unknown; error?: unknown }>((resolve) =>
      this.waiting.set(id, resolve)
    );
    this.ws.send(JSON.stringify({ id, method, params }));
    const r = await reply;
    if (r.error !== undefined) throw new Error(`${method}: ${JSON.stringify(r.error)}`);
    return r.result as T;
  }

  close(): void {
    this.ws.close();
  }
}

/** A running sampling session; `stop` returns the sites. */
export class HeapSampler {
  private constructor(private readonly inspector: Inspector) {}

  static async start(host: string, port: number, intervalBytes = 4096): Promise<HeapSampler> {
    const inspector = await Inspector.connect(host, port);
    await inspector.call("HeapProfiler.enable");
    await inspector.call("HeapProfiler.startSampling", {
      samplingInterval: intervalBytes,
      includeObjectsCollectedByMajorGC: true,
      includeObjectsCollectedByMinorGC: true,
    });
    return new HeapSampler(inspector);
  }

  /** Stops sampling; the total and the sites, largest first. */
  async stop(root: string): Promise<{ total: number; sites: AllocationSite[] }> {
    const { profile } = await this.inspector.call<{ profile: { head: ProfileNode } }>(
      "HeapProfiler.stopSampling",
    );
    this.inspector.close();
    const sites = new Map<string, AllocationSite>();
    let total = 0;
    const name = (f: CallFrame) => {
      const url = f.url.startsWith(root) ? f.url.slice(root.length) : f.url.replace(/^.*\//, "");
      return `${f.functionName || "(anonymous)"} ${url}:${f.lineNumber + 1}:${f.columnNumber + 1}`;
    };
    const walk = (node: ProfileNode, stack: string[]) => {
      const frame = name(node.callFrame);
      if (node.selfSize > 0) {
        total += node.selfSize;
        const callers = stack.slice(-2).reverse();
        const key = [frame, ...callers].join(" <- ");
        const s = sites.get(key);
        if (s === undefined) sites.set(key, { frame, callers, bytes: node.selfSize });
        else s.bytes += node.selfSize;
      }
      stack.push(frame);
      for (const c of node.children) walk(c, stack);
      stack.pop();
    };
    walk(profile.head, []);
    return { total, sites: [...sites.values()].sort((a, b) => b.bytes - a.bytes) };
  }
}
