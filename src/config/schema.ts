/**
 * The one description of mcloudtt's configuration: every section, key, type, range and default,
 * plus the rules that span several keys. Keys keep their TOML snake_case names so that
 * `limits.max_packet_size` is spelled the same in config.toml, MCLOUDTT_* variables, flags and code.
 */
import { listenerBind, listenerEnabled, LISTENERS, listenerTls } from "./resolve.ts";
import {
  autoBool,
  bindsOverlap,
  bool,
  type CrossFieldParams,
  int,
  isHost,
  type Issue,
  list,
  nonEmptyText,
  oneOf,
  type Output,
  secret,
  table as section,
  text,
  textWhere,
} from "./spec.ts";
import { DEFAULT_TLS_PATHS } from "./tls_defaults.ts";
import { isValidFilter } from "../protocol/topic.ts";
import { ANY_ORIGIN, normalizeOrigin } from "../transport/ws_origin.ts";

export type { CrossFieldParams };

/** A list of MQTT topic filters (TOML array; env and flags take a comma-separated list). */
function topicFilters(fallback: string[]) {
  const msg = 'must be a list of MQTT topic filters, e.g. ["#"] or ["$SYS/#", "tmp/+"]';
  const item = `${msg} (a "#" must be last and alone in its level, "+" alone in its level)`;
  return list(fallback, msg, isValidFilter, item);
}

/** "" or an http(s) URL. */
function endpoint() {
  const msg = 'must be "" or an http:// or https:// URL, e.g. "http://127.0.0.1:9050"';
  return textWhere("", msg, (v) => v === "" || /^https?:\/\/[^/\s]+\/?$/.test(v));
}

const HOST_MSG = "must be an IPv4 address, an IPv6 address or a hostname";
const host = (fallback: string) => textWhere(fallback, HOST_MSG, isHost);

/** Keys shared by both listeners; `enabled` differs (tcp is on by default, ws follows general). */
function listenerFields() {
  const msg = `${HOST_MSG}, or "" for general.bind`;
  return {
    bind: textWhere("", msg, (v) => v === "" || isHost(v)),
    tls: autoBool(),
    client_certificate: oneOf(["auto", "required", "optional", "none"], "auto"),
  };
}

/**
 * The modules `[general] log_levels` can name: the second part of every logger's category
 * (`getLogger(["mcloudtt", "topic-log"])`); tests/config/log_modules_test.ts checks the sources
 * use no other. A name outside it used to pass and change nothing (a typo, or "ws", which never
 * logged), and "topic-log" and "bq-adapter" could not be named at all.
 */
export const LOG_MODULES = [
  "auth",
  "bq-adapter",
  "broker",
  "cluster",
  "connection",
  "core",
  "http",
  "main",
  "redis",
  "retained",
  "store",
  "tcp",
  "tls",
  "topic-log",
  "ws",
] as const;

/** `module=level` pairs separated by commas, e.g. `connection=debug,tls=warning`; "" for none. */
const LOG_LEVELS_PATTERN =
  /^(\s*[a-z_-]+\s*=\s*(debug|info|warning|error)\s*(,\s*[a-z_-]+\s*=\s*(debug|info|warning|error)\s*)*)?$/;
const LOG_LEVELS_MSG =
  'must be "" or module=level pairs separated by commas, e.g. "connection=debug,tls=warning" ' +
  `(levels: debug, info, warning, error; modules: ${LOG_MODULES.join(", ")})`;

/** Well-formed, and every module one that logs. */
function isLogLevels(v: string): boolean {
  if (!LOG_LEVELS_PATTERN.test(v)) return false;
  const known: readonly string[] = LOG_MODULES;
  return v.split(",").every((part) =>
    part.trim() === "" || known.includes(part.split("=")[0].trim())
  );
}

const WS_PATH_MSG = 'must be a string starting with "/"';

const ORIGINS_MSG = 'must be a list of web origins, e.g. ["https://dashboard.example.com"] ' +
  '(scheme, host and port only), or ["*"] for every page';

const HOST_PORT_MSG = 'must be a list of "host:port" strings';
const HOST_PORT = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):\d{1,5}$/;

/** A list of `host:port` seeds (Sentinel or Redis Cluster nodes); env/flags give it comma-separated. */
function hostPorts() {
  return list([], HOST_PORT_MSG, (v) => HOST_PORT.test(v));
}

const REDIS_URL_MSG = 'must be "" or a redis:// or rediss:// URL';

function redisUrl() {
  return textWhere("", REDIS_URL_MSG, (v) => /^(|rediss?:\/\/.*)$/.test(v));
}

const NODE_ID_MSG = 'must be "" (hostname-pid) or letters, digits and "_.:-"';

/** Every section and key, in config.toml order. */
const SHAPE = {
  general: section("general", {
    websocket: bool(true),
    secure: bool(true),
    timeout: int(0, 65535, 0),
    log_level: oneOf(["debug", "info", "warning", "error"], "info"),
    bind: host("0.0.0.0"),
    cert_reload_interval: int(1, 3600, 5),
    shutdown_timeout: int(0, 3600, 10),
    log_format: oneOf(["text", "json"], "text"),
    log_levels: textWhere(
      "",
      LOG_LEVELS_MSG,
      isLogLevels,
      "must be a string",
    ),
    sys_interval: int(0, 86400, 10),
    drain_delay: int(0, 3600, 5),
    tcp_io: oneOf(["native", "deno"], "native"),
    log_rate: int(0, 1000000, 1000),
    log_value_max: int(16, 65535, 256),
  }),
  tls: section("tls", {
    certfile: nonEmptyText(DEFAULT_TLS_PATHS.certfile),
    keyfile: nonEmptyText(DEFAULT_TLS_PATHS.keyfile),
    cafile: nonEmptyText(DEFAULT_TLS_PATHS.cafile),
    identity: oneOf(["cn", "san", "fingerprint"], "cn"),
    require_client_id_match: bool(false),
    generate_dev_certs: bool(true),
  }),
  ports: section("ports", {
    tcp: int(0, 65535, 1883),
    ws: int(0, 65535, 8080),
  }),
  listeners: section("listeners", {
    tcp: section("listeners.tcp", { enabled: bool(true), ...listenerFields() }),
    ws: section("listeners.ws", {
      enabled: autoBool(),
      ...listenerFields(),
      path: textWhere("/mqtt", WS_PATH_MSG, (v) => v.startsWith("/")),
      allowed_origins: list(
        [],
        ORIGINS_MSG,
        (v) => v === ANY_ORIGIN || normalizeOrigin(v) !== null,
      ),
    }),
  }),
  http: section("http", {
    enabled: bool(true),
    bind: host("0.0.0.0"),
    port: int(0, 65535, 8888),
    max_connections: int(1, 1000000, 1024),
    request_timeout: int(1, 3600, 10),
  }),
  auth: section("auth", {
    password_file: text(""),
    acl_file: text(""),
    allow_anonymous: autoBool(),
    max_concurrent_auth: int(1, 1024, 2),
    max_auth_queue: int(0, 1000000, 64),
    auth_cache_seconds: int(0, 86400, 60),
    scram: bool(true),
  }),
  limits: section("limits", {
    max_packet_size: int(64, 268435455, 1048576),
    max_connect_packet_size: int(64, 268435455, 131072),
    receive_maximum: int(1, 65535, 32),
    topic_alias_maximum: int(0, 65535, 10),
    max_outgoing_topic_aliases: int(0, 65535, 64),
    max_keepalive: int(1, 65535, 65535),
    max_inflight_messages: int(1, 65535, 32),
    max_queued_messages: int(0, 10000000, 1000),
    max_queued_bytes: int(0, 68719476736, 67108864),
    max_queued_bytes_total: int(0, 70368744177664, 1073741824),
    queue_drop_policy: oneOf(["newest", "oldest"], "newest"),
    max_topic_length: int(1, 65535, 65535),
    max_topic_levels: int(1, 65535, 128),
    connect_timeout: int(1, 3600, 10),
    max_connections: int(1, 10000000, 100000),
    max_sessions: int(1, 100000000, 1000000),
    max_session_expiry_interval: int(0, 4294967295, 4294967295),
    max_outgoing_bytes: int(65536, 1073741824, 1048576),
    max_connect_backlog: int(1024, 16777216, 262144),
    max_publish_rate: int(0, 100000000, 0),
    max_read_rate: int(0, 1099511627776, 0),
    max_throttled_seconds: int(0, 86400, 0),
    sweep_interval_ms: int(10, 60000, 500),
    idle_trim_after: int(1, 3600, 5),
    close_linger_ms: int(0, 60000, 1000),
    max_subscriptions: int(1, 10000000, 10000),
    max_subscription_levels: int(1, 1000000000, 100000),
    max_subscription_bytes: int(1, 68719476736, 4194304),
    max_retained_messages: int(0, 100000000, 1000000),
    max_retained_bytes: int(0, 68719476736, 268435456),
    max_retained_per_subscription: int(0, 100000000, 1000000),
    match_cache_bytes: int(0, 4294967296, 16777216),
  }),
  storage: section("storage", {
    enabled: bool(true),
    dir: nonEmptyText("data"),
    sync: oneOf(["ack-after-write", "async"], "ack-after-write"),
    max_unwritten_ops: int(1, 100000000, 100000),
    retained_page_messages: int(1, 1000000, 1000),
    retained_page_bytes: int(1, 1073741824, 16777216),
  }),
  bigquery: section("bigquery", {
    enabled: bool(false),
    project_id: text(""),
    dataset_id: text(""),
    table_id: nonEmptyText("topic-log"),
    credentials_path: text("sa.key"),
    endpoint: endpoint(),
    location: text(""),
    create_table: bool(true),
    include: topicFilters(["#"]),
    exclude: topicFilters([]),
    batch_size: int(1, 10000, 500),
    batch_max_bytes: int(65536, 10485760, 9437184),
    flush_interval_ms: int(10, 600000, 1000),
    max_queue: int(1, 10000000, 100000),
    max_queue_bytes: int(1048576, 68719476736, 67108864),
    overflow: oneOf(["drop-oldest", "spill"], "drop-oldest"),
    spill_dir: text(""),
    spill_max_bytes: int(1048576, 1099511627776, 1073741824),
    max_concurrent_requests: int(1, 64, 4),
    request_timeout_ms: int(100, 600000, 10000),
    retry_initial_ms: int(1, 600000, 200),
    retry_max_ms: int(1, 3600000, 30000),
  }),
  topic_log_file: section("topic_log_file", {
    enabled: bool(false),
    path: text(""),
    max_bytes: int(1024, 1099511627776, 104857600),
    max_files: int(0, 1000, 5),
    include: topicFilters(["#"]),
    exclude: topicFilters([]),
    batch_size: int(1, 100000, 1000),
    flush_interval_ms: int(10, 600000, 200),
    max_queue: int(1, 10000000, 100000),
    max_queue_bytes: int(1048576, 68719476736, 67108864),
  }),
  adapter: section("adapter", {
    // The port is required: mqtts's usual 8883 is not where mcloudtt serves TLS ([ports] tcp,
    // 1883 by default), so a URL without one reached no broker of ours.
    url: textWhere(
      "mqtt://127.0.0.1:1883",
      "must be a broker URL with its port: mqtt://host:port or mqtts://host:port (TLS; mcloudtt " +
        "serves it on [ports] tcp, 1883 by default)",
      (v) => /^mqtts?:\/\/[^/\s]+:[0-9]{1,5}\/?$/.test(v),
    ),
    group: textWhere(
      "bq-adapter",
      'must be a non-empty share name without "/", "+" or "#"',
      (v) => /^[^/+#]+$/.test(v),
    ),
    filter: textWhere("#", "must be an MQTT topic filter", isValidFilter),
    client_id: text(""),
    username: text(""),
    password: secret(""),
    cafile: text(""),
    certfile: text(""),
    keyfile: text(""),
    session_expiry: int(0, 4294967295, 3600),
    receive_maximum: int(1, 65535, 1000),
    keepalive: int(0, 65535, 60),
    reconnect_ms: int(10, 600000, 1000),
    // Its /healthz, /readyz and /metrics (with [http] bind and enabled); not the broker's 8888,
    // so that both run side by side from one config file.
    http_port: int(0, 65535, 8889),
  }),
  redis: section("redis", {
    enabled: bool(false),
    host: host("127.0.0.1"),
    port: int(1, 65535, 6379),
    url: redisUrl(),
    username: text(""),
    password: secret(""),
    tls: bool(false),
    db: int(0, 65535, 0),
    // Braces would become the Redis Cluster hash tag of every key, putting all of them in one slot.
    key_prefix: textWhere(
      "mcloudtt",
      "must be a non-empty string without { or }, e.g. mcloudtt",
      (v) => v.length > 0 && !/[{}]/.test(v),
    ),
    mode: oneOf(["standalone", "sentinel", "cluster"], "standalone"),
    sentinels: hostPorts(),
    sentinel_name: nonEmptyText("mymaster"),
    cluster_nodes: hostPorts(),
    durability: oneOf(["sync", "async"], "sync"),
    wait_replicas: int(0, 16, 0),
    wait_timeout_ms: int(1, 60000, 500),
    session_ttl_grace_ms: int(0, 604800000, 60000),
    session_claim_ttl_ms: int(10000, 2592000000, 3600000),
    command_timeout_ms: int(100, 600000, 5000),
    // How long a start waits for Redis to answer (see src/cluster/redis_start.ts); 0: not at all.
    start_timeout_ms: int(0, 86400000, 300000),
    retained_scan_topics: int(1, 100000000, 100000),
    // What one write of the Redis store encodes at a time (see src/store/redis_batch.ts).
    write_chunk_bytes: int(65536, 1073741824, 16777216),
  }),
  cluster: section("cluster", {
    node_id: textWhere("", NODE_ID_MSG, (v) => /^[A-Za-z0-9_.:-]*$/.test(v), "must be a string"),
    lease_renew_ms: int(100, 60000, 2000),
    lease_ttl_ms: int(300, 600000, 6000),
    takeover_timeout_ms: int(100, 60000, 3000),
    dedupe_window: int(0, 100000, 256),
    route_fence_ms: int(0, 60000, 1000),
    reconcile_interval: int(1, 86400, 300),
    shared_policy: oneOf(["local", "round_robin"], "local"),
    max_inbox_backlog: int(0, 1000000000, 2000),
    max_forward_bytes: int(0, 68719476736, 67108864),
  }),
};

/** The whole configuration as one table, before cross-field rules; keys.ts walks it. */
export const CONFIG_TABLE = section("", SHAPE);

/** Validated configuration as used by the whole broker. */
export type Config = Output<typeof SHAPE>;

/** Names of the network listeners. */
export type ListenerName = "tcp" | "ws";

/** Every key optional at every depth: what `resolveConfig` accepts. */
export type DeepPartial<T> = {
  [K in keyof T]?: T[K] extends Record<string, unknown> ? DeepPartial<T[K]> : T[K];
};

/** "0.0.0.0 port 1883", or "port 1883 (0.0.0.0 and 127.0.0.1 overlap)" for two binds. */
function onPort(a: string, b: string, port: number): string {
  return a === b ? `${a} port ${port}` : `port ${port} (${a} and ${b} overlap)`;
}

function crossFieldRules(config: Config, issues: Issue[]): void {
  const bq = config.bigquery;
  if (bq.enabled) {
    for (const key of ["project_id", "dataset_id"] as const) {
      if (bq[key] === "") {
        issues.push({
          path: ["bigquery", key],
          message: "must not be empty when bigquery.enabled = true",
        });
      }
    }
  }

  const redis = config.redis;
  if (redis.enabled && redis.mode === "sentinel" && redis.sentinels.length === 0) {
    issues.push({
      path: ["redis", "sentinels"],
      message: 'must list at least one "host:port" when redis.mode = "sentinel"',
    });
  }
  if (redis.enabled && redis.mode === "cluster" && redis.db !== 0) {
    issues.push({
      path: ["redis", "db"],
      message: 'must be 0 when redis.mode = "cluster" (Redis Cluster has one database)',
    });
  }
  // A WAIT is a command too: answered after up to wait_timeout_ms, it must not count as lost.
  if (
    redis.enabled && redis.wait_replicas > 0 && redis.command_timeout_ms <= redis.wait_timeout_ms
  ) {
    issues.push({
      path: ["redis", "command_timeout_ms"],
      message: `must be above redis.wait_timeout_ms (${redis.wait_timeout_ms}) ` +
        "when redis.wait_replicas > 0",
      params: {
        blame: ["redis.command_timeout_ms", "redis.wait_timeout_ms"],
        blamed: {
          "redis.wait_timeout_ms": `must be below redis.command_timeout_ms ` +
            `(${redis.command_timeout_ms}) when redis.wait_replicas > 0`,
        },
      },
    });
  }
  if (config.cluster.lease_ttl_ms < 2 * config.cluster.lease_renew_ms) {
    issues.push({
      path: ["cluster", "lease_ttl_ms"],
      message: `must be at least twice cluster.lease_renew_ms (${config.cluster.lease_renew_ms})`,
      params: {
        blame: ["cluster.lease_ttl_ms", "cluster.lease_renew_ms"],
        blamed: {
          "cluster.lease_renew_ms": `must be at most half cluster.lease_ttl_ms ` +
            `(${config.cluster.lease_ttl_ms})`,
        },
      },
    });
  }

  if (bq.retry_max_ms < bq.retry_initial_ms) {
    issues.push({
      path: ["bigquery", "retry_max_ms"],
      message: `must be at least bigquery.retry_initial_ms (${bq.retry_initial_ms})`,
      params: {
        blame: ["bigquery.retry_max_ms", "bigquery.retry_initial_ms"],
        blamed: {
          "bigquery.retry_initial_ms": `must be at most bigquery.retry_max_ms (${bq.retry_max_ms})`,
        },
      },
    });
  }

  // A client certificate is its file and its key: with one of them only, every dial failed
  // (certfile) or no certificate was sent at all (keyfile), with nothing said at start.
  const adapter = config.adapter;
  if ((adapter.certfile === "") !== (adapter.keyfile === "")) {
    const [set, unset] = adapter.certfile === ""
      ? ["keyfile", "certfile"]
      : ["certfile", "keyfile"];
    issues.push({
      path: ["adapter", set],
      message: `needs adapter.${unset} too (the client certificate and its key go together)`,
      params: { fix: `set adapter.${unset}, or set adapter.${set} = ""` },
    });
  }

  for (const name of LISTENERS) {
    const cert = config.listeners[name].client_certificate;
    if (listenerEnabled(config, name) && cert !== "auto" && cert !== "none") {
      if (!listenerTls(config, name)) {
        issues.push({
          path: ["listeners", name, "client_certificate"],
          message: `needs TLS, but TLS is off for listener ${name} ` +
            `(listeners.${name}.tls = ${JSON.stringify(config.listeners[name].tls)}, ` +
            `general.secure = ${config.general.secure})`,
          params: {
            fix: `set listeners.${name}.tls = true or client_certificate = "none"`,
          },
        });
      }
    }
  }

  if (config.http.enabled && config.http.port !== 0) {
    for (const name of LISTENERS) {
      if (
        listenerEnabled(config, name) && config.ports[name] === config.http.port &&
        bindsOverlap(listenerBind(config, name), config.http.bind)
      ) {
        issues.push({
          path: ["http", "port"],
          message: `the HTTP endpoint and listeners.${name} would both listen on ` +
            onPort(config.http.bind, listenerBind(config, name), config.http.port),
          params: {
            blame: ["http.port", `ports.${name}`, "http.bind", `listeners.${name}.bind`],
            fix: `give http.port and ports.${name} different values, or set http.enabled = false`,
          },
        });
      }
    }
  }

  const tcpPort = config.ports.tcp;
  if (
    listenerEnabled(config, "tcp") && listenerEnabled(config, "ws") &&
    tcpPort !== 0 && tcpPort === config.ports.ws &&
    bindsOverlap(listenerBind(config, "tcp"), listenerBind(config, "ws"))
  ) {
    issues.push({
      path: ["ports", "ws"],
      message: `listeners.tcp and listeners.ws would both listen on ` +
        onPort(listenerBind(config, "tcp"), listenerBind(config, "ws"), tcpPort),
      params: {
        blame: ["ports.ws", "ports.tcp", "listeners.ws.bind", "listeners.tcp.bind"],
        fix: "give ports.tcp and ports.ws different values, different binds, or disable one",
      },
    });
  }
}

/** The outcome of validating a merged configuration. */
export type Validated = { ok: true; config: Config } | { ok: false; issues: Issue[] };

/**
 * Per-key validation (defaults for what is not set), then the rules that span several keys:
 * those only make sense once every key on its own is valid.
 */
export function validateConfig(input: Record<string, unknown>): Validated {
  const issues: Issue[] = [];
  const config = CONFIG_TABLE.parse(input, [], issues);
  if (issues.length === 0 && config !== undefined) crossFieldRules(config, issues);
  if (issues.length > 0 || config === undefined) return { ok: false, issues };
  return { ok: true, config };
}
