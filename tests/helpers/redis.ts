/**
 * A real `redis-server` for tests: started on a free loopback port in its own
 * temporary directory, restartable (with or without its AOF file) and killed
 * at the end. Tests that need it skip loudly when redis-server is missing, and
 * fail instead when the env var CI is set.
 */
import { freePort } from "./broker.ts";

/** True when redis-server is missing and CI is unset (the caller then skips). Says so loudly. */
export function skipWithoutRedis(): boolean {
  if (redisBinary() !== null) return false;
  if (Deno.env.get("CI")) return false;
  console.warn(
    "\n!!! SKIPPING Redis tests: redis-server is not installed (apt-get install redis-server). " +
      "Set CI=1 to make this a failure. !!!\n",
  );
  return true;
}

function redisBinary(): string | null {
  for (const dir of (Deno.env.get("PATH") ?? "").split(":").concat(["/usr/bin", "/usr/sbin"])) {
    try {
      const p = `${dir}/redis-server`;
      if (Deno.statSync(p).isFile) return p;
    } catch {
      // not here
    }
  }
  return null;
}

export interface RedisOptions {
  /** Append-only file with fsync every second (Redis's usual durable setting). */
  aof?: boolean;
  /**
   * A one-node Redis Cluster owning every slot: commands and scripts whose
   * keys span slots fail with CROSSSLOT, as on a real cluster.
   */
  cluster?: boolean;
  /**
   * A Redis Cluster node that owns no slots yet: a {@link RedisClusterGroup}
   * assigns them and introduces its members to each other.
   */
  clusterMember?: boolean;
  /** `cluster-node-timeout`: how long a silent master takes to be failed over (Redis: 15 s). */
  clusterNodeTimeoutMs?: number;
  /** Starts as a replica of the server on this port (`--replicaof 127.0.0.1 <port>`). */
  replicaOf?: number;
}

/**
 * Redis as the broker is pointed at it: the `--redis.*` flags of a broker
 * process, and a stop that removes every server and directory.
 */
export interface RedisBackend {
  /** Broker flags (`--redis.url=...` or `--redis.mode=... --redis.sentinels=...`). */
  readonly brokerArgs: string[];
  stop(): Promise<void>;
}

/** redis-server stopped right after its start (typically: its port was taken meanwhile). */
class RedisExitedError extends Error {}

/** A running redis-server. */
export class RedisServer implements AsyncDisposable, RedisBackend {
  private child: Deno.ChildProcess | null = null;
  /** The cluster bus port (not port + 10000, which may be taken or beyond 65535). */
  readonly busPort = freePort();

  private constructor(
    readonly port: number,
    readonly dir: string,
    private readonly opts: RedisOptions,
  ) {}

  /** Starts a server on a free port; resolves once it answers PING. */
  static async start(opts: RedisOptions = {}): Promise<RedisServer> {
    const bin = redisBinary();
    if (bin === null) {
      throw new Error("redis-server is not installed (apt-get install redis-server)");
    }
    // A free port can be taken (by another test's server or an outgoing connection) before the
    // server binds it: the server then exits at once, and another pair of ports is tried.
    for (let attempt = 1;; attempt++) {
      const dir = await Deno.makeTempDir({ prefix: "mcloudtt-redis-" });
      const server = new RedisServer(freePort(), dir, opts);
      try {
        await server.launch();
        return server;
      } catch (e) {
        await server.stop();
        if (!(e instanceof RedisExitedError) || attempt >= 3) throw e;
      }
    }
  }

  /** `redis://127.0.0.1:<port>` */
  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  get brokerArgs(): string[] {
    return [`--redis.url=${this.url}`];
  }

  /** True while the process runs (not killed). */
  get running(): boolean {
    return this.child !== null;
  }

  private async launch(): Promise<void> {
    const args = [
      "--port",
      String(this.port),
      "--bind",
      "127.0.0.1",
      "--dir",
      this.dir,
      "--save",
      "",
      "--appendonly",
      this.opts.aof ? "yes" : "no",
      "--appendfsync",
      "everysec",
      "--protected-mode",
      "no",
      "--loglevel",
      "warning",
      // A replica's first sync starts at once (the default waits 5 s for more replicas).
      "--repl-diskless-sync-delay",
      "0",
      // Announce 127.0.0.1, or CLUSTER SLOTS names no host and clients cannot follow it.
      ...(this.opts.cluster || this.opts.clusterMember
        ? ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
          .concat(["--cluster-announce-ip", "127.0.0.1", "--cluster-port", String(this.busPort)])
          .concat(
            this.opts.clusterNodeTimeoutMs === undefined
              ? []
              : ["--cluster-node-timeout", String(this.opts.clusterNodeTimeoutMs)],
          )
        : []),
      ...(this.opts.replicaOf !== undefined
        ? ["--replicaof", "127.0.0.1", String(this.opts.replicaOf)]
        : []),
    ];
    this.child = new Deno.Command(redisBinary()!, {
      args,
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    const child = this.child;
    let exited = false;
    child.status.then(() => exited = true);
    const deadline = Date.now() + 10_000;
    for (;;) {
      if (exited && this.child === child) {
        this.child = null;
        const why = await new Response(child.stderr).text().catch(() => "");
        throw new RedisExitedError(`redis-server on ${this.port} exited: ${why.trim()}`);
      }
      try {
        if ((await this.command("PING")) === "PONG") {
          if (this.opts.cluster) await this.ownAllSlots();
          return;
        }
      } catch {
        // not up yet
      }
      if (Date.now() > deadline) throw new Error(`redis-server on ${this.port} did not start`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  private async ownAllSlots(): Promise<void> {
    // A restart with its nodes.conf still owns them.
    if (!(await this.command("CLUSTER", "INFO")).includes("cluster_slots_assigned:16384")) {
      await this.command("CLUSTER", "ADDSLOTSRANGE", "0", "16383");
    }
    const deadline = Date.now() + 10_000;
    while (!(await this.command("CLUSTER", "INFO")).includes("cluster_state:ok")) {
      if (Date.now() > deadline) throw new Error(`redis cluster on ${this.port} did not come up`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /**
   * Sends one command over a fresh connection (RESP) and returns the first
   * reply line's value: for inspecting the server from a test, not for load.
   */
  command(...args: string[]): Promise<string> {
    return redisCommand(this.port, ...args);
  }

  /** Sends `sig` to the server (SIGSTOP / SIGCONT to freeze it). */
  signal(sig: Deno.Signal): void {
    try {
      this.child?.kill(sig);
    } catch {
      // already gone
    }
  }

  /** kill -9 of the server (its memory is lost; the AOF stays when enabled). */
  async kill(): Promise<void> {
    const c = this.child;
    if (c === null) return;
    this.child = null;
    try {
      c.kill("SIGCONT");
      c.kill("SIGKILL");
    } catch {
      // already gone
    }
    await c.status;
    await c.stderr.cancel().catch(() => {});
  }

  /** Kills and starts again on the same port and directory; `wipe` removes the AOF first. */
  async restart(wipe = false): Promise<void> {
    await this.kill();
    if (wipe) {
      await Deno.remove(this.dir, { recursive: true }).catch(() => {});
      await Deno.mkdir(this.dir, { recursive: true });
    }
    await this.launch();
  }

  async stop(): Promise<void> {
    await this.kill();
    await Deno.remove(this.dir, { recursive: true }).catch(() => {});
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.stop();
  }
}

/**
 * Sends one command to the redis-server on `port` over a fresh connection and
 * returns its reply as text (an integer as digits, nil as ""): for inspecting
 * a server from a test or the bench, not for load (`redisQuery` keeps arrays).
 */
export async function redisCommand(port: number, ...args: string[]): Promise<string> {
  return text(await redisQuery(port, ...args));
}

/** A reply as text; an array's items one per line (ROLE, for a regular expression). */
function text(reply: RespValue): string {
  if (Array.isArray(reply)) return reply.map(text).join("\n");
  return reply === null ? "" : String(reply);
}

/** `cmdstat_<name>` call counts from INFO commandstats. */
export async function commandStats(server: RedisServer | number): Promise<Map<string, number>> {
  const port = typeof server === "number" ? server : server.port;
  const info = await redisCommand(port, "INFO", "commandstats");
  const out = new Map<string, number>();
  for (const m of info.matchAll(/^cmdstat_([a-z|_-]+):calls=(\d+)/gm)) out.set(m[1], Number(m[2]));
  return out;
}

/** A parsed RESP reply: simple/bulk strings, integers, nil, arrays (errors throw). */
export type RespValue = string | number | null | RespValue[];

/**
 * Sends one command to the server on `port` over a fresh connection and
 * returns the whole parsed reply (arrays included): for test inspection.
 */
export async function redisQuery(port: number, ...args: string[]): Promise<RespValue> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    const enc = new TextEncoder();
    let req = `*${args.length}\r\n`;
    for (const a of args) req += `$${enc.encode(a).length}\r\n${a}\r\n`;
    await conn.write(enc.encode(req));
    let data = new Uint8Array(0);
    const buf = new Uint8Array(64 * 1024);
    for (;;) {
      const n = await conn.read(buf);
      if (n === null) throw new Error(`redis on ${port} closed the connection mid-reply`);
      const more = new Uint8Array(data.length + n);
      more.set(data);
      more.set(buf.subarray(0, n), data.length);
      data = more;
      const parsed = parseResp(data, 0);
      if (parsed !== null) return parsed[0];
    }
  } finally {
    conn.close();
  }
}

/** [value, next offset], or null when `data` does not hold a whole reply yet. */
function parseResp(data: Uint8Array, at: number): [RespValue, number] | null {
  const nl = data.indexOf(0x0a, at);
  if (nl < 0) return null;
  const head = new TextDecoder().decode(data.subarray(at + 1, nl - 1));
  switch (String.fromCharCode(data[at])) {
    case "+":
      return [head, nl + 1];
    case ":":
      return [Number(head), nl + 1];
    case "-":
      throw new Error(`redis: ${head}`);
    case "$": {
      const len = Number(head);
      if (len < 0) return [null, nl + 1];
      if (data.length < nl + 1 + len + 2) return null;
      return [new TextDecoder().decode(data.subarray(nl + 1, nl + 1 + len)), nl + 1 + len + 2];
    }
    case "*": {
      const len = Number(head);
      if (len < 0) return [null, nl + 1];
      const out: RespValue[] = [];
      let pos = nl + 1;
      for (let i = 0; i < len; i++) {
        const item = parseResp(data, pos);
        if (item === null) return null;
        out.push(item[0]);
        pos = item[1];
      }
      return [out, pos];
    }
    default:
      throw new Error(`unexpected RESP reply ${head}`);
  }
}

/** One `field:value` line of an INFO reply ("" when absent). */
export function infoField(info: string, field: string): string {
  return info.match(new RegExp(`^${field}:(.*?)\\r?$`, "m"))?.[1] ?? "";
}

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
