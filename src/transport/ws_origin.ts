/**
 * Which web pages may open MQTT over WebSocket (`[listeners.ws] allowed_origins`). A browser lets
 * any page it shows open a WebSocket to any host it can reach, the broker on the user's own
 * network included, and presents the user's client certificate there as it would to the page's
 * own server: without a check, a hostile page talks MQTT as that user (cross-site WebSocket
 * hijacking). Browsers always send the page's Origin with the upgrade and scripts cannot change
 * it; other clients (MQTT.js under Node, mosquitto, Paho) usually send none, and a request without
 * one is not a browser's, so it is let through. Secure by default: no page may connect until its
 * origin is listed (or "*" lets every page in).
 */

/**
 * The serialized origin of `text` ("https://dash.example.com", default port left out, host in
 * lower case), or null when `text` is not an http(s) origin: a path, query, fragment or user
 * part, another scheme, or no URL at all.
 */
export function normalizeOrigin(text: string): string | null {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    return null;
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") return null;
  // "https://a.example" and "https://a.example/" both parse to the path "/".
  if (url.pathname !== "/" || url.search || url.hash || url.username || url.password) return null;
  return url.origin;
}

/** In `allowed_origins`: every page may connect. */
export const ANY_ORIGIN = "*";

/**
 * Whether an upgrade with the Origin header `header` may proceed, given the configured origins
 * (normalized; ANY_ORIGIN lets every page in; empty lets no page in). A request without an Origin
 * is not a browser's and proceeds. A header the browser sent as "null" (a sandboxed frame, a
 * file:// page) matches no configured origin. No "same host" rule: under DNS rebinding a hostile
 * page's origin names the broker's host.
 */
export function originAllowed(
  allowed: readonly string[],
  header: string | string[] | undefined,
): boolean {
  if (header === undefined || allowed.includes(ANY_ORIGIN)) return true;
  // node:http joins repeated headers, except a few; an array here is not one browser's request.
  if (typeof header !== "string") return false;
  const origin = normalizeOrigin(header.trim());
  return origin !== null && allowed.includes(origin);
}
