import assert from "node:assert/strict";
import { createHash, createHmac, pbkdf2Sync } from "node:crypto";
import { Buffer } from "node:buffer";
import {
  DEFAULT_ITERATIONS,
  hashPassword,
  PasswordFile,
  PasswordFileError,
} from "../../src/auth/passwords.ts";
import { SaslprepError } from "../../src/auth/saslprep.ts";
import { rawScramEntry } from "../helpers/scram_client.ts";

// Low iteration counts keep the suite fast; one test exercises the default.
const FAST = 1000;
const bytes = (text: string) => new TextEncoder().encode(text);

Deno.test("hashed password verifies and a wrong one does not", async () => {
  const file = PasswordFile.parse(`alice:${await hashPassword("s3cret", FAST)}\n`, "mem");
  assert.equal(await file.verify("alice", bytes("s3cret")), true);
  assert.equal(await file.verify("alice", bytes("s3cret ")), false);
  assert.equal(await file.verify("alice", bytes("")), false);
});

Deno.test("hash has our format, a random salt and the default iteration count", async () => {
  const a = await hashPassword("same");
  const b = await hashPassword("same");
  const b64 = "[A-Za-z0-9+/=]";
  assert.match(a, new RegExp(`^\\$scram-sha512\\$210000\\$${b64}{24}\\$${b64}{88}\\$${b64}{88}$`));
  assert.equal(DEFAULT_ITERATIONS, 210_000);
  assert.notEqual(a, b);
  const file = PasswordFile.parse(`u:${a}`, "mem");
  assert.equal(await file.verify("u", bytes("same")), true);
  assert.equal(await file.verify("u", bytes("other")), false);
});

Deno.test("entries in the older $pbkdf2-sha512$ form still verify passwords, but give no SCRAM credentials", async () => {
  const old = await hashPassword("legacy", FAST, "pbkdf2-sha512");
  assert.match(old, /^\$pbkdf2-sha512\$1000\$/);
  const file = PasswordFile.parse(`u:${old}\nv:${await hashPassword("new", FAST)}`, "mem");
  assert.equal(await file.verify("u", bytes("legacy")), true);
  assert.equal(await file.verify("u", bytes("wrong")), false);
  // Its hash would be SCRAM's SaltedPassword: enough to log in, so it is not offered.
  assert.equal(file.scramCredentials("u"), undefined);
  assert.ok(file.scramCredentials("v") !== undefined);
});

Deno.test("non-ASCII passwords that SASLprep leaves as they are verify byte for byte", async () => {
  const file = PasswordFile.parse(`ü:${await hashPassword("pässwörd€", FAST)}`, "mem");
  assert.equal(await file.verify("ü", bytes("pässwörd€")), true);
  assert.equal(await file.verify("ü", new TextEncoder().encode("passwörd€")), false);
});

// "pass<NO-BREAK SPACE>word<FULLWIDTH LATIN CAPITAL LETTER A>": SASLprep makes it "pass wordA".
const TYPED = "pass\u00A0word\uFF21";
const PREPARED = "pass wordA";

Deno.test("hashPassword keys the password SASLprep prepares, so it verifies in either form, and those keys are SCRAM's for the prepared form", async () => {
  const encoded = await hashPassword(TYPED, FAST);
  const file = PasswordFile.parse(`u:${encoded}`, "mem");
  assert.equal(await file.verify("u", bytes(TYPED)), true);
  assert.equal(await file.verify("u", bytes(PREPARED)), true);
  assert.equal(await file.verify("u", bytes("pass wordB")), false);
  assert.equal(await file.verify("u", bytes("pass\u00A0word\uFF22")), false);
  // The StoredKey is that of Hi("pass wordA"), computed apart from the broker.
  const [, , , salt, storedKey] = encoded.split("$");
  const salted = pbkdf2Sync(PREPARED, Buffer.from(salt, "base64"), FAST, 64, "sha512");
  const clientKey = createHmac("sha512", salted).update("Client Key").digest();
  assert.equal(createHash("sha512").update(clientKey).digest("base64"), storedKey);
});

Deno.test("entries written before passwords were prepared (keys of the raw UTF-8) still verify: an ASCII password as ever, a non-ASCII one in the form it was written with", async () => {
  const file = PasswordFile.parse(
    `ascii:${rawScramEntry("s3cret pw", FAST)}\nold:${rawScramEntry(TYPED, FAST)}`,
    "mem",
  );
  assert.equal(await file.verify("ascii", bytes("s3cret pw")), true);
  assert.equal(await file.verify("ascii", bytes("s3cret\u00A0pw")), true, "prepared to the entry");
  assert.equal(await file.verify("ascii", bytes("s3cret")), false);
  // The prepared form is tried first and differs; the raw bytes, tried next, are the entry's.
  assert.equal(await file.verify("old", bytes(TYPED)), true);
  // The raw entry knows nothing of "pass wordA" until `passwd` writes the user again.
  assert.equal(await file.verify("old", bytes(PREPARED)), false);
});

Deno.test("MQTT passwords that are not UTF-8, or that SASLprep refuses, are checked as their bytes", async () => {
  const binary = new Uint8Array([0xff, 0x00, 0xc3, 0x28, 0x07]);
  const control = "bell\u0007";
  const file = PasswordFile.parse(
    `bin:${rawScramEntry(binary, FAST)}\nctl:${rawScramEntry(control, FAST)}`,
    "mem",
  );
  assert.equal(await file.verify("bin", binary), true);
  assert.equal(await file.verify("bin", binary.subarray(1)), false);
  assert.equal(await file.verify("ctl", bytes(control)), true);
});

/** Why hashPassword refuses `password` (its SaslprepError's message), or undefined when it takes it. */
function refusal(password: string): Promise<string | undefined> {
  return hashPassword(password, FAST).then(
    () => undefined,
    (e) => e instanceof SaslprepError ? e.message : Promise.reject(e),
  );
}

Deno.test("hashPassword refuses a password SASLprep refuses, and says why; code points unassigned in Unicode 3.2 (an emoji) are taken", async () => {
  const cases: [string, RegExp][] = [
    ["bell\u0007", /SASLprep: it contains U\+0007, a control character/],
    ["private\uE000", /U\+E000, a private-use character/],
    ["\u0627\u0031", /right-to-left/],
    ["\u00AD", /empty once prepared with SASLprep/],
  ];
  for (const [password, reason] of cases) {
    assert.match(await refusal(password) ?? "", reason, JSON.stringify(password));
  }
  assert.equal(await refusal(TYPED), undefined);
  assert.equal(await refusal("s3cret"), undefined);
  const emoji = "smile\u{1F600}";
  assert.equal(await refusal(emoji), undefined);
  const file = PasswordFile.parse(`e:${await hashPassword(emoji, FAST)}`, "mem");
  assert.equal(await file.verify("e", bytes(emoji)), true);
  assert.equal(await file.verify("e", bytes("smile")), false);
});

Deno.test("unknown user is rejected after a derivation as slow as a known user's", async () => {
  const iterations = 20_000;
  const file = PasswordFile.parse(`alice:${await hashPassword("pw", iterations)}`, "mem");
  assert.equal(file.has("alice"), true);
  assert.equal(file.has("bob"), false);
  const time = async (user: string) => {
    const start = performance.now();
    for (let i = 0; i < 3; i++) assert.equal(await file.verify(user, bytes("nope")), false);
    return performance.now() - start;
  };
  await time("alice"); // warm up
  const known = await time("alice");
  const unknown = await time("bob");
  // Generous bounds: a missing dummy derivation would make `unknown` near zero.
  assert.ok(unknown > known * 0.4, `unknown ${unknown}ms vs known ${known}ms`);
});

Deno.test("comments, blank lines, CRLF and several users parse", async () => {
  const text = [
    "# users",
    "",
    `alice:${await hashPassword("a", FAST)}\r`,
    "   # indented comment",
    `bob:${await hashPassword("b", FAST)}`,
    "",
  ].join("\n");
  const file = PasswordFile.parse(text, "mem");
  assert.equal(file.size, 2);
  assert.equal(await file.verify("alice", bytes("a")), true);
  assert.equal(await file.verify("bob", bytes("b")), true);
  assert.equal(await file.verify("bob", bytes("a")), false);
});

Deno.test("malformed lines are reported with file name and line number", async () => {
  const good = await hashPassword("x", FAST);
  const [, , , salt, hash] = good.split("$");
  const cases: [string, RegExp][] = [
    ["alice", /expected 'username:\$scram-sha512/],
    [":" + good, /username must not be empty/],
    ["alice:$bcrypt$10$abc$def", /unsupported hash scheme 'bcrypt'/],
    [`alice:$pbkdf2-sha512$0$${salt}$${hash}`, /not a positive integer/],
    [`alice:$pbkdf2-sha512$12x$${salt}$${hash}`, /not a positive integer/],
    [`alice:$pbkdf2-sha512$1000$${salt}`, /or '\$pbkdf2-sha512/],
    [`alice:$scram-sha512$1000$${salt}$${hash}`, /expected '\$scram-sha512\$<iterations>/],
    [`alice:$scram-sha512$1000$${salt}$${hash}$${hash.slice(4)}`, /ServerKey must be 64 bytes/],
    [`alice:$pbkdf2-sha512$1000$!!!!$${hash}`, /salt is not valid base64/],
    [`alice:$pbkdf2-sha512$1000$${salt}$${hash.slice(4)}`, /hash must be 64 bytes/],
    [`alice:$pbkdf2-sha512$1000$AAAA$${hash}`, /salt must be at least 8 bytes/],
    [`alice:${good}\nalice:${good}`, /:3: duplicate user 'alice' \(first defined on line 2\)/],
  ];
  for (const [line, message] of cases) {
    const text = `# header\n${line}\n`;
    assert.throws(
      () => PasswordFile.parse(text, "/etc/mcloudtt/passwd"),
      (error: unknown) => {
        assert.ok(error instanceof PasswordFileError, `${line}: ${error}`);
        assert.match(error.message, /^\/etc\/mcloudtt\/passwd:\d+: /);
        assert.match(error.message, message);
        assert.equal(error.source, "/etc/mcloudtt/passwd");
        assert.ok(error.line !== undefined && error.line >= 2);
        return true;
      },
    );
  }
});

Deno.test("load reads a file and can be called again to pick up changes", async () => {
  const path = await Deno.makeTempFile();
  try {
    await Deno.writeTextFile(path, `alice:${await hashPassword("one", FAST)}\n`);
    const first = await PasswordFile.load(path);
    await Deno.writeTextFile(path, `alice:${await hashPassword("two", FAST)}\n`);
    const second = await PasswordFile.load(path);
    assert.equal(await first.verify("alice", bytes("one")), true);
    assert.equal(await second.verify("alice", bytes("one")), false);
    assert.equal(await second.verify("alice", bytes("two")), true);
  } finally {
    await Deno.remove(path);
  }
});

Deno.test("loading a missing file names the file", async () => {
  await assert.rejects(PasswordFile.load("/nonexistent/mcloudtt-passwd"), (error: unknown) => {
    assert.ok(error instanceof PasswordFileError);
    assert.match(error.message, /^\/nonexistent\/mcloudtt-passwd: cannot read/);
    return true;
  });
});

Deno.test("hashPassword rejects an invalid iteration count", async () => {
  await assert.rejects(hashPassword("x", 0), RangeError);
  await assert.rejects(hashPassword("x", 1.5), RangeError);
});
