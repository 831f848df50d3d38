/**
 * A broker with TLS and no certificates: development certificates are minted only where that is
 * allowed; otherwise (the container image sets MCLOUDTT_TLS_GENERATE_DEV_CERTS=false) the process
 * exits 2 with one line naming the files to mount, and writes nothing.
 */
import assert from "node:assert/strict";
import { START_PERMISSIONS } from "../helpers/main_process.ts";

const ROOT = new URL("../../", import.meta.url).pathname;

/** Runs main.ts in `cwd` with only `env` (plus what deno itself needs) in its environment. */
async function runMain(cwd: string, env: Record<string, string>) {
  // The HTTP endpoint on a free port: parallel tests must not fight over 8888.
  const keep: Record<string, string> = { NO_COLOR: "1", MCLOUDTT_HTTP_PORT: "0" };
  for (const name of ["PATH", "HOME", "DENO_DIR", "XDG_CACHE_HOME"]) {
    const value = Deno.env.get(name);
    if (value !== undefined) keep[name] = value;
  }
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--quiet",
      "--config",
      `${ROOT}deno.json`,
      ...START_PERMISSIONS,
      `${ROOT}main.ts`,
    ],
    cwd,
    clearEnv: true,
    env: { ...keep, ...env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder();
  return { code: out.code, stdout: text.decode(out.stdout), stderr: text.decode(out.stderr) };
}

async function withEmptyDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "mcloudtt-devcerts-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("no certificates and generate_dev_certs = false: exit 2 naming the files to mount", async () => {
  await withEmptyDir(async (dir) => {
    const { code, stderr } = await runMain(dir, { MCLOUDTT_TLS_GENERATE_DEV_CERTS: "false" });
    assert.equal(code, 2, stderr);
    const line = stderr.trim();
    assert.ok(!line.includes("\n"), `one line expected:\n${stderr}`);
    assert.match(line, /^config error: /);
    // Absolute paths: inside a container the operator must know where to mount.
    for (const file of ["certs/broker/broker.crt", "certs/broker/broker.key", "certs/ca.crt"]) {
      assert.ok(line.includes(`${dir}/${file}`), `${file} missing from: ${line}`);
    }
    assert.match(line, /mount/);
    assert.match(line, /MCLOUDTT_TLS_CERTFILE/);
    assert.match(line, /MCLOUDTT_TLS_GENERATE_DEV_CERTS=true/);
    assert.deepEqual([...Deno.readDirSync(dir)], [], "nothing may be written");
  });
});

Deno.test("one default certificate file missing: exit 2 naming only that file", async () => {
  await withEmptyDir(async (dir) => {
    await Deno.mkdir(`${dir}/certs/broker`, { recursive: true });
    await Deno.writeTextFile(`${dir}/certs/broker/broker.crt`, "x");
    await Deno.writeTextFile(`${dir}/certs/ca.crt`, "x");
    const { code, stderr } = await runMain(dir, {});
    assert.equal(code, 2, stderr);
    assert.match(stderr, /tls\.keyfile = "certs\/broker\/broker\.key"/);
    assert.doesNotMatch(stderr, /tls\.certfile|tls\.cafile|GENERATE_DEV_CERTS/);
    assert.match(stderr, /MCLOUDTT_TLS_KEYFILE/);
  });
});

Deno.test("a certificate path through a regular file, or certs/ unwritable: exit 2 with one line", async () => {
  await withEmptyDir(async (dir) => {
    await Deno.writeTextFile(`${dir}/afile`, "x");
    const path = await runMain(dir, { MCLOUDTT_TLS_CERTFILE: "afile/broker.crt" });
    assert.equal(path.code, 2, path.stderr);
    assert.equal(path.stderr.trim().split("\n").length, 1, path.stderr);
    assert.match(path.stderr, /^config error: tls\.certfile = "afile\/broker\.crt" .*fix the path/);
  });
  await withEmptyDir(async (dir) => {
    // Where the client certificates go is a file: generation fails half way.
    await Deno.mkdir(`${dir}/certs`);
    await Deno.writeTextFile(`${dir}/certs/client`, "x");
    const gen = await runMain(dir, {});
    assert.equal(gen.code, 2, gen.stderr);
    assert.equal(gen.stderr.trim().split("\n").length, 1, gen.stderr);
    assert.match(gen.stderr, /^config error: cannot generate development certificates in certs\//);
    assert.match(gen.stderr, /GENERATE_DEV_CERTS=false/);
  });
});
