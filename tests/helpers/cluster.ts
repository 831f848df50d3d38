/**
 * A cluster as a user runs it: a real `redis-server` and broker processes
 * (`main.ts` as `deno task start` runs it) on fixed free loopback ports, plain
 * TCP, in memory, with short leases so node deaths are noticed in about a
 * second. Nodes can be killed (-9), stopped, stopped/continued and restarted
 * on the same port.
 */
import { ClusterKeys } from "../../src/cluster/redis_scripts.ts";
import { freePort } from "./broker.ts";
import { type MainProcess, startMain } from "./main_process.ts";
import { type RedisBackend, RedisServer } from "./redis.ts";

const repoRoot = new URL("../../", import.meta.url).pathname;

/** Lease settings used by the cluster tests (fast failure detection). */
// Short enough that node deaths show in seconds, long enough that a node starved of CPU by a
// parallel test run is not declared dead (1 s was, under CI load).
export const FAST_LEASES = { renewMs: 300, ttlMs: 2500 };

export interface NodeOptions {
  /** `--cluster.node_id` (the incarnation id adds a random suffix). */
  name: string;
  /** The MQTT TCP port (default: a free one). */
  port?: number;
  /** More `--section.key=value` flags. */
  args?: string[];
}

/** One broker process in the cluster. */
export class ClusterNode implements AsyncDisposable {
  private constructor(
    readonly name: string,
    readonly port: number,
    readonly proc: MainProcess,
    /** The incarnation id this process joined with. */
    readonly nodeId: string,
  ) {}

  /** The Redis stream other nodes forward this node's messages to (default key prefix). */
  get inbox(): string {
    return new ClusterKeys("mcloudtt").inbox(this.nodeId);
  }

  /**
   * Starts `main.ts` as a cluster node and waits until it listens. `redis` is
   * a URL or the `--redis.*` flags of a {@link RedisBackend} (Sentinel, Cluster).
   */
  static async start(redis: string | readonly string[], opts: NodeOptions): Promise<ClusterNode> {
    // A free port can be taken by a parallel test before the node binds it: try another one.
    for (let attempt = 1;; attempt++) {
      try {
        return await ClusterNode.startOn(redis, opts, opts.port ?? freePort());
      } catch (e) {
        const taken = e instanceof Error && /Address already in use/.test(e.message);
        if (!taken || opts.port !== undefined || attempt >= 3) throw e;
      }
    }
  }

  private static async startOn(
    redis: string | readonly string[],
    opts: NodeOptions,
    port: number,
  ): Promise<ClusterNode> {
    const proc = startMain(repoRoot, [
      "--general.secure=false",
      "--general.bind=127.0.0.1",
      "--general.log_level=info",
      "--storage.enabled=false",
      "--listeners.ws.enabled=false",
      `--ports.tcp=${port}`,
      "--redis.enabled=true",
      ...(typeof redis === "string" ? [`--redis.url=${redis}`] : redis),
      `--cluster.node_id=${opts.name}`,
      `--cluster.lease_renew_ms=${FAST_LEASES.renewMs}`,
      `--cluster.lease_ttl_ms=${FAST_LEASES.ttlMs}`,
      ...(opts.args ?? []),
    ]);
    try {
      const joined = await proc.waitFor(/node "?(\S+?)"? joined the cluster/, 30_000);
      await proc.waitFor(/listening for MQTT over tcp on \S+:(\d+)/, 30_000);
      return new ClusterNode(opts.name, port, proc, joined[1]);
    } catch (e) {
      await proc.stop();
      throw e;
    }
  }

  get alive(): boolean {
    return this.exited === false;
  }

  private exited = false;

  /** kill -9: no goodbye to Redis, routes and lease stay until another node notices. */
  async kill(): Promise<void> {
    this.signal("SIGKILL");
    await this.proc.status;
    this.exited = true;
  }

  /** SIGTERM: leaves the cluster cleanly; kill -9 after `timeoutMs` (and throws: a hung stop). */
  async stop(timeoutMs = 15_000): Promise<void> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    let hung = false;
    const late = new Promise<void>((resolve) => {
      timer = setTimeout(() => {
        hung = true;
        this.signal("SIGKILL");
        resolve();
      }, timeoutMs);
    });
    await Promise.race([this.proc.stop(), late]);
    clearTimeout(timer);
    await this.proc.status;
    this.exited = true;
    if (hung) throw new Error(`node ${this.name} did not stop within ${timeoutMs} ms`);
  }

  signal(sig: Deno.Signal): void {
    try {
      this.proc.child.kill(sig);
    } catch {
      // already gone
    }
  }

  output(): string {
    return this.proc.output();
  }

  /** `http://host:port` of the node's HTTP endpoint (/readyz, /metrics), from its log. */
  async httpUrl(): Promise<string> {
    const m = await this.proc.waitFor(/HTTP endpoint .* on (\S+):(\d+)/, 10_000);
    const host = m[1] === "0.0.0.0" ? "127.0.0.1" : m[1];
    return `http://${host}:${m[2]}`;
  }

  /** The status of `/readyz` and the problems it names. */
  async readiness(): Promise<{ status: number; problems: string[] }> {
    let res: Response;
    try {
      res = await fetch(`${await this.httpUrl()}/readyz`, { signal: AbortSignal.timeout(5000) });
    } catch (e) {
      // A node too busy to answer is not ready (and a test polling it must not hang).
      if (e instanceof DOMException && e.name === "TimeoutError") {
        return { status: 0, problems: ["/readyz did not answer within 5 s"] };
      }
      throw e;
    }
    const body = await res.json().catch(() => ({})) as { problems?: string[] };
    return { status: res.status, problems: body.problems ?? [] };
  }

  async [Symbol.asyncDispose](): Promise<void> {
    // A stopped (SIGSTOP) process would ignore SIGTERM: let it run so it can exit.
    this.signal("SIGCONT");
    await this.stop();
  }
}

export interface ClusterOptions<R extends RedisBackend = RedisServer> {
  /** Node names, e.g. ["a", "b", "c"]. */
  names: string[];
  /** Extra flags for every node. */
  args?: string[];
  /** Redis with an append-only file (survives a kill -9 of redis-server). */
  aof?: boolean;
  /**
   * Starts the Redis the nodes use (a Sentinel group, a Redis Cluster, ...);
   * default: one redis-server (with `aof`). Stopped with the cluster.
   */
  redis?: () => Promise<R>;
}

/** Redis (one server by default) and broker nodes; disposing stops them all. */
export class TestCluster<R extends RedisBackend = RedisServer> implements AsyncDisposable {
  readonly nodes: ClusterNode[] = [];

  private constructor(readonly redis: R, private readonly args: string[]) {}

  static async start(opts: ClusterOptions<RedisServer>): Promise<TestCluster<RedisServer>>;
  static async start<R extends RedisBackend>(
    opts: ClusterOptions<R> & { redis: () => Promise<R> },
  ): Promise<TestCluster<R>>;
  static async start<R extends RedisBackend>(opts: ClusterOptions<R>): Promise<TestCluster<R>> {
    const redis = opts.redis
      ? await opts.redis()
      : (await RedisServer.start({ aof: opts.aof })) as unknown as R;
    const c = new TestCluster<R>(redis, opts.args ?? []);
    try {
      // One at a time: a node joining waits a lease renewal when others are up; in parallel they
      // would all start at once on a machine with two cores and be slower overall.
      for (const name of opts.names) await c.add(name);
    } catch (e) {
      await c[Symbol.asyncDispose]();
      throw e;
    }
    return c;
  }

  /** Starts one more node (or a node again, on `port`). */
  async add(name: string, port?: number, args: string[] = []): Promise<ClusterNode> {
    const n = await ClusterNode.start(this.redis.brokerArgs, {
      name,
      port,
      args: [...this.args, ...args],
    });
    this.nodes.push(n);
    return n;
  }

  /** The running node called `name` (the latest one when it was restarted). */
  node(name: string): ClusterNode {
    const n = this.nodes.findLast((x) => x.name === name && x.alive);
    if (n === undefined) throw new Error(`no running node ${name}`);
    return n;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    const results = await Promise.allSettled(this.nodes.map((n) => n[Symbol.asyncDispose]()));
    await this.redis.stop();
    for (const r of results) if (r.status === "rejected") throw r.reason;
  }
}

/** Polls `check` until it returns true; throws with `what` after `timeoutMs`. */
export async function eventually(
  what: string,
  check: () => boolean | Promise<boolean>,
  timeoutMs = 10_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out: ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export interface NumberedPublish {
  /** Numbers acknowledged with success, in the order of their acknowledgements. */
  acked: number[];
  /** Sends refused (PUBACK with an error reason code) and sent again. */
  refused: number;
  /** When each number was acknowledged (performance.now()). */
  ackedAt: Map<number, number>;
  /** The longest wait for one PUBACK (success or refusal), ms. */
  slowestMs: number;
}

/**
 * Publishes `0..n-1` as payloads to `topic` at QoS 1 from `pub` (MQTT 5),
 * `window` at a time, at most `rate` per second; a refused publish (Redis
 * could not take it) is sent again after `retryMs` until acknowledged. Fails
 * when a publish is not answered within 15 s, when one number is still
 * refused after `giveUpMs` (default 60 s), or when the client disconnected.
 * `onAck` sees each acknowledged number (to act in the middle of traffic).
 */
export async function publishNumbered(
  pub: import("mqtt").MqttClient,
  topic: string,
  n: number,
  opts: {
    window?: number;
    rate?: number;
    retryMs?: number;
    giveUpMs?: number;
    onAck?: (i: number) => void;
  } = {},
): Promise<NumberedPublish> {
  const out: NumberedPublish = { acked: [], refused: 0, ackedAt: new Map(), slowestMs: 0 };
  const giveUpMs = opts.giveUpMs ?? 60_000;
  const gap = opts.rate ? 1000 / opts.rate : 0;
  let next = 0;
  let slot = performance.now();
  // Why the publisher's connection ended, for the error (a flake once in CI said only that it had).
  let ended = "";
  const onDisconnect = (p: { reasonCode?: number; properties?: { reasonString?: string } }) => {
    ended = `DISCONNECT 0x${(p.reasonCode ?? 0).toString(16)} ${p.properties?.reasonString ?? ""}`;
  };
  const onClose = () => ended ||= "connection closed without DISCONNECT";
  pub.on("disconnect", onDisconnect);
  pub.on("close", onClose);
  const worker = async () => {
    while (next < n) {
      const i = next++;
      if (gap > 0) {
        slot = Math.max(slot + gap, performance.now());
        await new Promise((r) => setTimeout(r, Math.max(0, slot - performance.now())));
      }
      const first = performance.now();
      for (;;) {
        if (!pub.connected) {
          throw new Error(`publisher disconnected before ${i} was acknowledged (${ended})`);
        }
        if (performance.now() - first > giveUpMs) {
          throw new Error(`publish ${i} was still refused after ${giveUpMs} ms`);
        }
        let timer: ReturnType<typeof setTimeout> | undefined;
        const unanswered = new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`publish ${i} was never answered`)), 15_000);
        });
        const sent = performance.now();
        try {
          await Promise.race([
            pub.publishAsync(topic, `${i}`, { qos: 1 }).finally(() => {
              out.slowestMs = Math.max(out.slowestMs, performance.now() - sent);
            }),
            unanswered,
          ]);
          out.acked.push(i);
          out.ackedAt.set(i, performance.now());
          opts.onAck?.(i);
          break;
        } catch (e) {
          if (e instanceof Error && e.message.includes("never answered")) throw e;
          out.refused++;
          await new Promise((r) => setTimeout(r, opts.retryMs ?? 100));
        } finally {
          clearTimeout(timer);
        }
      }
    }
  };
  try {
    await Promise.all(Array.from({ length: opts.window ?? 4 }, worker));
  } finally {
    pub.off("disconnect", onDisconnect);
    pub.off("close", onClose);
  }
  return out;
}
