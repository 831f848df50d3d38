/** Shared helpers of the config tests: temporary directories and ConfigError assertions. */
import assert from "node:assert/strict";
import { ConfigError } from "../../src/config/mod.ts";
import { withTempDir as withDir } from "../helpers/fs.ts";

/** Run `fn` in a fresh temporary directory holding `files`, removed afterwards. */
export function withTempDir(
  files: Record<string, string>,
  fn: (dir: string) => void | Promise<void>,
): Promise<void> {
  return withDir(fn, files);
}

/** Assert `fn` throws a one-line ConfigError (exit code 2) whose message contains every fragment. */
export function assertConfigError(fn: () => unknown, ...fragments: string[]): ConfigError {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof ConfigError, `expected a ConfigError, got ${String(caught)}`);
  assert.equal(caught.exitCode, 2);
  assert.ok(caught.message.startsWith("config error: "), caught.message);
  assert.ok(!caught.message.includes("\n"), `message must be one line: ${caught.message}`);
  for (const fragment of fragments) {
    assert.ok(
      caught.message.includes(fragment),
      `message should contain ${JSON.stringify(fragment)}: ${caught.message}`,
    );
  }
  return caught;
}

const DENO_JSON = new URL("../../deno.json", import.meta.url).pathname;

/**
 * Runs `deno run <denoArgs>` in `cwd` with a clean environment (plus `env`), so the host's
 * MCLOUDTT_* cannot leak in; its exit code and output.
 */
export async function runDeno(
  cwd: string,
  denoArgs: string[],
  env: Record<string, string> = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const keep: Record<string, string> = { NO_COLOR: "1" };
  for (const name of ["PATH", "HOME", "DENO_DIR", "XDG_CACHE_HOME"]) {
    const value = Deno.env.get(name);
    if (value !== undefined) keep[name] = value;
  }
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--quiet", "--config", DENO_JSON, ...denoArgs],
    cwd,
    clearEnv: true,
    env: { ...keep, ...env },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decode = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
  return { code: output.code, stdout: decode(output.stdout), stderr: decode(output.stderr) };
}
