/**
 * One list of permissions everywhere the program runs, and commands that either work under it or
 * say in one line which permission is missing and how to grant it.
 */
import assert from "node:assert/strict";
import { tomlValue } from "../../src/config/effective.ts";
import { PERMISSION_FLAGS, PERMISSIONS } from "../../src/ops/permissions.ts";
import { copyProject, START_PERMISSIONS } from "../helpers/main_process.ts";
import { nodeArgs } from "../../infra/local/cluster.ts";

const ROOT = new URL("../../", import.meta.url).pathname;

/** The permission flags in a shell command line, quotes removed. */
function permissionFlags(line: string): string[] {
  return line.split(/\s+/).map((w) => w.replace(/^'(.*)'$/, "$1").replace(/^"(.*)"$/, "$1"))
    .filter((w) => /^--(allow|deny|ignore)-/.test(w) || w === "-A" || w === "-P");
}

Deno.test("deno.json start, dev, certs and compile tasks use exactly the shipped permissions", async () => {
  const tasks = JSON.parse(await Deno.readTextFile(`${ROOT}deno.json`)).tasks;
  for (const name of ["start", "dev", "certs", "compile"]) {
    assert.deepEqual(permissionFlags(tasks[name]), PERMISSION_FLAGS, `task ${name}`);
  }
});

Deno.test("the test helpers start main.ts with the shipped permissions", () => {
  assert.deepEqual(START_PERMISSIONS, PERMISSION_FLAGS);
});

Deno.test("deno task cluster starts its nodes with the shipped permissions", () => {
  // It had its own copy, of the list as it was before the shipped one was narrowed.
  const args = nodeArgs(1, 1883, "redis://127.0.0.1:6379");
  assert.deepEqual(permissionFlags(args.join(" ")), PERMISSION_FLAGS);
});

Deno.test("the Dockerfile builds the binary with the shipped permissions", async () => {
  const text = await Deno.readTextFile(`${ROOT}Dockerfile`);
  // Join continuation lines; the binary comes from `deno task compile` (checked above) or from a
  // `deno compile` with exactly the list.
  const runs = text.replace(/\\\n/g, " ").split("\n").filter((l) => /^\s*RUN /.test(l));
  const task = runs.find((l) => /\bdeno task compile\b/.test(l));
  if (task === undefined) {
    const line = runs.find((l) => /\bdeno compile\b/.test(l));
    assert.ok(line, "the Dockerfile neither runs deno task compile nor deno compile");
    assert.deepEqual(permissionFlags(line.slice(line.indexOf("deno compile"))), PERMISSION_FLAGS);
  }
  // The compiled binary is the entry point: no `deno run` with permissions of its own.
  assert.doesNotMatch(text, /ENTRYPOINT \[[^\]]*"deno"/);
  assert.match(text, /ENTRYPOINT \["\/mcloudtt"/);
});

Deno.test("the README lists every permission", async () => {
  const readme = await Deno.readTextFile(`${ROOT}README.md`);
  for (const p of PERMISSIONS) assert.ok(readme.includes(`\`${p.flag}\``), `${p.flag} missing`);
});

/** Runs main.ts with the shipped permissions in a copy of the project. */
async function runMain(
  dir: string,
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--quiet", ...START_PERMISSIONS, "main.ts", ...args],
    cwd: dir,
    env: { NO_COLOR: "1", ...env },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const t = new TextDecoder();
  return { code: out.code, stdout: t.decode(out.stdout), stderr: t.decode(out.stderr) };
}

async function inProject<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await Deno.makeTempDir({ prefix: "mcloudtt-perm-" });
  try {
    await copyProject(dir);
    return await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function assertOneLine(r: { code: number; stderr: string }, pattern: RegExp): void {
  assert.notEqual(r.code, 0);
  const lines = r.stderr.trim().split("\n");
  assert.equal(lines.length, 1, `expected one line, got:\n${r.stderr}`);
  assert.match(lines[0], pattern);
  assert.doesNotMatch(r.stderr, /NotCapable|\n\s+at /);
}

Deno.test("passwd and certs outside certs/ and data/ fail with one line naming the permission and the fix", async () => {
  await inProject(async (dir) => {
    const outside = await Deno.makeTempDir({ prefix: "mcloudtt-outside-" });
    try {
      assertOneLine(
        await runMain(dir, ["passwd", "-c", `${outside}/passwd`, "alice", "pw"]),
        new RegExp(
          `^mcloudtt passwd: cannot write ${outside}/passwd: the shipped permissions ` +
            `do not include write access to .*; use a path under certs/ or data/, or run from ` +
            `source with deno run --allow-write=${outside} `,
        ),
      );
      assertOneLine(
        await runMain(dir, ["certs", "--dir", `${outside}/certs`]),
        /^mcloudtt certs: the shipped permissions do not include (read|write) access to .*--allow-(read|write)=/,
      );
      // Inside the working directory's certs/ the same command works.
      const ok = await runMain(dir, ["certs", "--dir", "certs"]);
      assert.equal(ok.code, 0, ok.stderr);
      await Deno.stat(`${dir}/certs/ca.crt`);
      // And a password file under data/ works too.
      await Deno.mkdir(`${dir}/data`);
      const pw = await runMain(dir, ["passwd", "-c", "data/passwd", "alice", "pw"]);
      assert.equal(pw.code, 0, pw.stderr);
      assert.match(await Deno.readTextFile(`${dir}/data/passwd`), /^alice:/);
    } finally {
      await Deno.remove(outside, { recursive: true });
    }
  });
});

Deno.test("--help and --version work whatever the configuration says", async () => {
  await inProject(async (dir) => {
    await Deno.writeTextFile(`${dir}/config.toml`, "[limits]\nmax_packet_size = -5\n");
    const env = { MCLOUDTT_NOT_A_KEY: "1" };
    for (
      const args of [["--help"], ["serve", "--ports.tcp=banana", "-h"], ["check-config", "--help"]]
    ) {
      const r = await runMain(dir, args, env);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /^mcloudtt \d+\.\d+\.\d+ - a cloud-native MQTT/);
    }
    const v = await runMain(dir, ["--version", "--config", "missing.toml"], env);
    assert.equal(v.code, 0, v.stderr);
    assert.match(v.stdout, /^mcloudtt \d+\.\d+\.\d+\n$/);
    // Without --help the same configuration is refused (exit 2).
    assert.equal((await runMain(dir, [], env)).code, 2);
  });
});

Deno.test("check-config prints the effective configuration as TOML with the source of every value", async () => {
  await inProject(async (dir) => {
    await Deno.writeTextFile(`${dir}/config.toml`, '[general]\nlog_format = "json"\n');
    const r = await runMain(dir, ["check-config", "--limits.max_packet_size=2048"], {
      MCLOUDTT_PORTS_TCP: "1999",
    });
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.split("\n");
    const line = (key: string) => lines.find((l) => l.startsWith(`${key} = `));
    assert.match(line("log_format")!, /^log_format = "json" +# file config\.toml$/);
    assert.match(line("tcp")!, /^tcp = 1999 +# env MCLOUDTT_PORTS_TCP$/);
    assert.match(
      line("max_packet_size")!,
      /^max_packet_size = 2048 +# flag --limits\.max_packet_size$/,
    );
    assert.match(line("secure")!, /^secure = true +# default$/);
    assert.ok(lines.includes("[http]") && lines.includes("[limits]"));
  });
});

Deno.test("check-config masks secrets: password keys and passwords inside URLs", () => {
  assert.equal(tomlValue("redis.password", "hunter2"), '"********"');
  assert.equal(tomlValue("redis.password", ""), '""');
  assert.equal(tomlValue("cluster.join_token", "abc"), '"********"');
  assert.equal(
    tomlValue("redis.url", "redis://user:hunter2@db:6379/0"),
    '"redis://user:********@db:6379/0"',
  );
  assert.equal(tomlValue("redis.url", "redis://db:6379"), '"redis://db:6379"');
  assert.equal(tomlValue("auth.password_file", "passwd"), '"passwd"');
});
