/**
 * Request timeouts that really close the socket, for the BigQuery client library.
 *
 * The library (@google-cloud/common) sends every request through teeny-request, which runs it
 * with node-fetch 3. node-fetch 3 ignores the `timeout` option the library passes (it was
 * removed in 3.0 in favour of AbortSignal), and teeny-request passes no signal: a request the
 * endpoint never answers stays open for good, and every retry opens one more socket. The only
 * per-request hook teeny-request leaves is its agent: for the library's `forever: true`
 * requests it takes the agent from its exported `pool` map ("http:forever"/"https:forever").
 * We put our own agents there; they give each request a socket inactivity timeout that destroys
 * the request (and its socket) when it fires. The request then fails with a network error, which
 * the destination counts as transient and the queue retries.
 *
 * The version in the specifier must be the one @google-cloud/common resolves (deno.lock): another
 * copy would have its own pool. tests/sinks/bigquery_limits_test.ts fails if it stops working.
 */
import http from "node:http";
import https from "node:https";
// An internal module of a transitive dependency, pinned to the exact version the library resolves
// (not an import-map entry: nothing else may use teeny-request).
// deno-lint-ignore no-import-prefix
import { pool } from "npm:teeny-request@11.1.1/build/src/agents.js";

/** The request that outlived its timeout; the destination sorts it as a network error. */
export class RequestTimeoutError extends Error {
  override name = "RequestTimeoutError";
  readonly code = "ETIMEDOUT";
}

/** Timeouts of the destinations using the agents; the longest applies, so none is cut early. */
const timeouts = new Map<symbol, number>();
/** The library's own default, used while no destination is registered. */
const DEFAULT_TIMEOUT_MS = 60_000;

function currentTimeout(): number {
  let ms = 0;
  for (const t of timeouts.values()) ms = Math.max(ms, t);
  return ms || DEFAULT_TIMEOUT_MS;
}

/** The part of a node:http ClientRequest used here. */
interface TimedRequest {
  destroy(e: Error): unknown;
  once(event: "close", cb: () => void): unknown;
}

/**
 * A deadline for the whole request, answer included: a socket inactivity timeout never fires
 * for an endpoint that trickles its answer a byte at a time, and such requests piled up.
 */
function armTimeout(req: TimedRequest): void {
  const ms = currentTimeout();
  const timer = setTimeout(
    () => req.destroy(new RequestTimeoutError(`no complete answer within ${ms} ms`)),
    ms,
  );
  req.once("close", () => clearTimeout(timer));
}

/** Agent.addRequest: where node:http hands an agent each request; internal, so not in its types. */
interface AddRequest {
  addRequest(req: http.ClientRequest, options: http.RequestOptions): void;
}

class TimeoutHttpAgent extends http.Agent {
  addRequest(req: http.ClientRequest, options: http.RequestOptions): void {
    armTimeout(req);
    (http.Agent.prototype as unknown as AddRequest).addRequest.call(this, req, options);
  }
}

class TimeoutHttpsAgent extends https.Agent {
  addRequest(req: http.ClientRequest, options: http.RequestOptions): void {
    armTimeout(req);
    (https.Agent.prototype as unknown as AddRequest).addRequest.call(this, req, options);
  }
}

// The options teeny-request gives its own pooled agents (keepAlive, no socket limit).
const httpAgent = new TimeoutHttpAgent({ keepAlive: true, maxSockets: Infinity });
const httpsAgent = new TimeoutHttpsAgent({ keepAlive: true, maxSockets: Infinity });

/**
 * Makes the library's requests time out after `timeoutMs` (the longest of all registered
 * destinations); the returned function unregisters.
 */
export function useRequestTimeout(timeoutMs: number): () => void {
  const key = Symbol("bigquery destination");
  timeouts.set(key, timeoutMs);
  pool.set("http:forever", httpAgent);
  pool.set("https:forever", httpsAgent);
  return () => {
    timeouts.delete(key);
  };
}
