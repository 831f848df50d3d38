/**
 * The client side of SCRAM-SHA-512 (RFC 5802), written for the tests apart from the broker's
 * server side (src/auth/scram.ts): what a device would run, from its password alone.
 */
import { createHash, createHmac, pbkdf2Sync, randomBytes, timingSafeEqual } from "node:crypto";
import { Buffer } from "node:buffer";

export const SCRAM_SHA_512 = "SCRAM-SHA-512";

/** One login: `first()`, then `final(serverFirst)`, then `verify(serverFinal)`. */
export class ScramClient {
  readonly nonce = randomBytes(18).toString("base64");
  private bare: string;
  private serverSignature: Buffer | null = null;

  constructor(user: string, private readonly password: string) {
    const name = user.replaceAll("=", "=3D").replaceAll(",", "=2C");
    this.bare = `n=${name},r=${this.nonce}`;
  }

  /** client-first-message. */
  first(): Uint8Array {
    return Buffer.from(`n,,${this.bare}`);
  }

  /** client-final-message for the server-first-message `data`; `wrong` sends a bad proof. */
  final(data: Uint8Array, wrong = false): Uint8Array {
    const serverFirst = Buffer.from(data).toString();
    const attrs = new Map(serverFirst.split(",").map((a) => [a[0], a.slice(2)]));
    const nonce = attrs.get("r")!;
    if (!nonce.startsWith(this.nonce)) throw new Error(`server nonce ${nonce} lacks ours`);
    const salted = pbkdf2Sync(
      this.password,
      Buffer.from(attrs.get("s")!, "base64"),
      Number(attrs.get("i")),
      64,
      "sha512",
    );
    const withoutProof = `c=biws,r=${nonce}`;
    const authMessage = `${this.bare},${serverFirst},${withoutProof}`;
    const clientKey = createHmac("sha512", salted).update("Client Key").digest();
    const storedKey = createHash("sha512").update(clientKey).digest();
    const signature = createHmac("sha512", storedKey).update(authMessage).digest();
    const proof = Buffer.alloc(clientKey.length);
    for (let i = 0; i < proof.length; i++) proof[i] = clientKey[i] ^ signature[i];
    if (wrong) proof[0] ^= 1;
    const serverKey = createHmac("sha512", salted).update("Server Key").digest();
    this.serverSignature = createHmac("sha512", serverKey).update(authMessage).digest();
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
