/**
 * Hostile review of the password file's hash forms, SASLprep, SCRAM-SHA-256 beside SCRAM-SHA-512,
 * the decoy key and `passwd --hash`: what a client without the password can learn or cost the
 * broker, over real sockets where it can be. Tests that found a bug say what it was and fail
 * before its fix; the others cover a safe behaviour no other test covered.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { join } from "node:path";
import { hashPassword } from "../../src/auth/passwords.ts";
import { saslprep, SaslprepError } from "../../src/auth/saslprep.ts";
import { RawClient, startBroker } from "../helpers/broker.ts";
import { TEST_ITERATIONS } from "../helpers/scram_client.ts";

const dir = await Deno.makeTempDir({ prefix: "mcloudtt-auth-review-" });
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
const passwords = join(dir, "passwords");
await Deno.writeTextFile(
  passwords,
  `alice:${await hashPassword("alice-secret", TEST_ITERATIONS)}\n` +
    `carol:${await hashPassword("carol-secret", TEST_ITERATIONS, "scram-sha256")}\n`,
);

/** The reason code of a password login (MQTT 5) as `username` with `password`'s bytes. */
async function passwordLogin(port: number, username: string, password: Uint8Array) {
  await using c = await RawClient.connect(port, 5);
  await c.sendConnect(`pw-${username}`, 5, { username, password: Buffer.from(password) });
  return (await c.expect("connack", 5000)).reasonCode;
}

/** Combining marks of eight canonical classes, highest first: NFKC must reorder every run. */
const MARKS = "\u0345\u035d\u035c\u0301\u0316\u031b\u0321\u0334";

Deno.test("attack: a 64 KiB password of combining marks stalled the whole broker in SASLprep (NFKC reorders them in quadratic time, on the event loop, while PBKDF2 runs off it: 0.56 s a login here, unknown users too); a non-ASCII password over 1024 characters is now checked as its bytes, unprepared", async () => {
  await using b = await startBroker({ auth: { password_file: passwords } });
  let hostile = "a";
  while (hostile.length + MARKS.length <= 32_000) hostile += MARKS;
  const bytes = new TextEncoder().encode(hostile);
  assert.ok(bytes.length < 65_535);
  let worst = 0;
  let last = performance.now();
  const timer = setInterval(() => {
    const now = performance.now();
    worst = Math.max(worst, now - last);
    last = now;
  }, 5);
  try {
    for (const user of ["alice", "nobody", "alice"]) {
      assert.equal(await passwordLogin(b.port, user, bytes), 0x86, user);
    }
  } finally {
    clearInterval(timer);
  }
  assert.ok(worst < 300, `the event loop stood still for ${Math.round(worst)} ms`);
  await assert.rejects(saslprep(hostile, "query"), (e: unknown) => {
    assert.ok(e instanceof SaslprepError);
    assert.match(e.message, /longer than 1024 characters/);
    return true;
  });
  // Up to the bound, non-ASCII passwords are prepared as before, and printable ASCII has none.
  assert.equal(await saslprep("\u00a0".repeat(1024), "query"), " ".repeat(1024));
  assert.equal(await saslprep("x".repeat(65_535), "query"), "x".repeat(65_535));
  assert.equal(await passwordLogin(b.port, "alice", new TextEncoder().encode("alice-secret")), 0);
});
