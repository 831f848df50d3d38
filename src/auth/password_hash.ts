/**
 * One entry of the password file: the forms its hash is written in, how `mcloudtt passwd` makes
 * one, how one is read back, and whether a password derives its key. The file itself (users,
 * lines, reloads) is passwords.ts.
 *
 * - `$scram-sha512$<iterations>$<salt>$<StoredKey>$<ServerKey>`: SCRAM's keys of the password's
 *   PBKDF2-HMAC-SHA-512 (64 bytes); password logins and SCRAM-SHA-512.
 * - `$scram-sha256$<iterations>$<salt>$<StoredKey>$<ServerKey>`: the same with SHA-256 (32
 *   bytes); password logins and SCRAM-SHA-256.
 * - `$pbkdf2-sha512$<iterations>$<salt>$<hash>`: the older form, the PBKDF2 key itself, which is
 *   SCRAM's SaltedPassword, enough to make a proof: password logins only (scram.ts is not run on
 *   it, else a leaked file would log anyone in).
 *
 * Keys are derived from the password prepared by SASLprep (saslprep.ts), as SCRAM's SaltedPassword
 * is (RFC 5802 section 2.2), so a non-ASCII password entered in another form (a no-break space, a
 * full-width letter) gives the same keys, here and in SCRAM clients, which prepare it too.
 *
 * Derivation is deliberately slow (PBKDF2, ~100 ms of CPU at the default counts): called at
 * CONNECT and by `passwd` only, never on the per-message hot path.
 */
import { Buffer } from "node:buffer";
import { saslprep, SaslprepError } from "./saslprep.ts";
import { type ScramHash, scramKeys } from "./scram.ts";

/** OWASP (2023) recommendation for PBKDF2-HMAC-SHA512. */
export const DEFAULT_ITERATIONS = 210_000;
/** OWASP (2023) recommendation for PBKDF2-HMAC-SHA256. */
export const DEFAULT_ITERATIONS_SHA256 = 600_000;

/** The forms of an entry's hash (see above). */
export type HashScheme = "scram-sha512" | "scram-sha256" | "pbkdf2-sha512";

const SCHEMES: Record<HashScheme, { digest: ScramHash; scram: boolean }> = {
  "scram-sha512": { digest: "sha512", scram: true },
  "scram-sha256": { digest: "sha256", scram: true },
  "pbkdf2-sha512": { digest: "sha512", scram: false },
};

export const SALT_BYTES = 16;
const MIN_SALT_BYTES = 8;
// An upper bound keeps a tampered or mistyped file from stalling every CONNECT for minutes.
export const MAX_ITERATIONS = 100_000_000;

/** Raised when a password hash string does not follow one of the forms above. */
export class PasswordHashFormatError extends Error {
  override name = "PasswordHashFormatError";
}

/** An entry's hash, read. */
export interface ParsedHash {
  /** The hash as written in the file; a new salt makes it differ whenever the password changes. */
  readonly encoded: string;
  /** The hash PBKDF2 and SCRAM run with. */
  readonly digest: ScramHash;
  readonly iterations: number;
  readonly salt: Uint8Array<ArrayBuffer>;
  /** The PBKDF2 key (`$pbkdf2-sha512$`), or SCRAM's StoredKey (`$scram-sha*$`). */
  readonly hash: Uint8Array<ArrayBuffer>;
  /** SCRAM's ServerKey: set for `$scram-sha*$` entries only. */
  readonly serverKey?: Uint8Array<ArrayBuffer>;
}

/** Bytes of a key made with `digest`: the hash's output size, as SCRAM's keys are. */
export function keyBytes(digest: ScramHash): number {
  return digest === "sha512" ? 64 : 32;
}

/** The iteration count `passwd` uses for `scheme` without --iterations. */
export function defaultIterations(scheme: HashScheme): number {
  return SCHEMES[scheme].digest === "sha256" ? DEFAULT_ITERATIONS_SHA256 : DEFAULT_ITERATIONS;
}

/**
 * Hashes `password`, prepared by SASLprep and encoded as UTF-8, into `scheme`'s form (default
 * `$scram-sha512$`), with `iterations` (default: `defaultIterations(scheme)`). Rejects with
 * SaslprepError, saying why, for a password SASLprep refuses or prepares to nothing.
 */
export async function hashPassword(
  password: string,
  iterations?: number,
  scheme: HashScheme = "scram-sha512",
): Promise<string> {
  const n = iterations ?? defaultIterations(scheme);
  if (!validIterations(n)) {
    throw new RangeError(`iterations must be an integer between 1 and ${MAX_ITERATIONS}`);
  }
  const prepared = new TextEncoder().encode(await storedForm(password));
  const { digest, scram } = SCHEMES[scheme];
  const salt = crypto.getRandomValues(new Uint8Array(SALT_BYTES));
  const key = await derive(digest, prepared, salt, n);
  if (!scram) return `$${scheme}$${n}$${toBase64(salt)}$${toBase64(key)}`;
  const { storedKey, serverKey } = scramKeys(digest, key);
  return `$${scheme}$${n}$${toBase64(salt)}$${toBase64(storedKey)}$${toBase64(serverKey)}`;
}

/**
 * SASLprep as for a query: code points unassigned in Unicode 3.2 are allowed. The stored-string
 * rules would refuse every emoji and every character Unicode added since 2002 in a password, which
 * the user chose and a plain login takes as it is; a SCRAM client that prepares with the strict
 * rules fails on such a password on its own side, one that does not sends what this stores.
 * Rejects with SaslprepError, its message saying why (prohibited characters, the bidi rules, or
 * nothing left once prepared).
 */
async function storedForm(password: string): Promise<string> {
  let prepared: string;
  try {
    prepared = await saslprep(password, "query");
  } catch (error) {
    if (!(error instanceof SaslprepError)) throw error;
    throw new SaslprepError(`password cannot be prepared with SASLprep: ${error.message}`);
  }
  if (prepared !== "") return prepared;
  throw new SaslprepError(
    "password is empty once prepared with SASLprep (it has only characters mapped to nothing, " +
      "such as U+00AD)",
  );
}

/**
 * The UTF-8 of `password` prepared by SASLprep (query rules) when that differs from `password`;
 * undefined when it is the same, or when the bytes are not UTF-8 or SASLprep refuses them (a
 * binary password, or one that `passwd` could not have written: checked as it is).
 */
export async function preparedDiffering(password: Uint8Array): Promise<Uint8Array | undefined> {
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
export async function matches(target: ParsedHash, password: Uint8Array): Promise<boolean> {
  const derived = await derive(target.digest, password, target.salt, target.iterations);
  // A `$scram-sha*$` entry keeps the StoredKey of the derived key, not the key.
  const key = target.serverKey === undefined
    ? derived
    : scramKeys(target.digest, derived).storedKey;
  return constantTimeEqual(key, target.hash);
}

/** Reads one entry's hash text; throws PasswordHashFormatError saying what is wrong. */
export function parseHash(encoded: string): ParsedHash {
  const fields = encoded.split("$");
  const form = Object.hasOwn(SCHEMES, fields[1]) ? SCHEMES[fields[1] as HashScheme] : undefined;
  const scram = form?.scram ?? false;
  if (fields[0] !== "" || fields.length !== (scram ? 6 : 5)) {
    throw new PasswordHashFormatError(
      scram
        ? `expected '$${fields[1]}$<iterations>$<salt base64>$<StoredKey base64>$<ServerKey ` +
          "base64>'"
        : "expected '$scram-sha512$<iterations>$<salt>$<StoredKey>$<ServerKey>', the same with " +
          "$scram-sha256$, or '$pbkdf2-sha512$<iterations>$<salt base64>$<hash base64>'",
    );
  }
  const [, scheme, iterText, saltText, hashText] = fields;
  if (form === undefined) {
    throw new PasswordHashFormatError(
      `unsupported hash scheme '${scheme}' (expected ${Object.keys(SCHEMES).join(", ")})`,
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
  const digest = form.digest;
  const size = keyBytes(digest);
  const hash = fromBase64(hashText, scram ? "StoredKey" : "hash");
  if (hash.length !== size) {
    throw new PasswordHashFormatError(
      `${scram ? "StoredKey" : "hash"} must be ${size} bytes, got ${hash.length}`,
    );
  }
  if (!scram) return { encoded, digest, iterations, salt, hash };
  const serverKey = fromBase64(fields[5], "ServerKey");
  if (serverKey.length !== size) {
    throw new PasswordHashFormatError(`ServerKey must be ${size} bytes`);
  }
  return { encoded, digest, iterations, salt, hash, serverKey };
}

/** What a password check costs: the hash, its iteration count, and whether SCRAM's keys follow. */
export interface HashKind {
  digest: ScramHash;
  iterations: number;
  /** A `$scram-sha*$` entry: its check derives StoredKey from the key (`matches`). */
  scram: boolean;
}

/**
 * The kind of entry most entries are, or `$scram-sha512$` at the default count: an unknown user is
 * checked as one, so the check looks like most users' rather than like whichever entry came first
 * (the form counts too: a `$scram-sha*$` entry's check makes SCRAM's keys, a `$pbkdf2-sha512$`
 * one's does not). With `digest`, only the entries that serve that SCRAM mechanism count (a decoy
 * of it): `$scram-sha512$` or `$scram-sha256$`, not the older `$pbkdf2-sha512$`, which serves
 * none. Counted with the others, legacy entries of another count gave the decoy theirs, and every
 * real SCRAM user stood out from the unknown ones.
 */
export function usualKind(entries: Iterable<ParsedHash>, digest?: ScramHash): HashKind {
  const counts = new Map<string, number>();
  let best: HashKind = {
    digest: digest ?? "sha512",
    iterations: digest === "sha256" ? DEFAULT_ITERATIONS_SHA256 : DEFAULT_ITERATIONS,
    scram: true,
  };
  let most = 0;
  for (const e of entries) {
    const scram = e.serverKey !== undefined;
    if (digest !== undefined && (e.digest !== digest || !scram)) continue;
    const k = `${e.digest}:${e.iterations}:${scram}`;
    const n = (counts.get(k) ?? 0) + 1;
    counts.set(k, n);
    if (n > most) [best, most] = [{ digest: e.digest, iterations: e.iterations, scram }, n];
  }
  return best;
}

function validIterations(iterations: number): boolean {
  return Number.isSafeInteger(iterations) && iterations >= 1 && iterations <= MAX_ITERATIONS;
}

async function derive(
  digest: ScramHash,
  password: Uint8Array,
  salt: Uint8Array<ArrayBuffer>,
  iterations: number,
): Promise<Uint8Array<ArrayBuffer>> {
  // importKey wants an ArrayBuffer-backed view; copying also detaches us from caller buffers.
  const key = await crypto.subtle.importKey("raw", new Uint8Array(password), "PBKDF2", false, [
    "deriveBits",
  ]);
  const bits = await crypto.subtle.deriveBits(
    { name: "PBKDF2", hash: digest === "sha512" ? "SHA-512" : "SHA-256", salt, iterations },
    key,
    keyBytes(digest) * 8,
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
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("base64");
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
