/**
 * Password checks at CONNECT, bounded and cached: derivations go through an AuthLimiter, and a
 * successful check is remembered for a short time so that a reconnecting fleet does not pay
 * PBKDF2 again for every client.
 *
 * The cache holds a keyed hash (HMAC-SHA256 with a per-process random key) of the password, never
 * the password, and each entry is tied to the user's entry in the password file: a changed or
 * removed password invalidates it at once, whatever the time left.
 */
import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import { AuthLimiter } from "./limiter.ts";
import type { PasswordFile } from "./passwords.ts";

export interface VerifierOptions {
  /** Password derivations running at once. */
  maxConcurrent: number;
  /** CONNECTs waiting for a derivation beyond those. */
  maxQueue: number;
  /** How long a successful check is remembered, in seconds; 0 = never. */
  cacheSeconds: number;
}

interface CacheEntry {
  /** The password file's entry for the user when this was verified. */
  readonly entry: string;
  readonly digest: Uint8Array;
  readonly expiresAt: number;
}

// A bound for the cache in case the password file is swapped for ever-new users.
const MAX_CACHE_ENTRIES = 100_000;

export class PasswordVerifier {
  readonly limiter: AuthLimiter;
  readonly #key = randomBytes(32);
  readonly #cache = new Map<string, CacheEntry>();
  /** Successful checks answered from the cache. */
  cacheHits = 0;

  constructor(public options: VerifierOptions) {
    this.limiter = new AuthLimiter({
      concurrency: options.maxConcurrent,
      maxQueue: options.maxQueue,
    });
  }

  /** Applies new options (on reload); running and waiting checks are kept. */
  configure(options: VerifierOptions): void {
    this.options = options;
    this.limiter.options = { concurrency: options.maxConcurrent, maxQueue: options.maxQueue };
    if (options.cacheSeconds === 0) this.#cache.clear();
  }

  /**
   * Whether `password` is right for `username` in `file`. Rejects with AuthBusyError when the
   * check cannot start before `deadline` (ms since epoch) or too many checks are waiting.
   */
  async verify(
    file: PasswordFile,
    username: string,
    password: Uint8Array,
    deadline: number,
  ): Promise<boolean> {
    const entry = file.entryOf(username);
    const ttl = this.options.cacheSeconds * 1000;
    let digest: Uint8Array | undefined;
    if (ttl > 0) {
      // Made for unknown users too, though never remembered for them: made for real users alone,
      // its HMAC made a wrong password cost them more than an unknown user, which told them apart.
      digest = createHmac("sha256", this.#key).update(username).update("\0").update(password)
        .digest();
      const hit = this.#cache.get(username);
      if (hit !== undefined) {
        if (
          hit.entry === entry && hit.expiresAt > Date.now() && timingSafeEqual(hit.digest, digest)
        ) {
          this.cacheHits++;
          return true;
        }
        // A wrong password does not evict: a guesser must not be able to cost the user a derivation.
        if (hit.entry !== entry || hit.expiresAt <= Date.now()) this.#cache.delete(username);
      }
    }
    const ok = await this.limiter.run(() => file.verify(username, password), deadline);
    if (ok && digest !== undefined && entry !== undefined) {
      if (this.#cache.size >= MAX_CACHE_ENTRIES) this.#cache.clear();
      this.#cache.set(username, { entry, digest, expiresAt: Date.now() + ttl });
    }
    return ok;
  }

  /** Forgets every remembered check (e.g. when the password file is replaced). */
  clearCache(): void {
    this.#cache.clear();
  }
}
