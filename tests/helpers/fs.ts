/** Temporary directories for tests. */

/**
 * Runs `fn` in a fresh temporary directory, removed afterwards. `files`
 * (name -> text) are written into it first.
 */
export async function withTempDir(
  fn: (dir: string) => void | Promise<void>,
  files: Record<string, string> = {},
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "mcloudtt-test-" });
  try {
    for (const [name, text] of Object.entries(files)) {
      await Deno.writeTextFile(`${dir}/${name}`, text);
    }
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
