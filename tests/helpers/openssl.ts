/** The openssl command line, as an independent judge of certificates. */

/** Runs `openssl args...`; `out` is stdout followed by stderr. */
export async function openssl(args: string[]): Promise<{ ok: boolean; out: string }> {
  const result = await new Deno.Command("openssl", {
    args,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decode = (b: Uint8Array) => new TextDecoder().decode(b);
  return { ok: result.success, out: decode(result.stdout) + decode(result.stderr) };
}

/** Runs openssl and returns stdout; throws with stderr when it fails. */
export async function opensslOrThrow(args: string[]): Promise<string> {
  const result = await new Deno.Command("openssl", {
    args,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decoder = new TextDecoder();
  if (!result.success) {
    throw new Error(`openssl ${args.join(" ")} failed: ${decoder.decode(result.stderr)}`);
  }
  return decoder.decode(result.stdout);
}
