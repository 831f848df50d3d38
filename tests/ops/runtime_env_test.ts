/**
 * One runtime environment everywhere the broker is started for real (src/ops/runtime_env.ts):
 * the start and dev tasks, the Dockerfile, the local cluster; and `deno task start` really hands
 * it to the broker's process.
 */
import assert from "node:assert/strict";
import { RUNTIME_ENV, RUNTIME_ENV_PREFIX } from "../../src/ops/runtime_env.ts";
import { copyProject, delay, freePort } from "../helpers/broker.ts";

const ROOT = new URL("../../", import.meta.url).pathname;

Deno.test("deno.json start and dev tasks begin with the runtime environment", async () => {
  const tasks = JSON.parse(await Deno.readTextFile(`${ROOT}deno.json`)).tasks;
  for (const name of ["start", "dev"]) {
    assert.ok(
      (tasks[name] as string).startsWith(`${RUNTIME_ENV_PREFIX} deno run `),
      `task ${name}: ${tasks[name]}`,
    );
  }
});

Deno.test("the Dockerfile sets the runtime environment for the compiled binary", async () => {
  const text = await Deno.readTextFile(`${ROOT}Dockerfile`);
  // The final stage's ENV instructions, continuation lines joined.
  const final = text.slice(text.lastIndexOf("\nFROM "));
  const env = final.replace(/\\\n/g, " ").split("\n").filter((l) => /^ENV /.test(l)).join(" ");
  for (const v of RUNTIME_ENV) {
    assert.match(env, new RegExp(`(^|\\s)${v.name}=${v.value.replaceAll(".", "\\.")}(\\s|$)`));
  }
});

Deno.test("the local cluster starts its nodes with the runtime environment", async () => {
  const text = await Deno.readTextFile(`${ROOT}infra/local/cluster.ts`);
  assert.match(text, /\broot,\s*RUNTIME_ENV_VARS,?\s*\)/);
});

Deno.test("the README names every runtime variable and its value", async () => {
  const readme = await Deno.readTextFile(`${ROOT}README.md`);
  for (const v of RUNTIME_ENV) assert.ok(readme.includes(`${v.name}=${v.value}`), v.name);
});

function withoutRuntimeEnv(env: Record<string, string>): Record<string, string> {
  for (const v of RUNTIME_ENV) delete env[v.name];
  return env;
}

/** Pids whose parent is `pid` (Linux /proc). */
async function children(pid: number): Promise<number[]> {
  const out: number[] = [];
  for await (const e of Deno.readDir("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    try {
      const stat = await Deno.readTextFile(`/proc/${e.name}/stat`);
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      if (ppid === pid) out.push(Number(e.name));
    } catch {
      // the process ended meanwhile
    }
  }
  return out;
}

Deno.test({
  name: "deno task start runs the broker with the runtime environment",
  ignore: Deno.build.os !== "linux",
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "mcloudtt-env-" });
    await copyProject(dir);
    const port = freePort();
    const task = new Deno.Command(Deno.execPath(), {
      args: [
        "task",
        "start",
        "--general.secure=false",
        "--general.bind=127.0.0.1",
        `--ports.tcp=${port}`,
        "--general.websocket=false",
        "--http.enabled=false",
        "--storage.enabled=false",
      ],
      cwd: dir,
      // Without the variables themselves: only the task can have set them.
      clearEnv: true,
      env: { ...withoutRuntimeEnv(Deno.env.toObject()), NO_COLOR: "1" },
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
    try {
      // The broker accepts connections: the process the task started is the broker.
      for (let i = 0;; i++) {
        try {
          (await Deno.connect({ hostname: "127.0.0.1", port })).close();
          break;
        } catch {
          if (i > 600) throw new Error("deno task start did not listen within 60 s");
          await delay(100);
        }
      }
      const [broker] = await children(task.pid);
      assert.ok(broker !== undefined, "the task has no child process");
      const environ = new TextDecoder().decode(await Deno.readFile(`/proc/${broker}/environ`))
        .split("\0");
      for (const v of RUNTIME_ENV) assert.ok(environ.includes(`${v.name}=${v.value}`), v.name);
    } finally {
      task.kill("SIGTERM");
      await task.status;
      await Deno.remove(dir, { recursive: true });
    }
  },
});
