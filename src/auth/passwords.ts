/**
 * Password file: one line per user, `username:$scram-sha512$<iterations>$<salt b64>$<StoredKey
 * b64>$<ServerKey b64>` as `mcloudtt passwd` writes it (a password login derives the key and
 * compares its StoredKey; a SCRAM-SHA-512 login, scram.ts, uses both keys), or the older
 * `username:$pbkdf2-sha512$<iterations>$<salt b64>$<hash b64>`, which serves password logins only:
 * its hash is SCRAM's SaltedPassword itself, enough to make a SCRAM proof, so SCRAM is not run
 * on it (a leaked file would otherwise log anyone in).
 *
 * Keys are derived from the password prepared by SASLprep (saslprep.ts), as SCRAM's SaltedPassword
 * is (RFC 5802 section 2.2), so a non-ASCII password entered in another form (a no-break space, a
 * full-width letter) gives the same keys, here and in SCRAM clients, which prepare it too.
 *
 * Derivation is deliberately slow (PBKDF2, 210000 iterations by default, roughly 100 ms of CPU).
 * The broker must call `verify` only at CONNECT, never on the per-message hot path.
 */
import { createHmac } from "node:crypto";
import { saslprep, SaslprepError } from "./saslprep.ts";
import { type ScramCredentials, scramKeys } from "./scram.ts";

/** OWASP (2023) recommendation for PBKDF2-HMAC-SHA512. */
export const DEFAULT_ITERATIONS = 210_000;

const SCHEME = "pbkdf2-sha512";
const SCRAM_SCHEME = "scram-sha512";
/**
 * Keys the decoy salts of SCRAM logins as unknown users when the caller has no lasting key (the
 * broker passes its store's secret).
 */
const PROCESS_DECOY_KEY = crypto.getRandomValues(new Uint8Array(32));
const SALT_BYTES = 16;
const KEY_BYTES = 64;
const MIN_SALT_BYTES = 8;
// An upper bound keeps a tampered or mistyped file from stalling every CONNECT for minutes.
const MAX_ITERATIONS = 100_000_000;

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

/** Raised when a password hash string does not follow our `$pbkdf2-sha512$...` format. */
export class PasswordHashFormatError extends Error {
  override name = "PasswordHashFormatError";
}

interface ParsedHash {
  /** The hash as written in the file; a new salt makes it differ whenever the password changes. */
  readonly encoded: string;
  readonly iterations: number;
  readonly salt: Uint8Array<ArrayBuffer>;
  /** The PBKDF2 key (`$pbkdf2-sha512$`), or SCRAM's StoredKey (`$scram-sha512$`). */
  readonly hash: Uint8Array<ArrayBuffer>;
  /** SCRAM's ServerKey: set for `$scram-sha512$` entries only. */
  readonly serverKey?: Uint8Array<ArrayBuffer>;
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

/**
 * Returns why `password` cannot be stored (SASLprep refuses it, or it prepares to nothing), or
 * undefined when it can.
 */
export async function passwordProblem(password: string): Promise<string | undefined> {
  try {
    if (await storedForm(password) !== "") return undefined;
  } catch (error) {
    if (!(error instanceof SaslprepError)) throw error;
    return `password cannot be prepared with SASLprep: ${error.message}`;
  }
  return "password is empty once prepared with SASLprep (it has only characters mapped to " +
    "nothing, such as U+00AD)";
}

/**
 * Hashes `password`, prepared by SASLprep and encoded as UTF-8, into the
 * `$scram-sha512$<iterations>$<salt>$<StoredKey>$<ServerKey>` form (password and SCRAM logins), or
 * with `scheme` "pbkdf2-sha512" into the older `$pbkdf2-sha512$<iterations>$<salt>$<hash>`
 * (password logins only). Rejects with SaslprepError for a password `passwordProblem` refuses.
 */
export async function hashPassword(
  password: string,
  iterations: number = DEFAULT_ITERATIONS,
  scheme: "scram-sha512" | "pbkdf2-sha512" = SCRAM_SCHEME,
): Promise<string> {
  if (!validIterations(iterations)) {
    throw new RangeError(`iterations must be an integer between 1 and ${MAX_ITERATIONS}`);
  }
  const problem = await passwordProblem(password);
  if (problem !== undefined) throw new SaslprepError(problem);
  const salt = crypto.getRandomValues(new Uint8Array(SALT_BYTES));
  const prepared = new TextEncoder().encode(await storedForm(password));
  const hash = await derive(prepared, salt, iterations, KEY_BYTES);
  if (scheme === SCHEME) return `$${SCHEME}$${iterations}$${toBase64(salt)}$${toBase64(hash)}`;
  const { storedKey, serverKey } = scramKeys("sha512", hash);
  return `$${SCRAM_SCHEME}$${iterations}$${toBase64(salt)}$${toBase64(storedKey)}$${
    toBase64(serverKey)
  }`;
}

/** Users and password hashes loaded from a password file; immutable, so reload by loading anew. */
export class PasswordFile {
  readonly #entries: ReadonlyMap<string, ParsedHash>;
  // Used for unknown users so that their rejection costs as much as a wrong password.
  readonly #dummy: ParsedHash;

  private constructor(entries: ReadonlyMap<string, ParsedHash>) {
    this.#entries = entries;
    const first = entries.values().next();
    this.#dummy = {
      encoded: "",
      iterations: first.done ? DEFAULT_ITERATIONS : usualIterations(entries.values()),
      salt: crypto.getRandomValues(new Uint8Array(SALT_BYTES)),
      hash: crypto.getRandomValues(new Uint8Array(KEY_BYTES)),
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
   * The SCRAM-SHA-512 credentials of `username`, undefined when it has no entry: each entry's
   * PBKDF2-HMAC-SHA-512 key of 64 bytes is that mechanism's SaltedPassword (scram.ts).
   */
  scramCredentials(username: string): ScramCredentials | undefined {
    const entry = this.#entries.get(username);
    if (entry?.serverKey === undefined) return undefined;
    return {
      salt: entry.salt,
      iterations: entry.iterations,
      storedKey: entry.hash,
      serverKey: entry.serverKey,
    };
  }

  /**
   * Made-up SCRAM credentials for a user without an entry: a salt derived from the name by `key`
   * (the same at every attempt and after every reload, as a real user's is; across restarts and
   * cluster nodes too when `key` is the store's secret) and the file's usual iteration count, so
   * the exchange does not tell who exists.
   */
  scramDecoy(username: string, key: Uint8Array = PROCESS_DECOY_KEY): ScramCredentials {
    const salt = createHmac("sha512", key).update(username).digest().subarray(0, SALT_BYTES);
    const { iterations, hash } = this.#dummy;
    return { salt, iterations, storedKey: hash, serverKey: hash };
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

/**
 * SASLprep as for a query: code points unassigned in Unicode 3.2 are allowed. The stored-string
 * rules would refuse every emoji and every character Unicode added since 2002 in a password, which
 * the user chose and a plain login takes as it is; a SCRAM client that prepares with the strict
 * rules fails on such a password on its own side, one that does not sends what this stores.
 * Rejects with SaslprepError (prohibited characters, the bidi rules).
 */
function storedForm(password: string): Promise<string> {
  return saslprep(password, "query");
}

/**
 * The UTF-8 of `password` prepared by SASLprep (query rules) when that differs from `password`;
 * undefined when it is the same, or when the bytes are not UTF-8 or SASLprep refuses them (a
 * binary password, or one that `passwd` could not have written: checked as it is).
 */
async function preparedDiffering(password: Uint8Array): Promise<Uint8Array | undefined> {
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(password);
  } catch {
    return undefined;
  }
  let prepared: string;
  try {
    prepared = await saslprep(text, "query");
  } catch (error) {
    if (error instanceof SaslprepError) return undefined;
    throw error;
  }
  if (prepared === text) return undefined;
  return new TextEncoder().encode(prepared);
}

/** Whether the key derived from `password` is `target`'s. */
async function matches(target: ParsedHash, password: Uint8Array): Promise<boolean> {
  const derived = await derive(password, target.salt, target.iterations, KEY_BYTES);
  // A `$scram-sha512$` entry keeps the StoredKey of the derived key, not the key.
  const key = target.serverKey === undefined ? derived : scramKeys("sha512", derived).storedKey;
  return constantTimeEqual(key, target.hash);
}

/**
 * The iteration count most entries have: an unknown user's check (and SCRAM decoy) uses it, so it
 * looks like most users' rather than like whichever entry came first.
 */
function usualIterations(entries: Iterable<ParsedHash>): number {
  const counts = new Map<number, number>();
  let best = DEFAULT_ITERATIONS;
  let most = 0;
  for (const e of entries) {
    const n = (counts.get(e.iterations) ?? 0) + 1;
    counts.set(e.iterations, n);
    if (n > most) [best, most] = [e.iterations, n];
  }
  return best;
}

function parseHash(encoded: string): ParsedHash {
  const fields = encoded.split("$");
  const scram = fields[1] === SCRAM_SCHEME;
  if (fields.length !== (scram ? 6 : 5) || fields[0] !== "") {
    throw new PasswordHashFormatError(
      scram
        ? "expected '$scram-sha512$<iterations>$<salt base64>$<StoredKey base64>$<ServerKey base64>'"
        : "expected '$scram-sha512$<iterations>$<salt>$<StoredKey>$<ServerKey>' or " +
          "'$pbkdf2-sha512$<iterations>$<salt base64>$<hash base64>'",
    );
  }
  const [, scheme, iterText, saltText, hashText] = fields;
  if (scheme !== SCHEME && !scram) {
    throw new PasswordHashFormatError(
      `unsupported hash scheme '${scheme}' (expected ${SCRAM_SCHEME} or ${SCHEME})`,
    );
  }
  if (!/^[1-9][0-9]*$/.test(iterText)) {
    throw new PasswordHashFormatError(`iteration count '${iterText}' is not a positive integer`);
  }
  const iterations = Number(iterText);
  if (!validIterations(iterations)) {
    throw new PasswordHashFormatError(`iteration count must be at most ${MAX_ITERATIONS}`);
  }
  const salt = fromBase64(saltText, "salt");
  if (salt.length < MIN_SALT_BYTES) {
    throw new PasswordHashFormatError(`salt must be at least ${MIN_SALT_BYTES} bytes`);
  }
  const hash = fromBase64(hashText, scram ? "StoredKey" : "hash");
  if (hash.length !== KEY_BYTES) {
    throw new PasswordHashFormatError(
      `${scram ? "StoredKey" : "hash"} must be ${KEY_BYTES} bytes, got ${hash.length}`,
    );
  }
  if (!scram) return { encoded, iterations, salt, hash };
  const serverKey = fromBase64(fields[5], "ServerKey");
  if (serverKey.length !== KEY_BYTES) {
    throw new PasswordHashFormatError(`ServerKey must be ${KEY_BYTES} bytes`);
  }
  return { encoded, iterations, salt, hash, serverKey };
}

function validIterations(iterations: number): boolean {
  return Number.isSafeInteger(iterations) && iterations >= 1 && iterations <= MAX_ITERATIONS;
}

async function derive(
  password: Uint8Array,
  salt: Uint8Array<ArrayBuffer>,
  iterations: number,
  bytes: number,
): Promise<Uint8Array<ArrayBuffer>> {
  // importKey wants an ArrayBuffer-backed view; copying also detaches us from caller buffers.
  const key = await crypto.subtle.importKey("raw", new Uint8Array(password), "PBKDF2", false, [
    "deriveBits",
  ]);
  const bits = await crypto.subtle.deriveBits(
    { name: "PBKDF2", hash: "SHA-512", salt, iterations },
    key,
    bytes * 8,
  );
  return new Uint8Array(bits);
}

function constantTimeEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

function toBase64(bytes: Uint8Array): string {
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary);
}

function fromBase64(text: string, what: string): Uint8Array<ArrayBuffer> {
  if (text.length === 0 || text.length % 4 !== 0 || !/^[A-Za-z0-9+/]+={0,2}$/.test(text)) {
    throw new PasswordHashFormatError(`${what} is not valid base64`);
  }
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
