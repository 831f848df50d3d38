import assert from "node:assert/strict";
import { join } from "node:path";
import "reflect-metadata";
import * as x509 from "@peculiar/x509";
import { runCertsCommand } from "../../src/cli/certs.ts";
import { withTempDir } from "../helpers/fs.ts";

const DAY_MS = 24 * 60 * 60 * 1000;

/** Collects what the command prints, one entry per call. */
function capture() {
  const out: string[] = [];
  const err: string[] = [];
  return {
    out,
    err,
    io: { stdout: (t: string) => out.push(t), stderr: (t: string) => err.push(t) },
  };
}

Deno.test("runCertsCommand generates everything and refuses to overwrite without --force", async () => {
  await withTempDir(async (dir) => {
    const target = join(dir, "certs");
    const first = capture();
    assert.equal(
      await runCertsCommand(
        ["--dir", target, "--name", "broker.lan", "--client", "alice"],
        first.io,
      ),
      0,
    );
    assert.deepEqual(first.err, []);
    assert.equal(first.out.length, 6);
    assert.ok(first.out.includes(`wrote ${join(target, "client", "alice.crt")}`));
    const brokerBefore = await Deno.readTextFile(join(target, "broker", "broker.crt"));
    const broker = new x509.X509Certificate(brokerBefore);
    assert.equal(broker.subject, "CN=broker.lan");

    const second = capture();
    assert.equal(await runCertsCommand([`--dir=${target}`, "--client", "alice"], second.io), 1);
    assert.match(second.err.join("\n"), /refusing to overwrite .*--force/);
    assert.equal(await Deno.readTextFile(join(target, "broker", "broker.crt")), brokerBefore);

    const forced = capture();
    assert.equal(
      await runCertsCommand(
        ["--dir", target, "--client", "alice", "--force", "--days", "7"],
        forced.io,
      ),
      0,
    );
    assert.ok(forced.out.includes(`reused CA ${join(target, "ca.crt")}`));
    const renewed = new x509.X509Certificate(
      await Deno.readTextFile(join(target, "broker", "broker.crt")),
    );
    assert.notEqual(renewed.serialNumber, broker.serialNumber);
    assert.equal(Math.round((renewed.notAfter.getTime() - Date.now()) / DAY_MS), 7);
  });
});

Deno.test("runCertsCommand 'client NAME' issues one client certificate from the existing CA", async () => {
  await withTempDir(async (dir) => {
    const io = capture();
    assert.equal(await runCertsCommand(["client", "bob", "--dir", dir], io.io), 1);
    assert.match(io.err.join("\n"), /no CA/);
    assert.equal(await runCertsCommand(["--dir", dir], capture().io), 0);
    const ok = capture();
    assert.equal(
      await runCertsCommand(["client", "bob", "--dir", dir, "--san", "bob@example.com"], ok.io),
      0,
    );
    assert.deepEqual(ok.out, [
      `wrote ${join(dir, "client", "bob.crt")}`,
      `wrote ${join(dir, "client", "bob.key")}`,
    ]);
    const cert = new x509.X509Certificate(await Deno.readTextFile(join(dir, "client", "bob.crt")));
    assert.equal(cert.subject, "CN=bob");
  });
});

Deno.test("runCertsCommand rejects bad usage with exit code 2 and prints help with 0", async () => {
  for (
    const args of [
      ["--bogus"],
      ["--days", "0"],
      ["--days"],
      ["stray"],
      ["client"],
      ["client", "a", "b"],
      ["client", "a", "--name", "x"],
    ]
  ) {
    const io = capture();
    assert.equal(await runCertsCommand(args, io.io), 2, args.join(" "));
    assert.match(io.err.join("\n"), /usage:/);
  }
  const help = capture();
  assert.equal(await runCertsCommand(["--help"], help.io), 0);
  assert.match(help.out.join("\n"), /mcloudtt certs client NAME/);
});

Deno.test("--force replaces a symlink in the certificate directory, never the file it points to", async () => {
  await withTempDir(async (dir) => {
    const target = join(dir, "certs");
    await Deno.mkdir(target);
    // A file outside the certificate directory, readable by everyone, linked in as the CA key.
    const outside = join(dir, "outside.txt");
    await Deno.writeTextFile(outside, "not a key\n", { mode: 0o644 });
    await Deno.chmod(outside, 0o644);
    await Deno.symlink(outside, join(target, "ca.key"));
    const run = capture();
    assert.equal(await runCertsCommand(["--dir", target, "--force"], run.io), 0, run.err.join());
    assert.equal(await Deno.readTextFile(outside), "not a key\n");
    assert.equal((await Deno.stat(outside)).mode! & 0o777, 0o644);
    const key = await Deno.lstat(join(target, "ca.key"));
    assert.ok(key.isFile, "certs/ca.key is still a symlink");
    assert.equal(key.mode! & 0o777, 0o600);
    assert.match(await Deno.readTextFile(join(target, "ca.key")), /BEGIN PRIVATE KEY/);
    // No temporary file is left behind.
    const names = [...Deno.readDirSync(target)].map((e) => e.name).sort();
    assert.deepEqual(names, ["broker", "ca.crt", "ca.key", "client"]);
  });
});
