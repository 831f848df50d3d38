/**
 * Memory per idle connection: 2,000 clients connect (CONNECT, CONNACK, keep alive 60 s) and
 * stay idle; the broker process's RSS and JS heap (after a full GC) may grow only by a bounded
 * amount per connection, over plain TCP and over TLS.
 *
 * The bounds come from tests/bench/idle_cost.ts (10,000 connections; at 2,000 the RSS figure
 * is noisier, the heap figure is not), with margin so the test is not flaky:
 * - plain: measured 5.2-6.1 kB RSS and 1.89 kB heap per connection at 2,000 (5.2-5.5 kB RSS at
 *   10,000; a bare Deno.listen server holding its Deno.Conn with a pending read: 5.9 kB RSS,
 *   2.3 kB heap). The heap figure varies by a few bytes between runs: its bound (2.5 kB) breaks
 *   when the transport holds the Deno.Conn again (3.1 kB, see src/transport/deno_io.ts), or
 *   when a read buffer, timer or closure chain per idle connection, or a leak of a few hundred
 *   bytes of JS per connection, comes back; the RSS bound is the 8 kB target of issue 14.
 * - TLS (node:tls): measured ~28 kB RSS and 7.8 kB heap per connection, almost all of it the
 *   runtime's (a bare node:tls server: 28 kB and 5.7 kB).
 */
import assert from "node:assert/strict";
import type { Config, DeepPartial } from "../../mod.ts";
import { type BrokerProcess, startBrokerProcess } from "../helpers/broker_process.ts";
import { makeTestPki } from "../helpers/certs.ts";
import { closeAll, openMany } from "../helpers/idle_clients.ts";
import { delay } from "../helpers/broker.ts";

const COUNT = 2000;
const KIB = 1024;

interface Bound {
  rssKb: number;
  heapKb: number;
  externalKb: number;
}

const dir = await Deno.makeTempDir({ prefix: "mcloudtt-idle-memory-" });
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));

async function measure(broker: BrokerProcess, tls: boolean, bound: Bound): Promise<void> {
  const port = broker.ports.tls ?? broker.ports.tcp;
  // Warm-up: the first connections compile code and fill pools; they are not the cost of one.
  const warm = await openMany({ port, tls }, 100, { prefix: "warm-" });
  assert.equal(warm.failed, 0, `warm-up: ${warm.firstError}`);
  await closeAll(warm.sockets);
  await delay(500);
  const before = await broker.memory();
  const opened = await openMany({ port, tls }, COUNT);
  try {
    assert.equal(opened.failed, 0, `connecting: ${opened.firstError}`);
    await delay(500);
    const after = await broker.memory();
    assert.equal(broker.metrics.connectionsCurrent, COUNT, "every client is connected");
    const per = (a: number, b: number) => (a - b) / KIB / COUNT;
    const got = {
      rssKb: per(after.rss, before.rss),
      heapKb: per(after.heapUsed, before.heapUsed),
      externalKb: per(after.external, before.external),
    };
    const msg = `per idle connection: ${JSON.stringify(got)}, bounds ${JSON.stringify(bound)}`;
    assert.ok(got.rssKb < bound.rssKb, `RSS ${msg}`);
    assert.ok(got.heapKb < bound.heapKb, `heap ${msg}`);
    assert.ok(got.externalKb < bound.externalKb, `external ${msg}`);
  } finally {
    await closeAll(opened.sockets);
  }
  // Closed connections are given back: the heap returns to where it was, within 0.5 kB each.
  const deadline = Date.now() + 10_000;
  let m = await broker.memory();
  while (broker.metrics.connectionsCurrent > 0 && Date.now() < deadline) {
    await delay(100);
    m = await broker.memory();
  }
  assert.equal(broker.metrics.connectionsCurrent, 0);
  assert.ok(
    m.heapUsed - before.heapUsed < COUNT * 512,
    `heap after closing: ${(m.heapUsed - before.heapUsed) / KIB} kB above the baseline`,
  );
}

const base: DeepPartial<Config> = {
  general: { websocket: false, sys_interval: 0 },
  http: { enabled: false },
  limits: { max_connections: 100_000 },
};

Deno.test(`${COUNT} idle plain TCP connections stay within the memory bound`, async () => {
  await using broker = await startBrokerProcess(base);
  await measure(broker, false, { rssKb: 8, heapKb: 2.5, externalKb: 1 });
});

Deno.test(`${COUNT} idle TLS connections stay within the memory bound`, async () => {
  const pki = await makeTestPki(dir);
  await using broker = await startBrokerProcess({
    ...base,
    general: { ...base.general, secure: true },
    tls: { certfile: pki.broker.cert, keyfile: pki.broker.key, cafile: pki.ca.cert },
    listeners: { tcp: { client_certificate: "none" } },
    auth: { allow_anonymous: true },
  });
  await measure(broker, true, { rssKb: 40, heapKb: 10, externalKb: 1 });
});
