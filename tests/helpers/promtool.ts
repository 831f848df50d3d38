/** Prometheus's own checker for the text format, `promtool check metrics`. */
import { haveBinary } from "./certs.ts";

/**
 * Runs `promtool check metrics` on `text`: its exit status and what it said. Without promtool
 * (announced, and a failure under CI by `haveBinary`) the check is skipped: ok.
 */
export async function promtool(text: string): Promise<{ ok: boolean; said: string }> {
  if (!await haveBinary("promtool", "--version")) return { ok: true, said: "promtool missing" };
  const child = new Deno.Command("promtool", {
    args: ["check", "metrics"],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const w = child.stdin.getWriter();
  await w.write(new TextEncoder().encode(text));
  await w.close();
  const out = await child.output();
  const said = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  return { ok: out.success, said };
}
