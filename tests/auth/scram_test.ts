/**
 * MQTT 5 enhanced authentication with SCRAM-SHA-512 against the password file: the server side
 * against the RFC's test vector, then MQTT.js and raw clients over real sockets (a login, wrong
 * and unknown users, a non-ASCII password prepared with SASLprep, methods not offered, protocol
 * errors, the connect timeout, re-authentication, and a client certificate that must name the same
 * user).
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { createHash, createHmac, pbkdf2Sync } from "node:crypto";
import { join } from "node:path";
import type { IConnackPacket } from "mqtt";
import { hashPassword } from "../../src/auth/passwords.ts";
import { ScramExchange } from "../../src/auth/scram.ts";
import {
  connectClient,
  type Packet,
  RawClient,
  startBroker,
  startSecureBroker,
  subscriber,
} from "../helpers/broker.ts";
import { clientTls, makeTestPki } from "../helpers/certs.ts";
import {
  answerScram,
  authDataOf,
  connectScram,
  rawScramEntry,
  SCRAM_SHA_512,
  ScramClient,
  scramLogin,
  scramProperties,
  sendAuth,
  TEST_ITERATIONS,
} from "../helpers/scram_client.ts";

type Fields = Packet & Record<string, unknown>;

const dir = await Deno.makeTempDir({ prefix: "mcloudtt-scram-" });
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
const passwords = join(dir, "passwords");
await Deno.writeTextFile(
  passwords,
  `alice:${await hashPassword("alice-secret", TEST_ITERATIONS)}\n` +
    `bob:${await hashPassword("bob-secret", TEST_ITERATIONS)}\n`,
);
const acl = join(dir, "acl");
await Deno.writeTextFile(acl, "pattern readwrite %u/#\n");

const withPasswords = (extra: Record<string, unknown> = {}) =>
  startBroker({ auth: { password_file: passwords, acl_file: acl, ...extra } });

Deno.test("the server side of SCRAM matches RFC 7677's test vector (SHA-256)", () => {
  const salt = Buffer.from("W22ZaJ0SNY7soEsUEjb6gQ==", "base64");
  const salted = pbkdf2Sync("pencil", salt, 4096, 32, "sha256");
  // What a server keeps (RFC 5802, section 3), computed here apart from the broker's scramKeys.
  const storedKey = createHash("sha256")
    .update(createHmac("sha256", salted).update("Client Key").digest())
    .digest();
  const serverKey = createHmac("sha256", salted).update("Server Key").digest();
  const ex = new ScramExchange(
    "sha256",
    (u) => u === "user" ? { salt, iterations: 4096, storedKey, serverKey } : undefined,
    // Made for every user, so that its time does not tell who exists; used for unknown ones only.
    () => ({ salt: new Uint8Array(16), iterations: 1, storedKey: salt, serverKey: salt }),
    () => "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
  );
  const first = ex.first("n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
  assert.deepEqual(first, {
    ok: true,
    message:
      "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
  });
  const final = ex.final(
    "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0," +
      "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
  );
  assert.deepEqual(final, {
    ok: true,
    username: "user",
    message: "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
  });
});

Deno.test("malformed SCRAM messages are refused as such, not as wrong passwords", () => {
  const key = new Uint8Array(64);
  const creds = { salt: new Uint8Array(16), iterations: 1, storedKey: key, serverKey: key };
  const fresh = () => new ScramExchange("sha512", () => creds, () => creds);
  for (const first of ["n=user,r=abc", "p=tls-unique,,n=user,r=abc", "n,,r=abc,n=user"]) {
    const r = fresh().first(first);
    assert.equal(r.ok, false, first);
    assert.equal(!r.ok && r.malformed, true, first);
  }
  assert.equal(fresh().first("n,,n=user,r=abc,m=ext").ok, false);
  assert.equal(fresh().first("n,,n=us=er,r=abc").ok, false);
  assert.equal(fresh().first("n,a=other,n=user,r=abc").ok, false);
  const ex = fresh();
  assert.equal(ex.first("n,,n=user,r=abc").ok, true);
  const wrongNonce = ex.final("c=biws,r=abcX,p=AAAA");
  assert.equal(!wrongNonce.ok && wrongNonce.malformed, true);
});

Deno.test("SCRAM-SHA-512 login with MQTT.js: the password never leaves the client, the server proves itself, and the SCRAM user is the session's user for the ACL", async () => {
  await using b = await withPasswords();
  const s = new ScramClient("alice", "alice-secret");
  let connack: IConnackPacket | undefined;
  await using alice = await connectClient(b.port, {
    clientId: "alice-device",
    properties: scramProperties(s),
  }, (client) => {
    answerScram(client, s);
    client.once("connect", (p) => (connack = p));
  });
  assert.equal(connack?.properties?.authenticationMethod, SCRAM_SHA_512);
  assert.ok(s.verify(connack?.properties?.authenticationData), "server signature");

  // The ACL's %u is the user SCRAM proved.
  await using sub = await subscriber(b.port, "alice/#", 1, {
    clientId: "alice-sub",
    username: "alice",
    password: "alice-secret",
  });
  await alice.publishAsync("alice/t", "mine", { qos: 1 });
  const refused = await alice.publishAsync("bob/t", "not mine", { qos: 1 }).then(
    () => 0,
    (e: { code: number }) => e.code,
  );
  assert.equal(refused, 0x87);
  assert.equal((await sub.inbox.next()).payload, "mine");
  assert.equal(b.broker.metrics.authFailures, 0);
});

Deno.test("a wrong password and an unknown user get CONNACK 0x86 at the proof; an unknown user is given a stable salt, as a real one is", async () => {
  await using b = await withPasswords();
  // Wrong proof for a real user.
  await using c = await RawClient.connect(b.port, 5);
  const s = new ScramClient("alice", "alice-secret");
  await connectScram(c, "a1", s.first());
  await sendAuth(c, 0x18, s.final(authDataOf(await c.expect("auth")), true));
  const refused = await c.expect("connack");
  assert.equal(refused.reasonCode, 0x86);
  await c.expectClosed();

  // Unknown user: a salt and an iteration count like a real user's, the same at each attempt.
  const salts: string[] = [];
  for (const id of ["m1", "m2"]) {
    await using m = await RawClient.connect(b.port, 5);
    const ms = new ScramClient("mallory", "guess");
    await connectScram(m, id, ms.first());
    const first = Buffer.from(authDataOf(await m.expect("auth"))).toString();
    assert.match(first, /^r=[^,]+,s=[A-Za-z0-9+/=]+,i=4096$/);
    salts.push(first.split(",")[1]);
    await sendAuth(m, 0x18, ms.final(Buffer.from(first)));
    assert.equal((await m.expect("connack")).reasonCode, 0x86);
  }
  assert.equal(salts[0], salts[1]);
  assert.equal(b.broker.metrics.authFailures, 3);
});

Deno.test("a user whose entry is in the older $pbkdf2-sha512$ form (its hash is SCRAM's salted password, enough to log in) is refused by SCRAM, and still logs in with its password", async () => {
  const file = join(dir, "legacy");
  await Deno.writeTextFile(
    file,
    `carol:${await hashPassword("carol-secret", TEST_ITERATIONS, "pbkdf2-sha512")}\n`,
  );
  await using b = await startBroker({ auth: { password_file: file } });
  await using c = await RawClient.connect(b.port, 5);
  const s = new ScramClient("carol", "carol-secret");
  await connectScram(c, "carol-scram", s.first());
  await sendAuth(c, 0x18, s.final(authDataOf(await c.expect("auth"))));
  assert.equal((await c.expect("connack")).reasonCode, 0x86);
  await using ok = await connectClient(b.port, {
    clientId: "carol-pw",
    username: "carol",
    password: "carol-secret",
  });
  assert.ok(ok.connected);
});

Deno.test("a password typed with a no-break space and a full-width letter logs in by SCRAM from clients that apply SASLprep, as client libraries do, and by a plain MQTT login in either form; an ASCII password's entry written before SASLprep still serves both", async () => {
  // SASLprep maps U+00A0 to SPACE and U+FF33 (FULLWIDTH LATIN CAPITAL LETTER S) to "S".
  const typed = "open\u00A0\uFF33esame";
  const file = join(dir, "prepared");
  await Deno.writeTextFile(
    file,
    `dana:${await hashPassword(typed, TEST_ITERATIONS)}\nerin:${rawScramEntry("erin secret")}\n`,
  );
  await using b = await startBroker({ auth: { password_file: file } });

  // A raw client, as typed and as prepared; then MQTT.js answering the challenge itself.
  for (const [id, password] of [["dana-typed", typed], ["dana-ascii", "open Sesame"]]) {
    // scramLogin throws unless CONNACK is 0 and carries the server's signature.
    (await scramLogin(b.port, "dana", password, id, { saslprep: true })).close();
  }
  const s = new ScramClient("dana", typed, { saslprep: true });
  await using js = await connectClient(b.port, {
    clientId: "dana-js",
    properties: scramProperties(s),
  }, (client) => answerScram(client, s));
  assert.ok(js.connected);

  // A client that derives from the bytes as typed proves another password, as with any SCRAM
  // server that prepares.
  await using raw = await RawClient.connect(b.port, 5);
  const unprepared = new ScramClient("dana", typed);
  await connectScram(raw, "dana-unprepared", unprepared.first());
  await sendAuth(raw, 0x18, unprepared.final(authDataOf(await raw.expect("auth"))));
  assert.equal((await raw.expect("connack")).reasonCode, 0x86);

  for (const [id, password] of [["dana-pw-typed", typed], ["dana-pw-ascii", "open Sesame"]]) {
    await using pw = await connectClient(b.port, { clientId: id, username: "dana", password });
    assert.ok(pw.connected, id);
  }
  (await scramLogin(b.port, "erin", "erin secret", "erin-scram", { saslprep: true })).close();
  await using erin = await connectClient(b.port, {
    clientId: "erin-pw",
    username: "erin",
    password: "erin secret",
  });
  assert.ok(erin.connected);
  assert.equal(b.broker.metrics.authFailures, 1);
});

Deno.test("an authentication method not offered gets CONNACK 0x8C: another method, [auth] scram = false, or no password file", async () => {
  const cases: [string, Record<string, unknown> | null, string][] = [
    ["another method", {}, "SCRAM-SHA-1"],
    ["scram = false", { scram: false }, SCRAM_SHA_512],
    ["no password file", null, SCRAM_SHA_512],
  ];
  for (const [what, extra, method] of cases) {
    await using b = extra === null ? await startBroker() : await withPasswords(extra);
    await using c = await RawClient.connect(b.port, 5);
    await connectScram(c, "x", new ScramClient("alice", "alice-secret").first(), method);
    assert.equal((await c.expect("connack")).reasonCode, 0x8c, what);
    await c.expectClosed();
  }
});

Deno.test("during the exchange only AUTH of the CONNECT's method may come: a PUBLISH or another method is a Protocol Error (CONNACK 0x82)", async () => {
  await using b = await withPasswords();
  for (const wrong of ["publish", "method"]) {
    await using c = await RawClient.connect(b.port, 5);
    const s = new ScramClient("alice", "alice-secret");
    await connectScram(c, `p-${wrong}`, s.first());
    const challenge = await c.expect("auth");
    if (wrong === "publish") {
      await c.sendPacket({
        cmd: "publish",
        topic: "alice/x",
        payload: Buffer.from("early"),
        qos: 0,
      });
    } else {
      await sendAuth(c, 0x18, s.final(authDataOf(challenge)), "SCRAM-SHA-256");
    }
    assert.equal((await c.expect("connack")).reasonCode, 0x82, wrong);
    await c.expectClosed();
  }
});

Deno.test("a client that never finishes the exchange is closed at limits.connect_timeout", async () => {
  await using quick = await startBroker({
    auth: { password_file: passwords },
    limits: { connect_timeout: 1, sweep_interval_ms: 50 },
  });
  await using c = await RawClient.connect(quick.port, 5);
  await connectScram(c, "silent", new ScramClient("alice", "alice-secret").first());
  await c.expect("auth");
  const start = Date.now();
  await c.expectClosed(5000);
  assert.ok(Date.now() - start < 3000);
});

Deno.test("re-authentication: AUTH 0x19 runs SCRAM again while messages flow, and ends in AUTH 0x00 with the server's proof; a wrong proof or another user gets DISCONNECT 0x87, another method 0x82", async () => {
  await using b = await withPasswords();
  await using sub = await subscriber(b.port, "alice/#", 0, {
    clientId: "watcher",
    username: "alice",
    password: "alice-secret",
  });

  const c = await scramLogin(b.port, "alice", "alice-secret", "reauth");
  const again = new ScramClient("alice", "alice-secret");
  await sendAuth(c, 0x19, again.first());
  const challenge = await c.expect("auth");
  assert.equal(challenge.reasonCode, 0x18);
  // Other packets go on during the exchange.
  await c.sendPacket({ cmd: "publish", topic: "alice/during", payload: Buffer.from("x"), qos: 0 });
  assert.equal((await sub.inbox.next()).topic, "alice/during");
  await sendAuth(c, 0x18, again.final(authDataOf(challenge)));
  const success = await c.expect("auth");
  assert.equal(success.reasonCode, 0);
  assert.ok(again.verify(authDataOf(success)));

  // A wrong proof ends the connection.
  const wrong = new ScramClient("alice", "alice-secret");
  await sendAuth(c, 0x19, wrong.first());
  await sendAuth(c, 0x18, wrong.final(authDataOf(await c.expect("auth")), true));
  assert.equal((await c.expect("disconnect")).reasonCode, 0x87);
  await c.expectClosed();
  c.close();

  // Proving another user does not move the session to them.
  const d = await scramLogin(b.port, "alice", "alice-secret", "reauth2");
  const bob = new ScramClient("bob", "bob-secret");
  await sendAuth(d, 0x19, bob.first());
  await sendAuth(d, 0x18, bob.final(authDataOf(await d.expect("auth"))));
  assert.equal((await d.expect("disconnect")).reasonCode, 0x87);
  d.close();

  const e = await scramLogin(b.port, "alice", "alice-secret", "reauth3");
  await sendAuth(e, 0x19, new ScramClient("alice", "alice-secret").first(), "SCRAM-SHA-256");
  assert.equal((await e.expect("disconnect")).reasonCode, 0x82);
  e.close();
});

Deno.test("with a client certificate, SCRAM must prove the user the certificate names (CONNACK 0x87 otherwise)", async () => {
  const pkiDir = join(dir, "pki");
  await Deno.mkdir(pkiDir);
  const pki = await makeTestPki(pkiDir);
  await using b = await startSecureBroker(pki, {
    general: { websocket: false },
    auth: { password_file: passwords },
  });
  const tls = { protocol: "mqtts", host: "localhost", ...clientTls(pki, pki.alice) } as const;
  for (
    const [user, password, expected] of [["alice", "alice-secret", 0], [
      "bob",
      "bob-secret",
      0x87,
    ]] as const
  ) {
    const s = new ScramClient(user, password);
    let code = -1;
    const client = await connectClient(b.tlsPort, {
      ...tls,
      clientId: `cert-${user}`,
      properties: scramProperties(s),
    }, (cl) => {
      answerScram(cl, s);
      cl.once("connect", (p) => (code = p.reasonCode ?? 0));
    }).then((cl) => cl, (e: Error & { code?: number }) => {
      code = e.code ?? -2;
      return null;
    });
    assert.equal(code, expected, user);
    await client?.endAsync();
  }
});

Deno.test("an exchange whose AUTH or final CONNACK would not fit the client's Maximum Packet Size ends in CONNACK 0x95 [MQTT-3.1.2-24]", async () => {
  await using b = await withPasswords();
  for (const max of [60, 120]) {
    await using c = await RawClient.connect(b.port, 5);
    const s = new ScramClient("alice", "alice-secret");
    await c.sendConnect(`small-${max}`, 5, {
      properties: {
        maximumPacketSize: max,
        authenticationMethod: SCRAM_SHA_512,
        authenticationData: Buffer.from(s.first()),
      },
    });
    let p = await c.next() as Fields;
    // At 60 bytes the server-first-message (AUTH, ~115 bytes) does not fit; at 120 it does.
    assert.equal(p.cmd, max === 60 ? "connack" : "auth", `max ${max}`);
    if (p.cmd === "auth") {
      // The server-first-message fitted: the final CONNACK, with the server's signature, will not.
      assert.ok(2 + (p.length as number) <= max);
      await sendAuth(c, 0x18, s.final(authDataOf(p)));
      p = await c.expect("connack");
    }
    assert.equal(p.cmd, "connack", `max ${max}`);
    assert.equal(p.reasonCode, 0x95, `max ${max}`);
    assert.ok(2 + (p.length as number) <= max);
    await c.expectClosed();
  }
});
