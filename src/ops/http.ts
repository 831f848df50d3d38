/**
 * The operations HTTP endpoint: `/healthz` (liveness), `/readyz` (readiness, for load balancers
 * and Kubernetes probes) and `/metrics` (Prometheus text format). It is off the MQTT path and
 * sees a request every few seconds, from anyone who can reach its port (0.0.0.0 by default), so
 * what a connection may hold is bounded: a request must arrive within the request deadline
 * ([http] request_timeout) of the connection, and its response be taken by the client within
 * as long again; one request is answered per connection, which is then closed; and at most
 * [http] max_connections are open, a new one closing the oldest that waits for its request. node:http rather than
 * Deno.serve, which has neither bound (a silent or one-byte-a-second client kept its connection
 * for minutes) and ends its accept loop at the first failed accept.
 */
import http from "node:http";
import type { Socket } from "node:net";
import { getLogger } from "@logtape/logtape";
import { RateLimitedLog } from "../sinks/stats.ts";
import { oneRequestHead } from "../transport/http_reads.ts";
import { closeWithGrace, listenServer, trackSockets } from "../transport/node_server.ts";

const log = getLogger(["mcloudtt", "http"]);

/**
 * Time a connection gets to deliver its whole request, from its start, and as long again to read
 * the response, unless given ([http] request_timeout): probes and scrapes send theirs at once
 * and read the answer, and Prometheus opens a new connection when the old one was closed.
 */
export const REQUEST_DEADLINE_MS = 10_000;

/**
 * Open connections at most unless given ([http] max_connections). Probes and scrapers need a
 * handful; the bound keeps what the port can hold far below the process's descriptor limit.
 * At it a new connection closes the oldest one waiting for a request, or is closed itself when
 * every connection is being answered.
 */
export const MAX_CONNECTIONS = 1024;

export interface HttpOptions {
  hostname: string;
  port: number;
  /** Why the broker should not get new clients now; empty when ready. */
  problems(): readonly string[];
  /** The Prometheus exposition and its content type. */
  metrics(): Promise<{ body: string; contentType: string }>;
  /** REQUEST_DEADLINE_MS unless given ([http] request_timeout). */
  requestDeadlineMs?: number;
  /** MAX_CONNECTIONS unless given ([http] max_connections). */
  maxConnections?: number;
}

export interface HttpEndpoint {
  readonly hostname: string;
  readonly port: number;
  close(): Promise<void>;
}

interface Reply {
  status: number;
  headers: Record<string, string>;
  body: string;
}

const TEXT = { "content-type": "text/plain" };

function json(status: number, body: unknown): Reply {
  return {
    status,
    headers: { "content-type": "application/json", "cache-control": "no-store" },
    body: JSON.stringify(body) + "\n",
  };
}

/**
 * The path of a request target: origin form (`/metrics?x`) or absolute form
 * (`http://host/metrics`); null when it is neither.
 */
export function targetPath(target: string): string | null {
  let path = target;
  if (!path.startsWith("/")) {
    try {
      path = new URL(path).pathname;
    } catch {
      return null;
    }
  }
  const q = path.search(/[?#]/);
  return q < 0 ? path : path.slice(0, q);
}

async function route(method: string, target: string, opts: HttpOptions): Promise<Reply> {
  if (method !== "GET" && method !== "HEAD") {
    return {
      status: 405,
      headers: { ...TEXT, allow: "GET, HEAD" },
      body: "method not allowed\n",
    };
  }
  switch (targetPath(target)) {
    case null:
      return { status: 400, headers: TEXT, body: "bad request\n" };
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
      return { status: 200, headers: { "content-type": m.contentType }, body: m.body };
    }
    default:
      return {
        status: 404,
        headers: TEXT,
        body: "not found: try /healthz, /readyz or /metrics\n",
      };
  }
}

/** Starts the endpoint; resolves once it is listening. */
export async function startHttp(opts: HttpOptions): Promise<HttpEndpoint> {
  const deadlineMs = opts.requestDeadlineMs ?? REQUEST_DEADLINE_MS;
  const maxConnections = opts.maxConnections ?? MAX_CONNECTIONS;
  const deadlines = new WeakMap<Socket, ReturnType<typeof setTimeout>>();
  // Cuts `socket` unless a request arrives within the deadline.
  const armDeadline = (socket: Socket) => {
    clearTimeout(deadlines.get(socket));
    deadlines.set(socket, setTimeout(() => socket.destroy(), deadlineMs));
  };
  // Sockets waiting for their request, oldest first: at the bound a new connection closes the
  // oldest of them. Refusing the new one instead let one peer holding
  // every connection with silent sockets keep the kubelet's probes out (1,100 sockets, every
  // /healthz refused until they timed out; three failed liveness probes restart the pod).
  const waiting = new Set<Socket>();
  const evictedLog = new RateLimitedLog((m) => log.warn(m));
  const server = http.createServer((req, res) => {
    const socket = req.socket;
    // One request per connection, closed once answered: its head alone reaches the parser
    // (http_reads.ts), so pipelined requests are never parsed (a client writing 2,000 of them
    // and reading nothing held ~30 MB per connection; 200 such, RSS +966 MiB). Probes and
    // Prometheus open a connection per request anyway.
    res.shouldKeepAlive = false;
    waiting.delete(socket);
    // The deadline keeps running until the response is out: a client that never reads it would
    // otherwise hold the socket and the body in memory for ever.
    armDeadline(socket);
    route(req.method ?? "GET", req.url ?? "/", opts).then(
      (r) => {
        res.writeHead(r.status, { ...r.headers, "content-length": Buffer.byteLength(r.body) });
        res.end(req.method === "HEAD" ? undefined : r.body);
      },
      (e) => {
        log.error("HTTP request failed: {error}", { error: e });
        res.writeHead(500, TEXT);
        res.end("internal error\n");
      },
    );
  });
  const sockets = trackSockets(server);
  // One request per connection: its head alone reaches the parser (http_reads.ts).
  oneRequestHead(server, "connection");
  server.on("connection", (socket: Socket) => {
    // trackSockets (registered first) has counted this one already; one closed to make room is
    // counted until its close event, a moment later.
    if (sockets.size > maxConnections) {
      const oldest = waiting.values().next();
      if (oldest.done) {
        socket.destroy();
        return;
      }
      waiting.delete(oldest.value);
      oldest.value.destroy();
      evictedLog.note(
        `closed the oldest connection waiting for a request to make room for a new one: ` +
          `${maxConnections} open (http.max_connections)`,
      );
    }
    waiting.add(socket);
    armDeadline(socket);
    socket.once("close", () => {
      clearTimeout(deadlines.get(socket));
      waiting.delete(socket);
    });
  });
  // A malformed request is the client's: node answers 400; nothing to log.
  server.on("clientError", (_e: Error, socket: Socket) => socket.destroy());
  const addr = await listenServer(server, opts.hostname, opts.port);
  log.info("HTTP endpoint (/healthz, /readyz, /metrics) on {hostname}:{port}", {
    hostname: addr.address,
    port: addr.port,
  });
  return {
    hostname: addr.address,
    port: addr.port,
    close: () => {
      server.closeAllConnections?.();
      return closeWithGrace(server, sockets);
    },
  };
}
