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
}

/** A running redis-server. */
export class RedisServer implements AsyncDisposable {
  private child: Deno.ChildProcess | null = null;

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
    const dir = await Deno.makeTempDir({ prefix: "mcloudtt-redis-" });
    const server = new RedisServer(freePort(), dir, opts);
    await server.launch();
    return server;
  }

  /** `redis://127.0.0.1:<port>` */
  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
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
      // Announce 127.0.0.1, or CLUSTER SLOTS names no host and clients cannot follow it.
      ...(this.opts.cluster
        ? ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
          .concat(["--cluster-announce-ip", "127.0.0.1"])
        : []),
    ];
    this.child = new Deno.Command(redisBinary()!, {
      args,
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    const deadline = Date.now() + 10_000;
    for (;;) {
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

  /** kill -9 of the server (its memory is lost; the AOF stays when enabled). */
  async kill(): Promise<void> {
    const c = this.child;
    if (c === null) return;
    this.child = null;
    try {
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
 * Sends one command to the redis-server on `port` over a fresh connection
 * (RESP) and returns the first reply line's value: for inspecting a server
 * from a test or the bench, not for load.
 */
export async function redisCommand(port: number, ...args: string[]): Promise<string> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    const enc = new TextEncoder();
    let req = `*${args.length}\r\n`;
    for (const a of args) req += `$${enc.encode(a).length}\r\n${a}\r\n`;
    await conn.write(enc.encode(req));
    const buf = new Uint8Array(64 * 1024);
    let text = "";
    for (;;) {
      const n = await conn.read(buf);
      if (n === null) break;
      text += new TextDecoder().decode(buf.subarray(0, n));
      if (text.includes("\r\n") && isComplete(text)) break;
    }
    return parseReply(text);
  } finally {
    conn.close();
  }
}

function isComplete(text: string): boolean {
  if (text[0] === "$") {
    const nl = text.indexOf("\r\n");
    const len = Number(text.slice(1, nl));
    return len < 0 || text.length >= nl + 2 + len + 2;
  }
  // Simple strings, errors, integers, and arrays (read until the sender stops is good enough
  // for short test replies).
  return text[0] !== "*" || text.endsWith("\r\n");
}

function parseReply(text: string): string {
  const nl = text.indexOf("\r\n");
  const head = text.slice(0, nl);
  switch (text[0]) {
    case "+":
    case ":":
      return head.slice(1);
    case "-":
      throw new Error(`redis: ${head.slice(1)}`);
    case "$": {
      const len = Number(head.slice(1));
      return len < 0 ? "" : text.slice(nl + 2, nl + 2 + len);
    }
    default:
      return text;
  }
}

/** `cmdstat_<name>` call counts from INFO commandstats. */
export async function commandStats(server: RedisServer | number): Promise<Map<string, number>> {
  const port = typeof server === "number" ? server : server.port;
  const info = await redisCommand(port, "INFO", "commandstats");
  const out = new Map<string, number>();
  for (const m of info.matchAll(/^cmdstat_([a-z|_-]+):calls=(\d+)/gm)) out.set(m[1], Number(m[2]));
  return out;
}
