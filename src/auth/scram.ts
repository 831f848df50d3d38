/**
 * SCRAM (RFC 5802), the server side, for MQTT 5 enhanced authentication: the client proves it
 * knows the password without sending it, and the server proves it holds the password's keys.
 * The server keeps StoredKey and ServerKey only (the password file's `$scram-sha512$` entries,
 * passwords.ts): they check a proof but cannot make one, so a leaked file does not let anyone
 * log in as the client. No channel binding: a client that requires it ("p=") is refused.
 */
import { createHash, createHmac, timingSafeEqual } from "node:crypto";
import { Buffer } from "node:buffer";

/** The hashes SCRAM is run with here: SCRAM-SHA-512 and SCRAM-SHA-256 (RFC 7677). */
export type ScramHash = "sha256" | "sha512";

/** What the server keeps of a user's password. */
export interface ScramCredentials {
  salt: Uint8Array;
  iterations: number;
  /** H(HMAC(SaltedPassword, "Client Key")), SaltedPassword being Hi(password, salt, iterations). */
  storedKey: Uint8Array;
  /** HMAC(SaltedPassword, "Server Key"). */
  serverKey: Uint8Array;
}

/** StoredKey and ServerKey of a SaltedPassword (for writing a password file's entry). */
export function scramKeys(
  hash: ScramHash,
  saltedPassword: Uint8Array,
): { storedKey: Uint8Array; serverKey: Uint8Array } {
  return {
    storedKey: digest(hash, hmac(hash, saltedPassword, "Client Key")),
    serverKey: hmac(hash, saltedPassword, "Server Key"),
  };
}

/** A step that failed: the reason, for the log and the refusal. */
export interface ScramFailure {
  ok: false;
  /** True for a message that does not follow RFC 5802 (else a wrong user or password). */
  malformed: boolean;
  reason: string;
}

/** Printable ASCII but ',' (RFC 5802's "printable"), for nonces. */
const NONCE = /^[\x21-\x2b\x2d-\x7e]+$/;

/**
 * One exchange: `first(client-first-message)` returns the server-first-message, then
 * `final(client-final-message)` checks the proof and returns the server-final-message.
 */
export class ScramExchange {
  private clientFirstBare = "";
  private serverFirst = "";
  private gs2Header = "";
  private nonce = "";
  private username = "";
  private credentials: ScramCredentials | undefined;
  /** The decoy made for the client-first's user, known or not (see `first`). */
  private decoyCredentials: ScramCredentials | undefined;

  /**
   * `lookup` gives a user's credentials, or undefined for an unknown user, who is then given
   * `decoy(username)`'s salt and iterations (the same every time for one name) and refused at
   * the proof, so the exchange does not tell which users exist. `decoy` is called once per
   * exchange for every user, real ones too, so that its cost does not tell either.
   */
  constructor(
    private readonly hash: ScramHash,
    private readonly lookup: (username: string) => ScramCredentials | undefined,
    private readonly decoy: (username: string) => ScramCredentials,
    private readonly serverNonce: () => string = randomNonce,
  ) {}

  /** The user the client-first-message named ("" before it). */
  get user(): string {
    return this.username;
  }

  /** The client-first-message in, the server-first-message out. */
  first(message: string): { ok: true; message: string } | ScramFailure {
    // gs2-header: channel binding flag, optional authzid, then the bare message.
    const m = /^([ny]|p=[^,]*),(a=[^,]*)?,(.*)$/s.exec(message);
    if (m === null) return malformed("client-first-message has no GS2 header");
    if (m[1].startsWith("p=")) return malformed("channel binding is not offered");
    const bare = m[3];
    const attrs = parseAttributes(bare);
    if (attrs === null || attrs[0]?.[0] !== "n" || attrs[1]?.[0] !== "r") {
      return malformed("client-first-message must start with n= and r=");
    }
    if (attrs.slice(2).some(([k]) => k === "m")) {
      return malformed("mandatory extensions are not supported");
    }
    const username = decodeName(attrs[0][1]);
    if (username === null || username.length === 0) return malformed("bad user name in n=");
    if (m[2] !== undefined) {
      const authzid = decodeName(m[2].slice(2));
      if (authzid !== username) return malformed("an authorization identity other than n=");
    }
    const clientNonce = attrs[1][1];
    if (!NONCE.test(clientNonce)) return malformed("bad nonce in r=");
    this.gs2Header = message.slice(0, message.length - bare.length);
    this.clientFirstBare = bare;
    this.username = username;
    this.credentials = this.lookup(username);
    // Made for every user, used for unknown ones only: made for them alone (and again at the
    // proof), its HMAC delayed their first AUTH by ~30 us over loopback, enough to tell who exists.
    this.decoyCredentials = this.decoy(username);
    const c = this.credentials ?? this.decoyCredentials;
    this.nonce = clientNonce + this.serverNonce();
    this.serverFirst = `r=${this.nonce},s=${
      Buffer.from(c.salt).toString("base64")
    },i=${c.iterations}`;
    return { ok: true, message: this.serverFirst };
  }

  /**
   * The client-final-message in: the user name and the server-final-message when the proof
   * holds.
   */
  final(message: string): { ok: true; username: string; message: string } | ScramFailure {
    if (this.serverFirst === "") return malformed("client-final-message before client-first");
    const attrs = parseAttributes(message);
    if (attrs === null || attrs.length < 3) return malformed("bad client-final-message");
    const [c, r] = attrs;
    const p = attrs[attrs.length - 1];
    if (c[0] !== "c" || r[0] !== "r" || p[0] !== "p") {
      return malformed("client-final-message must be c=, r=, ..., p=");
    }
    if (Buffer.from(c[1], "base64").toString("latin1") !== this.gs2Header) {
      return malformed("channel binding data differs from the GS2 header");
    }
    if (r[1] !== this.nonce) return malformed("nonce differs from the server's");
    const proof = Buffer.from(p[1], "base64");
    const withoutProof = message.slice(0, message.lastIndexOf(",p="));
    const authMessage = `${this.clientFirstBare},${this.serverFirst},${withoutProof}`;
    const creds = this.credentials ?? this.decoyCredentials!;
    const h = this.hash;
    const storedKey = creds.storedKey;
    const signature = hmac(h, storedKey, authMessage);
    // The proof is ClientKey XOR ClientSignature: its hash must be the stored key.
    let valid = proof.length === signature.length;
    if (valid) {
      const clientKey = Buffer.alloc(proof.length);
      for (let i = 0; i < proof.length; i++) clientKey[i] = proof[i] ^ signature[i];
      const computed = digest(h, clientKey);
      valid = computed.length === storedKey.length && timingSafeEqual(computed, storedKey);
    }
    if (!valid || this.credentials === undefined) {
      return { ok: false, malformed: false, reason: "bad user name or password" };
    }
    const verifier = hmac(h, creds.serverKey, authMessage).toString("base64");
    return { ok: true, username: this.username, message: `v=${verifier}` };
  }
}

function malformed(reason: string): ScramFailure {
  return { ok: false, malformed: true, reason };
}

/** `k=v` attributes separated by commas; null when one is not of that form. */
function parseAttributes(text: string): [string, string][] | null {
  const out: [string, string][] = [];
  for (const part of text.split(",")) {
    if (part.length < 2 || part[1] !== "=" || !/[a-zA-Z]/.test(part[0])) return null;
    out.push([part[0], part.slice(2)]);
  }
  return out;
}

/** saslname → user name: "=2C" is ',' and "=3D" is '='; any other '=' is invalid. */
function decodeName(s: string): string | null {
  if (/=(?!2C|3D)/.test(s)) return null;
  return s.replaceAll("=2C", ",").replaceAll("=3D", "=");
}

function hmac(h: ScramHash, key: Uint8Array, data: string | Uint8Array): Buffer {
  return createHmac(h, key).update(data).digest();
}

function digest(h: ScramHash, data: Uint8Array): Buffer {
  return createHash(h).update(data).digest();
}

/** 24 random bytes, base64 (no ','). */
function randomNonce(): string {
  return Buffer.from(crypto.getRandomValues(new Uint8Array(24))).toString("base64");
}
