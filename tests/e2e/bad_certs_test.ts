/**
 * A broker certificate set that cannot work is refused: `serve` exits 2 naming the config key and
 * the reason instead of listening and failing every handshake, and `check-config` reports the same
 * problems (plus an unreadable password or ACL file) before a deploy.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { issueLeafCertificate } from "../../src/auth/certs.ts";
import { hashPassword } from "../../src/auth/passwords.ts";
import { connectClient, freePort } from "../helpers/broker.ts";
import { copyProject, startMain } from "../helpers/main_process.ts";
import { makeTestPki } from "../helpers/certs.ts";

const DAY_MS = 24 * 60 * 60 * 1000;

const dir = await Deno.makeTempDir({ prefix: "mcloudtt-bad-certs-" });
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
await copyProject(dir);
const pki = await makeTestPki(join(dir, "pki"));
const read = (path: string) => Deno.readTextFileSync(path);

async function write(name: string, text: string): Promise<string> {
  const path = join(dir, name);
  await Deno.writeTextFile(path, text);
  return path;
}

const ca = { certPem: read(pki.ca.cert), keyPem: read(pki.ca.key) };
const otherCa = { certPem: read(pki.otherCa.cert), keyPem: read(pki.otherCa.key) };
const server = {
  kind: "server" as const,
  commonName: "localhost",
  sans: ["localhost", "127.0.0.1"],
};
const expired = await issueLeafCertificate(ca, {
  ...server,
  notBefore: new Date(Date.now() - 10 * DAY_MS),
  notAfter: new Date(Date.now() - DAY_MS),
});
const foreign = await issueLeafCertificate(otherCa, { ...server, days: 2 });

const bad = {
  garbage: { certfile: await write("garbage.crt", "this is not a certificate\n") },
  truncated: {
    certfile: await write(
      "truncated.crt",
      read(pki.broker.cert).replace(/\n[A-Za-z0-9+/]{20}/, "\n"),
    ),
  },
  mismatch: { keyfile: pki.alice.key },
  unreadableKey: { keyfile: await write("garbage.key", "-----BEGIN PRIVATE KEY-----\nAAAA\n") },
  expired: {
    certfile: await write("expired.crt", expired.certPem),
    keyfile: await write("expired.key", expired.keyPem),
  },
  foreign: {
    certfile: await write("foreign.crt", foreign.certPem),
    keyfile: await write("foreign.key", foreign.keyPem),
  },
  garbageCa: { cafile: await write("garbage-ca.crt", "nope\n") },
};

/** Flags for a secure broker on free ports serving the test PKI, with `tls` overrides. */
function flags(tls: Partial<Record<"certfile" | "keyfile" | "cafile", string>>): string[] {
  const files = { certfile: pki.broker.cert, keyfile: pki.broker.key, cafile: pki.ca.cert, ...tls };
  return [
    "--general.bind=127.0.0.1",
    "--ports.tcp=0",
    "--ports.ws=0",
    `--tls.certfile=${files.certfile}`,
    `--tls.keyfile=${files.keyfile}`,
    `--tls.cafile=${files.cafile}`,
  ];
}

/** Runs `main.ts ...args` to its end and returns the exit code and stderr. */
async function run(args: string[]): Promise<{ code: number; stderr: string; output: string }> {
  await using p = startMain(dir, args);
  // A broker that starts listening has accepted the set: fail at once rather than wait.
  const listening = p.waitFor(/listening for MQTT/, 20_000).then(
    () => Promise.reject(new Error(`the broker started:\n${p.output()}`)),
    () => new Promise<never>(() => {}),
  );
  const status = await Promise.race([p.status, listening]);
  return { code: status.code, stderr: p.stderr(), output: p.output() };
}

const cases: [string, Partial<Record<"certfile" | "keyfile" | "cafile", string>>, RegExp][] = [
  [
    "a garbage certfile",
    bad.garbage,
    /tls\.certfile ".*garbage\.crt": contains no PEM certificate/,
  ],
  [
    "a corrupt certfile",
    bad.truncated,
    /tls\.certfile ".*truncated\.crt": certificate 1 cannot be parsed/,
  ],
  [
    "a key that does not match",
    bad.mismatch,
    /tls\.certfile ".*": .*does not match the private key in tls\.keyfile ".*alice\.key"/,
  ],
  [
    "an unreadable key",
    bad.unreadableKey,
    /tls\.keyfile ".*garbage\.key": not a readable PEM private key/,
  ],
  [
    "an expired certificate",
    bad.expired,
    /tls\.certfile ".*expired\.crt": the certificate \(CN=localhost\) expired on /,
  ],
  [
    "a certificate from a foreign CA",
    bad.foreign,
    /tls\.certfile ".*foreign\.crt": .*is not issued by a certificate in tls\.cafile/,
  ],
  [
    "a garbage cafile",
    bad.garbageCa,
    /tls\.cafile ".*garbage-ca\.crt": contains no PEM certificate/,
  ],
];

for (const [what, tls, message] of cases) {
  Deno.test(`serve refuses ${what}: exit 2 naming the key and the reason`, async () => {
    const r = await run(flags(tls));
    assert.equal(r.code, 2, r.output);
    assert.match(r.stderr, /cannot start/);
    assert.match(r.stderr, message);
    assert.doesNotMatch(r.output, /listening for MQTT/);
  });
}

Deno.test("serve starts with a good set, a self-signed certificate, or a certfile carrying its chain", async () => {
  const selfSigned = { certfile: pki.otherCa.cert, keyfile: pki.otherCa.key };
  // An intermediate from another CA in certfile after the leaf: the chain a public CA ships.
  const chained = {
    certfile: await write("chain.crt", foreign.certPem + read(pki.otherCa.cert)),
    keyfile: bad.foreign.keyfile,
  };
  for (const tls of [{}, selfSigned, chained]) {
    await using p = startMain(dir, flags(tls));
    await p.waitFor(/listening for MQTT over tls/);
  }
});

Deno.test("SIGHUP with a bad new certificate keeps the old one serving and logs why", async () => {
  const live = { cert: join(dir, "live.crt"), key: join(dir, "live.key") };
  await Deno.copyFile(pki.broker.cert, live.cert);
  await Deno.copyFile(pki.broker.key, live.key);
  const port = freePort();
  await using p = startMain(dir, [
    ...flags({ certfile: live.cert, keyfile: live.key }),
    `--ports.tcp=${port}`,
    "--general.websocket=false",
    "--general.cert_reload_interval=3600",
  ]);
  await p.waitFor(/listening for MQTT over tls/);
  const alice = {
    protocol: "mqtts" as const,
    ca: read(pki.ca.cert),
    cert: read(pki.alice.cert),
    key: read(pki.alice.key),
  };
  // A new certificate whose key never arrived: the old key does not match it.
  const next = await issueLeafCertificate(ca, { ...server, days: 2 });
  await Deno.writeTextFile(live.cert, next.certPem);
  p.child.kill("SIGHUP");
  await p.waitFor(/TLS reload refused.*tls\.certfile ".*live\.crt": .*does not match/);
  await using c1 = await connectClient(port, { ...alice, clientId: "after-bad-reload" });
  assert.ok(c1.connected);
  // Once the key arrives too, the next SIGHUP swaps the set.
  await Deno.writeTextFile(live.key, next.keyPem);
  p.child.kill("SIGHUP");
  await p.waitFor(/TLS certificates reloaded/);
  await using c2 = await connectClient(port, { ...alice, clientId: "after-good-reload" });
  assert.ok(c2.connected);
});

Deno.test("check-config reports unusable certificates, password file and ACL, one line each", async () => {
  const passwd = await write("passwd", "alice:$pbkdf2-sha512$1000$bm90IGEgc2FsdA==$short\n");
  const acl = await write("acl", "pattern readwrite devices/%c/#\ntopic read x\n");
  const r = await run([
    "check-config",
    ...flags(bad.mismatch),
    `--auth.password_file=${passwd}`,
    `--auth.acl_file=${acl}`,
  ]);
  assert.equal(r.code, 2, r.output);
  const lines = r.stderr.trim().split("\n");
  assert.equal(lines.length, 3, r.stderr);
  assert.match(lines[0], /tls\.certfile ".*broker\.crt": .*does not match the private key/);
  assert.match(lines[1], /auth\.password_file: .*passwd:1: user 'alice': /);
  assert.match(lines[2], /auth\.acl_file: .*acl:2: 'topic' must follow/);
  assert.doesNotMatch(r.output, /configuration OK/);

  const expiredCa = await run(["check-config", ...flags({ cafile: bad.expired.certfile })]);
  assert.equal(expiredCa.code, 2, expiredCa.output);
  assert.match(expiredCa.stderr, /tls\.cafile ".*expired\.crt": the CA certificate .* expired on/);
});

Deno.test("check-config passes a usable set, password file and ACL", async () => {
  const passwd = await write("passwd-ok", `alice:${await hashPassword("pw", 1000)}\n`);
  const acl = await write("acl-ok", "pattern readwrite devices/%c/#\n");
  const r = await run([
    "check-config",
    ...flags({}),
    `--auth.password_file=${passwd}`,
    `--auth.acl_file=${acl}`,
  ]);
  assert.equal(r.code, 0, r.output);
  assert.match(r.output, /configuration OK/);
});
