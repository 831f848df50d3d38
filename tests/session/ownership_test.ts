/**
 * A session belongs to the user who created it: another user who connects
 * with the same client id is refused (MQTT 5: CONNACK 0x87; 3.1.1: return
 * code 5), and the owner's session and connection are untouched.
 */
import assert from "node:assert/strict";
import { collect, connectClient, delay, RawClient, startBroker } from "../helpers/broker.ts";
import { metric, scrape, startOps } from "../helpers/ops.ts";

Deno.test("another user cannot resume or take over a session: CONNACK 0x87, owner untouched", async () => {
  await using b = await startBroker();
  await using alice = await connectClient(b.port, {
    clientId: "shared-id",
    username: "alice",
    clean: false,
    properties: { sessionExpiryInterval: 300 },
  });
  const inbox = collect(alice);
  await alice.subscribeAsync("private/alice", { qos: 1 });

  const mallory = await RawClient.connect(b.port, 5);
  await mallory.sendPacket({
    cmd: "connect",
    protocolVersion: 5,
    clientId: "shared-id",
    username: "mallory",
    clean: false,
    keepalive: 60,
    properties: { sessionExpiryInterval: 300 },
  });
  const ack = await mallory.expect("connack");
  assert.equal(ack.reasonCode, 0x87);
  assert.equal(ack.sessionPresent, false);
  await mallory.expectClosed();
  // One refused CONNECT, counted once (it was counted twice).
  await using ops = await startOps(b.broker);
  assert.equal(metric(await scrape(ops.url), "mcloudtt_connects_refused_total"), 1);

  // Alice is still connected and still receives on her session.
  assert.equal(alice.connected, true);
  await using pub = await connectClient(b.port, { clientId: "pub", username: "alice" });
  await pub.publishAsync("private/alice", "still mine", { qos: 1 });
  assert.equal((await inbox.next()).payload, "still mine");
});

Deno.test("an offline session's queued messages never reach another user", async () => {
  await using b = await startBroker();
  const alice = await connectClient(b.port, {
    clientId: "dev-1",
    username: "alice",
    clean: false,
    properties: { sessionExpiryInterval: 300 },
  });
  await alice.subscribeAsync("private/#", { qos: 1 });
  alice.end(true);
  await delay(50);
  await using pub = await connectClient(b.port, { clientId: "pub", username: "alice" });
  await pub.publishAsync("private/x", "queued for alice", { qos: 1 });

  // 3.1.1 refusal: return code 5 (not authorized).
  const bob = await RawClient.connect(b.port, 4);
  await bob.sendPacket({
    cmd: "connect",
    protocolVersion: 4,
    clientId: "dev-1",
    username: "bob",
    clean: false,
    keepalive: 60,
  }, 4);
  const ack = await bob.expect("connack");
  assert.equal(ack.returnCode, 5);
  await bob.expectClosed();

  // The owner resumes and gets the queued message.
  const again = await RawClient.connect(b.port, 5);
  const ok = await again.handshake("dev-1", 5, {
    username: "alice",
    clean: false,
    properties: { sessionExpiryInterval: 300 },
  });
  assert.equal(ok.sessionPresent, true);
  const msg = await again.expect("publish");
  assert.equal(new TextDecoder().decode(msg.payload as Uint8Array), "queued for alice");
  await again.sendPacket({ cmd: "disconnect" });
});

Deno.test("a clean start by another user does not discard the owner's session", async () => {
  await using b = await startBroker();
  const alice = await connectClient(b.port, {
    clientId: "dev-2",
    username: "alice",
    clean: false,
    properties: { sessionExpiryInterval: 300 },
  });
  await alice.subscribeAsync("t/#", { qos: 1 });
  alice.end(true);
  await delay(50);
  await assert.rejects(
    connectClient(b.port, { clientId: "dev-2", username: "bob", clean: true }),
    /Not authorized/i,
  );
  const back = await connectClient(b.port, {
    clientId: "dev-2",
    username: "alice",
    clean: false,
    properties: { sessionExpiryInterval: 300 },
  });
  await using _ = back;
  // Session Present: the subscription survived the stranger's clean start.
  const inbox = collect(back);
  await using pub = await connectClient(b.port, { clientId: "pub2" });
  await pub.publishAsync("t/1", "hi", { qos: 1 });
  assert.equal((await inbox.next()).payload, "hi");
});

Deno.test("assigned client ids are random, not a counter", async () => {
  await using b = await startBroker();
  const ids: string[] = [];
  for (let i = 0; i < 3; i++) {
    const c = await RawClient.connect(b.port, 5);
    const ack = await c.handshake("", 5);
    const props = ack.properties as { assignedClientIdentifier?: string };
    ids.push(props.assignedClientIdentifier!);
    await c.sendPacket({ cmd: "disconnect" });
    await c.expectClosed();
  }
  assert.equal(new Set(ids).size, 3);
  for (const id of ids) {
    assert.match(id, /[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}/);
  }
});
