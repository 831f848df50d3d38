/**
 * A local stand-in for the BigQuery REST API, enough for the official client
 * library as the topic log uses it: datasets.get/insert, tables.get/insert and
 * tabledata.insertAll at their real paths under /bigquery/v2. It keeps what
 * arrives, and can be told to fail: HTTP errors, slow answers, a stall until
 * released, per-row insertErrors and malformed answers. Like Like
 * BigQuery, it refuses an insertAll body over `requestLimit` bytes (10 MB) with a 400.
 */

/** A row as insertAll receives it. */
export interface WireRow {
  insertId?: string;
  json: Record<string, unknown>;
}

/** One insertAll request as it arrived, and how it was answered. */
export interface InsertCall {
  table: string;
  rows: WireRow[];
  skipInvalidRows: boolean;
  status: number;
  /** Authorization header, or null when none was sent. */
  authorization: string | null;
}

/** What to do with the next insertAll request. */
export type Fault =
  | { status: number; reason?: string } // answer with this HTTP status (and errors[].reason), insert nothing
  | { body: string; type?: string } // answer 200 with this body (and content type), insert nothing
  | { delayMs: number } // answer normally after a delay
  | { rejectIndexes: number[]; reason?: string }; // per-row insertErrors for these rows

export interface FakeBigQuery {
  readonly url: string;
  readonly port: number;
  /** Every insertAll request, in arrival order. */
  readonly calls: InsertCall[];
  /** Rows inserted (duplicates included), in order. */
  readonly inserted: WireRow[];
  /** datasets and tables: "dataset" or "dataset.table" -> resource. */
  readonly datasets: Map<string, Record<string, unknown>>;
  readonly tables: Map<string, Record<string, unknown>>;
  /** Requests seen, as "METHOD path". */
  readonly log: string[];
  /** Answers the next insertAll requests with these faults, one each, in order. */
  script(...faults: Fault[]): void;
  /** Answers every insertAll with this status until set to 0. */
  failAll(status: number): void;
  /** Holds every insertAll answer until release() (a stalled endpoint). */
  stall(): void;
  release(): void;
  /** Answers every request (set-up ones too) this many ms late; 0 = at once. */
  delayAll(ms: number): void;
  /** Largest insertAll body accepted (BigQuery's limit is 10485760 bytes); larger ones get a 400. */
  requestLimit: number;
  /** Sizes in bytes of the insertAll bodies received. */
  readonly requestSizes: number[];
  /** Rows for which this returns a reason are refused with reason "invalid". */
  rejectWhen(pred: ((row: WireRow) => string | null) | null): void;
  /** Resolves once `n` rows have been inserted. */
  waitForRows(n: number, timeoutMs?: number): Promise<void>;
  /** Ids inserted more than once. */
  duplicates(): string[];
  close(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

const PREFIX = "/bigquery/v2/projects/";

function json(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json; charset=UTF-8" },
  });
}

function apiError(status: number, reason: string, message: string): Response {
  return json(status, { error: { code: status, message, errors: [{ reason, message }] } });
}

/** Starts the fake on 127.0.0.1 and a free port. */
export function startFakeBigQuery(): FakeBigQuery {
  const calls: InsertCall[] = [];
  const inserted: WireRow[] = [];
  const datasets = new Map<string, Record<string, unknown>>();
  const tables = new Map<string, Record<string, unknown>>();
  const log: string[] = [];
  const faults: Fault[] = [];
  let failStatus = 0;
  let gate: { promise: Promise<void>; open: () => void } | null = null;
  let rejectPred: ((row: WireRow) => string | null) | null = null;
  const rowWaiters: { n: number; resolve: () => void }[] = [];
  const requestSizes: number[] = [];
  const state = { requestLimit: 10485760, delayMs: 0 };

  function notifyRows(): void {
    for (let i = rowWaiters.length - 1; i >= 0; i--) {
      if (inserted.length >= rowWaiters[i].n) {
        rowWaiters[i].resolve();
        rowWaiters.splice(i, 1);
      }
    }
  }

  async function insertAll(req: Request, table: string): Promise<Response> {
    const bytes = new Uint8Array(await req.arrayBuffer());
    requestSizes.push(bytes.length);
    if (bytes.length > state.requestLimit) {
      // What BigQuery answers (the whole request refused; nothing inserted).
      const message = `Request payload size exceeds the limit: ${state.requestLimit} bytes.`;
      return json(400, {
        error: {
          code: 400,
          message,
          errors: [{ message, domain: "global", reason: "badRequest" }],
          status: "INVALID_ARGUMENT",
        },
      });
    }
    const body = JSON.parse(new TextDecoder().decode(bytes)) as {
      rows?: WireRow[];
      skipInvalidRows?: boolean;
    };
    const rows = body.rows ?? [];
    const call: InsertCall = {
      table,
      rows,
      skipInvalidRows: body.skipInvalidRows === true,
      status: 200,
      authorization: req.headers.get("authorization"),
    };
    calls.push(call);
    if (gate) await Promise.race([gate.promise, abandoned(req)]);
    const fault = faults.shift();
    if (fault && "delayMs" in fault) await new Promise((r) => setTimeout(r, fault.delayMs));
    if (fault && "body" in fault) {
      return new Response(fault.body, {
        status: 200,
        headers: { "content-type": fault.type ?? "application/json; charset=UTF-8" },
      });
    }
    const status = fault && "status" in fault ? fault.status : failStatus;
    if (status !== 0) {
      call.status = status;
      const reason = fault && "reason" in fault && fault.reason
        ? fault.reason
        : status === 429
        ? "rateLimitExceeded"
        : status >= 500
        ? "backendError"
        : "invalid";
      return apiError(status, reason, `injected HTTP ${status}`);
    }
    if (!tables.has(table)) {
      call.status = 404;
      return apiError(404, "notFound", `Not found: Table ${table}`);
    }
    const bad = new Map<number, string>();
    if (fault && "rejectIndexes" in fault) {
      for (const i of fault.rejectIndexes) bad.set(i, fault.reason ?? "injected rejection");
    }
    if (rejectPred) {
      rows.forEach((row, i) => {
        const why = rejectPred!(row);
        if (why !== null) bad.set(i, why);
      });
    }
    const insertErrors: unknown[] = [];
    rows.forEach((_row, i) => {
      const why = bad.get(i);
      if (why !== undefined) {
        insertErrors.push({ index: i, errors: [{ reason: "invalid", message: why }] });
      } else if (bad.size > 0 && !call.skipInvalidRows) {
        insertErrors.push({ index: i, errors: [{ reason: "stopped", message: "" }] });
      }
    });
    if (bad.size === 0 || call.skipInvalidRows) {
      for (const [i, row] of rows.entries()) {
        if (!bad.has(i)) inserted.push(row);
      }
      notifyRows();
    }
    return json(200, {
      kind: "bigquery#tableDataInsertAllResponse",
      ...(insertErrors.length > 0 ? { insertErrors } : {}),
    });
  }

  /** Resolves when the client closes the request's connection. */
  function abandoned(req: Request): Promise<void> {
    return new Promise((resolve) => {
      if (req.signal.aborted) resolve();
      req.signal.addEventListener("abort", () => resolve(), { once: true });
    });
  }

  async function handle(req: Request): Promise<Response> {
    const url = new URL(req.url);
    log.push(`${req.method} ${url.pathname}`);
    if (state.delayMs > 0) await new Promise((r) => setTimeout(r, state.delayMs));
    if (!url.pathname.startsWith(PREFIX)) return apiError(404, "notFound", "unknown path");
    const parts = url.pathname.slice(PREFIX.length).split("/").map(decodeURIComponent);
    // [project, "datasets", dataset?, "tables", table?, "insertAll"?]
    const [project, d, dataset, t, table, action] = parts;
    if (d !== "datasets") return apiError(404, "notFound", "unknown path");
    if (dataset === undefined || dataset === "") {
      if (req.method !== "POST") return apiError(405, "invalid", "method");
      const body = await req.json() as { datasetReference?: { datasetId?: string } };
      const id = body.datasetReference?.datasetId ?? "";
      if (datasets.has(id)) return apiError(409, "duplicate", `Already Exists: Dataset ${id}`);
      const resource = { ...body, id: `${project}:${id}`, kind: "bigquery#dataset" };
      datasets.set(id, resource);
      return json(200, resource);
    }
    if (t === undefined) {
      if (req.method !== "GET") return apiError(405, "invalid", "method");
      const ds = datasets.get(dataset);
      return ds ? json(200, ds) : apiError(404, "notFound", `Not found: Dataset ${dataset}`);
    }
    if (t !== "tables") return apiError(404, "notFound", "unknown path");
    if (!datasets.has(dataset)) return apiError(404, "notFound", `Not found: Dataset ${dataset}`);
    if (table === undefined || table === "") {
      if (req.method !== "POST") return apiError(405, "invalid", "method");
      const body = await req.json() as { tableReference?: { tableId?: string } };
      const id = `${dataset}.${body.tableReference?.tableId ?? ""}`;
      if (tables.has(id)) return apiError(409, "duplicate", `Already Exists: Table ${id}`);
      const resource = { ...body, id: `${project}:${id}`, kind: "bigquery#table" };
      tables.set(id, resource);
      return json(200, resource);
    }
    const key = `${dataset}.${table}`;
    if (action === "insertAll" && req.method === "POST") return await insertAll(req, key);
    if (action === undefined && req.method === "GET") {
      const tb = tables.get(key);
      return tb ? json(200, tb) : apiError(404, "notFound", `Not found: Table ${key}`);
    }
    return apiError(404, "notFound", "unknown path");
  }

  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    (req) => handle(req).catch((e) => apiError(500, "internalError", String(e))),
  );
  const port = server.addr.port;
  const close = async () => {
    gate?.open();
    await server.shutdown();
  };
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    calls,
    inserted,
    datasets,
    tables,
    log,
    script: (...f) => faults.push(...f),
    failAll: (status) => (failStatus = status),
    stall() {
      if (gate) return;
      let open!: () => void;
      const promise = new Promise<void>((r) => (open = r));
      gate = { promise, open };
    },
    release() {
      gate?.open();
      gate = null;
    },
    rejectWhen: (pred) => (rejectPred = pred),
    delayAll: (ms) => (state.delayMs = ms),
    get requestLimit() {
      return state.requestLimit;
    },
    set requestLimit(n: number) {
      state.requestLimit = n;
    },
    requestSizes,
    waitForRows(n, timeoutMs = 5000) {
      if (inserted.length >= n) return Promise.resolve();
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          reject(new Error(`fake BigQuery: ${inserted.length} rows inserted, waited for ${n}`));
        }, timeoutMs);
        rowWaiters.push({
          n,
          resolve: () => {
            clearTimeout(timer);
            resolve();
          },
        });
      });
    },
    duplicates() {
      const seen = new Set<string>();
      const dup: string[] = [];
      for (const r of inserted) {
        const id = r.insertId ?? "";
        if (seen.has(id)) dup.push(id);
        seen.add(id);
      }
      return dup;
    },
    close,
    [Symbol.asyncDispose]: close,
  };
}

/**
 * A TCP relay in front of a server (the fake BigQuery) that can stop answering: while hanging it
 * still accepts connections and reads requests, but passes no byte back, like an endpoint that
 * accepts connections and never answers. It counts the connections clients hold open, which is
 * what a client that never gives up on a request leaks.
 */
export interface HangingFront {
  readonly url: string;
  readonly port: number;
  /** Stops (true) or resumes (false) passing answers back, on new and open connections. */
  hang(on: boolean): void;
  /** Client connections open now, and the most open at once so far. */
  readonly open: number;
  readonly maxOpen: number;
  /** Connections accepted so far. */
  readonly accepted: number;
  /** Closes the connections open now (new ones are still accepted): a network blip. */
  dropConnections(): void;
  close(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  let off = 0;
  while (off < bytes.length) off += await conn.write(bytes.subarray(off));
}

export function startHangingFront(upstreamPort: number, hanging = false): HangingFront {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns = new Set<Deno.Conn>();
  const stats = { open: 0, maxOpen: 0, accepted: 0 };
  const closeQuietly = (c: Deno.Conn | null) => {
    try {
      c?.close();
    } catch {
      // already closed
    }
  };
  async function relay(client: Deno.Conn): Promise<void> {
    stats.accepted++;
    stats.open++;
    stats.maxOpen = Math.max(stats.maxOpen, stats.open);
    conns.add(client);
    let up: Deno.Conn | null = null;
    try {
      up = await Deno.connect({ hostname: "127.0.0.1", port: upstreamPort });
      const upstream = up;
      // Answers: dropped while hanging.
      (async () => {
        const buf = new Uint8Array(64 * 1024);
        for (;;) {
          const n = await upstream.read(buf);
          if (n === null) break;
          if (!hanging) await writeAll(client, buf.subarray(0, n));
        }
      })().catch(() => {});
      const buf = new Uint8Array(64 * 1024);
      for (;;) {
        const n = await client.read(buf);
        if (n === null) break;
        await writeAll(upstream, buf.subarray(0, n));
      }
    } catch {
      // the client or the upstream went away
    } finally {
      stats.open--;
      conns.delete(client);
      closeQuietly(client);
      closeQuietly(up);
    }
  }
  const accepting = (async () => {
    for await (const c of listener) relay(c);
  })().catch(() => {});
  const port = (listener.addr as Deno.NetAddr).port;
  const close = async () => {
    try {
      listener.close();
    } catch {
      // already closed
    }
    for (const c of conns) closeQuietly(c);
    await accepting;
  };
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    hang: (on) => (hanging = on),
    get open() {
      return stats.open;
    },
    get maxOpen() {
      return stats.maxOpen;
    },
    get accepted() {
      return stats.accepted;
    },
    dropConnections() {
      for (const c of conns) closeQuietly(c);
    },
    close,
    [Symbol.asyncDispose]: close,
  };
}
