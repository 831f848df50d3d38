/**
 * Worker process entry: reads one JSON command per stdin line, answers one JSON line on
 * stdout. Diagnostics go to stderr so stdout stays a clean channel.
 */

import { IdleWorker } from "./idle.ts";
import { LoadWorker } from "./load.ts";
import type { Command, Reply } from "./messages.ts";
import { readLines, writeJsonLine } from "./lines.ts";

const stdout = Deno.stdout.writable.getWriter();
let load: LoadWorker | undefined;
let idle: IdleWorker | undefined;

function expect<T>(value: T | undefined, what: string): T {
  if (value === undefined) throw new Error(`${what} before setup`);
  return value;
}

async function handle(command: Command): Promise<Reply> {
  switch (command.cmd) {
    case "setup":
      load = await LoadWorker.setup(command.plan);
      return load.snapshot();
    case "setup-idle":
      idle = new IdleWorker(command.plan);
      return idle.snapshot();
    case "go":
      if (idle) return await idle.connectAll();
      expect(load, "go").go();
      return expect(load, "go").snapshot();
    case "mark":
      return idle ? idle.snapshot() : expect(load, "mark").mark();
    case "stop":
      return idle ? idle.snapshot() : await expect(load, "stop").stop(command.timeoutMs);
    case "disconnect":
      return await expect(load, "disconnect").disconnect();
    case "reconnect":
      return await expect(load, "reconnect").reconnect();
    case "close":
      if (idle) return idle.close();
      return load ? await load.close() : { ok: false, error: "close before setup" };
  }
}

for await (const line of readLines(Deno.stdin.readable)) {
  if (line.trim() === "") continue;
  const command = JSON.parse(line) as Command;
  let reply: Reply;
  try {
    reply = await handle(command);
  } catch (e) {
    reply = { ok: false, error: e instanceof Error ? e.message : String(e) };
  }
  await writeJsonLine(stdout, reply);
  if (command.cmd === "close") break;
}
Deno.exit(0);
