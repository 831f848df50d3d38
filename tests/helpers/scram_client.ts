/**
 * The client side of SCRAM-SHA-512 and SCRAM-SHA-256 (RFC 5802, RFC 7677), written for the tests apart from the broker's
 * server side (src/auth/scram.ts): what a device would run, from its password alone.
 */
import { createHash, createHmac, pbkdf2Sync, randomBytes, timingSafeEqual } from "node:crypto";
import { Buffer } from "node:buffer";
import type { MqttClient } from "mqtt";
import saslprep from "@mongodb-js/saslprep";
import { RawClient } from "./broker.ts";

export const SCRAM_SHA_512 = "SCRAM-SHA-512";
export const SCRAM_SHA_256 = "SCRAM-SHA-256";

export interface ScramClientOptions {
  /**
   * Prepare the password with SASLprep before deriving from it, as RFC 5802's Normalize asks and
   * client libraries do (MongoDB's drivers with this same package); off, its UTF-8 is used as typed.
   */
  saslprep?: boolean;
  /** The mechanism's hash: "sha512" (SCRAM-SHA-512, the default) or "sha256" (SCRAM-SHA-256). */
  hash?: "sha512" | "sha256";
}

/** One login: `first()`, then `final(serverFirst)`, then `verify(serverFinal)`. */
export class ScramClient {
  readonly nonce = randomBytes(18).toString("base64");
  private bare: string;
  private serverSignature: Buffer | null = null;
  private readonly password: string;
  readonly hash: "sha512" | "sha256";

  constructor(user: string, password: string, options: ScramClientOptions = {}) {
    const name = user.replaceAll("=", "=3D").replaceAll(",", "=2C");
    this.bare = `n=${name},r=${this.nonce}`;
    this.password = options.saslprep ? saslprep(password) : password;
    this.hash = options.hash ?? "sha512";
  }

  /** The Authentication Method of this client's mechanism. */
  get method(): string {
    return this.hash === "sha256" ? SCRAM_SHA_256 : SCRAM_SHA_512;
  }

  /** client-first-message. */
  first(): Uint8Array {
    return Buffer.from(`n,,${this.bare}`);
  }

  /** client-final-message for the server-first-message `data`; `wrong` sends a bad proof. */
  final(data: Uint8Array, wrong = false): Uint8Array {
    const h = this.hash;
    const serverFirst = Buffer.from(data).toString();
    const attrs = new Map(serverFirst.split(",").map((a) => [a[0], a.slice(2)]));
    const nonce = attrs.get("r")!;
    if (!nonce.startsWith(this.nonce)) throw new Error(`server nonce ${nonce} lacks ours`);
    const salted = pbkdf2Sync(
      this.password,
      Buffer.from(attrs.get("s")!, "base64"),
      Number(attrs.get("i")),
      h === "sha512" ? 64 : 32,
      h,
    );
    const withoutProof = `c=biws,r=${nonce}`;
    const authMessage = `${this.bare},${serverFirst},${withoutProof}`;
    const clientKey = createHmac(h, salted).update("Client Key").digest();
    const storedKey = createHash(h).update(clientKey).digest();
    const signature = createHmac(h, storedKey).update(authMessage).digest();
    const proof = Buffer.alloc(clientKey.length);
    for (let i = 0; i < proof.length; i++) proof[i] = clientKey[i] ^ signature[i];
    if (wrong) proof[0] ^= 1;
    const serverKey = createHmac(h, salted).update("Server Key").digest();
    this.serverSignature = createHmac(h, serverKey).update(authMessage).digest();
    return Buffer.from(`${withoutProof},p=${proof.toString("base64")}`);
  }

  /** Whether the server-final-message `data` proves the server holds the password's hash. */
  verify(data: Uint8Array | undefined): boolean {
    if (data === undefined || this.serverSignature === null) return false;
    const text = Buffer.from(data).toString();
    if (!text.startsWith("v=")) return false;
    const v = Buffer.from(text.slice(2), "base64");
    return v.length === this.serverSignature.length && timingSafeEqual(v, this.serverSignature);
  }
}

/** Iterations of the PBKDF2 hashes the SCRAM tests write (small: the client derives each login). */
export const TEST_ITERATIONS = 4096;

/**
 * A password file entry as `passwd` wrote it before passwords were prepared with SASLprep: the
 * keys of `password`'s bytes as they are (`$scram-sha512$`), computed here apart from the broker.
 */
export function rawScramEntry(password: string | Uint8Array, iterations = TEST_ITERATIONS): string {
  const salt = randomBytes(16);
  const salted = pbkdf2Sync(password, salt, iterations, 64, "sha512");
  const clientKey = createHmac("sha512", salted).update("Client Key").digest();
  const storedKey = createHash("sha512").update(clientKey).digest();
  const serverKey = createHmac("sha512", salted).update("Server Key").digest();
  return `$scram-sha512$${iterations}$${salt.toString("base64")}$${storedKey.toString("base64")}$${
    serverKey.toString("base64")
  }`;
}

/** MQTT.js CONNECT properties asking for `s`'s mechanism with its client-first-message. */
export function scramProperties(s: ScramClient, extra: Record<string, unknown> = {}) {
  return {
    ...extra,
    authenticationMethod: s.method,
    authenticationData: Buffer.from(s.first()),
  };
}

/**
 * Makes MQTT.js `client` answer the broker's challenge (AUTH 0x18) with `s`'s proof, as a device
 * would (MQTT.js leaves the mechanism to `handleAuth`); `challenged` is told each time.
 */
export function answerScram(client: MqttClient, s: ScramClient, challenged = () => {}): void {
  client.handleAuth = (packet, callback) => {
    challenged();
    const data = packet.properties!.authenticationData as Uint8Array;
    callback(undefined, {
      cmd: "auth",
      reasonCode: 0x18,
      properties: {
        authenticationMethod: s.method,
        authenticationData: Buffer.from(s.final(data)),
      },
    });
  };
}

/** Sends CONNECT asking for `method` (SCRAM-SHA-512), with `first` as its data when given. */
export function connectScram(
  c: RawClient,
  clientId: string,
  first: Uint8Array | undefined,
  method = SCRAM_SHA_512,
): Promise<void> {
  return c.sendConnect(clientId, 5, {
    properties: {
      authenticationMethod: method,
      ...(first === undefined ? {} : { authenticationData: Buffer.from(first) }),
    },
  });
}

/** Sends AUTH `reasonCode` for `method`, with `data` when given. */
export function sendAuth(
  c: RawClient,
  reasonCode: number,
  data?: Uint8Array,
  method = SCRAM_SHA_512,
): Promise<void> {
  return c.sendPacket({
    cmd: "auth",
    reasonCode,
    properties: {
      authenticationMethod: method,
      ...(data === undefined ? {} : { authenticationData: Buffer.from(data) }),
    },
  });
}

/** The Authentication Data of an AUTH or CONNACK from the broker. */
export function authDataOf(p: object): Uint8Array {
  return (p as { properties: { authenticationData: Uint8Array } }).properties.authenticationData;
}

/**
 * A raw client logged in as `user` by SCRAM (SHA-512 unless `options.hash` says otherwise), having
 * checked the broker's signature in CONNACK.
 */
export async function scramLogin(
  port: number,
  user: string,
  password: string,
  clientId = user,
  options: ScramClientOptions = {},
): Promise<RawClient> {
  const c = await RawClient.connect(port, 5);
  const s = new ScramClient(user, password, options);
  await connectScram(c, clientId, s.first(), s.method);
  const challenge = await c.expect("auth");
  if (challenge.reasonCode !== 0x18) throw new Error(`AUTH 0x${challenge.reasonCode}`);
  await sendAuth(c, 0x18, s.final(authDataOf(challenge)), s.method);
  const connack = await c.expect("connack");
  if (connack.reasonCode !== 0) throw new Error(`CONNACK ${connack.reasonCode}`);
  if (!s.verify(authDataOf(connack))) throw new Error("the broker's signature does not verify");
  return c;
}
