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
