import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { runPasswdCommand } from "../../src/cli/passwd.ts";
import { PasswordFile } from "../../src/auth/passwords.ts";
import { withTempDir } from "../helpers/fs.ts";

const FIXTURE = fileURLToPath(new URL("./fixtures/passwd_cli.ts", import.meta.url));
// Low iteration counts keep the suite fast; one test checks the default.
const FAST = ["--iterations", "1000"];
const bytes = (text: string) => new TextEncoder().encode(text);

interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs the command in a real `deno run` process with `stdin` piped in (so not a TTY). */
async function runCli(args: string[], stdin: string): Promise<Result> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", FIXTURE, ...args],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(bytes(stdin));
  await writer.close();
  const output = await child.output();
  const decoder = new TextDecoder();
  return {
    code: output.code,
    stdout: decoder.decode(output.stdout),
    stderr: decoder.decode(output.stderr),
  };
}

/** Runs the command in-process with captured output. */
async function runLocal(args: string[], password?: string): Promise<Result> {
  let stdout = "";
  let stderr = "";
  const code = await runPasswdCommand(args, {
    readPassword: password === undefined ? undefined : () => Promise.resolve(password),
    stdout: (text) => stdout += text,
    stderr: (text) => stderr += text,
  });
  return { code, stdout, stderr };
}

async function verify(file: string, user: string, password: string): Promise<boolean> {
  return (await PasswordFile.load(file)).verify(user, bytes(password));
}

Deno.test("passwd -c creates a 0600 file from a password read on stdin", async () => {
  await withTempDir(async (dir) => {
    const file = `${dir}/passwd`;
    const result = await runCli(["-c", ...FAST, file, "alice"], "s3cret\n");
    assert.equal(result.code, 0, result.stderr);
    assert.equal(result.stderr, "");
    assert.equal((await Deno.stat(file)).mode! & 0o777, 0o600);
    assert.equal(await verify(file, "alice", "s3cret"), true);
    assert.equal(await verify(file, "alice", "s3cret\n"), false);
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["passwd"]);
  });
});

Deno.test("passwd adds and updates users, keeping other lines and comments", async () => {
  await withTempDir(async (dir) => {
    const file = `${dir}/passwd`;
    assert.equal((await runCli(["-c", ...FAST, file, "alice"], "one\r\n")).code, 0);
    await Deno.writeTextFile(file, "# managed by ops\n", { append: true });
    assert.equal((await runCli([...FAST, file, "bob"], "bobpw")).code, 0);
    assert.equal((await runCli([...FAST, file, "alice"], "two\nignored\n")).code, 0);

    assert.equal(await verify(file, "alice", "two"), true);
    assert.equal(await verify(file, "alice", "one"), false);
    assert.equal(await verify(file, "bob", "bobpw"), true);
    const lines = (await Deno.readTextFile(file)).trimEnd().split("\n");
    assert.deepEqual(lines.map((line) => line.split(":")[0]), ["alice", "# managed by ops", "bob"]);
    assert.equal((await Deno.stat(file)).mode! & 0o777, 0o600);
  });
});

Deno.test("passwd -c replaces an existing file", async () => {
  await withTempDir(async (dir) => {
    const file = `${dir}/passwd`;
    assert.equal((await runLocal(["-c", ...FAST, file, "alice", "a"])).code, 0);
    assert.equal((await runCli(["-c", ...FAST, file, "bob"], "b\n")).code, 0);
    const passwords = await PasswordFile.load(file);
    assert.equal(passwords.has("alice"), false);
    assert.equal(await passwords.verify("bob", bytes("b")), true);
  });
});

Deno.test("passwd -D deletes a user and fails for an unknown one", async () => {
  await withTempDir(async (dir) => {
    const file = `${dir}/passwd`;
    assert.equal((await runLocal(["-c", ...FAST, file, "alice", "a"])).code, 0);
    assert.equal((await runLocal([...FAST, file, "bob", "b"])).code, 0);
    const removed = await runCli(["-D", file, "bob"], "");
    assert.equal(removed.code, 0, removed.stderr);
    const passwords = await PasswordFile.load(file);
    assert.equal(passwords.has("bob"), false);
    assert.equal(await passwords.verify("alice", bytes("a")), true);

    const missing = await runLocal(["-D", file, "carol"]);
    assert.equal(missing.code, 1);
    assert.equal(missing.stderr, `mcloudtt passwd: ${file}: no user 'carol'\n`);
  });
});

Deno.test("passwd without -c refuses a missing file and an empty stdin", async () => {
  await withTempDir(async (dir) => {
    const file = `${dir}/passwd`;
    const missing = await runLocal([...FAST, file, "alice", "pw"]);
    assert.equal(missing.code, 1);
    assert.equal(missing.stderr, `mcloudtt passwd: ${file} does not exist (use -c to create it)\n`);

    const empty = await runCli(["-c", ...FAST, file, "alice"], "");
    assert.equal(empty.code, 1);
    assert.equal(empty.stderr, "mcloudtt passwd: no password on stdin\n");
    const blank = await runCli(["-c", ...FAST, file, "alice"], "\n");
    assert.equal(blank.code, 1);
    assert.equal(blank.stderr, "mcloudtt passwd: password must not be empty\n");
    await assert.rejects(Deno.stat(file), Deno.errors.NotFound);
  });
});

Deno.test("passwd refuses a password SASLprep refuses, saying why, and leaves the file alone", async () => {
  await withTempDir(async (dir) => {
    const file = `${dir}/passwd`;
    assert.equal((await runLocal(["-c", ...FAST, file, "alice", "a"])).code, 0);
    const before = await Deno.readTextFile(file);
    const bell = await runCli([...FAST, file, "bob"], "ring\u0007\n");
    assert.equal(bell.code, 1, bell.stderr);
    assert.equal(
      bell.stderr,
      "mcloudtt passwd: password cannot be prepared with SASLprep: it contains U+0007, a " +
        "control character that SASLprep prohibits (RFC 4013 section 2.3)\n",
    );
    const cases: [string, RegExp][] = [
      ["\u{10FFFD}x", /U\+10FFFD, a private-use character/],
      ["\u00AD", /empty once prepared with SASLprep/],
    ];
    for (const [password, reason] of cases) {
      const result = await runLocal([...FAST, file, "bob", password]);
      assert.equal(result.code, 1, JSON.stringify(password));
      assert.match(result.stderr, /^mcloudtt passwd: /);
      assert.match(result.stderr, reason);
    }
    assert.equal(await Deno.readTextFile(file), before);
    // Unassigned in Unicode 3.2 is not prohibited: an emoji password is taken and checks.
    assert.equal((await runLocal([...FAST, file, "carol", "smile\u{1F600}"])).code, 0);
    assert.equal(await verify(file, "carol", "smile\u{1F600}"), true);
  });
});

Deno.test("passwd stores the password SASLprep prepares: a no-break space and a full-width letter verify as typed and as plain ASCII", async () => {
  await withTempDir(async (dir) => {
    const file = `${dir}/passwd`;
    const result = await runCli(["-c", ...FAST, file, "alice"], "open\u00A0\uFF33esame\n");
    assert.equal(result.code, 0, result.stderr);
    assert.equal(await verify(file, "alice", "open\u00A0\uFF33esame"), true);
    assert.equal(await verify(file, "alice", "open Sesame"), true);
    assert.equal(await verify(file, "alice", "open sesame"), false);
  });
});

Deno.test("passwd refuses to edit a malformed file and leaves it untouched", async () => {
  await withTempDir(async (dir) => {
    const file = `${dir}/passwd`;
    const original = "# users\nalice:not-a-hash\n";
    await Deno.writeTextFile(file, original);
    const result = await runLocal([...FAST, file, "bob", "pw"]);
    assert.equal(result.code, 1);
    assert.match(result.stderr, new RegExp(`^mcloudtt passwd: ${file}:2: user 'alice': `));
    assert.equal(await Deno.readTextFile(file), original);
  });
});

Deno.test("passwd reports usage errors with exit code 2", async () => {
  const cases: [string[], RegExp][] = [
    [[], /FILE and USER are required/],
    [["file"], /FILE and USER are required/],
    [["-c", "-D", "f", "u"], /-c and -D cannot be combined/],
    [["-x", "f", "u"], /unknown option '-x'/],
    [["--iterations", "abc", "f", "u"], /--iterations needs a positive integer/],
    [["-D", "f", "u", "extra"], /too many arguments/],
    [["f", "u", "p", "extra"], /too many arguments/],
  ];
  for (const [args, message] of cases) {
    const result = await runLocal(args, "pw");
    assert.equal(result.code, 2, args.join(" "));
    assert.match(result.stderr.split("\n")[0], message);
    assert.match(result.stderr, /usage: mcloudtt passwd/);
  }
  const help = await runLocal(["--help"]);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /^usage: mcloudtt passwd/);
});

Deno.test("passwd rejects usernames the file cannot hold", async () => {
  await withTempDir(async (dir) => {
    for (const user of ["a:b", "#admin", "a\nb"]) {
      const result = await runLocal(["-c", ...FAST, `${dir}/passwd`, user, "pw"]);
      assert.equal(result.code, 1, JSON.stringify(user));
      assert.match(result.stderr, /^mcloudtt passwd: username must not/);
    }
  });
});

Deno.test("passwd hashes with the default iteration count unless told otherwise", async () => {
  await withTempDir(async (dir) => {
    const file = `${dir}/passwd`;
    assert.equal((await runLocal(["-c", file, "alice"], "pw")).code, 0);
    assert.match(await Deno.readTextFile(file), /^alice:\$scram-sha512\$210000\$/);
    assert.equal(await verify(file, "alice", "pw"), true);
  });
});

// The TTY path needs a pseudo-terminal; util-linux `script` provides one.
const hasScript = new Deno.Command("sh", { args: ["-c", "command -v script"] }).outputSync()
  .success;
if (!hasScript) {
  const message = "passwd TTY tests need `script` (util-linux) to allocate a pseudo-terminal";
  if (Deno.env.get("CI")) throw new Error(message);
  console.warn(`\n*** SKIPPING: ${message} ***\n`);
}

/** Runs the fixture on a pseudo-terminal, typing each answer after its prompt appears. */
async function runOnTty(args: string[], answers: string[]): Promise<Result> {
  const command = [Deno.execPath(), "run", "--allow-all", FIXTURE, ...args].map(shellQuote)
    .join(" ");
  const child = new Deno.Command("script", {
    args: ["-qec", command, "/dev/null"],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const timer = setTimeout(() => child.kill(), 20_000);
  const writer = child.stdin.getWriter();
  let transcript = "";
  let answered = 0;
  const decoder = new TextDecoder();
  const stderr = new Response(child.stderr).text();
  for await (const chunk of child.stdout) {
    transcript += decoder.decode(chunk, { stream: true });
    const prompts = transcript.match(/password: /gi)?.length ?? 0;
    while (answered < prompts && answered < answers.length) {
      await writer.write(bytes(answers[answered++] + "\r"));
    }
  }
  const status = await child.status;
  clearTimeout(timer);
  await writer.close().catch(() => {});
  return { code: status.code, stdout: transcript, stderr: await stderr };
}

function shellQuote(text: string): string {
  return `'${text.replaceAll("'", `'\\''`)}'`;
}

Deno.test({
  name: "passwd on a terminal prompts twice without echoing the password",
  ignore: !hasScript,
  async fn() {
    await withTempDir(async (dir) => {
      const file = `${dir}/passwd`;
      const result = await runOnTty(["-c", ...FAST, file, "alice"], ["hunter2", "hunter2"]);
      assert.equal(result.code, 0, result.stdout + result.stderr);
      assert.match(result.stdout, /Password: [\s\S]*Reenter password: /);
      assert.doesNotMatch(result.stdout, /hunter2/);
      assert.equal(await verify(file, "alice", "hunter2"), true);
    });
  },
});

Deno.test({
  name: "passwd on a terminal refuses two different passwords",
  ignore: !hasScript,
  async fn() {
    await withTempDir(async (dir) => {
      const file = `${dir}/passwd`;
      const result = await runOnTty(["-c", ...FAST, file, "alice"], ["hunter2", "hunter3"]);
      assert.equal(result.code, 1);
      assert.match(result.stdout, /mcloudtt passwd: passwords do not match/);
      await assert.rejects(Deno.stat(file), Deno.errors.NotFound);
    });
  },
});

Deno.test("passwd -c creates the directory of the file when it is missing (0700), as the README's first step needs on a fresh checkout where data/ does not exist yet; without -c a missing file is an error", async () => {
  await withTempDir(async (dir) => {
    const file = `${dir}/data/passwords.txt`;
    const missing = await runLocal([...FAST, file, "alice", "a"]);
    assert.equal(missing.code, 1);
    const created = await runLocal(["-c", ...FAST, file, "alice", "a"]);
    assert.equal(created.code, 0, created.stderr);
    assert.equal((await Deno.stat(`${dir}/data`)).mode! & 0o777, 0o700);
    assert.equal(await verify(file, "alice", "a"), true);
  });
});
