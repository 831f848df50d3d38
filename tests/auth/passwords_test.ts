import assert from "node:assert/strict";
import {
  DEFAULT_ITERATIONS,
  hashPassword,
  PasswordFile,
  PasswordFileError,
} from "../../src/auth/passwords.ts";

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

Deno.test("non-ASCII passwords and binary MQTT passwords verify byte for byte", async () => {
  const file = PasswordFile.parse(`ü:${await hashPassword("pässwörd€", FAST)}`, "mem");
  assert.equal(await file.verify("ü", bytes("pässwörd€")), true);
  assert.equal(await file.verify("ü", new TextEncoder().encode("passwörd€")), false);
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
