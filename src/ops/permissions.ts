/**
 * The one list of Deno permissions the broker ships with: `deno task start`/`dev`, `deno task
 * compile` (baked into the binary), the Dockerfile and the bundle test all use exactly these
 * flags (tests/ops/permissions_test.ts checks that they agree). Paths are relative to the working
 * directory the program runs in.
 */

/** One permission flag and why the broker needs it (the README lists the same). */
export interface Permission {
  flag: string;
  why: string;
}

export const PERMISSIONS: readonly Permission[] = [
  {
    flag: "--allow-net",
    why: "listen on the MQTT, WebSocket and HTTP ports; reach Redis and BigQuery when enabled",
  },
  {
    flag: "--allow-read=.,/etc/mcloudtt,/var/run/secrets",
    why: "read config.toml, the certificates, the password and ACL files and the data directory: " +
      "under the working directory, or where a container mounts them (/etc/mcloudtt for config " +
      "and certificates, /var/run/secrets for Kubernetes secrets such as a service-account key)",
  },
  {
    flag: "--allow-write=certs,data",
    why: "write the embedded store in data/, and development certificates into certs/ on a " +
      "first start (only when [tls] generate_dev_certs allows it)",
  },
  {
    flag: "--allow-env=MCLOUDTT_*",
    why: "read the MCLOUDTT_<SECTION>_<KEY> configuration variables and MCLOUDTT_CONFIG",
  },
  {
    flag: "--ignore-env",
    why: "any other variable a library looks up (READABLE_STREAM, WS_NO_BUFFER_UTIL, ...) reads " +
      "as unset instead of failing; the broker cannot read the rest of the environment",
  },
  {
    flag: "--allow-sys=hostname",
    why: "the default [cluster] node_id is the host name plus the process id",
  },
];

/** The flags alone, in order, as passed to `deno run` / `deno compile`. */
export const PERMISSION_FLAGS: readonly string[] = PERMISSIONS.map((p) => p.flag);

/**
 * A one-line explanation of a permission error (Deno's NotCapable), naming what was refused and
 * how to grant it, or null when `e` is not a permission error.
 */
export function permissionProblem(e: unknown): string | null {
  if (!(e instanceof Deno.errors.NotCapable) && !(e instanceof Deno.errors.PermissionDenied)) {
    return null;
  }
  const message = e instanceof Error ? e.message : String(e);
  const m = message.match(/Requires (\w+) access(?: to "?([^",]+)"?)?/);
  if (!m) return `permission refused (${message.split("\n")[0]})`;
  const [, kind, target] = m;
  const what = target ? `${kind} access to ${target}` : `${kind} access`;
  if (kind === "read" || kind === "write") {
    // Grant the directory: files are often written via a temporary name beside them.
    const dir = target ? dirname(target) : ".";
    const where = kind === "read" ? "the working directory" : "certs/ or data/";
    return `the shipped permissions do not include ${what}; use a path under ${where}, or ` +
      `run from source with deno run --allow-${kind}=${dir} (plus the other flags of ` +
      `deno task start)`;
  }
  return `the shipped permissions do not include ${what}; run from source with deno run ` +
    `--allow-${kind}${target ? `=${target}` : ""}`;
}

function dirname(path: string): string {
  const i = path.lastIndexOf("/");
  return i < 0 ? "." : i === 0 ? "/" : path.slice(0, i);
}
