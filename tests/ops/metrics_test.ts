/**
 * /metrics as Prometheus scrapes it: the counters match the traffic real MQTT clients sent.
 */
import assert from "node:assert/strict";
import { runPasswdCommand } from "../../src/cli/passwd.ts";
import { connectClient, delay, endClient, startBroker, subscriber } from "../helpers/broker.ts";
import { metric, parseMetrics, scrape, startOps } from "../helpers/ops.ts";

/** A password file with one user, alice, in a temporary directory. */
async function passwordFile(): Promise<{ path: string } & AsyncDisposable> {
  const dir = await Deno.makeTempDir({ prefix: "mcloudtt-metrics-" });
  const path = `${dir}/passwd`;
  const code = await runPasswdCommand(["-c", "--iterations", "1000", path, "alice", "right"], {
    stdout: () => {},
    stderr: () => {},
  });
  assert.equal(code, 0);
  return { path, [Symbol.asyncDispose]: () => Deno.remove(dir, { recursive: true }) };
}

/** Scrapes until `ok` holds (the broker counts after the client's packets arrive). */
async function scrapeUntil(
  url: string,
  ok: (m: Map<string, number>) => boolean,
  timeoutMs = 3000,
): Promise<Map<string, number>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const m = await scrape(url);
    if (ok(m) || Date.now() > deadline) return m;
    await delay(20);
  }
}

Deno.test("/metrics counts connections, messages per QoS, bytes, subscriptions, retained, sessions, auth failures and disconnects", async () => {
  await using pw = await passwordFile();
  // Anonymous clients are welcome; a wrong password for alice is an authentication failure.
  await using b = await startBroker({ auth: { password_file: pw.path, allow_anonymous: true } });
  await using o = await startOps(b.broker);

  const sub = await subscriber(b.port, "m/#", 2, { clientId: "metrics-sub" });
  const pub = await connectClient(b.port, { clientId: "metrics-pub" });
  for (let i = 0; i < 19; i++) await pub.publishAsync("m/zero", `${i}`, { qos: 0 });
  await pub.publishAsync("m/kept", "retained", { qos: 0, retain: true });
  for (let i = 0; i < 5; i++) await pub.publishAsync("m/one", `${i}`, { qos: 1 });
  for (let i = 0; i < 3; i++) await pub.publishAsync("m/two", `${i}`, { qos: 2 });
  for (let i = 0; i < 28; i++) await sub.inbox.next();

  await assert.rejects(
    connectClient(b.port, { clientId: "intruder", username: "alice", password: "wrong" }),
  );

  let m = await scrapeUntil(o.url, (m) => m.get('mcloudtt_messages_sent_total{qos="2"}') === 3);
  assert.equal(metric(m, 'mcloudtt_messages_received_total{qos="0"}'), 20);
  assert.equal(metric(m, 'mcloudtt_messages_received_total{qos="1"}'), 5);
  assert.equal(metric(m, 'mcloudtt_messages_received_total{qos="2"}'), 3);
  assert.equal(metric(m, 'mcloudtt_messages_sent_total{qos="0"}'), 20);
  assert.equal(metric(m, 'mcloudtt_messages_sent_total{qos="1"}'), 5);
  assert.equal(metric(m, 'mcloudtt_messages_sent_total{qos="2"}'), 3);
  assert.equal(metric(m, "mcloudtt_connects_total"), 2);
  assert.equal(metric(m, "mcloudtt_auth_failures_total"), 1);
  assert.equal(metric(m, 'mcloudtt_connections{listener="tcp"}'), 2);
  assert.equal(metric(m, 'mcloudtt_connections{listener="tls"}'), 0);
  assert.equal(metric(m, "mcloudtt_subscriptions"), 1);
  assert.equal(metric(m, "mcloudtt_retained_messages"), 1);
  assert.equal(metric(m, 'mcloudtt_sessions{state="online"}'), 2);
  assert.equal(metric(m, 'mcloudtt_sessions{state="offline"}'), 0);
  assert.equal(metric(m, "mcloudtt_queued_messages"), 0);
  // 28 PUBLISH packets of at least 7 bytes each came in and went out, plus CONNECT/SUBSCRIBE.
  assert.ok(metric(m, "mcloudtt_bytes_received_total") > 28 * 7);
  assert.ok(metric(m, "mcloudtt_bytes_sent_total") > 28 * 7);
  // One message in 16 is timed: 28 messages to one subscriber give at least one sample.
  const samples = metric(m, "mcloudtt_publish_latency_seconds_count");
  assert.ok(samples >= 1, `latency samples: ${samples}`);
  assert.equal(metric(m, 'mcloudtt_publish_latency_seconds_bucket{le="+Inf"}'), samples);
  assert.ok(metric(m, "process_resident_memory_bytes") > 1_000_000);
  assert.ok(metric(m, "mcloudtt_heap_used_bytes") > 0);
  assert.ok(metric(m, "mcloudtt_event_loop_lag_seconds") >= 0);

  await endClient(pub);
  m = await scrapeUntil(o.url, (m) => m.get('mcloudtt_disconnects_total{reason="0x00"}') === 1);
  assert.equal(metric(m, 'mcloudtt_disconnects_total{reason="0x00"}'), 1);
  assert.equal(metric(m, 'mcloudtt_connections{listener="tcp"}'), 1);
  assert.equal(metric(m, 'mcloudtt_sessions{state="online"}'), 1);

  sub.stream.destroy();
  m = await scrapeUntil(
    o.url,
    (m) => m.get('mcloudtt_disconnects_total{reason="connection_lost"}') === 1,
  );
  assert.equal(metric(m, 'mcloudtt_disconnects_total{reason="connection_lost"}'), 1);
  assert.equal(metric(m, 'mcloudtt_connections{listener="tcp"}'), 0);
  await endClient(sub, true);
});

Deno.test("QoS 1 messages queued for an offline session show as offline session and queued messages", async () => {
  await using b = await startBroker();
  await using o = await startOps(b.broker);
  const sub = await connectClient(b.port, {
    clientId: "metrics-offline",
    clean: false,
    properties: { sessionExpiryInterval: 60 },
  });
  await sub.subscribeAsync("q/#", { qos: 1 });
  await endClient(sub);
  const pub = await connectClient(b.port, { clientId: "metrics-pub2" });
  for (let i = 0; i < 4; i++) await pub.publishAsync("q/x", `${i}`, { qos: 1 });
  await endClient(pub);
  const m = await scrape(o.url);
  assert.equal(metric(m, 'mcloudtt_sessions{state="offline"}'), 1);
  assert.equal(metric(m, "mcloudtt_queued_messages"), 4);
});

Deno.test("/healthz and /readyz answer 200 while the broker runs; unknown paths 404", async () => {
  await using b = await startBroker();
  await using o = await startOps(b.broker);
  const health = await fetch(`${o.url}/healthz`);
  assert.equal(health.status, 200);
  assert.deepEqual(await health.json(), { status: "ok" });
  const ready = await fetch(`${o.url}/readyz`);
  assert.equal(ready.status, 200);
  assert.deepEqual(await ready.json(), { status: "ready" });
  const missing = await fetch(`${o.url}/nope`);
  assert.equal(missing.status, 404);
  await missing.body?.cancel();
});

Deno.test("a malformed Host header does not matter: the request target decides", async () => {
  await using b = await startBroker();
  await using o = await startOps(b.broker);
  const port = Number(new URL(o.url).port);
  for (const host of ["a b", "[::", "a:99999", "%", "a/b"]) {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    try {
      await conn.write(new TextEncoder().encode(`GET /healthz HTTP/1.1\r\nHost: ${host}\r\n\r\n`));
      const buf = new Uint8Array(1024);
      const n = await conn.read(buf);
      const head = new TextDecoder().decode(buf.subarray(0, n ?? 0));
      assert.match(head, /^HTTP\/1\.1 200/, `Host: ${host} got ${head.split("\r\n")[0]}`);
    } finally {
      conn.close();
    }
  }
});

Deno.test("/readyz answers 503 naming the listener that is down once the broker stopped", async () => {
  const b = await startBroker();
  await using o = await startOps(b.broker);
  await b.stop();
  const res = await fetch(`${o.url}/readyz`);
  assert.equal(res.status, 503);
  const body = await res.json();
  assert.equal(body.status, "not ready");
  assert.deepEqual(body.problems, ["listener tcp (tcp) is not listening"]);
});

Deno.test("the Prometheus parser of the tests rejects lines that are not samples", () => {
  assert.throws(() => parseMetrics('mcloudtt_x{a="b"} 1 2 3 4\n'));
  assert.deepEqual([...parseMetrics('# HELP x y\nx{a="b"} 2\n')], [['x{a="b"}', 2]]);
});

Deno.test("/metrics counts an embedder's Authenticator refusals and the retained and subscription limits' refusals", async () => {
  // Refuses every user called "mallory"; welcomes the rest.
  const picky = {
    authenticate: (req: { username?: string }) =>
      req.username === "mallory"
        ? { ok: false as const, reasonCode: 0x86, reason: "bad user name or password" }
        : { ok: true as const, username: req.username },
  };
  await using b = await startBroker(
    { limits: { max_retained_messages: 1, max_subscriptions: 1 } },
    { authenticator: picky },
  );
  await using o = await startOps(b.broker);
  await assert.rejects(connectClient(b.port, { clientId: "m1", username: "mallory" }));
  await assert.rejects(connectClient(b.port, { clientId: "m2", username: "mallory" }));
  const c = await connectClient(b.port, { clientId: "ok", username: "alice" });
  await c.publishAsync("r/1", "kept", { qos: 1, retain: true });
  // The store holds one retained message: the second is refused with 0x97.
  await assert.rejects(c.publishAsync("r/2", "refused", { qos: 1, retain: true }));
  await c.subscribeAsync("s/1", { qos: 0 });
  await assert.rejects(c.subscribeAsync("s/2", { qos: 0 }), /Quota exceeded/);
  const m = await scrapeUntil(o.url, (m) => m.get("mcloudtt_subscriptions_refused_total") === 1);
  assert.equal(metric(m, "mcloudtt_auth_failures_total"), 2);
  assert.equal(metric(m, "mcloudtt_auth_busy_total"), 0);
  assert.equal(metric(m, "mcloudtt_retained_refused_total"), 1);
  assert.equal(metric(m, "mcloudtt_subscriptions_refused_total"), 1);
  await endClient(c);
});

Deno.test("mcloudtt_sessions stays exact through takeovers, clean starts, expiry and ends", async () => {
  await using b = await startBroker();
  await using o = await startOps(b.broker);
  const sessions = async (online: number, offline: number, step: string) => {
    const m = await scrapeUntil(
      o.url,
      (m) =>
        m.get('mcloudtt_sessions{state="online"}') === online &&
        m.get('mcloudtt_sessions{state="offline"}') === offline,
    );
    assert.deepEqual(
      [
        metric(m, 'mcloudtt_sessions{state="online"}'),
        metric(m, 'mcloudtt_sessions{state="offline"}'),
      ],
      [online, offline],
      step,
    );
  };
  const keep = { clean: false, properties: { sessionExpiryInterval: 60 } };
  const first = await connectClient(b.port, { clientId: "g1", ...keep, reconnectPeriod: 0 });
  await sessions(1, 0, "connected");
  // The same client id again: the session moves to the new connection (still one online).
  const second = await connectClient(b.port, { clientId: "g1", ...keep, reconnectPeriod: 0 });
  await sessions(1, 0, "taken over, session resumed");
  const third = await connectClient(b.port, { clientId: "g1", clean: true, reconnectPeriod: 0 });
  await sessions(1, 0, "taken over with a clean start");
  await endClient(third);
  await sessions(0, 0, "ended: no expiry");
  const kept = await connectClient(b.port, { clientId: "g2", ...keep });
  await endClient(kept);
  await sessions(0, 1, "offline, kept for its expiry");
  const short = await connectClient(b.port, {
    clientId: "g3",
    clean: false,
    properties: { sessionExpiryInterval: 1 },
  });
  const other = await connectClient(b.port, { clientId: "g4" });
  await sessions(2, 1, "two online, one offline");
  await endClient(short);
  await sessions(1, 2, "g3 offline");
  // g3's expiry passes; g2 comes back.
  await delay(1600);
  const back = await connectClient(b.port, { clientId: "g2", ...keep });
  await sessions(2, 0, "g3 expired, g2 back");
  await endClient(back, true);
  await endClient(other, true);
  first.end(true);
  second.end(true);
});
