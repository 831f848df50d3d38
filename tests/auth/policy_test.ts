/**
 * The authentication and authorization policy end to end: certificate identity (cn, san,
 * fingerprint, client id match) over TLS, and the password file and ACL over plain TCP.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import type { MqttClient } from "mqtt";
import { createHash } from "node:crypto";
import { join } from "node:path";
import type { CertFiles } from "../../src/auth/certs.ts";
import { hashPassword } from "../../src/auth/passwords.ts";
import {
  collect,
  connectClient,
  type Inbox,
  RawClient,
  startBroker,
  startSecureBroker,
  subscriber,
} from "../helpers/broker.ts";
import { clientTls, haveBinary, makeTestPki } from "../helpers/certs.ts";

const dir = await Deno.makeTempDir({ prefix: "mcloudtt-policy-test-" });
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
const pki = await makeTestPki(join(dir, "pki"));

async function writeFile(name: string, text: string): Promise<string> {
  const path = join(dir, name);
  await Deno.writeTextFile(path, text);
  return path;
}

const usersAcl = await writeFile("users.acl", "pattern readwrite users/%u/#\n");

// A low iteration count keeps each CONNECT cheap; the format is the production one.
const passwordFile = await writeFile(
  "passwd",
  [
    `alice:${await hashPassword("alice-secret", 1000)}`,
    `bob:${await hashPassword("bob-secret", 1000)}`,
    `admin:${await hashPassword("admin-secret", 1000)}`,
  ].join("\n") + "\n",
);

const aclFile = await writeFile(
  "policy.acl",
  `pattern readwrite users/%u/#
pattern readwrite clients/%c/#
user alice
topic readwrite shared/#
user admin
topic readwrite #
client special-client
topic write special/#
anonymous
topic read public/#
`,
);

const credentials = (user: string) => ({
  username: user,
  password: Buffer.from(`${user}-secret`),
});

/** The SUBACK code MQTT.js got for `filter` (it rejects when the code is a refusal). */
async function grantedFor(client: MqttClient, filter: string): Promise<number> {
  try {
    return (await client.subscribeAsync(filter, { qos: 1 }))[0].qos;
  } catch (e) {
    const granted = (e as { packet?: { granted?: number[] } }).packet?.granted;
    if (granted === undefined) throw e;
    return granted[0];
  }
}

// ---- certificate identity (TLS) ------------------------------------------------------------

/** MQTT.js options for mqtts with `client`'s certificate. */
function mqtts(client: CertFiles, clientId: string) {
  return { protocol: "mqtts" as const, clientId, ...clientTls(pki, client) };
}

/** A TLS-only secure broker with the users/%u ACL and `identity` mapping. */
function identityBroker(identity: "cn" | "san" | "fingerprint", requireMatch = false) {
  return startSecureBroker(pki, {
    general: { websocket: false },
    tls: { identity, require_client_id_match: requireMatch },
    auth: { acl_file: usersAcl },
  });
}

/** The reason code of a failed MQTT.js operation. */
async function reasonOf(p: Promise<unknown>): Promise<number | "ok"> {
  try {
    await p;
    return "ok";
  } catch (e) {
    return (e as { code: number }).code;
  }
}

Deno.test("identity cn: alice's certificate may publish under users/alice, not users/bob", async () => {
  await using b = await identityBroker("cn");
  // A username and password sent along do not override the certificate's identity.
  await using alice = await subscriber(b.tlsPort, "users/alice/#", 1, {
    ...mqtts(pki.alice, "alice-1"),
    username: "bob",
    password: "bob-secret",
  });
  await alice.publishAsync("users/alice/x", "mine", { qos: 1 });
  assert.equal((await alice.inbox.next()).topic, "users/alice/x");
  assert.equal(await reasonOf(alice.publishAsync("users/bob/x", "not mine", { qos: 1 })), 0x87);
  assert.equal(await grantedFor(alice, "users/bob/#"), 0x87);
});

Deno.test("identity san: bob's identity is his email address", async () => {
  await using b = await identityBroker("san");
  await using bob = await connectClient(b.tlsPort, mqtts(pki.bob, "bob-1"));
  assert.equal(await reasonOf(bob.publishAsync("users/bob@example.com/x", "m", { qos: 1 })), "ok");
  assert.equal(await reasonOf(bob.publishAsync("users/bob/x", "m", { qos: 1 })), 0x87);
  // Alice's certificate has no SAN, so it names nobody and she is an (unallowed) anonymous client.
  assert.equal(await reasonOf(connectClient(b.tlsPort, mqtts(pki.alice, "alice-2"))), 0x87);
});

Deno.test("identity fingerprint: the SHA-256 of the certificate's DER in hex", async () => {
  const pem = Deno.readTextFileSync(pki.alice.cert);
  const der = Buffer.from(pem.replace(/-----[^-]+-----/g, "").replace(/\s/g, ""), "base64");
  const fingerprint = createHash("sha256").update(der).digest("hex");
  if (await haveBinary("openssl")) {
    const out = await new Deno.Command("openssl", {
      args: ["x509", "-in", pki.alice.cert, "-noout", "-fingerprint", "-sha256"],
      stdout: "piped",
    }).output();
    const text = new TextDecoder().decode(out.stdout);
    assert.equal(text.split("=")[1].trim().replaceAll(":", "").toLowerCase(), fingerprint);
  }
  await using b = await identityBroker("fingerprint");
  await using alice = await connectClient(b.tlsPort, mqtts(pki.alice, "alice-3"));
  assert.equal(await reasonOf(alice.publishAsync(`users/${fingerprint}/x`, "m", { qos: 1 })), "ok");
  assert.equal(await reasonOf(alice.publishAsync("users/alice/x", "m", { qos: 1 })), 0x87);
});

Deno.test("require_client_id_match: the client id must equal the certificate identity", async () => {
  await using b = await identityBroker("cn", true);
  await using alice = await connectClient(b.tlsPort, mqtts(pki.alice, "alice"));
  assert.ok(alice.connected);
  // 0x85 Client Identifier not valid.
  assert.equal(await reasonOf(connectClient(b.tlsPort, mqtts(pki.alice, "x"))), 0x85);
});

Deno.test("require_client_id_match refuses a mismatch with return code 2 in MQTT 3.1.1", async () => {
  await using b = await identityBroker("cn", true);
  await using alice = await connectClient(b.tlsPort, {
    ...mqtts(pki.alice, "alice"),
    protocolVersion: 4,
  });
  assert.ok(alice.connected);
  // 2 = identifier rejected, the 3.1.1 form of 0x85.
  const refused = connectClient(b.tlsPort, { ...mqtts(pki.alice, "x"), protocolVersion: 4 });
  assert.equal(await reasonOf(refused), 2);
});

Deno.test("identity cn over WSS: alice's certificate names her there too", async () => {
  await using b = await startSecureBroker(pki, {
    listeners: { tcp: { enabled: false } },
    auth: { acl_file: usersAcl },
  });
  await using alice = await connectClient(b.wssPort, {
    ...mqtts(pki.alice, "alice-ws"),
    protocol: "wss",
    path: "/mqtt",
  });
  assert.equal(await reasonOf(alice.publishAsync("users/alice/x", "m", { qos: 1 })), "ok");
  assert.equal(await reasonOf(alice.publishAsync("users/bob/x", "m", { qos: 1 })), 0x87);
});

Deno.test("with optional client certificates an unverified certificate names nobody", async () => {
  const acl = await writeFile(
    "optional.acl",
    "pattern readwrite users/%u/#\nanonymous\ntopic readwrite anon/#\n",
  );
  await using b = await startSecureBroker(pki, {
    listeners: { tcp: { client_certificate: "optional" }, ws: { client_certificate: "optional" } },
    auth: { acl_file: acl, allow_anonymous: true },
  });
  const clients: [string, CertFiles | undefined][] = [
    ["alice", pki.alice],
    ["mallory", pki.otherCaClient],
    ["expired", pki.expired],
    ["nobody", undefined],
  ];
  for (const [name, files] of clients) {
    for (const transport of ["mqtts", "wss"] as const) {
      const port = transport === "mqtts" ? b.tlsPort : b.wssPort;
      const opts = {
        protocol: transport,
        path: "/mqtt",
        clientId: `${name}-${transport}`,
        ...clientTls(pki, files),
      };
      await using c = await connectClient(port, opts);
      const own = await reasonOf(c.publishAsync(`users/${name}/x`, "m", { qos: 1 }));
      const anon = await reasonOf(c.publishAsync("anon/x", "m", { qos: 1 }));
      // Only a certificate the CA vouches for gives a name; the rest are anonymous.
      const verified = name === "alice";
      assert.deepEqual([own, anon], verified ? ["ok", 0x87] : [0x87, "ok"], `${name} ${transport}`);
    }
  }
});

// ---- passwords (plain TCP) -----------------------------------------------------------------

/** Plain TCP, password file, no anonymous clients. */
function passwordBroker() {
  return startBroker({ auth: { password_file: passwordFile, allow_anonymous: false } });
}

/** Sends CONNECT and returns the refusal code, asserting the broker then closes the connection. */
async function refusedWith(
  port: number,
  version: 4 | 5,
  extra: Record<string, unknown>,
): Promise<{ code: number; sessionPresent: boolean }> {
  await using c = await RawClient.connect(port, version);
  await c.sendPacket({
    cmd: "connect",
    protocolId: "MQTT",
    protocolVersion: version,
    clientId: "who",
    clean: true,
    keepalive: 60,
    ...extra,
  }, version);
  const ack = await c.expect("connack");
  await c.expectClosed();
  return {
    code: (version === 5 ? ack.reasonCode : ack.returnCode) as number,
    sessionPresent: ack.sessionPresent as boolean,
  };
}

Deno.test("a user with the right password connects (MQTT 5 and 3.1.1)", async () => {
  await using b = await passwordBroker();
  await using v5 = await RawClient.connect(b.port, 5);
  await v5.handshake("good-5", 5, credentials("alice"));
  await using v4 = await RawClient.connect(b.port, 4);
  await v4.handshake("good-4", 4, credentials("bob"));
});

Deno.test("a wrong password is refused with 0x86 (MQTT 5) / 4 (3.1.1)", async () => {
  await using b = await passwordBroker();
  const bad = { username: "alice", password: Buffer.from("wrong") };
  assert.equal((await refusedWith(b.port, 5, bad)).code, 0x86);
  assert.equal((await refusedWith(b.port, 4, bad)).code, 4);
});

Deno.test("an unknown user is refused with 0x86 (MQTT 5) / 4 (3.1.1)", async () => {
  await using b = await passwordBroker();
  const unknown = { username: "eve", password: Buffer.from("eve-secret") };
  assert.equal((await refusedWith(b.port, 5, unknown)).code, 0x86);
  assert.equal((await refusedWith(b.port, 4, unknown)).code, 4);
});

Deno.test("no credentials are refused with 0x87 (MQTT 5) / 5 (3.1.1)", async () => {
  await using b = await passwordBroker();
  assert.equal((await refusedWith(b.port, 5, {})).code, 0x87);
  assert.equal((await refusedWith(b.port, 4, {})).code, 5);
});

Deno.test("a failed login with a live session's client id does not take the session over", async () => {
  await using b = await passwordBroker();
  await using owner = await subscriber(b.port, "users/alice/inbox", 1, {
    clientId: "victim",
    clean: false,
    properties: { sessionExpiryInterval: 300 },
    ...credentials("alice"),
  });
  let ownerClosed = false;
  owner.on("close", () => ownerClosed = true);

  for (const version of [5, 4] as const) {
    for (const extra of [{ username: "alice", password: Buffer.from("guess") }, {}]) {
      await using thief = await RawClient.connect(b.port, version);
      await thief.sendPacket({
        cmd: "connect",
        protocolId: "MQTT",
        protocolVersion: version,
        clientId: "victim",
        clean: false,
        keepalive: 60,
        ...extra,
      }, version);
      const ack = await thief.expect("connack");
      assert.notEqual(version === 5 ? ack.reasonCode : ack.returnCode, 0);
      // [MQTT-3.2.2-6]: a refused CONNACK never says a session exists.
      assert.equal(ack.sessionPresent, false);
      await thief.expectClosed();
    }
  }

  await using sender = await connectClient(b.port, { clientId: "sender", ...credentials("bob") });
  await sender.publishAsync("users/alice/inbox", "still yours", { qos: 1 });
  assert.equal((await owner.inbox.next()).payload, "still yours");
  assert.equal(ownerClosed, false);
  assert.ok(owner.connected);
});

// ---- ACL (plain TCP) -----------------------------------------------------------------------

/** Plain TCP, password file and ACL; anonymous clients allowed (the ACL has a section for them). */
function aclBroker() {
  return startBroker({
    auth: { password_file: passwordFile, acl_file: aclFile, allow_anonymous: true },
  });
}

/** An admin client that sees every topic in its `inbox`. */
function watcher(port: number) {
  return subscriber(port, "#", 1, { clientId: "watcher", ...credentials("admin") });
}

/** bob on a raw connection, to publish where the ACL does not let him. */
async function rawBob(port: number, version: 4 | 5): Promise<RawClient> {
  const bob = await RawClient.connect(port, version);
  await bob.handshake("bob-pub", version, credentials("bob"));
  return bob;
}

/**
 * Asserts that nothing published before a marker reached the watcher: the publisher sends an
 * allowed `marker` message after the refused one, and per-connection ordering means a leaked
 * message would arrive first.
 */
async function assertOnlyMarkerArrives(
  w: { inbox: Inbox },
  publisher: RawClient,
  version: 4 | 5,
  marker: string,
): Promise<void> {
  await publisher.sendPacket({ cmd: "publish", topic: marker, payload: "marker", qos: 0 }, version);
  const m = await w.inbox.next();
  assert.equal(m.topic, marker, `a refused message leaked: ${m.topic}`);
}

for (const [qos, answer, messageId] of [[1, "puback", 7], [2, "pubrec", 8]] as const) {
  Deno.test(`MQTT 5: a denied QoS ${qos} publish gets ${answer.toUpperCase()} 0x87 and is not delivered`, async () => {
    await using b = await aclBroker();
    await using w = await watcher(b.port);
    await using bob = await rawBob(b.port, 5);
    await bob.sendPacket({ cmd: "publish", topic: "users/alice/x", payload: "no", qos, messageId });
    const ack = await bob.expect(answer);
    assert.deepEqual([ack.messageId, ack.reasonCode], [messageId, 0x87]);
    await assertOnlyMarkerArrives(w, bob, 5, "users/bob/marker");
  });
}

Deno.test("MQTT 3.1.1: a denied QoS 0 publish is dropped silently", async () => {
  await using b = await aclBroker();
  await using w = await watcher(b.port);
  await using bob = await rawBob(b.port, 4);
  await bob.sendPacket({ cmd: "publish", topic: "users/alice/x", payload: "no", qos: 0 }, 4);
  await assertOnlyMarkerArrives(w, bob, 4, "users/bob/marker");
  // Still connected: 3.1.1 has no way to refuse, so the connection is not punished.
  await bob.sendPacket({ cmd: "pingreq" }, 4);
  await bob.expect("pingresp");
});

Deno.test("MQTT 3.1.1: a denied QoS 1 publish is acknowledged but not delivered", async () => {
  await using b = await aclBroker();
  await using w = await watcher(b.port);
  await using bob = await rawBob(b.port, 4);
  await bob.sendPacket(
    { cmd: "publish", topic: "users/alice/x", payload: "no", qos: 1, messageId: 9 },
    4,
  );
  const ack = await bob.expect("puback");
  assert.equal(ack.messageId, 9);
  await assertOnlyMarkerArrives(w, bob, 4, "users/bob/marker");
});

Deno.test("a denied subscription gets SUBACK 0x87 (MQTT 5) / 0x80 (3.1.1)", async () => {
  await using b = await aclBroker();
  for (const [version, refused] of [[5, 0x87], [4, 0x80]] as const) {
    await using bob = await RawClient.connect(b.port, version);
    await bob.handshake(`bob-${version}`, version, credentials("bob"));
    await bob.sendPacket({
      cmd: "subscribe",
      messageId: 1,
      subscriptions: [{ topic: "users/bob/#", qos: 1 }, { topic: "users/alice/#", qos: 1 }],
    }, version);
    assert.deepEqual((await bob.expect("suback")).granted, [1, refused], `MQTT ${version}`);
  }
});

Deno.test("per-user rules apply to that user only", async () => {
  await using b = await aclBroker();
  await using alice = await connectClient(b.port, { clientId: "a", ...credentials("alice") });
  await using bob = await connectClient(b.port, { clientId: "b", ...credentials("bob") });
  assert.equal(await reasonOf(alice.publishAsync("shared/x", "m", { qos: 1 })), "ok");
  assert.equal(await reasonOf(bob.publishAsync("shared/x", "m", { qos: 1 })), 0x87);
  assert.equal(await grantedFor(bob, "shared/#"), 0x87);
  assert.equal(await grantedFor(alice, "shared/#"), 1);
});

Deno.test("per-client rules and %c patterns follow the client id", async () => {
  await using b = await aclBroker();
  await using special = await connectClient(b.port, {
    clientId: "special-client",
    ...credentials("bob"),
  });
  await using other = await connectClient(b.port, { clientId: "other", ...credentials("bob") });
  assert.equal(await reasonOf(special.publishAsync("special/x", "m", { qos: 1 })), "ok");
  assert.equal(await reasonOf(other.publishAsync("special/x", "m", { qos: 1 })), 0x87);
  // "client ... topic write" grants no read.
  assert.equal(await grantedFor(special, "special/#"), 0x87);
  assert.equal(await reasonOf(other.publishAsync("clients/other/x", "m", { qos: 1 })), "ok");
  assert.equal(
    await reasonOf(other.publishAsync("clients/special-client/x", "m", { qos: 1 })),
    0x87,
  );
});

Deno.test("anonymous rules apply to clients without a username", async () => {
  await using b = await aclBroker();
  await using anon = await connectClient(b.port, { clientId: "anon" });
  await using admin = await connectClient(b.port, { clientId: "adm", ...credentials("admin") });
  const inbox = collect(anon);
  assert.equal(await grantedFor(anon, "public/#"), 1);
  assert.equal(await grantedFor(anon, "shared/#"), 0x87);
  assert.equal(await reasonOf(anon.publishAsync("public/x", "m", { qos: 1 })), 0x87);
  await admin.publishAsync("public/news", "hello anonymous", { qos: 1 });
  assert.equal((await inbox.next()).payload, "hello anonymous");
  // A named user does not get the anonymous section.
  await using bob = await connectClient(b.port, { clientId: "b", ...credentials("bob") });
  assert.equal(await grantedFor(bob, "public/#"), 0x87);
});
