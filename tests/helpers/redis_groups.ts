/**
 * Several redis-servers working as one, for tests: a primary with replicas and Sentinels
 * watching them (`RedisSentinelGroup`), and a Redis Cluster of masters and replicas
 * (`RedisClusterGroup`). Each starts its servers with redis.ts, waits until they agree, and
 * stops them all; apart from redis.ts, which runs one server.
 */
import { freePort } from "./broker.ts";
import { type RedisBackend, redisBinary, RedisServer } from "./redis.ts";
import { infoField, redisCommand, redisQuery, type RespValue } from "./redis_resp.ts";

/** Polls `check` every 50 ms until true; throws naming `what` after `timeoutMs`. */
async function until(what: string, check: () => Promise<boolean>, timeoutMs: number) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      if (await check()) return;
    } catch {
      // not there yet
    }
    if (Date.now() > deadline) throw new Error(`redis: timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export interface SentinelOptions {
  /** Replicas of the primary (default 1). */
  replicas?: number;
  /** Sentinel processes (default 1); the quorum is a majority of them. */
  sentinels?: number;
  /** `down-after-milliseconds`: how long the primary must be silent (default 1000). */
  downAfterMs?: number;
  /** `failover-timeout` (default 3000). */
  failoverTimeoutMs?: number;
  /** The monitored name (default "mymaster", the broker's default `sentinel_name`). */
  name?: string;
}

/**
 * A primary redis-server, its replicas and Sentinels watching them, with short
 * timeouts so a killed primary is replaced in a few seconds. Sentinels run as
 * `redis-server <conf> --sentinel` (the same binary; redis-sentinel is only a
 * link to it) on a config file of their own, which they rewrite.
 */
export class RedisSentinelGroup implements AsyncDisposable, RedisBackend {
  private readonly sentinels: { port: number; dir: string; child: Deno.ChildProcess }[] = [];

  private constructor(
    /** Every data server: the first primary first, then the replicas. */
    readonly servers: RedisServer[],
    readonly name: string,
  ) {}

  static async start(opts: SentinelOptions = {}): Promise<RedisSentinelGroup> {
    const name = opts.name ?? "mymaster";
    const primary = await RedisServer.start();
    const group = new RedisSentinelGroup([primary], name);
    try {
      for (let i = 0; i < (opts.replicas ?? 1); i++) {
        group.servers.push(await RedisServer.start({ replicaOf: primary.port }));
      }
      // Sentinels learn the replicas from the primary's INFO: link them first.
      await until("replicas in sync", async () => {
        const info = await primary.command("INFO", "replication");
        return Number(infoField(info, "connected_slaves")) === group.servers.length - 1 &&
          !info.includes("state=wait_bgsave") && !info.includes("state=send_bulk");
      }, 10_000);
      const n = opts.sentinels ?? 1;
      for (let i = 0; i < n; i++) {
        await group.startSentinel(primary.port, Math.floor(n / 2) + 1, opts);
      }
      // A failover needs every sentinel to know the replicas and a majority to know each other.
      for (const s of group.sentinels) {
        await until("sentinels to discover the replicas and each other", async () => {
          const reps = await redisQuery(s.port, "SENTINEL", "REPLICAS", name) as RespValue[];
          const peers = await redisQuery(s.port, "SENTINEL", "SENTINELS", name) as RespValue[];
          return reps.length === group.servers.length - 1 && peers.length === n - 1;
        }, 15_000);
      }
    } catch (e) {
      await group.stop();
      throw e;
    }
    return group;
  }

  private async startSentinel(primaryPort: number, quorum: number, opts: SentinelOptions) {
    const port = freePort();
    const dir = await Deno.makeTempDir({ prefix: "mcloudtt-sentinel-" });
    const conf = `${dir}/sentinel.conf`;
    await Deno.writeTextFile(
      conf,
      [
        `port ${port}`,
        "bind 127.0.0.1",
        "protected-mode no",
        `dir ${dir}`,
        "loglevel warning",
        `sentinel monitor ${this.name} 127.0.0.1 ${primaryPort} ${quorum}`,
        `sentinel down-after-milliseconds ${this.name} ${opts.downAfterMs ?? 1000}`,
        `sentinel failover-timeout ${this.name} ${opts.failoverTimeoutMs ?? 3000}`,
        `sentinel parallel-syncs ${this.name} 1`,
        "",
      ].join("\n"),
    );
    const child = new Deno.Command(redisBinary()!, {
      args: [conf, "--sentinel"],
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
    this.sentinels.push({ port, dir, child });
    await until(
      `sentinel on ${port}`,
      async () => (await redisCommand(port, "PING")) === "PONG",
      10_000,
    );
  }

  /** `host:port` of every sentinel. */
  get sentinelSeeds(): string[] {
    return this.sentinels.map((s) => `127.0.0.1:${s.port}`);
  }

  get brokerArgs(): string[] {
    return [
      "--redis.mode=sentinel",
      `--redis.sentinels=${this.sentinelSeeds.join(",")}`,
      `--redis.sentinel_name=${this.name}`,
    ];
  }

  /** The primary's port as the first sentinel reports it. */
  async primaryPort(): Promise<number> {
    const addr = await redisQuery(
      this.sentinels[0].port,
      "SENTINEL",
      "GET-MASTER-ADDR-BY-NAME",
      this.name,
    ) as string[];
    return Number(addr[1]);
  }

  /** The data server that is the primary now. */
  async primary(): Promise<RedisServer> {
    const port = await this.primaryPort();
    const s = this.servers.find((x) => x.port === port);
    if (s === undefined) throw new Error(`sentinel names an unknown primary on ${port}`);
    return s;
  }

  /**
   * Waits until every sentinel names a primary other than `oldPort` and that
   * server says it is a master; returns its port.
   */
  async waitForFailover(oldPort: number, timeoutMs = 20_000): Promise<number> {
    let port = 0;
    await until("a failover", async () => {
      for (const s of this.sentinels) {
        const addr = await redisQuery(
          s.port,
          "SENTINEL",
          "GET-MASTER-ADDR-BY-NAME",
          this.name,
        ) as string[];
        port = Number(addr[1]);
        if (port === oldPort) return false;
      }
      return infoField(await redisCommand(port, "INFO", "replication"), "role") === "master";
    }, timeoutMs);
    return port;
  }

  async stop(): Promise<void> {
    for (const s of this.sentinels.splice(0)) {
      try {
        s.child.kill("SIGKILL");
      } catch {
        // already gone
      }
      await s.child.status;
      await Deno.remove(s.dir, { recursive: true }).catch(() => {});
    }
    await Promise.all(this.servers.map((s) => s.stop()));
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.stop();
  }
}

export interface ClusterGroupOptions {
  /** Masters sharing the 16384 slots evenly (default 3). */
  masters?: number;
  /** Replicas per master (default 0). */
  replicas?: number;
  /** `cluster-node-timeout` of every member (Redis's default: 15 s). */
  nodeTimeoutMs?: number;
}

/**
 * A Redis Cluster of several redis-servers on free ports: masters with even
 * slot ranges, optional replicas, all introduced by CLUSTER MEET. Ready once
 * every node reports `cluster_state:ok`.
 */
export class RedisClusterGroup implements AsyncDisposable, RedisBackend {
  private constructor(readonly masters: RedisServer[], readonly replicas: RedisServer[]) {}

  static async start(opts: ClusterGroupOptions = {}): Promise<RedisClusterGroup> {
    const nMasters = opts.masters ?? 3;
    const nReplicas = nMasters * (opts.replicas ?? 0);
    const started = await Promise.allSettled(
      Array.from(
        { length: nMasters + nReplicas },
        () => RedisServer.start({ clusterMember: true, clusterNodeTimeoutMs: opts.nodeTimeoutMs }),
      ),
    );
    const servers = started.flatMap((r) => r.status === "fulfilled" ? [r.value] : []);
    const group = new RedisClusterGroup(servers.slice(0, nMasters), servers.slice(nMasters));
    try {
      const failed = started.find((r) => r.status === "rejected");
      if (failed) throw (failed as PromiseRejectedResult).reason;
      for (let i = 0; i < nMasters; i++) {
        const from = Math.floor((16384 * i) / nMasters);
        const to = Math.floor((16384 * (i + 1)) / nMasters) - 1;
        await group.masters[i].command("CLUSTER", "ADDSLOTSRANGE", String(from), String(to));
      }
      // With its bus port: MEET would otherwise assume port + 10000.
      const [port, bus] = [String(servers[0].port), String(servers[0].busPort)];
      for (const s of servers.slice(1)) await s.command("CLUSTER", "MEET", "127.0.0.1", port, bus);
      await until("cluster members to know each other", async () => {
        for (const s of servers) {
          const nodes = (await s.command("CLUSTER", "NODES")).trim().split("\n");
          if (nodes.length !== servers.length || nodes.some((l) => l.includes("handshake"))) {
            return false;
          }
        }
        return true;
      }, 15_000);
      for (let i = 0; i < nReplicas; i++) {
        const master = group.masters[i % nMasters];
        const id = await master.command("CLUSTER", "MYID");
        await group.replicas[i].command("CLUSTER", "REPLICATE", id);
      }
      await until("cluster_state:ok on every node", async () => {
        for (const s of servers) {
          if (!(await s.command("CLUSTER", "INFO")).includes("cluster_state:ok")) return false;
        }
        for (const r of group.replicas) {
          const info = await r.command("INFO", "replication");
          if (infoField(info, "master_link_status") !== "up") return false;
        }
        return true;
      }, 20_000);
    } catch (e) {
      await group.stop();
      throw e;
    }
    return group;
  }

  /** `host:port` of every master (the broker's `cluster_nodes` seeds). */
  get seeds(): string[] {
    return this.masters.map((s) => `127.0.0.1:${s.port}`);
  }

  get brokerArgs(): string[] {
    return ["--redis.mode=cluster", `--redis.cluster_nodes=${this.seeds.join(",")}`];
  }

  /** The master serving `key` now. */
  async masterOf(key: string): Promise<RedisServer> {
    const slot = Number(await this.masters[0].command("CLUSTER", "KEYSLOT", key));
    const slots = await redisQuery(this.masters[0].port, "CLUSTER", "SLOTS") as RespValue[][];
    for (const [from, to, owner] of slots) {
      if (slot >= (from as number) && slot <= (to as number)) {
        const port = (owner as RespValue[])[1] as number;
        const s = [...this.masters, ...this.replicas].find((x) => x.port === port);
        if (s !== undefined) return s;
      }
    }
    throw new Error(`no master serves slot ${slot}`);
  }

  /** The replicas of `master` (by their INFO). */
  async replicasOf(master: RedisServer): Promise<RedisServer[]> {
    const out: RedisServer[] = [];
    for (const r of this.replicas) {
      if (!r.running) continue;
      const info = await r.command("INFO", "replication");
      if (Number(infoField(info, "master_port")) === master.port) out.push(r);
    }
    return out;
  }

  async stop(): Promise<void> {
    await Promise.all([...this.masters, ...this.replicas].map((s) => s.stop()));
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.stop();
  }
}
