/**
 * Shared by the Redis store tests: ioredis clients on a test redis-server,
 * store instances acting as cluster nodes, sample session state, and a log
 * capture for the store's warnings.
 */
import { Redis } from "ioredis";
import { configure, type LogRecord, reset } from "@logtape/logtape";
import type { RedisServer } from "../helpers/redis.ts";
import { RedisStore, type RedisStoreOptions } from "../../src/store/redis.ts";
import type { SessionState, StoredDelivery, StoredMessage } from "../../src/store/types.ts";

/** A connected ioredis client; `quit` it (or use `await using`). */
export async function redisClient(server: RedisServer): Promise<Redis & AsyncDisposable> {
  const client = new Redis(server.port, "127.0.0.1", {
    lazyConnect: true,
    maxRetriesPerRequest: 2,
  }) as Redis & AsyncDisposable;
  // A test that kills Redis sees the failed command; the reconnect noise is not news.
  client.on("error", () => {});
  await client.connect();
  client[Symbol.asyncDispose] = async () => {
    await client.quit().catch(() => client.disconnect());
  };
  return client;
}

/** A store acting as node `nodeId`, on its own connection (as another process would). */
export async function storeNode(
  server: RedisServer,
  nodeId: string,
  opts: Partial<RedisStoreOptions> = {},
): Promise<RedisStore & AsyncDisposable> {
  const client = await redisClient(server);
  const store = new RedisStore(client, { keyPrefix: "t", nodeId, ...opts }) as
    & RedisStore
    & AsyncDisposable;
  await store.open();
  store[Symbol.asyncDispose] = async () => {
    await store.close();
    await client[Symbol.asyncDispose]();
  };
  return store;
}

const enc = new TextEncoder();

export function message(topic: string, payload: string, extra: Partial<StoredMessage> = {}) {
  return {
    topic,
    payload: enc.encode(payload),
    qos: 1,
    retain: false,
    props: null,
    expiresAt: 0,
    origin: "pub",
    ...extra,
  } satisfies StoredMessage;
}

export function delivery(topic: string, payload: string): StoredDelivery {
  return { msg: message(topic, payload), qos: 1, retain: false, subIds: null };
}

/** A persistent session with a bit of everything. */
export function sampleSession(clientId: string, extra: Partial<SessionState> = {}): SessionState {
  return {
    clientId,
    owner: "alice",
    expiryInterval: 3600,
    expiresAt: 0,
    will: {
      msg: message("will/" + clientId, "gone", { props: new Uint8Array([0x01, 0x01]) }),
      delay: 5,
      expiry: -1,
    },
    willAt: 0,
    subscriptions: [
      {
        key: "a/#",
        qos: 1,
        noLocal: false,
        retainAsPublished: true,
        retainHandling: 0,
        subscriptionId: 7,
      },
      {
        key: "$share/g/b/+",
        qos: 2,
        noLocal: true,
        retainAsPublished: false,
        retainHandling: 2,
        subscriptionId: 0,
      },
    ],
    queue: [
      { ...delivery("a/1", "one"), seq: 1 },
      { ...delivery("a/2", "two"), subIds: [7, 9], qos: 2, seq: 2 },
    ],
    inflight: [{ ...delivery("a/0", "zero"), packetId: 12, released: true, qos: 2 }],
    incomingQos2: [3, 40000],
    ...extra,
  };
}

/** Captures the store's log records while `fn` runs. */
export async function captureLogs<T>(fn: () => Promise<T>): Promise<[T, LogRecord[]]> {
  const records: LogRecord[] = [];
  await configure({
    reset: true,
    sinks: { mem: (r) => records.push(r) },
    loggers: [
      { category: ["mcloudtt", "store"], lowestLevel: "debug", sinks: ["mem"] },
      { category: ["logtape", "meta"], lowestLevel: "error", sinks: [] },
    ],
  });
  try {
    return [await fn(), records];
  } finally {
    await reset();
  }
}

/** A log record's message with its values filled in. */
export function logText(r: LogRecord): string {
  return r.message.map((p) => typeof p === "string" ? p : String(p)).join("");
}
