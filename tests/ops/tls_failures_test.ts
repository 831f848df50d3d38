/**
 * A failed TLS handshake is logged at info with the peer's address and the reason, and counted in
 * mcloudtt_tls_handshake_failures_total, on both TLS listeners (MQTT over TLS, secure WebSocket).
 */
import assert from "node:assert/strict";
import { setupLogging } from "../../src/ops/log.ts";
import { delay, startSecureBroker } from "../helpers/broker.ts";
import { makeTestPki } from "../helpers/certs.ts";
import { metric, scrape, startOps } from "../helpers/ops.ts";

// Each test module runs in its own isolate: configuring logtape here affects this file only.
const lines: Record<string, unknown>[] = [];
await setupLogging({ level: "info", format: "json", write: (l) => lines.push(JSON.parse(l)) });

const dir = await Deno.makeTempDir({ prefix: "mcloudtt-tlsfail-" });
const pki = await makeTestPki(dir);
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));

/** Speaks plain text to a TLS port: the handshake cannot succeed. Returns our local address. */
async function notTls(port: number): Promise<string> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const local = conn.localAddr as Deno.NetAddr;
  await conn.write(new TextEncoder().encode("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
  const buf = new Uint8Array(1024);
  try {
    while ((await conn.read(buf)) !== null) { /* until the broker closes */ }
  } catch {
    // reset
  }
  conn.close();
  return `${local.hostname}:${local.port}`;
}

Deno.test("failed TLS handshakes are logged with peer address and reason, and counted", async () => {
  await using b = await startSecureBroker(pki);
  await using o = await startOps(b.broker);
  const peers = [await notTls(b.tlsPort), await notTls(b.wssPort)];
  let failures = 0;
  for (let i = 0; i < 100 && failures < 2; i++) {
    failures = metric(await scrape(o.url), "mcloudtt_tls_handshake_failures_total");
    if (failures < 2) await delay(20);
  }
  assert.equal(failures, 2);
  const logged = lines.filter((l) => String(l.message).includes("TLS handshake with"));
  assert.deepEqual(logged.map((l) => l.remote_address).sort(), [...peers].sort());
  assert.deepEqual(logged.map((l) => l.listener).sort(), ["tls", "wss"]);
  for (const l of logged) {
    assert.equal(l.level, "info");
    assert.equal(typeof l.reason, "string");
    assert.ok(String(l.reason).length > 0);
  }
});
