/**
 * The broker's certificate, key and client CA, read from files and re-read
 * when they change (cert-manager rotates them on disk) or on SIGHUP. Servers
 * subscribe to changes and swap their secure context; open connections keep
 * the context they were established with.
 */
import { getLogger } from "@logtape/logtape";
import { X509Certificate } from "node:crypto";
import { servedChain } from "../auth/cert_chain.ts";
import { CertCheckError, checkCertSet, formatCertProblem, PEM_CERT } from "../auth/cert_check.ts";

const log = getLogger(["mcloudtt", "tls"]);

export interface TlsPaths {
  certfile: string;
  keyfile: string;
  cafile: string;
}

export interface TlsFiles {
  cert: string;
  key: string;
  ca: string;
}

/** A missing or unreadable TLS file, named by its config key. */
export class TlsFileError extends Error {
  constructor(readonly key: keyof TlsPaths, readonly path: string, cause: unknown) {
    super(
      `cannot read tls.${key} "${path}": ${cause instanceof Error ? cause.message : String(cause)}`,
      { cause },
    );
    this.name = "TlsFileError";
  }
}

/** Where a refused reload is counted (the broker's Metrics fits). */
export interface TlsReloadCounter {
  tlsReloadFailures: number;
}

export class TlsMaterial {
  private listeners = new Set<(files: TlsFiles) => void>();
  private stamp = "";
  private timer: ReturnType<typeof setInterval> | undefined;
  /** `servedChain` of the current files: every listener asks for it, at start and on reload. */
  private chain: { files: TlsFiles; pem: string } | null = null;
  /** `caList` of the current files, as of `until`. */
  private cas: CaSet | null = null;

  private constructor(
    readonly paths: TlsPaths,
    public files: TlsFiles,
    private readonly counter?: TlsReloadCounter,
  ) {}

  /**
   * Reads all three files and checks that they can work (see auth/cert_check.ts); throws
   * TlsFileError or CertCheckError naming the config key, the file and the reason.
   */
  static async load(paths: TlsPaths, counter?: TlsReloadCounter): Promise<TlsMaterial> {
    const files = await readAll(paths);
    const problems = checkCertSet(files, paths);
    if (problems.length > 0) throw new CertCheckError(problems);
    const m = new TlsMaterial(paths, files, counter);
    m.stamp = await stampOf(paths);
    return m;
  }

  /**
   * `certfile` followed by the intermediates of `cafile` that lead up from it (cert_chain.ts),
   * worked out once per set of files rather than once per listener.
   */
  servedChain(): string {
    const files = this.files;
    if (this.chain?.files !== files) {
      this.chain = { files, pem: servedChain(files.cert, files.ca) };
    }
    return this.chain.pem;
  }

  /**
   * The certificates of `cafile`, one PEM block each. Deno's node:tls trusts only the first
   * certificate of a PEM string given as `ca` (a cafile holding an old and a new client CA
   * refused every client of the second); as a list, each is trusted.
   */
  caList(now = Date.now()): string[] {
    const files = this.files;
    if (this.cas?.files !== files) this.cas = caSet(files, now);
    else if (now >= this.cas.until) this.cas = this.expireCas(this.cas, now);
    return this.cas.list;
  }

  /**
   * Deno's verifier does not check the validity of a trust anchor: a CA certificate of `cafile`
   * that expired would go on vouching for its clients. At its notAfter it leaves the list (new
   * handshakes of its clients fail) and the listeners are told, as when cafile changes, so they
   * close the connections it vouched for. Checked at every file poll (`watch`).
   */
  private expireCas(old: CaSet, now: number): CaSet {
    const next = caSet(old.files, now, old.all);
    const gone = old.kept.filter((c) => !next.kept.includes(c));
    for (const c of gone) {
      log.warn(
        "tls.cafile: the CA certificate {subject} expired at {at}: the clients it issued are " +
          "refused and their connections closed",
        { subject: c.subject, at: new Date(c.notAfter).toISOString() },
      );
    }
    return next;
  }

  /** Tells the listeners when a CA certificate of cafile expired since the last call. */
  private checkCaExpiry(now = Date.now()): void {
    if (this.cas === null || now < this.cas.until) return;
    const before = this.cas.list;
    if (this.caList(now) === before) return;
    for (const fn of this.listeners) fn(this.files);
  }

  /** Calls `fn` with new files after each successful reload. */
  onChange(fn: (files: TlsFiles) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** Polls the files' modification times every `seconds`. */
  watch(seconds: number): void {
    this.timer ??= setInterval(async () => {
      this.checkCaExpiry();
      try {
        const s = await stampOf(this.paths);
        if (s !== this.stamp) await this.reload();
      } catch {
        // Mid-rotation a file may be briefly missing; the next poll sees the result.
      }
    }, seconds * 1000);
  }

  /**
   * Re-reads the files now; keeps the old material when the new set is unreadable or cannot work
   * (a key that does not match, a certificate expired or from a foreign CA), logs why and counts it.
   * A refused set is not retried until a file changes again (or the next SIGHUP).
   */
  async reload(): Promise<boolean> {
    try {
      const stamp = await stampOf(this.paths);
      const files = await readAll(this.paths);
      this.stamp = stamp;
      const problems = checkCertSet(files, this.paths);
      if (problems.length > 0) {
        if (this.counter !== undefined) this.counter.tlsReloadFailures++;
        for (const p of problems) {
          log.error("TLS reload refused, the previous certificates stay in use: {problem}", {
            problem: formatCertProblem(p),
          });
        }
        return false;
      }
      this.files = files;
      for (const fn of this.listeners) fn(files);
      log.info("TLS certificates reloaded from {cert}", { cert: this.paths.certfile });
      return true;
    } catch (e) {
      if (this.counter !== undefined) this.counter.tlsReloadFailures++;
      log.error("TLS reload failed, keeping the previous certificates: {error}", {
        error: e instanceof Error ? e.message : String(e),
      });
      return false;
    }
  }

  close(): void {
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
    this.listeners.clear();
  }
}

/** One certificate of cafile. */
interface CaCert {
  readonly pem: string;
  readonly subject: string;
  /** ms since the epoch; Infinity when unreadable (cert_check.ts refused such a file). */
  readonly notAfter: number;
}

/** The certificates of cafile still valid at a time, one PEM block each. */
interface CaSet {
  readonly files: TlsFiles;
  readonly all: readonly CaCert[];
  readonly kept: readonly CaCert[];
  readonly list: string[];
  /** The earliest notAfter of those kept: the list changes then. */
  readonly until: number;
}

function caSet(
  files: TlsFiles,
  now: number,
  all: readonly CaCert[] = caCerts(files.ca),
): CaSet {
  const kept = all.filter((c) => now < c.notAfter);
  return {
    files,
    all,
    kept,
    list: all.length === 0 ? [files.ca] : kept.map((c) => c.pem),
    until: Math.min(...kept.map((c) => c.notAfter)),
  };
}

function caCerts(pem: string): CaCert[] {
  return (pem.match(PEM_CERT) ?? []).map((block) => {
    try {
      const c = new X509Certificate(block);
      const t = Date.parse(c.validTo);
      return { pem: block, subject: c.subject, notAfter: Number.isNaN(t) ? Infinity : t };
    } catch {
      return { pem: block, subject: "(unreadable)", notAfter: Infinity };
    }
  });
}

async function readAll(paths: TlsPaths): Promise<TlsFiles> {
  const read = async (key: keyof TlsPaths) => {
    try {
      return await Deno.readTextFile(paths[key]);
    } catch (e) {
      throw new TlsFileError(key, paths[key], e);
    }
  };
  return { cert: await read("certfile"), key: await read("keyfile"), ca: await read("cafile") };
}

async function stampOf(paths: TlsPaths): Promise<string> {
  const parts: string[] = [];
  for (const p of [paths.certfile, paths.keyfile, paths.cafile]) {
    const s = await Deno.stat(p);
    parts.push(`${s.mtime?.getTime()}:${s.size}`);
  }
  return parts.join("|");
}
