/**
 * SUBSCRIBE and UNSUBSCRIBE of a session the SQLite store holds write that one change, not the
 * whole session: a client subscribing to N filters one at a time made the broker write every
 * earlier subscription (and the session's queue) again for each, N² in all (5,000 filters took
 * 9 s, the event loop stalled for everyone). Driven through real sockets; the store is the real
 * SQLite store, counting the bytes of the ops the journal hands it.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { RawClient, startBroker } from "../helpers/broker.ts";
import { SqliteStore } from "../../src/store/sqlite.ts";
import type { StoreOp } from "../../src/store/types.ts";

const FILTERS = 300;
const QUEUED = 20;
const persistent = { clean: false, properties: { sessionExpiryInterval: 3600 } };

/** The SQLite store, measuring what it is asked to write (payloads by their length). */
class MeasuredSqliteStore extends SqliteStore {
  bytes = 0;
  readonly types: string[] = [];

  override write(ops: readonly StoreOp[]): Promise<void> {
    for (const op of ops) {
      this.types.push(op.type);
      this.bytes += JSON.stringify(
        op,
        (_, v) => v instanceof Uint8Array ? v.byteLength : v,
      ).length;
    }
    return super.write(ops);
  }
}

async function publish(port: number, topics: string[], payload: Uint8Array): Promise<void> {
  await using pub = await RawClient.connect(port, 5);
  await pub.handshake("pub");
  for (const [i, topic] of topics.entries()) {
    await pub.sendPacket({ cmd: "publish", topic, qos: 1, messageId: i + 1, payload });
    await pub.expect("puback");
  }
}

Deno.test("subscribing to many filters one at a time writes one subscription per SUBSCRIBE; after a restart the session has them all", async () => {
  const dir = await Deno.makeTempDir({ prefix: "mcloudtt-subscribe-store-" });
  const config = { storage: { enabled: true, dir } };
  try {
    const perSubscribe: number[] = [];
    {
      const store = new MeasuredSqliteStore({ dir });
      await using broker = await startBroker(config, { store });
      // A session with messages waiting: one in flight (receive maximum 1, never acknowledged),
      // the rest queued behind it. They are stored already; a SUBSCRIBE changes none of them.
      await using c = await RawClient.connect(broker.port, 5);
      await c.handshake("many", 5, {
        ...persistent,
        properties: { ...persistent.properties, receiveMaximum: 1 },
      });
      await c.sendPacket({
        cmd: "subscribe",
        messageId: 1,
        subscriptions: [{ topic: "q", qos: 1 }],
      });
      await c.expect("suback");
      await publish(broker.port, Array(QUEUED).fill("q"), Buffer.alloc(1024, 0x71));
      await c.expect("publish");
      for (let i = 0; i < FILTERS; i++) {
        const before = store.bytes;
        await c.sendPacket({
          cmd: "subscribe",
          messageId: 2 + i,
          subscriptions: [{ topic: `f/${i}/+`, qos: 1 }],
          properties: { subscriptionIdentifier: i + 1 },
        });
        const ack = await c.expect("suback");
        assert.deepEqual(ack.granted, [1]);
        perSubscribe.push(store.bytes - before);
      }
      // Each SUBSCRIBE wrote about a hundred bytes, the 1st as the 300th: not the 20 kB queued,
      // nor the subscriptions before it (the whole session each time, 30 kB by the last, before).
      const [first, last] = [perSubscribe[0], perSubscribe.at(-1)!];
      assert.ok(Math.max(...perSubscribe) < 200, `bytes per SUBSCRIBE: ${first} .. ${last}`);
      assert.ok(last <= first + 16, `the 1st SUBSCRIBE wrote ${first} bytes, the last ${last}`);
      // One UNSUBSCRIBE, then the same filter again: each writes that one change.
      const before = store.bytes;
      await c.sendPacket({ cmd: "unsubscribe", messageId: 1000, unsubscriptions: ["f/0/+"] });
      await c.expect("unsuback");
      await c.sendPacket({
        cmd: "subscribe",
        messageId: 1001,
        subscriptions: [{ topic: "f/0/+", qos: 1 }],
        properties: { subscriptionIdentifier: 1 },
      });
      await c.expect("suback");
      assert.ok(store.bytes - before < 400, `${store.bytes - before} bytes for two changes`);
      assert.deepEqual(store.types.slice(-2), ["unsubscribe", "subscribe"]);
    }
    // The broker restarts on the same store: the session comes back with every subscription.
    await using broker = await startBroker(config, { store: new SqliteStore({ dir }) });
    await using c = await RawClient.connect(broker.port, 5);
    const ack = await c.handshake("many", 5, persistent);
    assert.equal(ack.sessionPresent, true);
    assert.equal((await c.drainPublishes(500)).length, QUEUED);
    await publish(
      broker.port,
      Array.from({ length: FILTERS }, (_, i) => `f/${i}/x`),
      Buffer.from("m"),
    );
    const got = new Set<string>();
    for (let i = 0; i < FILTERS; i++) {
      const p = await c.expect("publish") as {
        topic: string;
        messageId: number;
        properties?: { subscriptionIdentifier?: number | number[] };
      };
      got.add(p.topic);
      // Each with the identifier its SUBSCRIBE gave: the options came back too.
      assert.deepEqual(p.properties?.subscriptionIdentifier, Number(p.topic.split("/")[1]) + 1);
      await c.sendPacket({ cmd: "puback", messageId: p.messageId });
    }
    assert.equal(got.size, FILTERS);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
