/**
 * Revocation takes effect: after a reload (what SIGHUP runs) of a tightened ACL, subscriptions the
 * new ACL forbids stop receiving and are removed from persistent sessions, and subscriptions it
 * narrows are filtered; clients whose password entry was removed or changed are disconnected with
 * DISCONNECT 0x87, while the others stay.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import type { IDisconnectPacket, MqttClient } from "mqtt";
import { hashPassword } from "../../src/auth/passwords.ts";
import { collect, connectClient, delay, startBroker, subscriber } from "../helpers/broker.ts";

const dir = await Deno.makeTempDir({ prefix: "mcloudtt-revocation-" });
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));

async function write(name: string, text: string): Promise<string> {
  const path = join(dir, name);
  await Deno.writeTextFile(path, text);
  return path;
}

/**
 * Resolves with the reason code of the DISCONNECT the broker sends, "closed" when it closes without
 * one, or "still connected" after 3 s.
 */
function serverDisconnect(client: MqttClient): Promise<number | "closed" | "still connected"> {
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve("still connected"), 3000);
    client.once("disconnect", (p: IDisconnectPacket) => {
      clearTimeout(t);
      resolve(p.reasonCode ?? 0);
    });
    client.once("close", () => {
      clearTimeout(t);
      setTimeout(() => resolve("closed"), 50);
    });
  });
}

Deno.test("a reloaded ACL removes forbidden subscriptions, also from offline sessions", async () => {
  const acl = await write("acl-tighten", "pattern readwrite #\n");
  await using b = await startBroker({ auth: { acl_file: acl, allow_anonymous: true } });
  await using pub = await connectClient(b.port, { clientId: "pub", username: "ops" });
  await using alice = await subscriber(b.port, ["sensors/#", "other/#"], 1, {
    clientId: "alice",
    username: "alice",
  });
  // carol has a persistent session and is offline during the reload.
  const persistent = {
    clientId: "carol",
    username: "carol",
    clean: false,
    properties: { sessionExpiryInterval: 3600 },
  };
  const carol1 = await connectClient(b.port, persistent);
  await carol1.subscribeAsync("sensors/#", { qos: 1 });
  await carol1.endAsync();

  await Deno.writeTextFile(acl, "pattern readwrite #\npattern deny sensors/#\n");
  await b.broker.reload();

  await pub.publishAsync("sensors/x", "after", { qos: 1 }).catch(() => {});
  await pub.publishAsync("other/x", "still", { qos: 1 });
  assert.equal((await alice.inbox.next()).topic, "other/x");
  await alice.inbox.none(200);

  // Loosen the ACL again: a removed subscription does not come back by itself.
  await Deno.writeTextFile(acl, "pattern readwrite #\n");
  await b.broker.reload();
  await using carol = await connectClient(b.port, persistent);
  const carolInbox = collect(carol);
  assert.equal(carol.connected, true);
  await pub.publishAsync("sensors/y", "later", { qos: 1 });
  await carolInbox.none(300);
  // It was removed, not merely filtered: alice's is gone as well.
  await alice.inbox.none(0);
  assert.equal(alice.inbox.messages.length, 1);
});

Deno.test("a reloaded ACL that narrows a granted subscription filters it from then on", async () => {
  const acl = await write("acl-narrow", "pattern readwrite #\n");
  await using b = await startBroker({ auth: { acl_file: acl, allow_anonymous: true } });
  await using pub = await connectClient(b.port, { clientId: "pub", username: "ops" });
  await using bob = await subscriber(b.port, "#", 1, { clientId: "bob", username: "bob" });
  await pub.publishAsync("secret/a", "before", { qos: 1 });
  assert.equal((await bob.inbox.next()).payload, "before");

  await Deno.writeTextFile(acl, "pattern readwrite #\nuser bob\ntopic deny secret/#\n");
  await b.broker.reload();
  await pub.publishAsync("secret/a", "after", { qos: 1 });
  await pub.publishAsync("public/a", "public", { qos: 1 });
  assert.equal((await bob.inbox.next()).payload, "public");
  await bob.inbox.none(200);
});

Deno.test("a removed or changed password disconnects its clients with 0x87; others stay", async () => {
  const line = async (user: string, pw: string) => `${user}:${await hashPassword(pw, 1000)}\n`;
  const alice = await line("alice", "a");
  const passwd = await write("passwd", alice + await line("bob", "b") + await line("carol", "c"));
  await using b = await startBroker({ auth: { password_file: passwd, allow_anonymous: true } });
  await using a = await connectClient(b.port, { clientId: "a", username: "alice", password: "a" });
  await using bo = await connectClient(b.port, { clientId: "b", username: "bob", password: "b" });
  await using c = await connectClient(b.port, { clientId: "c", username: "carol", password: "c" });
  await using c311 = await connectClient(b.port, {
    clientId: "c311",
    username: "carol",
    password: "c",
    protocolVersion: 4,
  });
  await using anon = await connectClient(b.port, { clientId: "anon" });
  const bobGone = serverDisconnect(bo);
  const carolGone = serverDisconnect(c);
  const carol311Gone = serverDisconnect(c311);

  // bob removed, carol's password changed, alice's line untouched.
  await Deno.writeTextFile(passwd, alice + await line("carol", "new"));
  await b.broker.reload();

  assert.equal(await bobGone, 0x87);
  assert.equal(await carolGone, 0x87);
  assert.equal(await carol311Gone, "closed");
  await delay(100);
  assert.equal(a.connected, true, "alice's entry did not change");
  assert.equal(anon.connected, true, "anonymous clients have no password to revoke");
  // carol may come back with the new password.
  await using again = await connectClient(b.port, {
    clientId: "c2",
    username: "carol",
    password: "new",
  });
  assert.equal(again.connected, true);
});

Deno.test("a reload that fails to parse revokes nothing", async () => {
  const passwd = await write("passwd-broken", `dave:${await hashPassword("d", 1000)}\n`);
  await using b = await startBroker({ auth: { password_file: passwd } });
  await using d = await connectClient(b.port, { clientId: "d", username: "dave", password: "d" });
  await Deno.writeTextFile(passwd, "dave has no hash\n");
  await b.broker.reload();
  await delay(100);
  assert.equal(d.connected, true);
});

Deno.test("a will whose topic a reloaded ACL forbids is not published", async () => {
  const acl = await write("acl-will", "pattern readwrite #\n");
  await using b = await startBroker({ auth: { acl_file: acl, allow_anonymous: true } });
  await using bob = await subscriber(b.port, "#", 1, { clientId: "bob", username: "bob" });
  const will = (user: string) => ({
    clientId: user,
    username: user,
    will: { topic: `actuators/${user}/w`, payload: Buffer.from("WILL"), qos: 1 as const },
  });
  const alice = await connectClient(b.port, will("alice"));
  const carol = await connectClient(b.port, will("carol"));

  // alice may no longer publish there; carol still may.
  await Deno.writeTextFile(acl, "pattern readwrite #\nuser alice\ntopic deny actuators/#\n");
  await b.broker.reload();
  alice.end(true); // no DISCONNECT: the will is due
  carol.end(true);
  const got = await bob.inbox.next();
  assert.equal(got.topic, "actuators/carol/w");
  await bob.inbox.none(300);
});

Deno.test("a login whose password check spans a reload that removed the user is refused", async () => {
  // A hash slow enough (hundreds of ms) that the reload lands while it is checked.
  const slow = `slow:${await hashPassword("s", 600_000)}\n`;
  const passwd = await write("passwd-race", slow);
  await using b = await startBroker({
    auth: { password_file: passwd, auth_cache_seconds: 0 },
  });
  const started = Date.now();
  const login = connectClient(b.port, { clientId: "slow", username: "slow", password: "s" });
  login.catch(() => {});
  await delay(20);
  await Deno.writeTextFile(passwd, `other:${await hashPassword("o", 1000)}\n`);
  await b.broker.reload();
  const reloadedAfter = Date.now() - started;
  await assert.rejects(login, /Bad User Name or Password|Not authorized|bad user name/i);
  assert.ok(reloadedAfter < 200, `the reload came ${reloadedAfter} ms in, maybe after the check`);
});

Deno.test("a login re-checked because the password file keeps changing is decided within the connect timeout", async () => {
  // Several entries for one password (new salts): each reload changes the user's entry, so each
  // check ends with a changed file. Without a bound the login was checked again for as long as
  // the reloads went on, past connect_timeout.
  const entries: string[] = [];
  for (let i = 0; i < 6; i++) entries.push(`slow:${await hashPassword("s", 300_000)}\n`);
  const passwd = await write("passwd-churn", entries[0]);
  await using b = await startBroker({
    auth: { password_file: passwd, auth_cache_seconds: 0 },
    limits: { connect_timeout: 1 },
  });
  const started = Date.now();
  let decidedAt = 0;
  const login = connectClient(b.port, {
    clientId: "slow",
    username: "slow",
    password: "s",
    connectTimeout: 20_000,
  }).then(
    async (c) => {
      decidedAt = Date.now() - started;
      await c.endAsync();
    },
    () => decidedAt = Date.now() - started,
  );
  for (let i = 1; decidedAt === 0 && Date.now() - started < 6000; i++) {
    await Deno.writeTextFile(passwd, entries[i % entries.length]);
    await b.broker.reload();
    await delay(30);
  }
  await login;
  assert.ok(decidedAt < 2500, `decided after ${decidedAt} ms (connect_timeout 1 s)`);
});
