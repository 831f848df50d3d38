/**
 * mcloudtt embedding API: create, start and stop an MQTT broker in-process.
 *
 * ```ts
 * import { createBroker } from "./mod.ts";
 * const broker = createBroker({ general: { secure: false }, ports: { tcp: 0 } });
 * await broker.start();
 * console.log(broker.addresses);
 * await broker.stop();
 * ```
 * @module
 */
import { Broker, type BrokerDeps } from "./src/broker.ts";
import { type Config, type DeepPartial, resolveConfig } from "./src/config/mod.ts";

export { Broker, type BrokerDeps, type ListenerAddress } from "./src/broker.ts";
export type { Bus, BusHost, ForwardResult } from "./src/cluster/types.ts";
export { localBus } from "./src/cluster/types.ts";
export type { SessionState, Store, StoredMessage, StoreOp } from "./src/store/types.ts";
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
export type { AuthDecision, Authenticator, Authorizer, ConnectRequest } from "./src/auth/types.ts";
export { ReasonCode } from "./src/protocol/reason_codes.ts";

/**
 * Creates a broker from a partial config (defaults fill the rest) and optional
 * dependencies (bus, store, sink, clock, authentication); throws ConfigError
 * when the config is invalid.
 */
export function createBroker(config: DeepPartial<Config> = {}, deps: BrokerDeps = {}): Broker {
  return new Broker(resolveConfig(config), deps);
}
