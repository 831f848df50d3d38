/**
 * Authentication cannot be used to starve the broker: password checks (PBKDF2 at the production
 * iteration count, ~100 ms of a core each) are bounded by [auth] max_concurrent_auth and
 * max_auth_queue, waiting is bounded by the connect timeout, a successful check is cached, and
 * refusals are counted.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { join } from "node:path";
import { hashPassword } from "../../src/auth/passwords.ts";
import { connectClient, delay, RawClient, startBroker } from "../helpers/broker.ts";

const dir = await Deno.makeTempDir({ prefix: "mcloudtt-auth-flood-" });
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));

// The production iteration count: the point is what real PBKDF2 costs.
const passwordFile = join(dir, "passwd");
await Deno.writeTextFile(
  passwordFile,
  `alice:${await hashPassword("alice-secret")}\nbob:${await hashPassword("bob-secret")}\n`,
);

/** Opens `n` raw connections that each send a CONNECT with a wrong password. */
async function flood(port: number, n: number, protocolVersion: 4 | 5 = 5): Promise<RawClient[]> {
  const clients = await Promise.all(
    Array.from({ length: n }, () => RawClient.connect(port, protocolVersion)),
  );
  await Promise.all(clients.map((c, i) =>
    c.sendPacket({
      cmd: "connect",
      protocolId: "MQTT",
      protocolVersion,
      clientId: `bogus-${i}`,
      clean: true,
      keepalive: 60,
      username: i % 2 === 0 ? "alice" : `nobody-${i}`,
      password: Buffer.from(`guess-${i}`),
    }, protocolVersion)
  ));
  return clients;
}

/** The CONNACK code each raw client got (reason code in 5, return code in 3.1.1). */
function connackCodes(clients: RawClient[], timeoutMs: number): Promise<number[]> {
  return Promise.all(clients.map(async (c) => {
    const ack = await c.expect("connack", timeoutMs);
    return (ack.reasonCode ?? ack.returnCode) as number;
  }));
}

/** Milliseconds from starting an MQTT.js connection to its CONNACK. */
async function timeToConnack(port: number, username: string, password: string): Promise<number> {
  const t0 = performance.now();
  const client = await connectClient(port, {
    clientId: `good-${crypto.randomUUID()}`,
    username,
    password,
    connectTimeout: 30_000,
  });
  const ms = performance.now() - t0;
  await client.endAsync();
  return ms;
}

Deno.test("a flood of 100 bad logins does not delay a good client's CONNACK", async () => {
  await using b = await startBroker({
    auth: { password_file: passwordFile, auth_cache_seconds: 0 },
  });
  const quiet = await timeToConnack(b.port, "bob", "bob-secret");

  const bogus = await flood(b.port, 100);
  // Let every bogus CONNECT reach the broker and its password check start or queue.
  await delay(100);
  const flooded = await timeToConnack(b.port, "bob", "bob-secret");
  console.log(
    `CONNACK for a good login: ${quiet.toFixed(0)} ms alone, ${flooded.toFixed(0)} ms ` +
      `behind 100 bad logins`,
  );
  // Unbounded, the good check shares the cores with 100 others: ~5 s (~50 checks' time).
  // Bounded: a check or two. The bound allows for a machine so loaded that one check is slow.
  const bound = Math.max(1500, 6 * quiet);
  assert.ok(flooded < bound, `good CONNACK took ${flooded.toFixed(0)} ms during the flood`);

  // Every bad login gets an answer: 0x86 once checked, 0x89 when the queue overflowed.
  const codes = await connackCodes(bogus, 20_000);
  const busy = codes.filter((c) => c === 0x89).length;
  const bad = codes.filter((c) => c === 0x86).length;
  console.log(`bad logins: ${bad} refused 0x86 after a check, ${busy} refused 0x89 busy`);
  assert.equal(busy + bad, 100, `unexpected codes ${JSON.stringify(codes)}`);
  // 100 - 2 running - 64 waiting (the defaults) could not even queue.
  assert.ok(busy >= 30, `only ${busy} busy refusals`);
  assert.equal(b.broker.metrics.authBusy, busy);
  assert.equal(b.broker.metrics.authFailures, bad);
  for (const c of bogus) c.close();
});

Deno.test("a CONNECT still waiting for its password check at the connect timeout gets Server busy", async () => {
  await using b = await startBroker({
    limits: { connect_timeout: 1 },
    auth: { password_file: passwordFile, max_concurrent_auth: 1, max_auth_queue: 1000 },
  });
  const t0 = performance.now();
  // One check at a time at ~100 ms each: 30 need ~3 s, so the later ones outlive the timeout.
  const bogus = await flood(b.port, 30);
  const codes = await connackCodes(bogus, 10_000);
  const elapsed = performance.now() - t0;
  const busy = codes.filter((c) => c === 0x89).length;
  console.log(`connect_timeout 1 s: ${busy} of 30 refused busy, all answered in ${elapsed} ms`);
  assert.ok(busy > 0, "no CONNECT was refused at the timeout");
  assert.ok(codes.every((c) => c === 0x86 || c === 0x89));
  // Nobody waits much beyond the timeout (plus the one check that was running).
  assert.ok(elapsed < 2500, `answers took ${elapsed.toFixed(0)} ms`);
  for (const c of bogus) c.close();
});

Deno.test("MQTT 3.1.1 clients refused for a full auth queue get return code 3", async () => {
  await using b = await startBroker({
    auth: { password_file: passwordFile, max_concurrent_auth: 1, max_auth_queue: 0 },
  });
  const bogus = await flood(b.port, 5, 4);
  const codes = await connackCodes(bogus, 5000);
  // One check runs (return code 4, bad user name or password); the others find no room.
  assert.deepEqual(codes.toSorted(), [3, 3, 3, 3, 4]);
  for (const c of bogus) c.close();
});

Deno.test("a successful check is cached: reconnecting skips PBKDF2 even during a flood", async () => {
  await using b = await startBroker({
    auth: { password_file: passwordFile, max_concurrent_auth: 1, max_auth_queue: 1000 },
  });
  await timeToConnack(b.port, "bob", "bob-secret");
  const bogus = await flood(b.port, 40);
  await delay(100);
  // Bob is not queued behind 40 checks at one at a time (~4 s): the cache answers.
  const again = await timeToConnack(b.port, "bob", "bob-secret");
  console.log(`cached reconnect during a flood of 40 at concurrency 1: ${again.toFixed(0)} ms`);
  assert.ok(again < 1000, `cached reconnect took ${again.toFixed(0)} ms`);
  // A wrong password for bob is not answered from the cache.
  const wrong = await connectClient(b.port, { username: "bob", password: "nope" }).then(
    () => "connected",
    (e) => (e as { code: number }).code,
  );
  assert.equal(wrong, 0x86);
  for (const c of bogus) c.close();
});

Deno.test("a changed password file invalidates cached checks at once", async () => {
  const file = join(dir, "passwd-change");
  await Deno.writeTextFile(file, `carol:${await hashPassword("old", 1000)}\n`);
  await using b = await startBroker({ auth: { password_file: file, auth_cache_seconds: 3600 } });
  await using first = await connectClient(b.port, { username: "carol", password: "old" });
  assert.ok(first.connected);
  await Deno.writeTextFile(file, `carol:${await hashPassword("new", 1000)}\n`);
  await b.broker.reload();
  const old = await connectClient(b.port, { username: "carol", password: "old" }).then(
    () => "connected",
    (e) => (e as { code: number }).code,
  );
  assert.equal(old, 0x86, "the cached old password must not be accepted after the change");
  await using second = await connectClient(b.port, { username: "carol", password: "new" });
  assert.ok(second.connected);
});
