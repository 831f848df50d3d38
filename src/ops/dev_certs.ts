/**
 * First-run convenience: a secure broker needs certificates, and a new user
 * has none. When the TLS paths are the defaults and none of the files exist,
 * development certificates are generated into certs/. Paths the operator
 * chose are never silently replaced: missing ones are a configuration error.
 */
import { generateCertificates } from "../auth/certs.ts";
import { anyListenerTls, type Config, ConfigError, mayGenerateDevCerts } from "../config/mod.ts";

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

/** Generates development certificates when allowed and needed; returns true if it did. */
export async function ensureCertificates(config: Config): Promise<boolean> {
  if (!anyListenerTls(config)) return false;
  const t = config.tls;
  const keys = ["certfile", "keyfile", "cafile"] as const;
  const present = await Promise.all(keys.map((k) => exists(t[k])));
  if (present.every(Boolean)) return false;
  if (present.some(Boolean) || !mayGenerateDevCerts(config)) {
    const k = keys[present.indexOf(false)];
    throw new ConfigError(
      `tls.${k} = "${t[k]}" does not exist: create it (e.g. \`mcloudtt certs\`) or point ` +
        `[tls] ${k} / MCLOUDTT_TLS_${k.toUpperCase()} at your certificate files`,
      { key: `tls.${k}` },
    );
  }
  await generateCertificates({ dir: "certs" });
  return true;
}

/** The command lines that reach a broker on `port` with the generated client certificate. */
export function devCertCommands(port: number): string[] {
  const tls = "--cafile certs/ca.crt --cert certs/client/client.crt --key certs/client/client.key";
  return [
    `mosquitto_sub -h localhost -p ${port} -V 5 -t 'test/#' -v ${tls}`,
    `mosquitto_pub -h localhost -p ${port} -V 5 -t test/hello -m 'hello from mcloudtt' ${tls}`,
  ];
}
