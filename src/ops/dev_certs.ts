/**
 * First-run convenience: a secure broker needs certificates, and a new user
 * has none. When the TLS paths are the defaults and none of the files exist,
 * development certificates are generated into certs/. Paths the operator
 * chose are never silently replaced: missing ones are a configuration error.
 */
import { resolve } from "node:path";
import {
  anyListenerTls,
  type Config,
  ConfigError,
  DEFAULT_TLS_PATHS,
  envNameFor,
  mayGenerateDevCerts,
} from "../config/mod.ts";

/** A refused permission: main.ts turns it into one line naming the permission. */
function isPermissionError(e: unknown): boolean {
  return e instanceof Deno.errors.NotCapable || e instanceof Deno.errors.PermissionDenied;
}

/**
 * Whether the file at `tls.<key>` exists. Another failure (a path through a regular file, a
 * loop of links) is the operator's to fix: one line naming the key, not a stack trace.
 */
async function exists(config: Config, key: TlsFileKey): Promise<boolean> {
  const path = config.tls[key];
  try {
    await Deno.stat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    if (isPermissionError(e)) throw e;
    throw new ConfigError(
      `tls.${key} = "${path}" (${resolve(path)}) cannot be checked: ${reasonOf(e)}; fix the ` +
        `path, or set ${envNameFor(`tls.${key}`)}`,
      { key: `tls.${key}` },
    );
  }
}

function reasonOf(e: unknown): string {
  return (e instanceof Error ? e.message : String(e)).split("\n")[0];
}

/** Generates development certificates when allowed and needed; returns true if it did. */
export async function ensureCertificates(config: Config): Promise<boolean> {
  if (!anyListenerTls(config)) return false;
  const keys = ["certfile", "keyfile", "cafile"] as const;
  const present = await Promise.all(keys.map((k) => exists(config, k)));
  if (present.every(Boolean)) return false;
  const missing = keys.filter((_, i) => !present[i]);
  if (present.some(Boolean) || !mayGenerateDevCerts(config)) {
    throw new ConfigError(missingMessage(config, missing), { key: `tls.${missing[0]}` });
  }
  // Imported only here: the X.509 library is megabytes of memory a running broker never needs.
  const { generateCertificates } = await import("../auth/certs.ts");
  try {
    await generateCertificates({ dir: "certs" });
  } catch (e) {
    if (isPermissionError(e)) throw e;
    // A read-only volume, a full disk, a file where a directory must be: exit 2, one line.
    throw new ConfigError(
      `cannot generate development certificates in certs/ (${resolve("certs")}): ` +
        `${reasonOf(e)}; make certs/ writable, mount the certificate files there, or set ` +
        `MCLOUDTT_TLS_GENERATE_DEV_CERTS=false`,
      { key: "tls.generate_dev_certs" },
    );
  }
  return true;
}

type TlsFileKey = "certfile" | "keyfile" | "cafile";

const ROLE: Record<TlsFileKey, string> = {
  certfile: "the broker certificate",
  keyfile: "the broker's private key",
  cafile: "the CA certificate that signs client certificates",
};

/**
 * One line that says which files are missing, where exactly (absolute paths: in a container the
 * working directory is not obvious), and what to mount or set. A container image switches
 * generation off, so an operator who forgot to mount the certificates learns it at once.
 */
function missingMessage(config: Config, missing: readonly TlsFileKey[]): string {
  const t = config.tls;
  const files = missing.map((k) => `tls.${k} = "${t[k]}" (${resolve(t[k])})`).join(", ");
  const roles = missing.map((k) => ROLE[k]);
  const what = roles.length > 1 ? `${roles.slice(0, -1).join(", ")} and ${roles.at(-1)}` : roles[0];
  const envs = missing.map((k) => envNameFor(`tls.${k}`)).join(" / ");
  const verb = missing.length === 1 ? "does" : "do";
  let advice = `mount or create ${what} there (e.g. \`mcloudtt certs\` or a Kubernetes TLS ` +
    `secret), or point ${envs} at your files`;
  const atDefaults = (Object.keys(DEFAULT_TLS_PATHS) as TlsFileKey[])
    .every((k) => t[k] === DEFAULT_TLS_PATHS[k]);
  if (!t.generate_dev_certs && atDefaults && missing.length === 3) {
    advice += "; tls.generate_dev_certs = false, so no development certificates are generated " +
      "(MCLOUDTT_TLS_GENERATE_DEV_CERTS=true generates them, for development only)";
  }
  return `${files} ${verb} not exist: ${advice}`;
}

/** The command lines that reach a broker on `port` with the generated client certificate. */
export function devCertCommands(port: number): string[] {
  const tls = "--cafile certs/ca.crt --cert certs/client/client.crt --key certs/client/client.key";
  return [
    `mosquitto_sub -h localhost -p ${port} -V 5 -t 'test/#' -v ${tls}`,
    `mosquitto_pub -h localhost -p ${port} -V 5 -t test/hello -m 'hello from mcloudtt' ${tls}`,
  ];
}
