/**
 * A real `redis-server` for tests: started on a free loopback port in its own
 * temporary directory, restartable (with or without its AOF file) and killed
 * at the end. Tests that need it skip loudly when redis-server is missing, and
 * fail instead when the env var CI is set. Groups of servers (Sentinel, Redis
 * Cluster) are in redis_groups.ts, commands to inspect a server in redis_resp.ts.
 */
import { freePort } from "./broker.ts";
import { redisCommand } from "./redis_resp.ts";

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

/** The redis-server binary on PATH (or /usr/bin, /usr/sbin); null when there is none. */
export function redisBinary(): string | null {
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
