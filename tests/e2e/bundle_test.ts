/**
 * The shipped program: `deno compile` cannot finish here (it downloads its runtime), so the same
 * program is bundled into one file and run with exactly the permissions `deno task compile` bakes
 * into the binary, from an empty directory, as the container image runs it.
 */
import assert from "node:assert/strict";
import { delay, freePort } from "../helpers/broker.ts";
import { START_PERMISSIONS, startMain } from "../helpers/main_process.ts";
import { skipWithout } from "../helpers/mosquitto.ts";
import { PasswordFile } from "../../src/auth/passwords.ts";

const ROOT = new URL("../../", import.meta.url).pathname;

/** The permission flags of the compile task in deno.json. */
async function compilePermissions(): Promise<string[]> {
  const tasks = JSON.parse(await Deno.readTextFile(`${ROOT}deno.json`)).tasks;
  return (tasks.compile as string).split(/\s+/).map((a) => a.replace(/^'(.*)'$/, "$1"))
    .filter((a) => a.startsWith("--allow-") || a.startsWith("--ignore-"));
}

async function run(cwd: string, cmd: string, args: string[]) {
  const out = await new Deno.Command(cmd, { args, cwd, stdout: "piped", stderr: "piped" }).output();
  const t = new TextDecoder();
  return { code: out.code, stdout: t.decode(out.stdout), stderr: t.decode(out.stderr) };
}

Deno.test({
  name: "the bundled program runs with the compile permissions from an empty directory " +
    "and serves mosquitto clients over TLS",
  ignore: skipWithout("mosquitto_sub", "mosquitto_pub"),
  async fn() {
    assert.deepEqual(
      await compilePermissions(),
      START_PERMISSIONS,
      "deno task start and the compiled binary must run with the same permissions",
    );
    const dir = await Deno.makeTempDir({ prefix: "mcloudtt-bundle-" });
    try {
      const bundled = await run(ROOT, Deno.execPath(), [
        "bundle",
        "--quiet",
        "main.ts",
        "-o",
        `${dir}/mcloudtt.js`,
      ]);
      assert.equal(bundled.code, 0, bundled.stderr);
      const version = await run(dir, Deno.execPath(), [
        "run",
        ...START_PERMISSIONS,
        "mcloudtt.js",
        "--version",
      ]);
      assert.match(version.stdout, /^mcloudtt \d+\.\d+\.\d+/);

      // SASLprep's tables are imported only when a password needs them: the bundle must carry
      // them all the same. A no-break space and a full-width letter prepare to "sm ileS".
      const passwd = await run(dir, Deno.execPath(), [
        "run",
        ...START_PERMISSIONS,
        "mcloudtt.js",
        "passwd",
        "-c",
        "--iterations=1000",
        "data/passwords.txt",
        "alice",
        "sm\u00A0ile\uFF33",
      ]);
      assert.equal(passwd.code, 0, passwd.stderr);
      const file = await PasswordFile.load(`${dir}/data/passwords.txt`);
      assert.ok(await file.verify("alice", new TextEncoder().encode("sm ileS")));

      const tcp = freePort();
      await using broker = startMain(
        dir,
        [`--ports.tcp=${tcp}`, `--ports.ws=${freePort()}`],
        "mcloudtt.js",
      );
      const [, subLine] = await broker.waitFor(/^\s*(mosquitto_sub .*)$/m);
      const [, pubLine] = await broker.waitFor(/^\s*(mosquitto_pub .*)$/m);
      let done = false;
      const sub = run(dir, "sh", ["-c", `${subLine} -C 1 -W 10`]).finally(() => done = true);
      while (!done) {
        const pub = await run(dir, "sh", ["-c", pubLine]);
        assert.equal(pub.code, 0, pub.stderr);
        await Promise.race([sub, delay(200)]);
      }
      const got = await sub;
      assert.equal(got.code, 0, got.stderr);
      assert.equal(got.stdout, "test/hello hello from mcloudtt\n");
      assert.equal((await broker.stop()).code, 0);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
