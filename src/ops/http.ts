/**
 * The operations HTTP endpoint: `/healthz` (liveness), `/readyz` (readiness, for load balancers
 * and Kubernetes probes) and `/metrics` (Prometheus text format). Plain Deno.serve: it is off
 * the MQTT path and sees a request every few seconds.
 */
import { getLogger } from "@logtape/logtape";

const log = getLogger(["mcloudtt", "http"]);

export interface HttpOptions {
  hostname: string;
  port: number;
  /** Why the broker should not get new clients now; empty when ready. */
  problems(): readonly string[];
  /** The Prometheus exposition and its content type. */
  metrics(): Promise<{ body: string; contentType: string }>;
}

export interface HttpEndpoint {
  readonly hostname: string;
  readonly port: number;
  close(): Promise<void>;
}

function json(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body) + "\n", {
    status,
    headers: { "content-type": "application/json", "cache-control": "no-store" },
  });
}

async function route(req: Request, opts: HttpOptions): Promise<Response> {
  if (req.method !== "GET" && req.method !== "HEAD") {
    return new Response("method not allowed\n", { status: 405, headers: { allow: "GET, HEAD" } });
  }
  let path: string;
  try {
    path = new URL(req.url).pathname;
  } catch {
    // Deno builds the URL from the client's Host header: a malformed one is the client's error.
    return new Response("bad request\n", { status: 400 });
  }
  switch (path) {
    case "/healthz":
      // Answering at all proves the event loop runs.
      return json(200, { status: "ok" });
    case "/readyz": {
      const problems = opts.problems();
      return problems.length === 0
        ? json(200, { status: "ready" })
        : json(503, { status: "not ready", problems });
    }
    case "/metrics": {
      const m = await opts.metrics();
      return new Response(m.body, { status: 200, headers: { "content-type": m.contentType } });
    }
    default:
      return new Response("not found: try /healthz, /readyz or /metrics\n", { status: 404 });
  }
}

/** How long a restart of the endpoint waits after it stopped on its own (then again, while it fails). */
const RESTART_MS = 1000;

/**
 * Starts the endpoint; resolves once it is listening. Should the server stop on its own (Deno's
 * accept loop ends at a failed accept, as when the process is out of file descriptors), it is
 * started again on the same address, once a second until that works: an endpoint that went
 * away would fail its liveness probe and get a healthy broker restarted.
 */
export async function startHttp(opts: HttpOptions): Promise<HttpEndpoint> {
  let server = await serve(opts);
  const { hostname, port } = server.addr;
  let closing = false;
  let retry: ReturnType<typeof setTimeout> | undefined;
  const watch = (s: Deno.HttpServer<Deno.NetAddr>) => {
    const ended = (e?: unknown) => {
      if (closing) return;
      log.error(
        "HTTP endpoint on {hostname}:{port} stopped accepting ({error}); starting it again",
        {
          hostname,
          port,
          error: e instanceof Error ? e.message : "no error given",
        },
      );
      restart();
    };
    s.finished.then(() => ended(), ended);
  };
  const restart = () => {
    retry = setTimeout(async () => {
      if (closing) return;
      try {
        server = await serve({ ...opts, hostname, port });
        if (closing) return void server.shutdown();
        log.warning("HTTP endpoint on {hostname}:{port} accepting again", { hostname, port });
        watch(server);
      } catch (e) {
        log.error("HTTP endpoint on {hostname}:{port} could not start again: {error}", {
          hostname,
          port,
          error: e instanceof Error ? e.message : String(e),
        });
        restart();
      }
    }, RESTART_MS);
  };
  watch(server);
  log.info("HTTP endpoint (/healthz, /readyz, /metrics) on {hostname}:{port}", { hostname, port });
  return {
    hostname,
    port,
    close: () => {
      closing = true;
      clearTimeout(retry);
      return server.shutdown();
    },
  };
}

/** One Deno.serve on `opts`' address; resolves once it listens, rejects when it cannot. */
async function serve(opts: HttpOptions): Promise<Deno.HttpServer<Deno.NetAddr>> {
  let resolveAddr!: () => void;
  const listening = new Promise<void>((r) => (resolveAddr = r));
  const server = Deno.serve({
    hostname: opts.hostname,
    port: opts.port,
    onListen: () => resolveAddr(),
    onError: (e) => {
      log.error("HTTP request failed: {error}", { error: e });
      return new Response("internal error\n", { status: 500 });
    },
  }, (req) => route(req, opts));
  // A bind failure rejects `finished`; without a race the start would wait forever.
  await Promise.race([
    listening,
    server.finished.then(() => {
      throw new Error(`HTTP endpoint on ${opts.hostname}:${opts.port} stopped at start`);
    }),
  ]);
  return server;
}
