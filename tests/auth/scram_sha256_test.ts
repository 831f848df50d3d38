/**
 * SCRAM-SHA-256 (RFC 7677) beside SCRAM-SHA-512: `mcloudtt passwd --hash sha256` writes a
 * `$scram-sha256$` entry, which serves password logins and SCRAM-SHA-256; a user has the mechanism
 * of their entry's hash, and asking for the other one looks exactly like asking for an unknown
 * user. Over real sockets, with the test client of tests/helpers/scram_client.ts.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { join } from "node:path";
import { DEFAULT_ITERATIONS_SHA256, PasswordFile } from "../../src/auth/passwords.ts";
import { runPasswdCommand } from "../../src/cli/passwd.ts";
import { connectClient, RawClient, startBroker } from "../helpers/broker.ts";
import {
  answerScram,
  authDataOf,
  connectScram,
  SCRAM_SHA_256,
  SCRAM_SHA_512,
  ScramClient,
  scramLogin,
  scramProperties,
  sendAuth,
} from "../helpers/scram_client.ts";

const dir = await Deno.makeTempDir({ prefix: "mcloudtt-scram256-" });
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
const passwords = join(dir, "passwords");

/** `mcloudtt passwd` as a user runs it; the exit code must be 0. */
async function passwd(...args: string[]): Promise<void> {
  let err = "";
  const code = await runPasswdCommand(args, { stderr: (t) => err += t, stdout: () => {} });
  assert.equal(code, 0, err);
}

await passwd("-c", "--iterations", "4096", "--hash", "sha256", passwords, "carol", "carol-pw");
await passwd("--iterations", "4096", passwords, "alice", "alice-pw");

/** The salt and iteration count the broker answers `user` with for `method`. */
async function challenge(port: number, user: string, method: string): Promise<string> {
  await using c = await RawClient.connect(port, 5);
  await connectScram(c, `probe-${method}`, new ScramClient(user, "x").first(), method);
  const first = Buffer.from(authDataOf(await c.expect("auth"))).toString();
  return first.split(",").slice(1).join(",");
}

Deno.test("passwd --hash sha256 writes a $scram-sha256$ entry of 32-byte keys, at OWASP's 600,000 iterations without --iterations", async () => {
  const text = await Deno.readTextFile(passwords);
  const carol = text.split("\n").find((l) => l.startsWith("carol:"))!;
  const [, scheme, iterations, salt, storedKey, serverKey] = carol.slice(6).split("$");
  assert.equal(scheme, "scram-sha256");
  assert.equal(iterations, "4096");
  assert.equal(Buffer.from(salt, "base64").length, 16);
  assert.equal(Buffer.from(storedKey, "base64").length, 32);
  assert.equal(Buffer.from(serverKey, "base64").length, 32);
  const file = join(dir, "default");
  await passwd("-c", "--hash", "sha256", file, "dave", "dave-pw");
  assert.match(
    await Deno.readTextFile(file),
    new RegExp(`^dave:\\$scram-sha256\\$${DEFAULT_ITERATIONS_SHA256}\\$`),
  );
  const loaded = await PasswordFile.load(file);
  assert.equal(await loaded.verify("dave", new TextEncoder().encode("dave-pw")), true);
  assert.equal(await loaded.verify("dave", new TextEncoder().encode("dave-pX")), false);
});

Deno.test("SCRAM-SHA-256: a $scram-sha256$ user logs in by SCRAM-SHA-256 (raw client and MQTT.js, the broker's signature verified) and by password; a wrong proof gets 0x86", async () => {
  await using b = await startBroker({ auth: { password_file: passwords } });
  const raw = await scramLogin(b.port, "carol", "carol-pw", "carol-raw", { hash: "sha256" });
  raw.close();
  const s = new ScramClient("carol", "carol-pw", { hash: "sha256" });
  let verified = false;
  await using viaMqttJs = await connectClient(b.port, {
    clientId: "carol-mqttjs",
    properties: scramProperties(s),
  }, (client) => {
    answerScram(client, s);
    client.once("connect", (p) => (verified = s.verify(p.properties?.authenticationData)));
  });
  assert.ok(verified, "the broker proved it holds carol's SHA-256 keys");
  await using byPassword = await connectClient(b.port, {
    clientId: "carol-pw",
    username: "carol",
    password: "carol-pw",
  });
  assert.ok(byPassword.connected && viaMqttJs.connected);
  await using wrong = await RawClient.connect(b.port, 5);
  const w = new ScramClient("carol", "carol-pw", { hash: "sha256" });
  await connectScram(wrong, "carol-wrong", w.first(), SCRAM_SHA_256);
  await sendAuth(wrong, 0x18, w.final(authDataOf(await wrong.expect("auth")), true), SCRAM_SHA_256);
  assert.equal((await wrong.expect("connack")).reasonCode, 0x86);
});

Deno.test("attack: asking for the other mechanism than a user's entry looks like an unknown user: a stable decoy salt at the usual count of that mechanism, never the real salt, and 0x86 for the right password", async () => {
  await using b = await startBroker({ auth: { password_file: passwords } });
  const text = await Deno.readTextFile(passwords);
  const saltOf = (user: string) => {
    const line = text.split("\n").find((l) => l.startsWith(`${user}:`))!;
    return line.split("$")[3];
  };
  // Real users by their own mechanism: their salts.
  assert.equal(await challenge(b.port, "carol", SCRAM_SHA_256), `s=${saltOf("carol")},i=4096`);
  assert.equal(await challenge(b.port, "alice", SCRAM_SHA_512), `s=${saltOf("alice")},i=4096`);
  // By the other one: a decoy, the same at every attempt, differing from the real salt.
  const carol512 = await challenge(b.port, "carol", SCRAM_SHA_512);
  const alice256 = await challenge(b.port, "alice", SCRAM_SHA_256);
  assert.equal(await challenge(b.port, "carol", SCRAM_SHA_512), carol512);
  assert.equal(await challenge(b.port, "alice", SCRAM_SHA_256), alice256);
  assert.notEqual(carol512, `s=${saltOf("carol")},i=4096`);
  assert.notEqual(alice256, `s=${saltOf("alice")},i=4096`);
  // An unknown user's decoys differ between the mechanisms too, as a real user's answers do.
  assert.notEqual(
    (await challenge(b.port, "nobody", SCRAM_SHA_512)).split(",")[0],
    (await challenge(b.port, "nobody", SCRAM_SHA_256)).split(",")[0],
  );
  // The right password by the wrong mechanism: refused as a wrong one is.
  for (
    const [user, pw, hash] of [["carol", "carol-pw", "sha512"], ["alice", "alice-pw", "sha256"]]
  ) {
    await using c = await RawClient.connect(b.port, 5);
    const s = new ScramClient(user, pw, { hash: hash as "sha256" | "sha512" });
    await connectScram(c, `${user}-other`, s.first(), s.method);
    await sendAuth(c, 0x18, s.final(authDataOf(await c.expect("auth"))), s.method);
    assert.equal((await c.expect("connack")).reasonCode, 0x86, `${user} by ${s.method}`);
  }
});
