/**
 * Changing credentials without a restart: the broker certificate rotated on disk (as
 * cert-manager does) is picked up by new connections while open ones carry on; SIGHUP reloads
 * the password file.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { join } from "node:path";
import { issueLeafCertificate } from "../../src/auth/certs.ts";
import { hashPassword } from "../../src/auth/passwords.ts";
import {
  collect,
  connectClient,
  delay,
  freePort,
  RawClient,
  startSecureBroker,
} from "../helpers/broker.ts";
import { copyProject, startMain } from "../helpers/main_process.ts";
import { fingerprintOf, makeTestPki, servedFingerprint } from "../helpers/certs.ts";

const read = (path: string) => Deno.readTextFileSync(path);

/** Replaces `path` in one step, as a rotation tool would (write aside, then rename). */
async function replaceFile(path: string, text: string): Promise<void> {
  await Deno.writeTextFile(`${path}.new`, text);
  await Deno.rename(`${path}.new`, path);
}

Deno.test("a rotated broker certificate is served to new TLS and WSS clients; open connections carry on", async () => {
  const dir = await Deno.makeTempDir({ prefix: "mcloudtt-rotate-" });
  try {
    const pki = await makeTestPki(join(dir, "pki"));
    const live = { cert: join(dir, "broker.crt"), key: join(dir, "broker.key") };
    await Deno.copyFile(pki.broker.cert, live.cert);
    await Deno.copyFile(pki.broker.key, live.key);
    const ca = read(pki.ca.cert);
    const alicePem = { cert: read(pki.alice.cert), key: read(pki.alice.key) };
    const mqtts = (clientId: string, files: { cert: string; key: string }) => ({
      protocol: "mqtts" as const,
      clientId,
      ca,
      cert: read(files.cert),
      key: read(files.key),
    });

    await using b = await startSecureBroker({ ca: pki.ca, broker: live }, {
      general: { cert_reload_interval: 1 },
    });
    const oldFingerprint = fingerprintOf(read(live.cert));
    assert.equal(await servedFingerprint(b.tlsPort, ca, alicePem), oldFingerprint);
    assert.equal(await servedFingerprint(b.wssPort, ca, alicePem), oldFingerprint);

    await using alice = await connectClient(b.tlsPort, mqtts("alice", pki.alice));
    await using bob = await connectClient(b.tlsPort, mqtts("bob", pki.bob));
    let closes = 0;
    alice.on("close", () => closes++);
    bob.on("close", () => closes++);
    const inbox = collect(alice);
    await alice.subscribeAsync("rotation", { qos: 1 });
    await bob.publishAsync("rotation", "before", { qos: 1 });
    assert.equal((await inbox.next()).payload, "before");

    // A new certificate from the same CA, told apart by an extra name.
    const rotated = await issueLeafCertificate(
      { certPem: ca, keyPem: read(pki.ca.key) },
      { kind: "server", commonName: "localhost", sans: ["localhost", "127.0.0.1", "rotated"] },
    );
    const newFingerprint = fingerprintOf(rotated.certPem);
    assert.notEqual(newFingerprint, oldFingerprint);
    await replaceFile(live.key, rotated.keyPem);
    await replaceFile(live.cert, rotated.certPem);

    // The broker polls every second; allow for a loaded machine.
    let served = oldFingerprint;
    const deadline = Date.now() + 8000;
    while (served !== newFingerprint && Date.now() < deadline) {
      // Messages keep flowing on the old connections while the files change under them.
      await bob.publishAsync("rotation", "during", { qos: 1 });
      assert.equal((await inbox.next()).payload, "during");
      await delay(200);
      served = await servedFingerprint(b.tlsPort, ca, alicePem);
    }
    assert.equal(served, newFingerprint, "new connections should get the rotated certificate");
    // The secure WebSocket listener swaps its certificate on the same reload.
    assert.equal(await servedFingerprint(b.wssPort, ca, alicePem), newFingerprint);

    await bob.publishAsync("rotation", "after", { qos: 1 });
    assert.equal((await inbox.next()).payload, "after");
    assert.equal(closes, 0, "open connections must survive the rotation");
    assert.ok(alice.connected && bob.connected);

    await using carol = await connectClient(b.tlsPort, mqtts("carol", pki.alice));
    await carol.publishAsync("rotation", "new client", { qos: 1 });
    assert.equal((await inbox.next()).payload, "new client");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("SIGHUP reloads the password file: a user added to it can log in without restart", async () => {
  const dir = await Deno.makeTempDir({ prefix: "mcloudtt-sighup-" });
  try {
    await copyProject(dir);
    const passwd = join(dir, "passwd");
    await Deno.writeTextFile(passwd, `alice:${await hashPassword("alice-pw", 1000)}\n`);
    const port = freePort();
    await using broker = startMain(dir, [
      "--general.secure=false",
      "--general.websocket=false",
      `--ports.tcp=${port}`,
      `--auth.password_file=${passwd}`,
      "--auth.allow_anonymous=false",
    ]);
    await broker.waitFor(/listening for MQTT over tcp/);

    const login = async (username: string, password: string) => {
      await using c = await RawClient.connect(port, 5);
      await c.sendPacket({
        cmd: "connect",
        protocolId: "MQTT",
        protocolVersion: 5,
        clientId: `${username}-login`,
        clean: true,
        keepalive: 60,
        username,
        password: Buffer.from(password),
      });
      return (await c.expect("connack")).reasonCode;
    };
    assert.equal(await login("carol", "carol-pw"), 0x86);
    await using alice = await connectClient(port, {
      clientId: "alice",
      username: "alice",
      password: "alice-pw",
    });
    let aliceClosed = false;
    alice.on("close", () => aliceClosed = true);

    await Deno.writeTextFile(passwd, `carol:${await hashPassword("carol-pw", 1000)}\n`, {
      append: true,
    });
    broker.child.kill("SIGHUP");
    await broker.waitFor(/password file and ACL reloaded/);

    assert.equal(await login("carol", "carol-pw"), 0);
    assert.equal(await login("carol", "wrong"), 0x86);
    assert.equal(await login("alice", "alice-pw"), 0);
    assert.equal(aliceClosed, false, "a reload must not drop connected clients");

    // A broken file on the next SIGHUP leaves the users loaded before in force.
    await Deno.writeTextFile(passwd, "carol has no hash\n");
    broker.child.kill("SIGHUP");
    await broker.waitFor(/reload failed/);
    assert.equal(await login("carol", "carol-pw"), 0);
    assert.equal((await broker.stop()).code, 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
