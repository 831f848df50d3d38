/**
 * The TLS side of the bench: one PKI per bench process (made by `mcloudtt certs`, the dev
 * certificate generator), served by every broker's TLS listener, and the generator's TLS
 * connections.
 *
 * Server authentication only, for every broker alike: the generator cannot present a client
 * certificate and still disable Nagle. `Deno.connectTls` takes a certificate but never sets
 * TCP_NODELAY (strace shows no setsockopt), and `Deno.startTls`, which upgrades a TcpConn
 * that can have it set, ignores `cert`/`key`. With Nagle on, a publisher's second small
 * write waits for the broker's delayed ACK (up to 40 ms) and the latency runs would measure
 * that. Client certificates add work per handshake and the peer certificate's memory per
 * connection, not per message.
 */

import { track } from "./children.ts";

/** Plain TCP or TLS between the generator and the broker. */
export type Transport = "tcp" | "tls";

/** All transports, in the order rounds interleave them. */
export const TRANSPORTS: readonly Transport[] = ["tcp", "tls"];

/** Certificate files a broker's TLS listener serves. */
export interface BenchPki {
  readonly dir: string;
  readonly caFile: string;
  readonly certFile: string;
  readonly keyFile: string;
}

/** What a client needs to trust the broker: the CA certificate, PEM. */
export interface ClientTls {
  readonly ca: string;
}

const REPO_ROOT = new URL("../../", import.meta.url).pathname;

let made: Promise<BenchPki> | undefined;
// Known once the directory exists, for the synchronous cleanup on Ctrl-C.
let madeDir: string | undefined;

/**
 * The bench's PKI, made on first use in a temporary directory (CA, and a server certificate
 * for localhost, 127.0.0.1 and ::1). `removeBenchPki` deletes it.
 */
export function benchPki(): Promise<BenchPki> {
  made ??= makeBenchPki();
  return made;
}

async function makeBenchPki(): Promise<BenchPki> {
  const dir = await Deno.makeTempDir({ prefix: "bench-pki-" });
  madeDir = dir;
  const child = track(
    new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-all", "main.ts", "certs", "--dir", dir],
      cwd: REPO_ROOT,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn(),
  );
  const out = await child.output();
  if (!out.success) {
    const text = new TextDecoder().decode(out.stderr).trim();
    throw new Error(`'deno run -A main.ts certs --dir ${dir}' failed: ${text}`);
  }
  // Mosquitto started as root drops to the "mosquitto" user before it reads its files; the
  // temporary directory is 0700 and keys 0600, so open them up (test keys, thrown away).
  for (const path of [dir, `${dir}/broker`]) await Deno.chmod(path, 0o755);
  for (const path of [`${dir}/broker/broker.key`, `${dir}/broker/broker.crt`, `${dir}/ca.crt`]) {
    await Deno.chmod(path, 0o644);
  }
  return {
    dir,
    caFile: `${dir}/ca.crt`,
    certFile: `${dir}/broker/broker.crt`,
    keyFile: `${dir}/broker/broker.key`,
  };
}

/** Deletes the PKI if one was made. */
export async function removeBenchPki(): Promise<void> {
  if (made === undefined) return;
  const pki = await made.catch(() => undefined);
  made = undefined;
  madeDir = undefined;
  if (pki) await Deno.remove(pki.dir, { recursive: true }).catch(() => {});
}

/** The same, synchronously, for a process about to exit. */
export function removeBenchPkiSync(): void {
  if (madeDir === undefined) return;
  try {
    Deno.removeSync(madeDir, { recursive: true });
  } catch {
    // Gone already.
  }
  madeDir = undefined;
}

/** The client side of `pki`. */
export async function clientTls(pki: BenchPki): Promise<ClientTls> {
  return { ca: await Deno.readTextFile(pki.caFile) };
}

/**
 * A TCP connection with Nagle off, upgraded to TLS when `tls` is given (the handshake is
 * complete when this resolves).
 */
export async function connectBench(
  hostname: string,
  port: number,
  tls: ClientTls | undefined,
): Promise<Deno.Conn> {
  const tcp = await Deno.connect({ hostname, port });
  tcp.setNoDelay(true);
  if (tls === undefined) return tcp;
  try {
    const conn = await Deno.startTls(tcp, { hostname, caCerts: [tls.ca] });
    await conn.handshake();
    return conn;
  } catch (e) {
    try {
      tcp.close();
    } catch {
      // startTls took the resource over and closed it already.
    }
    throw e;
  }
}
