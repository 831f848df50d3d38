/** Default locations of the broker's TLS files; development certs are only generated at these. */
export const DEFAULT_TLS_PATHS = {
  certfile: "certs/broker/broker.crt",
  keyfile: "certs/broker/broker.key",
  cafile: "certs/ca.crt",
} as const;
