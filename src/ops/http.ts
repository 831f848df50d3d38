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
  switch (new URL(req.url).pathname) {
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

/** Starts the endpoint; resolves once it is listening. */
export async function startHttp(opts: HttpOptions): Promise<HttpEndpoint> {
  let resolveAddr!: (a: Deno.NetAddr) => void;
  const listening = new Promise<Deno.NetAddr>((r) => (resolveAddr = r));
  const server = Deno.serve({
    hostname: opts.hostname,
    port: opts.port,
    onListen: (addr) => resolveAddr(addr as Deno.NetAddr),
    onError: (e) => {
      log.error("HTTP request failed: {error}", { error: e });
      return new Response("internal error\n", { status: 500 });
    },
  }, (req) => route(req, opts));
  // A bind failure rejects `finished`; without a race the start would wait forever.
  const addr = await Promise.race([
    listening,
    server.finished.then(() => {
      throw new Error(`HTTP endpoint on ${opts.hostname}:${opts.port} stopped at start`);
    }),
  ]);
  log.info("HTTP endpoint (/healthz, /readyz, /metrics) on {hostname}:{port}", {
    hostname: addr.hostname,
    port: addr.port,
  });
  return {
    hostname: addr.hostname,
    port: addr.port,
    close: () => server.shutdown(),
  };
}
