/**
 * `deno task cluster`: a local cluster for trying mcloudtt out. Starts a
 * `redis-server` (in memory, on a free loopback port) and three broker nodes
 * on consecutive ports (1883, 1884, 1885 by default), plain TCP, state in
 * Redis only; their log lines are prefixed with the node's name. Ctrl-C stops
 * everything.
 *
 *   deno task cluster [--nodes N] [--port FIRST_PORT] [--redis-port PORT]
 */

import { freePort, isFree } from "./ports.ts";
import { PERMISSION_FLAGS } from "../../src/ops/permissions.ts";

const root = new URL("../../", import.meta.url).pathname;

const USAGE = "usage: deno task cluster [--nodes N] [--port FIRST_PORT] [--redis-port PORT]";

/**
 * The `deno run` arguments of node `n` (from 1): the shipped permissions of `deno task start`
 * (src/ops/permissions.ts), plain TCP on `port`, everything on the loopback address, state in the
 * Redis at `redisUrl` only.
 */
export function nodeArgs(n: number, port: number, redisUrl: string): string[] {
  return [
    "run",
    ...PERMISSION_FLAGS,
    "main.ts",
    "--general.secure=false",
    "--general.bind=127.0.0.1",
    "--storage.enabled=false",
    "--listeners.ws.enabled=false",
    `--ports.tcp=${port}`,
    "--redis.enabled=true",
    `--redis.url=${redisUrl}`,
    `--cluster.node_id=node-${n}`,
    // Each node picks a free port for /healthz, /readyz and /metrics and logs it; on the
    // loopback address like its MQTT port (the default bind, 0.0.0.0, is for deployments).
    "--http.bind=127.0.0.1",
    "--http.port=0",
  ];
}

interface Options {
  nodes: number;
  port: number;
  redisPort: number;
}

function parseArgs(args: string[]): Options | null {
  const opts: Options = { nodes: 3, port: 1883, redisPort: 0 };
  for (let i = 0; i < args.length; i++) {
    const [flag, inline] = args[i].split("=", 2);
    const value = () => {
      const v = Number(inline ?? args[++i]);
      if (!Number.isInteger(v) || v < 0 || v > 65535) throw new Error(`${flag} needs a number`);
      return v;
    };
    if (flag === "--nodes") opts.nodes = value();
    else if (flag === "--port") opts.port = value();
    else if (flag === "--redis-port") opts.redisPort = value();
    else if (flag === "-h" || flag === "--help") return null;
    else throw new Error(`unknown option ${args[i]}`);
  }
  if (opts.nodes < 1) throw new Error("--nodes must be at least 1");
  return opts;
}

/** Copies a child's output to ours, each line prefixed with `name`. */
async function relay(name: string, stream: ReadableStream<Uint8Array>, to: typeof console.log) {
  let rest = "";
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
    const lines = (rest + chunk).split("\n");
    rest = lines.pop()!;
    for (const line of lines) to(`[${name}] ${line}`);
  }
  if (rest !== "") to(`[${name}] ${rest}`);
}

/** Resolves once something accepts connections on `port` (or rejects after `ms`). */
async function listening(port: number, ms: number, exited: () => boolean): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      (await Deno.connect({ hostname: "127.0.0.1", port })).close();
      return;
    } catch {
      if (exited()) throw new Error(`the process for port ${port} exited`);
      if (Date.now() > deadline) throw new Error(`nothing listens on port ${port} after ${ms} ms`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

interface Child {
  name: string;
  proc: Deno.ChildProcess;
  exited: boolean;
  done: Promise<unknown>;
}

function spawn(name: string, cmd: string, args: string[], cwd: string): Child {
  const proc = new Deno.Command(cmd, {
    args,
    cwd,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const child: Child = { name, proc, exited: false, done: Promise.resolve() };
  child.done = Promise.all([
    proc.status.then(() => child.exited = true),
    relay(name, proc.stdout, console.log),
    relay(name, proc.stderr, console.error),
  ]);
  return child;
}

async function main(): Promise<number> {
  let opts: Options | null;
  try {
    opts = parseArgs(Deno.args);
  } catch (e) {
    console.error(`${(e as Error).message}\n${USAGE}`);
    return 2;
  }
  if (opts === null) {
    console.log(USAGE);
    return 0;
  }
  // A port already taken (`deno task start` listens on 1883) would look like a node that came
  // up, and "cluster ready" would be printed before that node failed: refuse it first.
  const wanted = Array.from({ length: opts.nodes }, (_, i) => opts!.port + i);
  if (opts.redisPort !== 0) wanted.push(opts.redisPort);
  const taken = wanted.find((p) => !isFree(p));
  if (taken !== undefined) {
    console.error(
      `port ${taken} is already in use (another broker, e.g. \`deno task start\` on 1883?): ` +
        `stop it, or choose other ports with --port FIRST_PORT / --redis-port PORT`,
    );
    return 1;
  }
  const redisPort = opts.redisPort || freePort();
  const dir = await Deno.makeTempDir({ prefix: "mcloudtt-cluster-" });
  const children: Child[] = [];
  let stopping: Promise<void> | null = null;
  const stopAll = () =>
    stopping ??= (async () => {
      // Nodes first (they leave the cluster cleanly), then Redis.
      for (const c of children.slice(1)) if (!c.exited) c.proc.kill("SIGTERM");
      await Promise.all(children.slice(1).map((c) => c.done));
      if (children[0] && !children[0].exited) children[0].proc.kill("SIGTERM");
      await children[0]?.done;
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    })();
  for (const sig of ["SIGINT", "SIGTERM"] as const) {
    Deno.addSignalListener(sig, () => stopAll().then(() => Deno.exit(0)));
  }
  try {
    try {
      children.push(spawn("redis", "redis-server", [
        "--port",
        String(redisPort),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        dir,
      ], dir));
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) {
        console.error(
          "redis-server is not installed: `sudo apt-get install redis-server` " +
            "(or `brew install redis`), then run `deno task cluster` again",
        );
        return 1;
      }
      throw e;
    }
    await listening(redisPort, 10_000, () => children[0].exited);
    const url = `redis://127.0.0.1:${redisPort}`;
    for (let i = 0; i < opts.nodes; i++) {
      const port = opts.port + i;
      children.push(spawn(`node-${i + 1}`, Deno.execPath(), nodeArgs(i + 1, port, url), root));
    }
    await Promise.all(
      children.slice(1).map((c, i) => listening(opts.port + i, 60_000, () => c.exited)),
    );
    const ports = children.slice(1).map((_, i) => opts.port + i);
    console.log(
      `\ncluster ready: ${opts.nodes} nodes on 127.0.0.1 ports ${ports.join(", ")} ` +
        `(plain TCP), Redis on ${redisPort}. Try:\n` +
        `  mosquitto_sub -p ${ports.at(-1)} -t 'demo/#' -v &\n` +
        `  mosquitto_pub -p ${ports[0]} -t demo/hello -m 'hello across nodes'\n` +
        `Ctrl-C stops the cluster.\n`,
    );
    // Runs until a child dies or a signal stops everything.
    await Promise.race(children.map((c) => c.proc.status));
    if (stopping !== null) {
      await stopping;
      return 0;
    }
    const dead = children.find((c) => c.exited)!;
    console.error(`${dead.name} exited; stopping the cluster`);
    await stopAll();
    return 1;
  } catch (e) {
    console.error(`cannot start the cluster: ${(e as Error).message}`);
    await stopAll();
    return 1;
  }
}

if (import.meta.main) Deno.exit(await main());
