/**
 * The password file: one line per user, `username:<hash>`, each hash in a form of
 * password_hash.ts (`$scram-sha512$`, `$scram-sha256$` as `mcloudtt passwd` writes them, or the
 * older `$pbkdf2-sha512$`). Loaded whole and never changed: a reload (SIGHUP) loads it anew.
 */
import { createHmac } from "node:crypto";
import {
  keyBytes,
  matches,
  type ParsedHash,
  parseHash,
  PasswordHashFormatError,
  preparedDiffering,
  SALT_BYTES,
  usualKind,
} from "./password_hash.ts";
import type { ScramCredentials, ScramHash } from "./scram.ts";

export {
  DEFAULT_ITERATIONS,
  DEFAULT_ITERATIONS_SHA256,
  hashPassword,
  type HashScheme,
  MAX_ITERATIONS,
  PasswordHashFormatError,
} from "./password_hash.ts";
export { SaslprepError } from "./saslprep.ts";

/**
 * Keys the decoy salts of SCRAM logins as unknown users when the caller has no lasting key (the
 * broker passes its store's secret).
 */
const PROCESS_DECOY_KEY = crypto.getRandomValues(new Uint8Array(32));

/** Raised when a password file cannot be read or contains a malformed line. */
export class PasswordFileError extends Error {
  override name = "PasswordFileError";

  constructor(
    message: string,
    readonly source: string,
    readonly line?: number,
  ) {
    super(line === undefined ? `${source}: ${message}` : `${source}:${line}: ${message}`);
  }
}

/** Returns why `username` cannot be stored in a password file, or undefined when it can. */
export function usernameProblem(username: string): string | undefined {
  if (username.length === 0) return "username must not be empty";
  if (/[:\r\n\0]/.test(username)) return "username must not contain ':', NUL or line breaks";
  // A leading '#' or whitespace would make the line read back as a comment or be mangled.
  if (/^[#\s]/.test(username)) return "username must not start with '#' or whitespace";
  return undefined;
}

/**
 * Splits one password-file line into username and encoded hash; undefined for blank and comment
 * lines. The text is not validated here: `PasswordFile.parse` does that.
 */
export function splitPasswordLine(line: string): { username: string; encoded: string } | undefined {
  const text = line.trimEnd();
  const start = text.trimStart();
  if (start === "" || start.startsWith("#")) return undefined;
  const colon = text.indexOf(":");
  if (colon < 0) return { username: text, encoded: "" };
  return { username: text.slice(0, colon), encoded: text.slice(colon + 1) };
}

/** Users and password hashes loaded from a password file; immutable, so reload by loading anew. */
export class PasswordFile {
  readonly #entries: ReadonlyMap<string, ParsedHash>;
  // Used for unknown users so that their rejection costs as much as a wrong password: the hash,
  // iteration count and form most entries have.
  readonly #dummy: ParsedHash;
  /** The iteration count of each mechanism's decoy (`scramDecoy`): most of its entries' count. */
  readonly #decoyIterations: Record<ScramHash, number>;

  private constructor(entries: ReadonlyMap<string, ParsedHash>) {
    this.#entries = entries;
    const { digest, iterations, scram } = usualKind(entries.values());
    const random = (n: number) => crypto.getRandomValues(new Uint8Array(n));
    this.#dummy = {
      encoded: "",
      digest,
      iterations,
      salt: random(SALT_BYTES),
      hash: random(keyBytes(digest)),
      // A `$scram-sha*$` entry's check makes SCRAM's keys of the derived key: without a ServerKey
      // the dummy skipped that, and a wrong password took a real user ~0.1 ms longer.
      ...(scram ? { serverKey: random(keyBytes(digest)) } : {}),
    };
    this.#decoyIterations = {
      sha512: usualKind(entries.values(), "sha512").iterations,
      sha256: usualKind(entries.values(), "sha256").iterations,
    };
  }

  /** Reads and parses the password file at `path`; cheap (no derivation), so fine to call on SIGHUP. */
  static async load(path: string): Promise<PasswordFile> {
    let text: string;
    try {
      text = await Deno.readTextFile(path);
    } catch (error) {
      throw new PasswordFileError(`cannot read: ${errorMessage(error)}`, path);
    }
    return PasswordFile.parse(text, path);
  }

  /** Parses password-file text; `source` names the file in error messages. */
  static parse(text: string, source: string): PasswordFile {
    const entries = new Map<string, ParsedHash>();
    const firstLine = new Map<string, number>();
    const lines = text.replace(/^\uFEFF/, "").split("\n");
    for (let i = 0; i < lines.length; i++) {
      const lineNo = i + 1;
      const parts = splitPasswordLine(lines[i]);
      if (parts === undefined) continue;
      const problem = usernameProblem(parts.username);
      if (problem !== undefined) throw new PasswordFileError(problem, source, lineNo);
      if (!lines[i].includes(":")) {
        throw new PasswordFileError("expected 'username:$scram-sha512$...'", source, lineNo);
      }
      const seen = firstLine.get(parts.username);
      if (seen !== undefined) {
        throw new PasswordFileError(
          `duplicate user '${parts.username}' (first defined on line ${seen})`,
          source,
          lineNo,
        );
      }
      try {
        entries.set(parts.username, parseHash(parts.encoded));
      } catch (error) {
        if (!(error instanceof PasswordHashFormatError)) throw error;
        throw new PasswordFileError(
          `user '${parts.username}': ${error.message}`,
          source,
          lineNo,
        );
      }
      firstLine.set(parts.username, lineNo);
    }
    return new PasswordFile(entries);
  }

  /** Whether `username` has an entry. */
  has(username: string): boolean {
    return this.#entries.has(username);
  }

  /**
   * The stored hash text of `username` (undefined when absent): equal across two loads exactly when
   * the user's entry did not change, so callers can tell a changed or removed password.
   */
  entryOf(username: string): string | undefined {
    return this.#entries.get(username)?.encoded;
  }

  /** The users in the file. */
  usernames(): IterableIterator<string> {
    return this.#entries.keys();
  }

  /** Number of users in the file. */
  get size(): number {
    return this.#entries.size;
  }

  /**
   * The SCRAM credentials of `username` for the mechanism of `digest` (SCRAM-SHA-512 by default),
   * undefined when it has no `$scram-` entry of that hash: an entry's PBKDF2 key is that
   * mechanism's SaltedPassword (scram.ts), so a user has one mechanism, the one `passwd` chose.
   */
  scramCredentials(username: string, digest: ScramHash = "sha512"): ScramCredentials | undefined {
    const entry = this.#entries.get(username);
    if (entry?.serverKey === undefined || entry.digest !== digest) return undefined;
    return {
      salt: entry.salt,
      iterations: entry.iterations,
      storedKey: entry.hash,
      serverKey: entry.serverKey,
    };
  }

  /**
   * Made-up SCRAM credentials for a user without an entry of `digest`'s mechanism: a salt derived
   * from the mechanism and the name by `key` (the same at every attempt and after every reload, as
   * a real user's is; across restarts and cluster nodes too when `key` is the store's secret) and
   * the iteration count most of that mechanism's entries have, so the exchange does not tell who
   * exists. The mechanism is in the salt: a real user asked by the other mechanism gets a decoy
   * that differs from their real salt, so an unknown user's two decoys must differ as well.
   */
  scramDecoy(
    username: string,
    key: Uint8Array = PROCESS_DECOY_KEY,
    digest: ScramHash = "sha512",
  ): ScramCredentials {
    const salt = createHmac("sha512", key).update(`${digest}\n${username}`).digest()
      .subarray(0, SALT_BYTES);
    const hash = crypto.getRandomValues(new Uint8Array(keyBytes(digest)));
    return { salt, iterations: this.#decoyIterations[digest], storedKey: hash, serverKey: hash };
  }

  /**
   * Checks `password` for `username`; unknown users take as long as a wrong password.
   *
   * MQTT passwords are binary data: bytes that are UTF-8 and that SASLprep accepts (as a query:
   * unassigned code points allowed) are checked in their prepared form, as `hashPassword` wrote
   * it; other bytes as they are. When the prepared form differs from the bytes sent, the bytes
   * as they are are tried too, so an entry written before passwords were prepared (from the raw
   * UTF-8 of, say, "pass\u00A0word") still verifies: one more derivation, for such passwords only.
   *
   * Timing: whether that second derivation runs depends on the password sent alone, never on the
   * entry, so a wrong password costs the same for every user, known or not (the dummy takes the
   * same path). Only a right password stops after the first derivation when its entry is in the
   * prepared form, which tells the sender the entry's form: once they know the password.
   */
  async verify(username: string, password: Uint8Array): Promise<boolean> {
    const entry = this.#entries.get(username);
    const target = entry ?? this.#dummy;
    const prepared = await preparedDiffering(password);
    if (prepared !== undefined && await matches(target, prepared)) return entry !== undefined;
    const same = await matches(target, password);
    return entry !== undefined && same;
  }
}

function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
