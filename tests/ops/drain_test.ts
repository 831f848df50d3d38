/**
 * Graceful stop as an orchestrator drives it: on SIGTERM /readyz turns 503 first, and only after
 * the drain delay do clients get DISCONNECT 0x8B (Server shutting down).
 */
import assert from "node:assert/strict";
import { delay, freePort, RawClient } from "../helpers/broker.ts";
import { copyProject, startMain } from "../helpers/main_process.ts";

Deno.test("SIGTERM: /readyz answers 503 before clients get DISCONNECT 0x8B, then exit 0", async () => {
  const dir = await Deno.makeTempDir({ prefix: "mcloudtt-drain-" });
  try {
    await copyProject(dir);
    const tcp = freePort();
    const http = freePort();
    await using broker = startMain(
      dir,
      [
        "--general.secure=false",
        "--general.websocket=false",
        "--general.bind=127.0.0.1",
        `--ports.tcp=${tcp}`,
        "--http.bind=127.0.0.1",
        `--http.port=${http}`,
      ],
      "main.ts",
      { MCLOUDTT_GENERAL_DRAIN_DELAY: "1" },
    );
    await broker.waitFor(/HTTP endpoint .* on 127\.0\.0\.1:\d+/);
    const url = `http://127.0.0.1:${http}/readyz`;
    assert.equal((await fetch(url).then(async (r) => (await r.body?.cancel(), r))).status, 200);

    await using client = await RawClient.connect(tcp, 5);
    await client.handshake("drain-client");
    let disconnectedAt = 0;
    const disconnect = client.expect("disconnect", 10_000).then((p) => {
      disconnectedAt = performance.now();
      return p;
    });

    broker.child.kill("SIGTERM");
    let notReadyAt = 0;
    let body: { status: string; problems: string[] } | null = null;
    while (notReadyAt === 0 && disconnectedAt === 0) {
      const res = await fetch(url).catch(() => null);
      if (res !== null && res.status === 503) {
        notReadyAt = performance.now();
        body = await res.json();
      } else {
        await res?.body?.cancel();
        await delay(20);
      }
    }
    const packet = await disconnect;
    assert.ok(notReadyAt > 0, "/readyz never answered 503 before the clients were disconnected");
    assert.ok(notReadyAt < disconnectedAt);
    assert.equal(body!.status, "not ready");
    assert.match(body!.problems[0], /draining/);
    assert.equal(packet.reasonCode, 0x8b);
    // The drain delay (1 s) separates the two.
    assert.ok(disconnectedAt - notReadyAt > 500, `${disconnectedAt - notReadyAt} ms apart`);
    assert.equal((await broker.status).code, 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("SIGTERM while starting (listeners already up) stops gracefully once started: exit 0", async () => {
  const dir = await Deno.makeTempDir({ prefix: "mcloudtt-drain-" });
  try {
    await copyProject(dir);
    await using broker = startMain(dir, [
      "--general.secure=false",
      "--general.websocket=false",
      "--general.bind=127.0.0.1",
      `--ports.tcp=${freePort()}`,
      "--http.bind=127.0.0.1",
    ]);
    // Printed by the listener as it comes up, before the HTTP endpoint and the rest of start-up.
    await broker.waitFor(/listening for MQTT over tcp/);
    broker.child.kill("SIGTERM");
    const status = await broker.status;
    assert.equal(status.signal, null, `killed by ${status.signal}:\n${broker.stderr()}`);
    assert.equal(status.code, 0, broker.stderr());
    assert.match(broker.stderr(), /SIGTERM received/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a second signal during the drain delay stops the broker at once", async () => {
  const dir = await Deno.makeTempDir({ prefix: "mcloudtt-drain-" });
  try {
    await copyProject(dir);
    await using broker = startMain(
      dir,
      [
        "--general.secure=false",
        "--general.websocket=false",
        "--general.bind=127.0.0.1",
        `--ports.tcp=${freePort()}`,
        "--http.bind=127.0.0.1",
      ],
      "main.ts",
      { MCLOUDTT_GENERAL_DRAIN_DELAY: "30" },
    );
    await broker.waitFor(/HTTP endpoint .* on 127\.0\.0\.1:\d+/);
    broker.child.kill("SIGTERM");
    await broker.waitFor(/SIGTERM received/);
    const second = performance.now();
    broker.child.kill("SIGINT");
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<null>((r) => timer = setTimeout(() => r(null), 4000));
    const status = await Promise.race([broker.status, late]);
    clearTimeout(timer);
    assert.ok(status !== null, "still draining 4 s after the second signal");
    assert.equal(status.code, 0);
    assert.ok(performance.now() - second < 4000);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
