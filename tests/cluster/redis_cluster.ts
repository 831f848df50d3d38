/** Buses of one cluster on a real redis-server, with short leases so tests run fast. */
import { resolveConfig } from "../../src/config/mod.ts";
import type { DeepPartial } from "../../src/config/schema.ts";
import type { Config } from "../../src/config/schema.ts";
import { incarnationId, RedisBus } from "../../src/cluster/redis_bus.ts";
import { RedisServer } from "../helpers/redis.ts";
import type { RedisClusterGroup } from "../helpers/redis_groups.ts";
import { type ClusterUnderTest, RecordingHost } from "./contract.ts";

/** Lease settings that notice a dead node in well under a second. */
export const FAST_CLUSTER = {
  lease_renew_ms: 100,
  lease_ttl_ms: 400,
  takeover_timeout_ms: 2000,
} as const;

/** `[redis]` settings that point at `server`: one redis-server, or a Redis Cluster's seeds. */
export function redisTarget(server: RedisServer | RedisClusterGroup): DeepPartial<Config["redis"]> {
  return server instanceof RedisServer
    ? { port: server.port }
    : { mode: "cluster", cluster_nodes: server.seeds };
}

export function redisBus(
  server: RedisServer | RedisClusterGroup,
  name: string,
  overrides: DeepPartial<Config> = {},
): RedisBus {
  const config = resolveConfig({
    ...overrides,
    redis: { enabled: true, ...redisTarget(server), ...overrides.redis },
    cluster: { ...FAST_CLUSTER, ...overrides.cluster },
  });
  return new RedisBus({
    redis: config.redis,
    cluster: config.cluster,
    nodeId: incarnationId(name),
  });
}

/** n buses on `server` (each test gets its own key prefix, so servers can be shared). */
export function redisCluster(
  server: RedisServer | RedisClusterGroup,
  n: number,
  overrides: DeepPartial<Config> = {},
): ClusterUnderTest & { buses: RedisBus[] } {
  const prefix = `t${crypto.randomUUID().slice(0, 8)}`;
  const buses = Array.from(
    { length: n },
    (_, i) =>
      redisBus(server, `n${i}`, {
        ...overrides,
        redis: { key_prefix: prefix, ...overrides.redis },
      }),
  );
  return {
    buses,
    kill: (i) => buses[i].halt(),
    close: async () => {
      await Promise.all(buses.map((b) => b.stop()));
    },
  };
}

/** Buses started on {@link RecordingHost}s, in order; `await using` stops them all. */
export interface StartedBuses extends AsyncDisposable {
  readonly buses: RedisBus[];
  /** `hosts[i]` is what `buses[i]` delivered, and the nodes it was told are down. */
  readonly hosts: RecordingHost[];
}

/** Starts each bus on a host of its own (one after the other, as nodes join). */
export async function startBuses(buses: RedisBus[]): Promise<StartedBuses> {
  const hosts = buses.map(() => new RecordingHost());
  const stop = async () => {
    await Promise.all(buses.map((b) => b.stop()));
  };
  try {
    for (let i = 0; i < buses.length; i++) await buses[i].start(hosts[i]);
  } catch (e) {
    await stop();
    throw e;
  }
  return { buses, hosts, [Symbol.asyncDispose]: stop };
}
