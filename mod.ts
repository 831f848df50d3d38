/**
 * mcloudtt embedding API: create, start and stop an MQTT broker in-process.
 *
 * ```ts
 * import { createBroker } from "./mod.ts";
 * const broker = await createBroker({ general: { secure: false }, ports: { tcp: 0 } });
 * await broker.start();
 * console.log(broker.addresses);
 * await broker.stop();
 * ```
 * @module
 */
import { Broker, type BrokerDeps } from "./src/broker.ts";
import { type Config, type DeepPartial, resolveConfig } from "./src/config/mod.ts";

export {
  Broker,
  type BrokerDeps,
  BrokerStopped,
  ClusterBackendNotLoaded,
  type ListenerAddress,
} from "./src/broker.ts";
export type { Bus, BusHost, ForwardResult } from "./src/cluster/types.ts";
export { localBus } from "./src/cluster/types.ts";
export type {
  RetainedCount,
  RetainedPageSize,
  SessionState,
  Store,
  StoredMessage,
  StoreOp,
} from "./src/store/types.ts";
export { compareTopics } from "./src/store/types.ts";
export { MemoryStore } from "./src/store/memory.ts";
export type { PublishInfo, Sink } from "./src/sinks/types.ts";
export { MemorySink, noSink } from "./src/sinks/memory.ts";
export { type Clock, ManualClock, systemClock } from "./src/ops/clock.ts";
export { Message } from "./src/protocol/message.ts";
export {
  type Config,
  ConfigError,
  type DeepPartial,
  loadConfig,
  resolveConfig,
} from "./src/config/mod.ts";
export type {
  AuthDecision,
  Authenticator,
  AuthExchange,
  Authorizer,
  AuthStep,
  ConnectRequest,
} from "./src/auth/types.ts";
export { ReasonCode } from "./src/protocol/reason_codes.ts";

/**
 * Creates a broker from a partial config (defaults fill the rest) and optional
 * dependencies (bus, store, sink, clock, authentication); rejects with
 * ConfigError when the config is invalid. Asynchronous because the backends a
 * config asks for are loaded on demand (the Redis bus and store with `[redis]
 * enabled`).
 */
export function createBroker(
  config: DeepPartial<Config> = {},
  deps: BrokerDeps = {},
): Promise<Broker> {
  try {
    return Broker.create(resolveConfig(config), deps);
  } catch (e) {
    return Promise.reject(e);
  }
}
