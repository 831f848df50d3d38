/**
 * The broker as a new user meets it: `deno task start` in a fresh checkout generates development
 * certificates, prints working mosquitto commands, and refuses to invent certificates for paths
 * the operator chose; `general.secure = false` is loud about it.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { collect, connectClient, delay, freePort } from "../helpers/broker.ts";
import { copyProject, startMain } from "../helpers/main_process.ts";
import { skipWithout } from "../helpers/mosquitto.ts";

const CERT_FILES = [
  "certs/ca.crt",
  "certs/broker/broker.crt",
  "certs/broker/broker.key",
  "certs/client/client.crt",
  "certs/client/client.key",
];

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

/** A fresh copy of the project in a temp dir, removed on dispose. */
async function project(): Promise<{ dir: string } & AsyncDisposable> {
  const dir = await Deno.makeTempDir({ prefix: "mcloudtt-e2e-" });
  await copyProject(dir);
  return { dir, [Symbol.asyncDispose]: () => Deno.remove(dir, { recursive: true }) };
}

/** Runs a shell command line in `cwd` and returns its exit code and output. */
async function sh(cwd: string, line: string) {
  const out = await new Deno.Command("sh", {
    args: ["-c", line],
    cwd,
    stdout: "piped",
    stderr: "piped",
  })
    .output();
  const text = new TextDecoder();
  return { code: out.code, stdout: text.decode(out.stdout), stderr: text.decode(out.stderr) };
}

/**
 * Runs the printed subscriber line (with `-C 1 -W 10` so it ends) and repeats the printed
 * publisher line until the subscriber has its message: the subscriber may not have subscribed
 * when the first publish arrives.
 */
async function runPrinted(cwd: string, subLine: string, pubLine: string) {
  let done = false;
  const sub = sh(cwd, `${subLine} -C 1 -W 10`).finally(() => done = true);
  while (!done) {
    const pub = await sh(cwd, pubLine);
    assert.equal(pub.code, 0, `${pubLine} failed: ${pub.stderr}`);
    await Promise.race([sub, delay(200)]);
  }
  return await sub;
}

async function snapshot(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const f of CERT_FILES) {
    const stat = await Deno.stat(join(dir, f));
    out[f] = `${stat.mtime?.getTime()} ${await Deno.readTextFile(join(dir, f))}`;
  }
  return out;
}

Deno.test({
  name: "first start generates dev certificates and prints mosquitto commands that work; " +
    "a second start reuses them",
  ignore: skipWithout("mosquitto_sub", "mosquitto_pub"),
  async fn(t) {
    await using p = await project();
    let before: Record<string, string> = {};

    await t.step("first start", async () => {
      for (const f of CERT_FILES) assert.equal(await exists(join(p.dir, f)), false);
      const tcp = freePort();
      await using broker = startMain(p.dir, [`--ports.tcp=${tcp}`, `--ports.ws=${freePort()}`]);
      const [, subLine] = await broker.waitFor(/^\s*(mosquitto_sub .*)$/m);
      const [, pubLine] = await broker.waitFor(/^\s*(mosquitto_pub .*)$/m);
      assert.match(subLine, new RegExp(`-p ${tcp} `));
      for (const f of CERT_FILES) assert.ok(await exists(join(p.dir, f)), `${f} missing`);
      const sub = await runPrinted(p.dir, subLine, pubLine);
      assert.equal(sub.code, 0, `${subLine} failed: ${sub.stderr}`);
      assert.equal(sub.stdout, "test/hello hello from mcloudtt\n");
      assert.equal((await broker.stop()).code, 0);
      before = await snapshot(p.dir);
    });

    await t.step("second start in the same directory", async () => {
      const tcp = freePort();
      await using broker = startMain(p.dir, [`--ports.tcp=${tcp}`, `--ports.ws=${freePort()}`]);
      await broker.waitFor(/listening for MQTT over wss/);
      assert.doesNotMatch(broker.output(), /generated development certificates/);
      assert.deepEqual(await snapshot(p.dir), before);
      // The kept certificates still serve: the client certificate from the first run connects.
      const tlsArgs = "--cafile certs/ca.crt --cert certs/client/client.crt " +
        "--key certs/client/client.key";
      const sub = await runPrinted(
        p.dir,
        `mosquitto_sub -h localhost -p ${tcp} -V 311 -t again ${tlsArgs}`,
        `mosquitto_pub -h localhost -p ${tcp} -V 311 -t again -m second ${tlsArgs}`,
      );
      assert.equal(sub.stdout, "second\n");
    });
  },
});

Deno.test("cert paths set explicitly that do not exist: exit code 2 naming tls.certfile", async () => {
  await using p = await project();
  await using broker = startMain(p.dir, [
    `--ports.tcp=${freePort()}`,
    `--ports.ws=${freePort()}`,
    "--tls.certfile=mine/broker.crt",
    "--tls.keyfile=mine/broker.key",
    "--tls.cafile=mine/ca.crt",
  ]);
  const status = await broker.status;
  assert.equal(status.code, 2, broker.stderr());
  assert.match(broker.stderr(), /tls\.certfile/);
  // Paths the operator chose are never filled with generated certificates.
  assert.equal(await exists(join(p.dir, "certs")), false);
  assert.equal(await exists(join(p.dir, "mine")), false);
});

Deno.test("default cert paths only partly present: exit code 2, nothing regenerated", async () => {
  await using p = await project();
  await Deno.mkdir(join(p.dir, "certs"));
  await Deno.writeTextFile(join(p.dir, "certs/ca.crt"), "operator's CA\n");
  await using broker = startMain(p.dir, [`--ports.tcp=${freePort()}`, `--ports.ws=${freePort()}`]);
  assert.equal((await broker.status).code, 2, broker.stderr());
  assert.match(broker.stderr(), /tls\.certfile/);
  assert.equal(await Deno.readTextFile(join(p.dir, "certs/ca.crt")), "operator's CA\n");
  assert.equal(await exists(join(p.dir, "certs/broker")), false);
});

Deno.test("general.secure=false prints a SECURITY WARNING and serves plain TCP", async () => {
  await using p = await project();
  const tcp = freePort();
  await using broker = startMain(p.dir, [
    "--general.secure=false",
    `--ports.tcp=${tcp}`,
    `--ports.ws=${freePort()}`,
  ]);
  await broker.waitFor(/SECURITY WARNING/);
  assert.match(broker.stderr(), /SECURITY WARNING/);
  await broker.waitFor(/listening for MQTT over tcp/);
  await using sub = await connectClient(tcp, { clientId: "plain-sub" });
  await using pub = await connectClient(tcp, { clientId: "plain-pub" });
  const inbox = collect(sub);
  await sub.subscribeAsync("plain", { qos: 1 });
  await pub.publishAsync("plain", "no tls", { qos: 1 });
  assert.equal((await inbox.next()).payload, "no tls");
  assert.equal(await exists(join(p.dir, "certs")), false, "no certificates without TLS");
});
