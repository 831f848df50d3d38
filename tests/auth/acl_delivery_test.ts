/**
 * The ACL decides what a subscriber receives, not only what it may subscribe to: with
 * `pattern deny secret/#` and `pattern readwrite #`, subscriptions to `#`, `+/x` and `+/+` are
 * granted and messages on `secret/...` are held back at delivery (live, retained and via share
 * groups), as Mosquitto and EMQX users expect.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import mqttPacket from "mqtt-packet";
import { collect, connectClient, RawClient, startBroker } from "../helpers/broker.ts";
import { concatBytes } from "../helpers/wire.ts";

const dir = await Deno.makeTempDir({ prefix: "mcloudtt-acl-delivery-" });
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));

const aclFile = join(dir, "acl");
await Deno.writeTextFile(
  aclFile,
  `pattern readwrite #
pattern deny secret/#
user spy
topic read secret/#
user alice
topic read sensors/+/temp
`,
);

/** A broker with that ACL; anonymous clients may connect (usernames are labels for the ACL). */
function aclBroker() {
  return startBroker({ auth: { acl_file: aclFile, allow_anonymous: true } });
}

Deno.test("wide subscriptions are granted and denied topics are filtered at delivery", async () => {
  await using b = await aclBroker();
  await using sub = await connectClient(b.port, { clientId: "sub", username: "bob" });
  await using pub = await connectClient(b.port, { clientId: "pub", username: "bob" });
  const inbox = collect(sub);
  const granted = await sub.subscribeAsync(["#", "+/x", "+/+"], { qos: 1 });
  assert.deepEqual(granted.map((g) => g.qos), [1, 1, 1]);
  // A filter all of whose topics are denied is still refused.
  const refused = await sub.subscribeAsync("secret/#", { qos: 1 }).catch((e) => e.packet.granted);
  assert.deepEqual(refused, [0x87]);

  // Denied to bob: no PUBACK success for the publish either, and nothing delivered.
  await pub.publishAsync("secret/x", "hidden", { qos: 1 }).catch(() => {});
  await pub.publishAsync("public/x", "visible", { qos: 1 });
  const first = await inbox.next();
  assert.equal(first.topic, "public/x");
  assert.equal(first.payload, "visible");
  await inbox.none(300);
  assert.deepEqual(inbox.messages.map((m) => m.topic), ["public/x"]);
});

Deno.test("a filter wider than the read rule receives only what the rule allows", async () => {
  const file = join(dir, "acl-narrow");
  await Deno.writeTextFile(
    file,
    "user alice\ntopic read sensors/+/temp\nuser pub\ntopic write #\n",
  );
  await using b = await startBroker({ auth: { acl_file: file, allow_anonymous: true } });
  await using alice = await connectClient(b.port, { clientId: "alice", username: "alice" });
  await using pub = await connectClient(b.port, { clientId: "pub", username: "pub" });
  const inbox = collect(alice);
  await alice.subscribeAsync("sensors/#", { qos: 1 });
  // No read rule touches other/#: refused.
  const refused = await alice.subscribeAsync("other/#", { qos: 1 }).catch((e) => e.packet.granted);
  assert.deepEqual(refused, [0x87]);
  for (const t of ["sensors/a/humidity", "sensors/a/temp", "sensors/a/temp/raw", "sensors"]) {
    await pub.publishAsync(t, t, { qos: 1 });
  }
  assert.equal((await inbox.next()).topic, "sensors/a/temp");
  await inbox.none(200);
});

Deno.test("retained messages on denied topics are not handed to a wide subscription", async () => {
  const file = join(dir, "acl-retained");
  await Deno.writeTextFile(file, "pattern readwrite #\nuser bob\ntopic deny secret/#\n");
  await using b = await startBroker({ auth: { acl_file: file, allow_anonymous: true } });
  await using ops = await connectClient(b.port, { clientId: "ops", username: "ops" });
  await ops.publishAsync("secret/k", "s", { qos: 1, retain: true });
  await ops.publishAsync("open/k", "o", { qos: 1, retain: true });
  await using bob = await connectClient(b.port, { clientId: "bob", username: "bob" });
  await using carol = await connectClient(b.port, { clientId: "carol", username: "carol" });
  const bobInbox = collect(bob);
  const carolInbox = collect(carol);
  await bob.subscribeAsync("#", { qos: 1 });
  await carol.subscribeAsync("#", { qos: 1 });
  assert.equal((await bobInbox.next()).topic, "open/k");
  const carolGot = [(await carolInbox.next()).topic, (await carolInbox.next()).topic];
  assert.deepEqual(carolGot.sort(), ["open/k", "secret/k"]);
  await bobInbox.none(200);
});

Deno.test("share groups deliver a message to a member allowed to read it", async () => {
  const file = join(dir, "acl-share");
  await Deno.writeTextFile(
    file,
    "pattern readwrite #\nuser bob\ntopic deny jobs/private/#\n",
  );
  await using b = await startBroker({ auth: { acl_file: file, allow_anonymous: true } });
  await using bob = await connectClient(b.port, { clientId: "bob", username: "bob" });
  await using carol = await connectClient(b.port, { clientId: "carol", username: "carol" });
  await using pub = await connectClient(b.port, { clientId: "pub", username: "carol" });
  const bobInbox = collect(bob);
  const carolInbox = collect(carol);
  await bob.subscribeAsync("$share/g/jobs/#", { qos: 1 });
  await carol.subscribeAsync("$share/g/jobs/#", { qos: 1 });
  for (let i = 0; i < 4; i++) await pub.publishAsync("jobs/private/x", `p${i}`, { qos: 1 });
  for (let i = 0; i < 4; i++) await pub.publishAsync("jobs/open/x", `o${i}`, { qos: 1 });
  await carolInbox.none(300);
  const carolGot = carolInbox.messages.map((m) => m.payload);
  const bobGot = bobInbox.messages.map((m) => m.payload);
  // Every private job went to carol; open jobs are spread over both; each job once.
  for (let i = 0; i < 4; i++) assert.ok(carolGot.includes(`p${i}`), `p${i} not at carol`);
  assert.ok(bobGot.every((p) => p.startsWith("o")), JSON.stringify(bobGot));
  assert.equal(carolGot.length + bobGot.length, 8);
});

Deno.test("MQTT 3.1.1: SUBSCRIBE # is granted under a deny rule (raw SUBACK)", async () => {
  await using b = await aclBroker();
  await using c = await RawClient.connect(b.port, 4);
  await c.handshake("raw-311", 4, { username: "bob" });
  await c.sendPacket({
    cmd: "subscribe",
    messageId: 1,
    subscriptions: [{ topic: "#", qos: 1 }, { topic: "secret/#", qos: 1 }],
  }, 4);
  const ack = await c.expect("suback");
  assert.deepEqual(ack.granted, [1, 0x80]);
});

Deno.test("refused QoS 1 publishes are acknowledged in PUBLISH order, behind those waiting for the store [MQTT-4.6.0-2]", async () => {
  // Accepted retained publishes wait for their store write (storage.sync = ack-after-write);
  // a refusal needs none but must not overtake them.
  const data = join(dir, "store-order");
  await using b = await startBroker({
    auth: { acl_file: aclFile, allow_anonymous: true },
    storage: { enabled: true, dir: data },
  });
  for (const level of [4, 5] as const) {
    await using c = await RawClient.connect(b.port, level);
    await c.handshake(`order-${level}`, level);
    const burst: Uint8Array[] = [];
    const gen = (p: Record<string, unknown>) =>
      new Uint8Array(
        mqttPacket.generate(p as unknown as mqttPacket.Packet, { protocolVersion: level }),
      );
    for (let i = 1; i <= 5; i++) {
      burst.push(
        gen({
          cmd: "publish",
          topic: `ok/${i}`,
          payload: "m",
          qos: 1,
          retain: true,
          messageId: 2 * i - 1,
        }),
      );
      burst.push(
        gen({ cmd: "publish", topic: "secret/x", payload: "no", qos: 1, messageId: 2 * i }),
      );
    }
    // One write: the refusals are read in the same turn as the publishes still being stored.
    await c.send(concatBytes(burst));
    const ids: number[] = [];
    for (let i = 0; i < 10; i++) ids.push((await c.expect("puback")).messageId as number);
    assert.deepEqual(ids, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], `MQTT ${level === 5 ? 5 : "3.1.1"}`);
  }
});
