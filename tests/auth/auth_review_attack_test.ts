/**
 * Hostile review of the password file's hash forms, SASLprep, SCRAM-SHA-256 beside SCRAM-SHA-512,
 * the decoy key and `passwd --hash`: what a client without the password can learn or cost the
 * broker, over real sockets where it can be. Tests that found a bug say what it was and fail
 * before its fix; the others cover a safe behaviour no other test covered.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { join } from "node:path";
import { PolicyAuthenticator } from "../../src/auth/authenticator.ts";
import { hashPassword, PasswordFile } from "../../src/auth/passwords.ts";
import { saslprep, SaslprepError } from "../../src/auth/saslprep.ts";
import type { ConnectRequest } from "../../src/auth/types.ts";
import { PasswordVerifier } from "../../src/auth/verifier.ts";
import { runPasswdCommand } from "../../src/cli/passwd.ts";
import { RawClient, startBroker } from "../helpers/broker.ts";
import {
  authDataOf,
  connectScram,
  SCRAM_SHA_256,
  SCRAM_SHA_512,
  ScramClient,
  scramLogin,
  sendAuth,
  TEST_ITERATIONS,
} from "../helpers/scram_client.ts";

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

/** The salt and iteration count the broker's first AUTH gives `user` by `method`. */
async function challenge(port: number, user: string, method = SCRAM_SHA_512): Promise<string> {
  await using c = await RawClient.connect(port, 5);
  await connectScram(c, `probe-${user}`, new ScramClient(user, "x").first(), method);
  return Buffer.from(authDataOf(await c.expect("auth"))).toString().split(",").slice(1).join(",");
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

Deno.test("attack: legacy $pbkdf2-sha512$ entries (password logins only) set the iteration count of SCRAM-SHA-512's decoy, so in a file where they are most every real SCRAM user stood out from the unknown ones; the decoy now takes the count most SCRAM-SHA-512 entries have", async () => {
  const file = join(dir, "legacy");
  await Deno.writeTextFile(
    file,
    `old1:${await hashPassword("old1-pw", 1000, "pbkdf2-sha512")}\n` +
      `old2:${await hashPassword("old2-pw", 1000, "pbkdf2-sha512")}\n` +
      `alice:${await hashPassword("alice-secret", TEST_ITERATIONS)}\n`,
  );
  await using b = await startBroker({ auth: { password_file: file } });
  assert.match(await challenge(b.port, "alice"), new RegExp(`,i=${TEST_ITERATIONS}$`));
  for (const user of ["nobody", "old1"]) {
    assert.match(await challenge(b.port, user), new RegExp(`,i=${TEST_ITERATIONS}$`), user);
  }
  // Password logins still compare unknown users with the kind most entries are: legacy ones.
  assert.equal(await passwordLogin(b.port, "old1", new TextEncoder().encode("old1-pw")), 0);
});

/** A CONNECT's request as the broker builds it, for driving an authenticator directly. */
function request(clientId: string): ConnectRequest {
  return { clientId, username: undefined, protocolLevel: 5, remoteAddress: "127.0.0.1" };
}

Deno.test("attack: the first SCRAM step took longer for an unknown user (the decoy salt's HMAC, made for unknown users only, twice with the proof): over loopback the first AUTH came ~30 us later at every quantile (1,500 probes each), enough to tell who exists; the decoy is now made once for every user", async () => {
  const file = PasswordFile.parse(`alice:${await hashPassword("pw", 1000)}\n`, "mem");
  const decoy = file.scramDecoy.bind(file);
  let made = 0;
  file.scramDecoy = (...args) => {
    made++;
    return decoy(...args);
  };
  const policy = new PolicyAuthenticator({
    passwords: file,
    allowAnonymous: false,
    requireClientIdMatch: false,
  });
  const counts = (user: string) => {
    made = 0;
    const s = new ScramClient(user, "wrong");
    const ex = policy.exchange(SCRAM_SHA_512, request(user))!;
    const first = ex.step(s.first());
    assert.equal(first.done, false);
    const afterFirst = made;
    const final = ex.step(s.final(first.data!));
    assert.ok(final.done && !final.decision.ok);
    return [afterFirst, made];
  };
  assert.deepEqual(counts("alice"), [1, 1]);
  assert.deepEqual(counts("nobody"), [1, 1]);
});

/** The 25th percentile of `times`. */
function quartile(times: number[]): number {
  return times.sort((a, b) => a - b)[Math.floor(times.length / 4)];
}

Deno.test("attack: a wrong password cost a real user more than an unknown one beyond PBKDF2 (SCRAM's keys of the derived key and the cache's HMAC, skipped for the dummy: ~1/2 the time at one iteration, a fixed ~0.1-0.25 ms at any count); the dummy now takes the same steps", async () => {
  const file = PasswordFile.parse(
    `alice:${await hashPassword("pw", 1)}\nbob:${await hashPassword("pw", 1)}\n`,
    "mem",
  );
  const verifier = new PasswordVerifier({ maxConcurrent: 2, maxQueue: 64, cacheSeconds: 60 });
  const wrong = new TextEncoder().encode("wrong");
  const times: Record<string, number[]> = { alice: [], nobody: [] };
  for (let i = 0; i < 600; i++) {
    for (const user of i % 2 === 0 ? ["alice", "nobody"] : ["nobody", "alice"]) {
      const start = performance.now();
      assert.equal(await verifier.verify(file, user, wrong, Date.now() + 10_000), false);
      times[user].push(performance.now() - start);
    }
  }
  const known = quartile(times.alice.slice(100));
  const unknown = quartile(times.nobody.slice(100));
  assert.ok(
    unknown > known * 0.8,
    `a wrong password: ${known.toFixed(3)} ms for alice, ${unknown.toFixed(3)} ms for nobody`,
  );
});

/** Runs `passwd` in-process, its output captured. */
async function passwd(args: string[]): Promise<{ code: number; stderr: string }> {
  let stderr = "";
  const code = await runPasswdCommand(args, {
    readPassword: () => Promise.resolve("pw"),
    stdout: () => {},
    stderr: (t) => stderr += t,
  });
  return { code, stderr };
}

Deno.test("attack: passwd --iterations above the file's bound (100,000,000) crashed with a RangeError and its stack, and -D took --hash and --iterations and ignored them; both are usage errors now, and --hash=sha256 is taken as --hash sha256", async () => {
  const file = join(dir, "cli");
  for (const n of ["100000001", "999999999"]) {
    const r = await passwd(["-c", "--iterations", n, file, "u"]);
    assert.equal(r.code, 2, n);
    assert.match(r.stderr, /--iterations needs a positive integer \(at most 100000000\)/);
  }
  await assert.rejects(Deno.stat(file), Deno.errors.NotFound);
  assert.equal((await passwd(["-c", "--iterations=1000", "--hash=sha256", file, "u"])).code, 0);
  assert.match(await Deno.readTextFile(file), /^u:\$scram-sha256\$1000\$/);
  for (const args of [["--hash", "sha256"], ["--hash=sha512"], ["--iterations", "1000"]]) {
    const r = await passwd(["-D", ...args, file, "u"]);
    assert.equal(r.code, 2, args.join(" "));
    assert.match(r.stderr, /-D takes no --hash or --iterations/);
  }
  for (const value of ["--hash=", "--hash=SHA256", "--hash=md5", "--hash=sha256 "]) {
    assert.equal((await passwd([value, file, "u"])).code, 2, value);
  }
  assert.equal((await passwd(["--hash"])).code, 2);
  assert.match(await Deno.readTextFile(file), /^u:\$scram-sha256\$1000\$/);
});

Deno.test("attack: hostile password bytes over a real socket (not UTF-8, an encoded lone surrogate, only characters mapped to nothing, right-to-left and mixed-direction text, a prohibited character, 20,000 combining marks) get 0x86 for a real and an unknown user alike, and the broker goes on serving", async () => {
  await using b = await startBroker({ auth: { password_file: passwords } });
  const enc = (s: string) => new TextEncoder().encode(s);
  const hostile: [string, Uint8Array][] = [
    ["not UTF-8", new Uint8Array([0xff, 0xfe, 0x80, 0x41])],
    ["encoded lone surrogate", new Uint8Array([0x61, 0xed, 0xa0, 0x80])],
    ["mapped to nothing", enc("\u00ad\u200b\ufeff")],
    ["empty", new Uint8Array(0)],
    ["right-to-left", enc("\u05d0\u05d1\u05d2")],
    ["mixed direction", enc("\u05d0abc\u05d1")],
    ["prohibited", enc("alice-secret\u0007")],
    ["combining marks", enc("a" + "\u0301".repeat(20_000))],
  ];
  for (const [what, bytes] of hostile) {
    for (const user of ["alice", "carol", "nobody"]) {
      assert.equal(await passwordLogin(b.port, user, bytes), 0x86, `${what} as ${user}`);
    }
  }
  assert.equal(b.broker.metrics.authFailures, hostile.length * 3);
  await using _ok = await scramLogin(b.port, "carol", "carol-secret", "carol", { hash: "sha256" });
});

Deno.test("attack: an empty password file answers both mechanisms as for an unknown user (a stable salt at the default count of each: 210,000 and 600,000) and refuses a password login with 0x86", async () => {
  const file = join(dir, "empty");
  await Deno.writeTextFile(file, "");
  await using b = await startBroker({ auth: { password_file: file } });
  const s512 = await challenge(b.port, "anyone");
  assert.match(s512, /^s=[A-Za-z0-9+/]{22}==,i=210000$/);
  assert.equal(await challenge(b.port, "anyone"), s512);
  assert.match(await challenge(b.port, "anyone", SCRAM_SHA_256), /,i=600000$/);
  assert.notEqual((await challenge(b.port, "anyone", SCRAM_SHA_256)).split(",")[0], s512);
  assert.equal(await passwordLogin(b.port, "anyone", new TextEncoder().encode("x")), 0x86);
});

Deno.test("attack: mechanism confusion: a re-authentication by the other SCRAM mechanism, or one continued with the other's method, is a Protocol Error (DISCONNECT 0x82); a proof of the other mechanism's length is a wrong proof (0x86)", async () => {
  await using b = await startBroker({ auth: { password_file: passwords } });
  {
    await using c = await scramLogin(b.port, "alice", "alice-secret", "switch");
    await sendAuth(c, 0x19, new ScramClient("alice", "alice-secret").first(), SCRAM_SHA_256);
    assert.equal((await c.expect("disconnect")).reasonCode, 0x82);
    await c.expectClosed();
  }
  {
    const opts = { hash: "sha256" as const };
    await using c = await scramLogin(b.port, "carol", "carol-secret", "mid", opts);
    const s = new ScramClient("carol", "carol-secret", opts);
    await sendAuth(c, 0x19, s.first(), SCRAM_SHA_256);
    const final = s.final(authDataOf(await c.expect("auth")));
    await sendAuth(c, 0x18, final, SCRAM_SHA_512);
    assert.equal((await c.expect("disconnect")).reasonCode, 0x82);
    await c.expectClosed();
  }
  for (
    const [user, method, bytes] of [["alice", SCRAM_SHA_512, 32], ["carol", SCRAM_SHA_256, 64]]
  ) {
    await using c = await RawClient.connect(b.port, 5);
    const nonce = "n0nce";
    await connectScram(c, `len-${user}`, Buffer.from(`n,,n=${user},r=${nonce}`), method as string);
    const r = Buffer.from(authDataOf(await c.expect("auth"))).toString().split(",")[0];
    const proof = Buffer.alloc(bytes as number, 7).toString("base64");
    await sendAuth(c, 0x18, Buffer.from(`c=biws,${r},p=${proof}`), method as string);
    assert.equal((await c.expect("connack")).reasonCode, 0x86, `${user} by ${method}`);
  }
});
