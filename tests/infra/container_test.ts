/**
 * The Dockerfile without Docker: it passes a Dockerfile linter (npm `dockerfile-utils`, the
 * checker of the VS Code Docker language server) and the house rules, and its final stage is
 * assembled with the Dockerfile's own assembly step in a temporary directory and run from there
 * the way a container runs it: as uid 65532, in a root holding only that tree, as PID 1, with the
 * image's environment. `deno compile` cannot finish here (it downloads its runtime), so the
 * runtime is the deno binary (the compiled binary is that runtime plus the program) and the
 * program is the bundle of main.ts, run with the compile task's permissions.
 */
import assert from "node:assert/strict";
import { validate } from "dockerfile-utils";
import { DockerfileParser } from "dockerfile-ast";
import { connectClient, delay, freePort } from "../helpers/broker.ts";
import { makeTestPki } from "../helpers/certs.ts";
import { dockerfileFinalStage, ROOT } from "../helpers/infra.ts";
import { PERMISSION_FLAGS } from "../../src/ops/permissions.ts";

const DOCKERFILE = `${ROOT}Dockerfile`;

Deno.test("the Dockerfile passes the linter, which does flag a broken one", async () => {
  const text = await Deno.readTextFile(DOCKERFILE);
  const problems = validate(text).map((d) => `line ${d.range.start.line + 1}: ${d.message}`);
  assert.deepEqual(problems, []);
  const broken = text.replace("FROM scratch", "FORM scratch").replace(
    'CMD ["serve"]',
    "CMD ['serve']",
  );
  assert.ok(
    validate(broken).length >= 2,
    "the linter finds the unknown instruction and the quotes",
  );
});

Deno.test("the Dockerfile keeps the house rules", async () => {
  const text = await Deno.readTextFile(DOCKERFILE);
  const all = DockerfileParser.parse(text).getInstructions();
  const froms = all.filter((i) => i.getKeyword() === "FROM").map((i) => i.getArgumentsContent()!);
  assert.match(froms[0], /^denoland\/deno:debian-\d+\.\d+\.\d+ AS build$/, "a pinned base image");
  const denoVersion = (await new Deno.Command(Deno.execPath(), { args: ["--version"] }).output())
    .stdout;
  assert.ok(
    new TextDecoder().decode(denoVersion).startsWith(
      `deno ${froms[0].match(/(\d+\.\d+\.\d+)/)![1]}`,
    ),
    "the image builds with the Deno version the project uses",
  );
  assert.equal(froms.at(-1), "scratch");
  const runs = all.filter((i) => i.getKeyword() === "RUN").map((i) => i.getArgumentsContent()!);
  const apt = runs.find((r) => r.includes("apt-get install"));
  assert.ok(apt, "the build stage installs packages");
  assert.match(apt, /--no-install-recommends/);
  assert.match(apt, /\bca-certificates\b/, "the debian base has no CA bundle");
  assert.match(apt, /rm -rf \/var\/lib\/apt\/lists/);
  assert.ok(runs.some((r) => /^deno install --frozen\b/.test(r)), "deno.lock is enforced");
  assert.ok(runs.includes("deno task compile"), "the compile task's one list of permissions");
  assert.doesNotMatch(text, /--allow-/, "no second list of permissions in the Dockerfile");
  const compile = JSON.parse(await Deno.readTextFile(`${ROOT}deno.json`)).tasks.compile as string;
  const output = compile.match(/--output[= ](\S+)/)?.[1];
  const workdir = all.find((i) => i.getKeyword() === "WORKDIR")!.getArgumentsContent();
  assert.ok(
    text.includes(`ARG BINARY=${workdir}/${output}`),
    `ARG BINARY is where the compile task writes (${workdir}/${output})`,
  );
  // The build context holds only what the build copies: never certs/ with its private keys.
  const ignore = (await Deno.readTextFile(`${ROOT}.dockerignore`)).split("\n").map((l) => l.trim());
  assert.equal(
    ignore.find((l) => l && !l.startsWith("#")),
    "*",
    ".dockerignore starts from nothing",
  );
  for (
    const i of all.filter((i) => i.getKeyword() === "COPY" && !/--from/.test(i.getTextContent()))
  ) {
    for (const src of i.getArgumentsContent()!.split(/\s+/).slice(0, -1)) {
      assert.ok(ignore.includes(`!${src}`), `.dockerignore lets ${src} in`);
    }
  }
  assert.doesNotMatch(text, /^ADD /m);

  const { instructions, env } = await dockerfileFinalStage();
  const value = (k: string) => instructions.filter((i) => i.keyword === k).map((i) => i.args);
  assert.deepEqual(value("USER"), ["65532:65532"]);
  assert.deepEqual(value("WORKDIR"), ["/data"]);
  assert.deepEqual(value("ENTRYPOINT"), ['["/mcloudtt"]']);
  assert.deepEqual(value("EXPOSE")[0].split(" "), ["1883", "8080", "8888"]);
  assert.equal(env.MCLOUDTT_TLS_GENERATE_DEV_CERTS, "false", "no development CA in production");
});

/** Why the assembled tree cannot be run here, or null when it can. */
async function cannotRun(): Promise<string | null> {
  if (Deno.build.os !== "linux") return "not Linux";
  if (Deno.uid() !== 0) return "not root (the tree is run with unshare --root and --setuid)";
  try {
    const out = await new Deno.Command("unshare", { args: ["--version"] }).output();
    if (!out.success) return "unshare does not run";
  } catch {
    return "unshare (util-linux) is missing";
  }
  return null;
}

const whyNot = await cannotRun();
if (whyNot) {
  if (Deno.env.get("CI")) throw new Error(`container tree test cannot run in CI: ${whyNot}`);
  console.warn(`\n!!! ${whyNot}: skipping the container tree test !!!\n`);
}

/** The Dockerfile's assembly RUN, its ARG defaults, and the final stage's COPY lines. */
async function assemblyStep() {
  const all = DockerfileParser.parse(await Deno.readTextFile(DOCKERFILE)).getInstructions();
  const script = all.filter((i) => i.getKeyword() === "RUN").map((i) => i.getArgumentsContent()!)
    .find((r) => r.includes("$ROOTFS"));
  assert.ok(script, "an assembly RUN that writes below $ROOTFS");
  const args = Object.fromEntries(
    all.filter((i) => i.getKeyword() === "ARG").map((i) => i.getArgumentsContent()!.split("=")),
  );
  return { script, args };
}

async function run(cmd: string, args: string[], options: Deno.CommandOptions = {}) {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped", ...options })
    .output();
  const t = new TextDecoder();
  return { code: out.code, stdout: t.decode(out.stdout), stderr: t.decode(out.stderr) };
}

/**
 * The permission flags baked into the shipped binary: the one list, which the compile task uses
 * (tests/ops/permissions_test.ts checks that).
 */
function compilePermissions(): Promise<string[]> {
  return Promise.resolve([...PERMISSION_FLAGS]);
}

Deno.test({
  name: "the final stage's file tree runs the program as uid 65532: exit 2 without " +
    "certificates, serves TLS with them, and stops on SIGTERM as PID 1",
  ignore: whyNot !== null,
  async fn() {
    const tmp = await Deno.makeTempDir({ prefix: "mcloudtt-image-" });
    const root = `${tmp}/rootfs`;
    try {
      // 1. The Dockerfile's own assembly step, with the runtime standing in for the binary.
      const { script, args } = await assemblyStep();
      assert.deepEqual(Object.keys(args).sort(), ["BINARY", "ROOTFS", "SKEL"]);
      const built = await run("sh", ["-c", script], {
        env: { ROOTFS: root, SKEL: `${tmp}/skel`, BINARY: Deno.execPath() },
      });
      assert.equal(built.code, 0, built.stderr);

      // 2. The final stage's COPY lines, as Docker applies them.
      const { instructions, env } = await dockerfileFinalStage();
      const copies = instructions.filter((i) => i.keyword === "COPY")
        .map((i) => [...i.flags, i.args].join(" "));
      assert.deepEqual(copies, [
        `--from=build ${args.ROOTFS}/ /`,
        `--from=build --chown=65532:65532 ${args.SKEL}/data /data`,
        `--from=build ${args.BINARY} /mcloudtt`,
      ]);
      await Deno.mkdir(`${root}/data`);
      await Deno.chown(`${root}/data`, 65532, 65532);
      await Deno.copyFile(Deno.execPath(), `${root}/deno`);
      const bundled = await run(Deno.execPath(), [
        "bundle",
        "--quiet",
        `${ROOT}main.ts`,
        "-o",
        `${root}/mcloudtt.js`,
      ], { cwd: ROOT });
      assert.equal(bundled.code, 0, bundled.stderr);

      // 3. What a scratch image needs, and nothing is writable but /tmp and /data.
      const passwd = await Deno.readTextFile(`${root}/etc/passwd`);
      assert.match(passwd, /^mcloudtt:x:65532:65532:[^:]*:\/data:/m);
      assert.match(await Deno.readTextFile(`${root}/etc/group`), /^mcloudtt:x:65532:/m);
      assert.equal((await Deno.stat(`${root}/tmp`)).mode! & 0o7777, 0o1777);
      assert.ok((await Deno.stat(`${root}/etc/ssl/certs/ca-certificates.crt`)).size > 10_000);
      assert.equal((await Deno.stat(root)).mode! & 0o777, 0o755);

      // The container runtime adds the /proc mount point (and /dev, /sys, /etc/hosts, ...).
      await Deno.mkdir(`${root}/proc`);
      const perms = await compilePermissions();
      const image = (extra: string[]) =>
        new Deno.Command("unshare", {
          // A root of its own, PID 1 in a PID namespace with its own /proc (Docker mounts one),
          // uid/gid 65532, the image's working directory; the host's loopback network.
          args: [
            "--mount",
            "--pid",
            "--fork",
            "--kill-child",
            "--mount-proc",
            `--root=${root}`,
            "--wd=/data",
            "--setuid=65532",
            "--setgid=65532",
            "/deno",
            "run",
            ...perms,
            "/mcloudtt.js",
            ...extra,
          ],
          clearEnv: true,
          env: { ...env, NO_COLOR: "1" },
          stdin: "null",
          stdout: "piped",
          stderr: "piped",
        });

      // 4. No certificates mounted: exit 2, naming what to mount; nothing is generated.
      const tcp = freePort();
      const flags = [
        `--general.bind=127.0.0.1`,
        `--ports.tcp=${tcp}`,
        `--ports.ws=${freePort()}`,
        "--http.port=0",
      ];
      const bare = await image(flags).output();
      const stderr = new TextDecoder().decode(bare.stderr);
      assert.equal(bare.code, 2, stderr);
      assert.match(stderr, /\/data\/certs\/broker\/broker\.crt/);
      assert.match(stderr, /mount/);
      const written = [...Deno.readDirSync(`${root}/data`)].map((e) => e.name);
      assert.ok(!written.includes("certs"), `nothing generated in /data: ${written}`);

      // 5. Certificates mounted at the default paths: it serves MQTT over TLS.
      const pki = await makeTestPki(`${tmp}/pki`);
      await Deno.mkdir(`${root}/data/certs/broker`, { recursive: true });
      await Deno.copyFile(pki.ca.cert, `${root}/data/certs/ca.crt`);
      await Deno.copyFile(pki.broker.cert, `${root}/data/certs/broker/broker.crt`);
      await Deno.copyFile(pki.broker.key, `${root}/data/certs/broker/broker.key`);
      await run("chmod", ["-R", "a+rX", `${root}/data/certs`]);
      const child = image(flags).spawn();
      const output = Promise.all([
        new Response(child.stdout).text(),
        new Response(child.stderr).text(),
      ]);
      try {
        const read = (p: string) => Deno.readTextFileSync(p);
        let client;
        for (let i = 0; !client; i++) {
          try {
            client = await connectClient(tcp, {
              protocol: "mqtts",
              clientId: "from-outside",
              ca: read(pki.ca.cert),
              cert: read(pki.alice.cert),
              key: read(pki.alice.key),
              connectTimeout: 2000,
            });
          } catch (e) {
            if (i >= 50) throw e;
            await delay(200);
          }
        }
        await client.endAsync();
      } finally {
        // 6. SIGTERM to the program, which is PID 1 in its namespace: PID 1 gets no default
        // signal handling from the kernel, so this exits only if the program handles SIGTERM.
        const pid = Number(
          (await Deno.readTextFile(`/proc/${child.pid}/task/${child.pid}/children`)).trim(),
        );
        Deno.kill(pid, "SIGTERM");
      }
      const status = await child.status;
      const [, err] = await output;
      assert.equal(status.code, 0, err);
    } finally {
      await Deno.remove(tmp, { recursive: true });
    }
  },
});
