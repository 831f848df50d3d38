/**
 * What the Redis store adds to the Store contract, against a real
 * redis-server: TTLs, corrupt values, two nodes sharing state, the owner
 * guard, node death, durability across a Redis restart, and memory per
 * queued message.
 */
import assert from "node:assert/strict";
import { type RedisOptions, RedisServer, skipWithoutRedis } from "../helpers/redis.ts";
import { Cluster } from "ioredis";
import { RedisStore, StaleSessionError } from "../../src/store/redis.ts";
import { MissingSessionError } from "../../src/store/errors.ts";
import { MemoryStore } from "../../src/store/memory.ts";
import { isClusterStore, type StoreOp } from "../../src/store/types.ts";
import {
  captureLogs,
  delivery,
  logText,
  message,
  redisClient,
  sampleSession,
  storeNode,
} from "./redis_fixture.ts";
import { loadRetained } from "./fixtures.ts";

const ignore = skipWithoutRedis();

/** A test on a redis-server of its own, started with `serverOpts` and stopped after it. */
function storeTest(
  name: string,
  ...args: [Test] | [RedisOptions, Test]
): void {
  const [serverOpts, fn] = args.length === 1 ? [{}, args[0]] : args;
  Deno.test(name, { ignore }, async () => {
    await using server = await RedisServer.start(serverOpts);
    await fn(server);
  });
}
type Test = (server: RedisServer) => Promise<void>;

storeTest(
  "redis store: cluster message ids of queued and inflight messages and a session's recent " +
    "ids round-trip; none is stored for a message without one",
  async (server) => {
    await using store = await storeNode(server, "A");
    const withId = (topic: string, id: string) => ({
      ...delivery(topic, topic),
      msg: message(topic, topic, { id }),
    });
    const state = sampleSession("c1", {
      queue: [{ ...withId("q/1", "AbCd-_01z"), seq: 1 }, { ...delivery("q/2", "plain"), seq: 2 }],
      inflight: [{ ...withId("f/1", "AbCd-_01y"), qos: 2, packetId: 7, released: true }],
      recent: ["AbCd-_01a", "xyz12345b"],
    });
    await store.write([
      { type: "session", state },
      { type: "enqueue", clientId: "c1", seq: 3, item: withId("q/3", "AbCd-_01zz") },
      {
        type: "inflight",
        clientId: "c1",
        item: { ...withId("f/2", "AbCd-_020"), packetId: 8, released: false },
      },
    ]);
    const loaded = await store.loadSession("c1");
    assert.deepEqual(loaded?.queue.map((q) => q.msg.id), ["AbCd-_01z", undefined, "AbCd-_01zz"]);
    assert.deepEqual(loaded?.inflight.map((f) => f.msg.id), ["AbCd-_01y", "AbCd-_020"]);
    assert.deepEqual(loaded?.recent, ["AbCd-_01a", "xyz12345b"]);
    // A session written again without recent ids keeps none.
    await store.write([{ type: "session", state: { ...state, recent: [] } }]);
    assert.equal((await store.loadSession("c1"))?.recent, undefined);
  },
);

storeTest(
  "redis store: an acknowledged id joins the session's recent ids (the last dedupe_window), " +
    "once when its batch is written again, and a node adopting the session has them",
  async (server) => {
    await using a = await storeNode(server, "A", { dedupeWindow: 3 });
    await using b = await storeNode(server, "B", { dedupeWindow: 3 });
    const inflight = (pid: number, id: string) => ({
      ...delivery("f", "f"),
      msg: message("f", "f", { id }),
      packetId: pid,
      released: false,
    });
    const done = (pid: number, id: string): StoreOp => ({
      type: "inflight-delete",
      clientId: "c1",
      packetId: pid,
      id,
    });
    await a.write([
      { type: "session", state: sampleSession("c1", { inflight: [], recent: ["old"] }) },
    ]);
    const batch: StoreOp[] = [
      { type: "inflight", clientId: "c1", item: inflight(1, "id1") },
      { type: "inflight", clientId: "c1", item: inflight(2, "id2") },
      done(1, "id1"),
      done(2, "id2"),
      // Dropped without an acknowledgement: no id.
      { type: "inflight-delete", clientId: "c1", packetId: 3 },
    ];
    await a.write(batch);
    assert.deepEqual((await a.loadSession("c1"))?.recent, ["old", "id1", "id2"]);
    // Applied, not confirmed, written again (with what came since): still once each.
    await a.write([...batch, { type: "inflight", clientId: "c1", item: inflight(4, "id4") }]);
    assert.deepEqual((await a.loadSession("c1"))?.recent, ["old", "id1", "id2"]);
    assert.deepEqual((await a.loadSession("c1"))?.inflight.map((f) => f.packetId), [4]);
    // Past the window the oldest go.
    await a.write([done(4, "id4")]);
    assert.deepEqual((await a.loadSession("c1"))?.recent, ["id1", "id2", "id4"]);
    // A whole session replaces them; acknowledgements after it add to its.
    await a.write([
      { type: "session", state: sampleSession("c1", { inflight: [], recent: ["s1"] }) },
      { type: "inflight", clientId: "c1", item: inflight(5, "id5") },
      done(5, "id5"),
    ]);
    assert.deepEqual((await a.loadSession("c1"))?.recent, ["s1", "id5"]);
    // Node A dies: B adopts the session with what A's acknowledgements left.
    const adopted = await b.adoptSession("c1", "A");
    assert.deepEqual(adopted?.recent, ["s1", "id5"]);
    assert.deepEqual(adopted?.inflight, []);
    // Deleted with the session.
    await b.write([{ type: "session-delete", clientId: "c1" }]);
    assert.equal(await server.command("EXISTS", "t:{s:c1}:rc"), "0");
  },
);

storeTest(
  "redis store: a session and its journal ops read back as the memory store applies them",
  async (server) => {
    await using store = await storeNode(server, "A");
    const memory = new MemoryStore(true);
    const batches: StoreOp[][] = [
      [{ type: "session", state: sampleSession("c1") }, {
        type: "session",
        state: sampleSession("c2", { owner: null, will: null, queue: [], inflight: [] }),
      }],
      [
        { type: "enqueue", clientId: "c1", seq: 3, item: delivery("a/3", "three") },
        { type: "enqueue", clientId: "c1", seq: 4, item: delivery("a/4", "four") },
        { type: "dequeue", clientId: "c1", seq: 1 },
        { type: "dequeue", clientId: "c1", seq: 3 }, // not the head: removed from the middle
        {
          type: "inflight",
          clientId: "c1",
          item: { ...delivery("a/5", "5"), packetId: 13, released: false },
        },
        { type: "inflight-delete", clientId: "c1", packetId: 12 },
        { type: "qos2-add", clientId: "c1", packetId: 9 },
        { type: "qos2-delete", clientId: "c1", packetId: 3 },
        { type: "enqueue", clientId: "ghost", seq: 5, item: delivery("x", "y") }, // no such session
        { type: "session-delete", clientId: "c2" },
      ],
    ];
    for (const b of batches) {
      // The ghost's enqueue is refused by name (Redis holds no such session); the rest is written.
      await store.write(b).catch((e) => {
        if (!(e instanceof MissingSessionError)) throw e;
        assert.deepEqual(e.clientIds, ["ghost"]);
      });
      await memory.write(b);
    }
    assert.deepStrictEqual(await store.loadSession("c1"), await memory.loadSession("c1"));
    assert.equal(await store.loadSession("c2"), null);
    assert.equal(await store.loadSession("ghost"), null);
    const all = await store.loadSessions();
    assert.deepStrictEqual(all.map((s) => s.clientId), ["c1"]);
  },
);

storeTest(
  "redis store: session keys expire at expiresAt plus the grace, refreshed on write; connected and never-expiring sessions have none",
  async (server) => {
    await using store = await storeNode(server, "A", { ttlGraceMs: 1000 });
    const pttl = async (suffix: string) =>
      Number(await server.command("PTTL", `t:{s:c}:${suffix}`));
    const now = Date.now();
    await store.write([{
      type: "session",
      state: sampleSession("c", { expiresAt: now + 10_000 }),
    }]);
    for (const k of ["meta", "subs", "q", "inflight", "qos2"]) {
      const t = await pttl(k);
      assert.ok(t > 9_000 && t <= 11_000, `${k} PTTL ${t}`);
    }
    // A later write moves the expiry (and gives a queue created after the session one too).
    await store.write([
      { type: "session", state: sampleSession("c", { expiresAt: now + 100_000, queue: [] }) },
    ]);
    assert.equal(await pttl("q"), -2); // no queue key yet
    await store.write([{ type: "enqueue", clientId: "c", seq: 8, item: delivery("a", "b") }]);
    for (const k of ["meta", "q"]) {
      const t = await pttl(k);
      assert.ok(t > 99_000 && t <= 101_000, `${k} PTTL ${t} after refresh`);
    }
    // Connected (expiresAt 0) and Infinity: no TTL.
    await store.write([{ type: "session", state: sampleSession("c", { expiresAt: 0 }) }]);
    assert.equal(await pttl("meta"), -1);
    assert.equal(await pttl("q"), -1);
    await store.write([{ type: "session", state: sampleSession("c", { expiresAt: Infinity }) }]);
    assert.equal(await pttl("subs"), -1);
    assert.equal((await store.loadSession("c"))?.expiresAt, Infinity);
    // And it really goes: a session that expired is gone from Redis.
    await store.write([{
      type: "session",
      state: sampleSession("c", { expiresAt: Date.now() - 900 }),
    }]);
    await new Promise((r) => setTimeout(r, 250));
    assert.equal(await store.loadSession("c"), null);
    assert.equal(await server.command("EXISTS", "t:{s:c}:q"), "0");
  },
);

storeTest(
  "redis store: corrupt and foreign values under the prefix are skipped with a log line",
  async (server) => {
    await using store = await storeNode(server, "A");
    await store.write([
      { type: "session", state: sampleSession("good") },
      { type: "session", state: sampleSession("badq") },
      { type: "retain", msg: message("r/ok", "fine") },
    ]);
    await server.command("SET", "t:{s:foreign}:meta", "not a hash");
    await server.command("HSET", "t:{s:oldfmt}:meta", "v", "99", "cid", "oldfmt");
    await server.command("RPUSH", "t:{s:badq}:q", "12|garbage", "no-seq");
    await server.command("RPUSH", "t:{s:badq}:subs", '["x/#", 9]');
    await server.command("SADD", "t:{ret}:index", "r/bad");
    await server.command("SET", "t:{ret}:t:r/bad", "\x01\x99");
    await server.command("SET", "t:{s:wrongq}:q", "a string");
    await server.command(
      "HSET",
      "t:{s:wrongq}:meta",
      "v",
      "1",
      "cid",
      "wrongq",
      "ei",
      "10",
      "ea",
      "0",
      "wa",
      "0",
    );
    const [[sessions, retained], logs] = await captureLogs(async () => [
      await store.loadSessions(),
      await loadRetained(store),
    ]);
    const byId = new Map(sessions.map((s) => [s.clientId, s]));
    assert.deepStrictEqual([...byId.keys()].sort(), ["badq", "good", "wrongq"]);
    assert.deepStrictEqual(byId.get("good"), sampleSession("good"));
    // The readable parts of a partly corrupt session survive.
    assert.deepStrictEqual(byId.get("badq")!.queue, sampleSession("badq").queue);
    assert.deepStrictEqual(byId.get("badq")!.subscriptions, sampleSession("badq").subscriptions);
    assert.deepStrictEqual(byId.get("wrongq")!.queue, []);
    assert.deepStrictEqual(retained.map((m) => m.topic), ["r/ok"]);
    const text = logs.map(logText).join("\n");
    for (
      const want of [
        "foreign",
        "oldfmt",
        "queued message of session badq",
        "x/#",
        "r/bad",
        "q of session wrongq",
      ]
    ) {
      assert.ok(text.includes(want), `no log line about ${want} in:\n${text}`);
    }
    assert.ok(logs.every((r) => r.level === "warning"));
    // A write over a corrupt key replaces it instead of failing.
    await captureLogs(() => store.write([{ type: "session", state: sampleSession("wrongq") }]));
    assert.deepStrictEqual(await store.loadSession("wrongq"), sampleSession("wrongq"));
    await captureLogs(() => store.write([{ type: "session", state: sampleSession("foreign") }]));
    assert.deepStrictEqual(await store.loadSession("foreign"), sampleSession("foreign"));
  },
);

storeTest(
  "redis store: two nodes see each other's sessions and retained messages",
  async (server) => {
    await using a = await storeNode(server, "A");
    await using b = await storeNode(server, "B");
    await a.write([
      { type: "session", state: sampleSession("c") },
      { type: "retain", msg: message("r/1", "from A", { retain: true }) },
    ]);
    assert.deepStrictEqual(await b.loadSession("c"), sampleSession("c"));
    assert.deepStrictEqual(await loadRetained(b), [message("r/1", "from A", { retain: true })]);
    await b.write([{ type: "retain-delete", topic: "r/1" }, {
      type: "retain",
      msg: message("r/2", "from B"),
    }]);
    assert.deepStrictEqual((await loadRetained(a)).map((m) => m.topic), ["r/2"]);
  },
);

storeTest(
  "redis store: of two nodes' updates of one retained topic the newer version stays, in either order",
  async (server) => {
    await using a = await storeNode(server, "A");
    await using b = await storeNode(server, "B");
    const v = (ms: number) => `${String(ms).padStart(13, "0")}000a`;
    const payload = async () =>
      (await loadRetained(a)).map((m) => `${m.topic}=${new TextDecoder().decode(m.payload)}`);
    // The newer update is written first, the older one after it: the older changes nothing.
    await b.write([{ type: "retain", msg: message("r/1", "newer"), version: v(2) }]);
    await a.write([{ type: "retain", msg: message("r/1", "older"), version: v(1) }]);
    assert.deepStrictEqual(await payload(), ["r/1=newer"]);
    assert.equal((await loadRetained(a))[0].version, v(2), "loaded with its version");
    // A deletion leaves its version behind: an older set coming later does not bring it back.
    await a.write([{ type: "retain-delete", topic: "r/1", version: v(4), tombstone: true }]);
    await b.write([{ type: "retain", msg: message("r/1", "stale"), version: v(3) }]);
    assert.deepStrictEqual(await payload(), []);
    const pttl = Number(await server.command("PTTL", "t:{ret}:v:r/1"));
    assert.ok(pttl > 0 && pttl <= 60_000, `the deletion's version expires (PTTL ${pttl})`);
    // A deletion the node does not remember (its bound of remembered deletions full) leaves
    // nothing behind in Redis either.
    await a.write([{ type: "retain-delete", topic: "r/2", version: v(5), tombstone: false }]);
    assert.equal(await server.command("EXISTS", "t:{ret}:v:r/2"), "0");
    // An update without a version (an older node's) applies and drops the version.
    await b.write([{ type: "retain", msg: message("r/1", "unversioned") }]);
    assert.deepStrictEqual(await payload(), ["r/1=unversioned"]);
    assert.equal((await loadRetained(a))[0].version, undefined);
  },
);

storeTest(
  "redis store: a retained message with Message Expiry vanishes for every node",
  async (server) => {
    await using a = await storeNode(server, "A");
    await using b = await storeNode(server, "B");
    await a.write([
      { type: "retain", msg: message("short", "x", { expiresAt: Date.now() + 300 }) },
      { type: "retain", msg: message("long", "y", { expiresAt: Date.now() + 60_000 }) },
    ]);
    const pttl = Number(await server.command("PTTL", "t:{ret}:t:long"));
    assert.ok(pttl > 59_000 && pttl <= 60_000, `PTTL ${pttl}`);
    assert.deepStrictEqual((await loadRetained(b)).map((m) => m.topic).sort(), ["long", "short"]);
    await new Promise((r) => setTimeout(r, 450));
    assert.deepStrictEqual((await loadRetained(b)).map((m) => m.topic), ["long"]);
    assert.equal(await server.command("SISMEMBER", "t:{ret}:index", "short"), "0");
  },
);

storeTest(
  "redis store: a node that lost a session cannot write it; the new owner can",
  async (server) => {
    await using a = await storeNode(server, "A");
    await using b = await storeNode(server, "B");
    await a.write([{ type: "session", state: sampleSession("c") }, {
      type: "session",
      state: sampleSession("d"),
    }]);
    // Reading does not fence, and unclaimed sessions take writes from any node.
    assert.ok(await b.loadSession("c"));
    await a.write([{ type: "enqueue", clientId: "c", seq: 40, item: delivery("a", "b") }]);
    await b.write([{ type: "enqueue", clientId: "d", seq: 41, item: delivery("a", "b") }]);
    // The client reconnects on B; once the cluster made B the owner, B claims it.
    assert.equal(await b.claimSession("c"), 1);
    assert.equal(await server.command("HGET", "t:{s:c}:meta", "ep"), "1");
    // A's late writes for c fail and change nothing; its write for d still lands.
    await assert.rejects(
      a.write([
        { type: "enqueue", clientId: "c", seq: 50, item: delivery("late", "x") },
        { type: "enqueue", clientId: "d", seq: 51, item: delivery("fine", "y") },
      ]),
      (e: unknown) =>
        e instanceof StaleSessionError && e.code === 0x8e && e.clientIds.join() === "c",
    );
    await assert.rejects(a.write([{ type: "session-delete", clientId: "c" }]), StaleSessionError);
    assert.deepStrictEqual((await b.loadSession("c"))!.queue.map((q) => q.seq), [1, 2, 40]);
    assert.deepStrictEqual((await a.loadSession("d"))!.queue.map((q) => q.seq), [1, 2, 41, 51]);
    await b.write([{ type: "dequeue", clientId: "c", seq: 1 }]);
    assert.equal((await a.loadSession("c"))!.queue.length, 2);
    // Claimed back by A (the client hopped again): now B is the stale one.
    assert.equal(await a.claimSession("c"), 2);
    await assert.rejects(b.write([{ type: "dequeue", clientId: "c", seq: 2 }]), StaleSessionError);
    await a.write([{ type: "dequeue", clientId: "c", seq: 2 }]);
    assert.equal(await b.claimSession("c"), 3);
    // Ownership survives the session's deletion (a marker), so A still cannot recreate it.
    await b.write([{ type: "session-delete", clientId: "c" }]);
    await assert.rejects(
      a.write([{ type: "session", state: sampleSession("c") }]),
      StaleSessionError,
    );
    assert.equal(await b.loadSession("c"), null);
    // The claim left behind expires (tombstone time) instead of leaking.
    const ttl = Number(await server.command("PTTL", "t:{s:c}:meta"));
    assert.ok(ttl > 3_500_000 && ttl <= 3_600_000, `claim marker PTTL ${ttl}`);
  },
);

storeTest(
  "redis store: a dead node's sessions are adopted by exactly one node, and each will is taken once",
  async (server) => {
    const t0 = Date.now();
    await using dead = await storeNode(server, "dead");
    await using b = await storeNode(server, "B", { now: () => t0 });
    await using c = await storeNode(server, "C", { now: () => t0 });
    // "online" was claimed by the dead node (fenced), the others only written by it.
    assert.ok(isClusterStore(b) && !isClusterStore(new MemoryStore()));
    await dead.claimSession("online");
    await dead.write([
      { type: "session", state: sampleSession("online", { expiresAt: 0, expiryInterval: 100 }) },
      {
        type: "session",
        state: sampleSession("offline", { expiresAt: t0 + 5000, willAt: t0 + 1000 }),
      },
      { type: "session", state: sampleSession("moved") },
    ]);
    await b.claimSession("moved"); // its client reconnected on B before A died
    assert.deepStrictEqual((await b.sessionsOfNode("dead")).sort(), ["offline", "online"]);
    const online = await Promise.all([
      b.adoptSession("online", "dead"),
      c.adoptSession("online", "dead"),
    ]);
    assert.equal(online.filter((s) => s !== null).length, 1, "adopted by exactly one node");
    const adopted = online.find((s) => s !== null)!;
    const adopter = online[0] !== null ? b : c;
    const other = adopter === b ? c : b;
    // Detached now: expires after its interval, will due after its delay.
    assert.equal(adopted.expiresAt, t0 + 100_000);
    assert.equal(adopted.willAt, t0 + 5_000);
    assert.deepStrictEqual(adopted.will, sampleSession("online").will);
    const offline = await b.adoptSession("offline", "dead");
    assert.equal(offline!.expiresAt, t0 + 5000); // already detached: unchanged
    assert.equal(offline!.willAt, t0 + 1000);
    assert.equal(await b.adoptSession("moved", "dead"), null);
    assert.deepStrictEqual(await b.sessionsOfNode("dead"), []);
    // Wills: only the owner takes them, once.
    assert.equal(await other.takeWill("online"), null);
    const [w1, w2] = await Promise.all([adopter.takeWill("online"), adopter.takeWill("online")]);
    assert.deepStrictEqual([w1, w2].filter((w) => w !== null), [sampleSession("online").will]);
    assert.equal((await adopter.loadSession("online"))!.will, null);
    // The dead node can no longer write the session it had claimed.
    await assert.rejects(
      dead.write([{ type: "session-delete", clientId: "online" }]),
      StaleSessionError,
    );
    const ttl = Number(await server.command("PTTL", "t:{s:online}:meta"));
    assert.ok(ttl > 0, `detached session has a TTL (${ttl})`);
    await b.forgetNode("dead");
    assert.equal(await server.command("EXISTS", "t:{n:dead}:sessions"), "0");
  },
);

storeTest(
  "redis store: writes acknowledged over a second before kill -9 survive a restart with AOF",
  { aof: true },
  async (server) => {
    {
      await using store = await storeNode(server, "A");
      await store.write([
        { type: "session", state: sampleSession("c") },
        { type: "retain", msg: message("r", "kept") },
      ]);
      await store.write([{ type: "enqueue", clientId: "c", seq: 3, item: delivery("a/3", "3") }]);
    }
    await new Promise((r) => setTimeout(r, 1500)); // appendfsync everysec
    await server.restart();
    {
      await using store = await storeNode(server, "A");
      const s = await store.loadSession("c");
      assert.deepStrictEqual(s!.queue.map((q) => q.seq), [1, 2, 3]);
      assert.deepStrictEqual((await loadRetained(store)).map((m) => m.topic), ["r"]);
    }
    // Without AOF the same kill -9 loses everything: what the test above checks can fail.
    await using volatile = await RedisServer.start();
    {
      await using store = await storeNode(volatile, "A");
      await store.write([{ type: "session", state: sampleSession("c") }]);
    }
    await volatile.restart();
    await using fresh = await storeNode(volatile, "A");
    assert.equal(await fresh.loadSession("c"), null);
  },
);

storeTest(
  "redis store: a restarted Redis (scripts flushed) is served again without a new store",
  async (server) => {
    await using store = await storeNode(server, "A");
    await store.write([{ type: "session", state: sampleSession("c") }]);
    await server.command("SCRIPT", "FLUSH");
    await store.write([{ type: "enqueue", clientId: "c", seq: 3, item: delivery("a/3", "3") }]);
    assert.equal((await store.loadSession("c"))!.queue.length, 3);
  },
);

storeTest("redis store: memory per queued message", async (server) => {
  await using store = await storeNode(server, "A");
  await using client = await redisClient(server);
  const sessions = 100;
  const perSession = 100;
  const payload = "x".repeat(100);
  await store.write(
    Array.from({ length: sessions }, (_, i) => ({
      type: "session" as const,
      state: sampleSession(`m${i}`, { queue: [], inflight: [], expiresAt: Date.now() + 3_600_000 }),
    })),
  );
  const used = async () => {
    const info = await client.info("memory");
    return Number(/used_memory:(\d+)/.exec(info)![1]);
  };
  const before = await used();
  let seq = 0;
  for (let j = 0; j < perSession; j++) {
    // One batch per event-loop turn, as the core writes: a message to every session.
    await store.write(
      Array.from({ length: sessions }, (_, i) => ({
        type: "enqueue" as const,
        clientId: `m${i}`,
        seq: ++seq,
        item: { ...delivery("sensors/room/temperature", payload), subIds: [1] },
      })),
    );
  }
  const after = await used();
  const perMessage = (after - before) / (sessions * perSession);
  console.log(
    `redis store: ${Math.round(perMessage)} bytes of Redis memory per queued message ` +
      `(100-byte payload, 24-byte topic; ${sessions * perSession} messages in ${sessions} queues)`,
  );
  assert.equal((await store.loadSession("m7"))!.queue.length, perSession);
  assert.ok(perMessage < 400, `${perMessage} bytes per queued message`);
});

storeTest(
  "redis store: every script and command stays in one slot on a Redis Cluster",
  { cluster: true },
  async (server) => {
    const cluster = new Cluster([{ host: "127.0.0.1", port: server.port }], {
      lazyConnect: true,
      redisOptions: { maxRetriesPerRequest: 2 },
    });
    cluster.on("error", () => {});
    await cluster.connect();
    try {
      const t0 = Date.now();
      const a = new RedisStore(cluster, { keyPrefix: "t", nodeId: "A", now: () => t0 });
      const b = new RedisStore(cluster, { keyPrefix: "t", nodeId: "B", now: () => t0 });
      await a.open();
      await a.claimSession("c1");
      await a.write([
        ...["c1", "c2", "c3"].map((id) => ({ type: "session" as const, state: sampleSession(id) })),
        { type: "enqueue", clientId: "c2", seq: 9, item: delivery("q", "x") },
        { type: "dequeue", clientId: "c2", seq: 1 },
        {
          type: "inflight",
          clientId: "c3",
          item: { ...delivery("i", "y"), packetId: 5, released: false },
        },
        { type: "qos2-add", clientId: "c1", packetId: 2 },
        { type: "retain", msg: message("r/1", "one") },
        { type: "retain", msg: message("r/2", "two", { expiresAt: t0 + 60_000 }) },
        { type: "retain-delete", topic: "r/1" },
      ]);
      assert.deepStrictEqual(
        (await b.loadSessions()).map((s) => s.clientId).sort(),
        ["c1", "c2", "c3"],
      );
      assert.deepStrictEqual((await loadRetained(b)).map((m) => m.topic), ["r/2"]);
      assert.deepStrictEqual((await b.sessionsOfNode("A")).sort(), ["c1", "c2", "c3"]);
      assert.ok(await b.adoptSession("c1", "A"));
      assert.ok(await b.takeWill("c1"));
      await assert.rejects(
        a.write([{ type: "session-delete", clientId: "c1" }]),
        StaleSessionError,
      );
      await b.write([{ type: "session-delete", clientId: "c1" }]);
      await b.forgetNode("A");
      assert.equal(await b.loadSession("c1"), null);
    } finally {
      await cluster.quit().catch(() => cluster.disconnect());
    }
  },
);
