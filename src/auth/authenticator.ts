/**
 * The broker's authentication policy: a verified client certificate names the
 * user; otherwise a username/password is checked against the password file;
 * otherwise the client is anonymous, allowed only when configured. The ACL
 * (if any) then authorizes publishes and subscriptions.
 */
import type { Metrics } from "../ops/metrics.ts";
import type { Acl } from "./acl.ts";
import { AuthBusyError } from "./limiter.ts";
import type { PasswordFile } from "./passwords.ts";
import { PasswordVerifier, type VerifierOptions } from "./verifier.ts";
import { type ScramCredentials, ScramExchange, type ScramHash } from "./scram.ts";
import type {
  AuthDecision,
  Authenticator,
  AuthExchange,
  Authorizer,
  AuthStep,
  ClientContext,
  ConnectRequest,
  SubscribeAccess,
} from "./types.ts";

export interface PolicyOptions {
  passwords: PasswordFile | null;
  /** Offer SCRAM-SHA-512 enhanced authentication against `passwords` ([auth] scram). */
  scram?: boolean;
  /**
   * Keys the made-up SCRAM salts of unknown users (`PasswordFile.scramDecoy`). The broker sets
   * the store's secret (`Store.secret`), kept across restarts and shared by a cluster's nodes;
   * without it, a key of this process.
   */
  decoyKey?: Uint8Array;
  allowAnonymous: boolean;
  /** The client id must equal the certificate identity. */
  requireClientIdMatch: boolean;
  /** A CONNECT still waiting for its password check after this long is refused (ms). */
  connectTimeoutMs?: number;
  /** The clock `ConnectRequest.acceptedAt` was read from (default Date.now). */
  now?: () => number;
}

/** [auth] defaults, for embedders and tests that build a policy themselves. */
export const DEFAULT_VERIFIER_OPTIONS: VerifierOptions = {
  maxConcurrent: 2,
  maxQueue: 64,
  cacheSeconds: 60,
};

/** Shared by every anonymous CONNECT: decisions are read, never changed. */
const ANONYMOUS: AuthDecision = Object.freeze({ ok: true, username: undefined });

const BAD_CREDENTIALS = 0x86;
const NOT_AUTHORIZED = 0x87;
const BAD_CLIENT_ID = 0x85;
const BUSY = 0x89;
const BAD_AUTH_METHOD = 0x8c;

/** The enhanced-authentication method offered for `$scram-sha512$` entries. */
export const SCRAM_METHOD = "SCRAM-SHA-512";

/**
 * The enhanced-authentication methods offered against the password file, each with its hash: a
 * user's entry serves the mechanism of its hash (`mcloudtt passwd --hash`).
 */
const SCRAM_METHODS: ReadonlyMap<string, ScramHash> = new Map([
  [SCRAM_METHOD, "sha512"],
  ["SCRAM-SHA-256", "sha256"],
]);

/**
 * A failed SCRAM step: a wrong proof or unknown user is a bad user name or password; a message
 * that does not follow RFC 5802 (or asks for channel binding) a bad authentication method.
 */
function scramRefusal(malformed: boolean, reason: string): AuthDecision {
  return { ok: false, reasonCode: malformed ? BAD_AUTH_METHOD : BAD_CREDENTIALS, reason };
}

function countDecision(metrics: Metrics, d: AuthDecision): void {
  if (d.ok) return;
  if (d.reasonCode === BUSY) metrics.authBusy++;
  else metrics.authFailures++;
}

/**
 * An embedder's own Authenticator, with its refusals counted like the
 * built-in policy's (mcloudtt_auth_failures_total, mcloudtt_auth_busy_total).
 * A client certificate the broker refuses (its key usage forbids client
 * authentication) is refused here before the embedder is asked: an
 * authenticator written before that check existed, or one that trusts
 * `certificateIdentity` alone, would let such a certificate in.
 */
export function countedAuthenticator(inner: Authenticator, metrics: Metrics): Authenticator {
  return {
    exchange(method: string, req: ConnectRequest): AuthExchange | undefined {
      // Counted as a failure like the password path's refusal of such a certificate.
      if (req.certificateRefusal !== undefined) {
        return countedExchange(refusedExchange(req.certificateRefusal), metrics);
      }
      const ex = inner.exchange?.(method, req);
      return ex === undefined ? undefined : countedExchange(ex, metrics);
    },
    authenticate(req: ConnectRequest): AuthDecision | Promise<AuthDecision> {
      const d: AuthDecision | Promise<AuthDecision> = req.certificateRefusal !== undefined
        ? { ok: false, reasonCode: NOT_AUTHORIZED, reason: req.certificateRefusal }
        : inner.authenticate(req);
      if (d instanceof Promise) {
        return d.then((x) => {
          countDecision(metrics, x);
          return x;
        });
      }
      countDecision(metrics, d);
      return d;
    },
  };
}

/** `ex`, with its decisions counted like the password checks'. */
function countedExchange(ex: AuthExchange, metrics: Metrics): AuthExchange {
  return {
    step(data) {
      const s = ex.step(data);
      if (s.done) countDecision(metrics, s.decision);
      return s;
    },
  };
}

/** An exchange that refuses at its first step (a certificate the broker will not accept). */
function refusedExchange(reason: string): AuthExchange {
  return {
    step: () => ({ done: true, decision: { ok: false, reasonCode: NOT_AUTHORIZED, reason } }),
  };
}

/** A SCRAM login as someone other than the user its client certificate names. */
const NOT_CERT_USER: AuthDecision = Object.freeze({
  ok: false,
  reasonCode: NOT_AUTHORIZED,
  reason: "SCRAM user is not the certificate's",
});

/** Checks of one login against a password file that changed during the previous check. */
const MAX_RECHECKS = 2;

/** Authentication from certificates, a password file and the anonymous switch. */
export class PolicyAuthenticator implements Authenticator {
  constructor(
    public options: PolicyOptions,
    readonly verifier: PasswordVerifier = new PasswordVerifier(DEFAULT_VERIFIER_OPTIONS),
    private readonly metrics?: Metrics,
  ) {}

  authenticate(req: ConnectRequest): AuthDecision | Promise<AuthDecision> {
    const decision = this.decide(req);
    if (decision instanceof Promise) return decision.then((d) => this.count(d));
    return this.count(decision);
  }

  private count(d: AuthDecision): AuthDecision {
    if (this.metrics !== undefined) countDecision(this.metrics, d);
    return d;
  }

  /**
   * SCRAM-SHA-512 or SCRAM-SHA-256 (scram.ts) against the password file, when [auth] scram
   * offers it. The user it proves is held to the same certificate rules as a password login's:
   * with a certificate that names someone, only that someone.
   */
  exchange(method: string, req: ConnectRequest): AuthExchange | undefined {
    const passwords = this.options.passwords;
    const digest = SCRAM_METHODS.get(method);
    if (digest === undefined || this.options.scram === false || passwords === null) {
      return undefined;
    }
    const scram = new ScramExchange(
      digest,
      (u): ScramCredentials | undefined => passwords.scramCredentials(u, digest),
      (u) => passwords.scramDecoy(u, this.options.decoyKey, digest),
    );
    let first = true;
    const finish = (decision: AuthDecision, data?: Uint8Array): AuthStep => {
      this.count(decision);
      return { done: true, decision, data };
    };
    return {
      step: (data) => {
        const text = data === undefined ? "" : new TextDecoder().decode(data);
        if (first) {
          first = false;
          // The certificate is judged before any proof, as decide() judges it before the
          // password: judged after, a client whose certificate names alice (or is refused, or is
          // missing where one is required) learned whether a guess of bob's password was right
          // (0x87 "not the certificate's user") or wrong (0x86), which a password login never
          // tells. Refused here, its answer does not depend on the password.
          const cert = this.certificateDecision(req);
          if (cert !== null && !cert.ok) return finish(cert);
          const r = scram.first(text);
          if (!r.ok) return finish(scramRefusal(r.malformed, r.reason));
          if (cert !== null && cert.username !== scram.user) return finish(NOT_CERT_USER);
          return { done: false, data: new TextEncoder().encode(r.message) };
        }
        const r = scram.final(text);
        if (!r.ok) return finish(scramRefusal(r.malformed, r.reason));
        // A password file reloaded meanwhile decides as for a password check (decide()).
        if (this.options.passwords?.entryOf(r.username) !== passwords.entryOf(r.username)) {
          return finish({
            ok: false,
            reasonCode: BUSY,
            reason: "server busy: credentials changed",
          });
        }
        const cert = this.certificateDecision(req);
        if (cert !== null && (!cert.ok || cert.username !== r.username)) {
          return finish(cert.ok ? NOT_CERT_USER : cert);
        }
        return finish({ ok: true, username: r.username }, new TextEncoder().encode(r.message));
      },
    };
  }

  /**
   * What the client's certificate decides on its own: its refusal, the user it names, or null
   * when there is none to judge by (then a password, SCRAM or anonymity decides).
   */
  private certificateDecision(req: ConnectRequest): AuthDecision | null {
    if (req.certificateRefusal !== undefined) {
      // As for a certificate without the identity below: on a listener where certificates are
      // optional too, a client that chose to present one is judged by it.
      return { ok: false, reasonCode: NOT_AUTHORIZED, reason: req.certificateRefusal };
    }
    const identity = req.certificateIdentity;
    if (identity !== undefined) {
      if (this.options.requireClientIdMatch && req.clientId !== identity) {
        return {
          ok: false,
          reasonCode: BAD_CLIENT_ID,
          reason: "client id must equal the certificate identity",
        };
      }
      // The certificate is the stronger proof; a username the client sent does not override it.
      return { ok: true, username: identity };
    }
    if (req.certificateVerified === true) {
      // Falling through would let the CONNECT username (a mere label without a password file)
      // name a client whose certificate names no one: on a listener that requires certificates
      // the certificate is the identity, so one without it identifies no client.
      return {
        ok: false,
        reasonCode: NOT_AUTHORIZED,
        reason: "the client certificate lacks the part [tls] identity names",
      };
    }
    if (this.options.requireClientIdMatch) {
      return { ok: false, reasonCode: NOT_AUTHORIZED, reason: "a client certificate is required" };
    }
    return null;
  }

  /** `rechecks`: how many times the password file changed during this login's checks. */
  private decide(req: ConnectRequest, rechecks = 0): AuthDecision | Promise<AuthDecision> {
    const { passwords, allowAnonymous } = this.options;
    const cert = this.certificateDecision(req);
    if (cert !== null) return cert;
    if (passwords !== null && req.username !== undefined) {
      const username = req.username;
      if (req.password === undefined) {
        return { ok: false, reasonCode: BAD_CREDENTIALS, reason: "bad user name or password" };
      }
      // The connect timeout runs from accept when the connection says when that was; the wait
      // itself is real time, whatever clock the broker runs on.
      const spent = req.acceptedAt === undefined
        ? 0
        : Math.max(0, (this.options.now ?? Date.now)() - req.acceptedAt);
      const deadline = Date.now() + (this.options.connectTimeoutMs ?? 10_000) - spent;
      return this.verifier.verify(passwords, username, req.password, deadline).then(
        (ok): AuthDecision | Promise<AuthDecision> => {
          // The file may have been reloaded (SIGHUP) while the hash was computed: the check
          // holds only if this user's entry is still the one checked, else the current file
          // decides (a removed user is refused, a changed password checked again).
          if (this.options.passwords?.entryOf(username) !== passwords.entryOf(username)) {
            // Bounded: a file changing again and again must not keep a login (and a check slot)
            // going past the connect timeout.
            if (rechecks >= MAX_RECHECKS || Date.now() >= deadline) {
              return { ok: false, reasonCode: BUSY, reason: "server busy: credentials changed" };
            }
            return this.decide(req, rechecks + 1);
          }
          return ok
            ? { ok: true, username }
            : { ok: false, reasonCode: BAD_CREDENTIALS, reason: "bad user name or password" };
        },
        (e): AuthDecision => {
          if (!(e instanceof AuthBusyError)) throw e;
          return { ok: false, reasonCode: BUSY, reason: `server busy: ${e.message}` };
        },
      );
    }
    if (!allowAnonymous) {
      return { ok: false, reasonCode: NOT_AUTHORIZED, reason: "anonymous access is disabled" };
    }
    // Without a password file a username is only a label (for ACL %u), as in other brokers.
    const username = passwords === null ? req.username : undefined;
    return username === undefined ? ANONYMOUS : { ok: true, username };
  }
}

/** Adapts an ACL to the core's Authorizer interface. */
export class AclAuthorizer implements Authorizer {
  constructor(public acl: Acl) {}

  canPublish(ctx: ClientContext, topic: string): boolean {
    return this.acl.canPublish(ctx, topic);
  }

  canSubscribe(ctx: ClientContext, filter: string): boolean {
    return this.acl.canSubscribe(ctx, filter);
  }

  subscribeAccess(ctx: ClientContext, filter: string): SubscribeAccess {
    return this.acl.subscribeAccess(ctx, filter);
  }

  canReceive(ctx: ClientContext, topic: string): boolean {
    return this.acl.canReceive(ctx, topic);
  }
}
