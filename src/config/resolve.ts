/**
 * The meaning of every "auto" and "" in the config, in one place, so no other module re-derives it.
 */
import type { Config, ListenerName } from "./schema.ts";
import { DEFAULT_TLS_PATHS } from "./tls_defaults.ts";

/** Both listener names, in start order. */
export const LISTENERS: readonly ListenerName[] = ["tcp", "ws"];

/** Whether the listener runs at all ("auto" for ws means general.websocket). */
export function listenerEnabled(config: Config, name: ListenerName): boolean {
  const enabled = config.listeners[name].enabled;
  return enabled === "auto" ? config.general.websocket : enabled;
}

/** Whether the TCP listener runs. */
export function tcpEnabled(config: Config): boolean {
  return listenerEnabled(config, "tcp");
}

/** Whether the WebSocket listener runs. */
export function wsEnabled(config: Config): boolean {
  return listenerEnabled(config, "ws");
}

/** Whether the listener speaks TLS ("auto" means general.secure). */
export function listenerTls(config: Config, name: ListenerName): boolean {
  const tls = config.listeners[name].tls;
  return tls === "auto" ? config.general.secure : tls;
}

/** What the listener demands of client certificates ("auto" means required exactly when TLS is on). */
export function listenerClientCert(
  config: Config,
  name: ListenerName,
): "required" | "optional" | "none" {
  const cert = config.listeners[name].client_certificate;
  if (cert !== "auto") return cert;
  return listenerTls(config, name) ? "required" : "none";
}

/** Address the listener binds to ("" means general.bind). */
export function listenerBind(config: Config, name: ListenerName): string {
  return config.listeners[name].bind || config.general.bind;
}

/** Port the listener binds to (0 means any free port). */
export function listenerPort(config: Config, name: ListenerName): number {
  return config.ports[name];
}

/** Whether clients without credentials may connect ("auto" means when not general.secure). */
export function allowAnonymous(config: Config): boolean {
  const allow = config.auth.allow_anonymous;
  return allow === "auto" ? !config.general.secure : allow;
}

/** Whether any enabled listener needs the broker's certificate and key. */
export function anyListenerTls(config: Config): boolean {
  return LISTENERS.some((name) => listenerEnabled(config, name) && listenerTls(config, name));
}

/**
 * Whether missing TLS files may be replaced by generated development certs: only when allowed and
 * all three paths are the defaults; a path the operator chose is never silently replaced.
 */
export function mayGenerateDevCerts(config: Config): boolean {
  const tls = config.tls;
  return tls.generate_dev_certs &&
    tls.certfile === DEFAULT_TLS_PATHS.certfile &&
    tls.keyfile === DEFAULT_TLS_PATHS.keyfile &&
    tls.cafile === DEFAULT_TLS_PATHS.cafile;
}
