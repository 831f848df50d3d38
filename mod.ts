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
import { Broker } from "./src/broker.ts";
import { type Config, type DeepPartial, resolveConfig } from "./src/config/mod.ts";

export { Broker, type ListenerAddress } from "./src/broker.ts";
export {
  type Config,
  ConfigError,
  type DeepPartial,
  loadConfig,
  resolveConfig,
} from "./src/config/mod.ts";
export type { AuthDecision, Authenticator, Authorizer, ConnectRequest } from "./src/auth/types.ts";
export { ReasonCode } from "./src/protocol/reason_codes.ts";

/** Creates a broker from a partial config (defaults fill the rest); throws ConfigError when invalid. */
export function createBroker(config: DeepPartial<Config> = {}): Broker {
  return new Broker(resolveConfig(config));
}
