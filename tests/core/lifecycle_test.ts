/**
 * The embedding API's lifecycle: start() and stop() called concurrently, a stop() during a
 * start(), a start() after stop(), and a config that is not an object.
 */
import assert from "node:assert/strict";
import { BrokerStopped, ConfigError, createBroker, MemoryStore } from "../../mod.ts";
import { connectClient, delay, endClient } from "../helpers/broker.ts";
import { withTempDir } from "../helpers/fs.ts";

const config = (storage: { enabled: boolean; dir?: string } = { enabled: false }) => ({
  general: { secure: false, websocket: false, bind: "127.0.0.1" },
  ports: { tcp: 0 },
  storage,
});

Deno.test("concurrent start() calls open the listeners once", async () => {
  const b = await createBroker(config());
  await Promise.all([b.start(), b.start()]);
  try {
    assert.equal(b.addresses.length, 1, JSON.stringify(b.addresses));
    await b.start(); // started: nothing more
    assert.equal(b.addresses.length, 1);
  } finally {
    await b.stop();
  }
});

Deno.test("a stop() during start() leaves the broker stopped", async () => {
  const b = await createBroker(config());
  const starting = b.start();
  await b.stop();
  await starting;
  assert.deepEqual(b.addresses, []);
});

Deno.test("concurrent stop() calls all wait until the store is closed", async () => {
  let closed = false;
  class SlowClose extends MemoryStore {
    override async close(): Promise<void> {
      await delay(50);
      closed = true;
      await super.close();
    }
  }
  const b = await createBroker(config(), { store: new SlowClose() });
  await b.start();
  const first = b.stop();
  await b.stop();
  assert.equal(closed, true, "the second stop() resolved before the store was closed");
  await first;
});

Deno.test("start() after stop() rejects with BrokerStopped; a new broker resumes the sessions", async () => {
  await withTempDir(async (dir) => {
    const b = await createBroker(config({ enabled: true, dir }));
    await b.start();
    const c = await connectClient(b.addresses[0].port, {
      clientId: "keep",
      clean: false,
      properties: { sessionExpiryInterval: 600 },
    });
    await c.subscribeAsync("k/#", { qos: 1 });
    const reasons: number[] = [];
    c.on("disconnect", (p) => reasons.push(p.reasonCode ?? 0));
    await b.stop();
    await delay(20);
    await endClient(c, true);
    assert.deepEqual(reasons, [0x8b]);
    // Restarted, this broker's closed journal held every QoS 1/2 acknowledgement forever.
    await assert.rejects(b.start(), BrokerStopped);
    assert.deepEqual(b.addresses, []);

    const again = await createBroker(config({ enabled: true, dir }));
    await again.start();
    try {
      assert.deepEqual([...again.core.sessions.keys()], ["keep"]);
      await using c2 = await connectClient(again.addresses[0].port, {
        clientId: "keep",
        clean: false,
        properties: { sessionExpiryInterval: 600 },
      });
      await c2.subscribeAsync("k/2", { qos: 1 }); // acknowledged: the journal writes
    } finally {
      await again.stop();
    }
  });
});

Deno.test("a config that is not an object is a ConfigError", async () => {
  for (const bad of [null, "tcp", 5, [], [{ general: {} }]]) {
    // deno-lint-ignore no-explicit-any
    await assert.rejects(createBroker(bad as any), ConfigError, JSON.stringify(bad));
  }
});

Deno.test("a listener port already bound elsewhere rejects start() with a ConfigError naming the port key", async () => {
  const other = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (other.addr as Deno.NetAddr).port;
  try {
    for (const [name, ports] of [["tcp", { tcp: port }], ["ws", { tcp: 0, ws: port }]] as const) {
      const b = await createBroker({
        ...config(),
        general: { secure: false, websocket: name === "ws", bind: "127.0.0.1" },
        ports,
      });
      const e = await b.start().then(() => null, (e) => e);
      assert.ok(e instanceof ConfigError, `${name}: ${e}`);
      assert.equal(e.key, `ports.${name}`);
      assert.match(e.message, new RegExp(`127\\.0\\.0\\.1:${port} is in use`));
      assert.deepEqual(b.addresses, [], `${name}: nothing left listening`);
      await b.stop();
    }
  } finally {
    other.close();
  }
});
