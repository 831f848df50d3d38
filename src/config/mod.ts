/** Public surface of the configuration module. */
export { CONFIG_ERROR_EXIT_CODE, ConfigError, exitOnConfigError } from "./errors.ts";
export type { ConfigErrorDetails } from "./errors.ts";
export { DEFAULT_CONFIG_FILE, defaultConfig, loadConfig, resolveConfig } from "./load.ts";
export type { LoadedConfig, LoadOptions } from "./load.ts";
export { validateConfig } from "./schema.ts";
export type { Config, DeepPartial, ListenerName } from "./schema.ts";
export { ENV_CONFIG_FILE, envNameFor, KEYS } from "./keys.ts";
export type { KeyInfo, KeyKind } from "./keys.ts";
export { DEFAULT_TLS_PATHS } from "./tls_defaults.ts";
export {
  allowAnonymous,
  anyListenerTls,
  listenerBind,
  listenerClientCert,
  listenerEnabled,
  listenerPort,
  LISTENERS,
  listenerTls,
  mayGenerateDevCerts,
  tcpEnabled,
  wsEnabled,
} from "./resolve.ts";
