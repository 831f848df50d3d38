/**
 * Errors that reach the top: a throw while handling one connection closes only that connection
 * (DISCONNECT 0x83) and is counted; an error no handler catches ends the process with status 1.
 */
import assert from "node:assert/strict";
import type { Authenticator, Authorizer } from "../../mod.ts";
import { connectClient, endClient, RawClient, startBroker, subscriber } from "../helpers/broker.ts";
import { metric, scrape, startOps } from "../helpers/ops.ts";

/** An authorizer with a bug that only client "buggy" trips over. */
const buggyAuthorizer: Authorizer = {
  canPublish: () => true,
  canSubscribe: (ctx) => {
    if (ctx.clientId === "buggy") throw new TypeError("cannot read properties of undefined");
    return true;
  },
};

/** An authenticator that throws for one client. */
const buggyAuthenticator: Authenticator = {
  authenticate: (req) => {
    if (req.clientId === "buggy-connect") throw new Error("user store unreachable");
    return { ok: true, username: req.username };
  },
};

Deno.test("an exception in one connection's SUBSCRIBE closes only that connection with DISCONNECT 0x83", async () => {
  await using b = await startBroker({}, { authorizer: buggyAuthorizer });
  await using o = await startOps(b.broker);
  const bystander = await subscriber(b.port, "e/#", 1, { clientId: "bystander" });

  await using buggy = await RawClient.connect(b.port, 5);
  await buggy.handshake("buggy");
  await buggy.sendPacket({
    cmd: "subscribe",
    messageId: 1,
    subscriptions: [{ topic: "e/#", qos: 0 }],
  });
  const d = await buggy.expect("disconnect");
  assert.equal(d.reasonCode, 0x83);
  await buggy.expectClosed();

  // The broker and the other client carry on.
  const pub = await connectClient(b.port, { clientId: "publisher" });
  await pub.publishAsync("e/after", "still here", { qos: 1 });
  assert.equal((await bystander.inbox.next()).payload, "still here");
  const m = await scrape(o.url);
  assert.equal(metric(m, "mcloudtt_internal_errors_total"), 1);
  assert.equal(metric(m, 'mcloudtt_disconnects_total{reason="0x83"}'), 1);
  await endClient(pub);
  await endClient(bystander);
});

Deno.test("an authenticator that throws refuses that client with CONNACK 0x83, others connect", async () => {
  await using b = await startBroker({}, { authenticator: buggyAuthenticator });
  await using raw = await RawClient.connect(b.port, 5);
  await raw.sendPacket({
    cmd: "connect",
    protocolId: "MQTT",
    protocolVersion: 5,
    clientId: "buggy-connect",
    clean: true,
    keepalive: 30,
  });
  const ack = await raw.expect("connack");
  assert.equal(ack.reasonCode, 0x83);
  await raw.expectClosed();
  const fine = await connectClient(b.port, { clientId: "fine" });
  await endClient(fine);
  assert.equal(b.broker.metrics.internalErrors, 1);
});

for (const kind of ["sync", "async"]) {
  Deno.test(`an error no handler catches (${kind}) is logged and the process exits 1`, async () => {
    const fixture = new URL("./fixtures/throw_later.ts", import.meta.url).pathname;
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--quiet", fixture, kind],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 1, stderr);
    const lines = stderr.trim().split("\n").map((l) => JSON.parse(l));
    assert.equal(lines.length, 1, stderr);
    assert.equal(lines[0].level, "fatal");
    assert.match(lines[0].message, kind === "sync" ? /escaped error/ : /escaped rejection/);
  });
}
