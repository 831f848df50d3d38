/**
 * Sessions in a cluster of broker processes, seen by raw MQTT 5 clients: a
 * persistent session resumes on another node with its subscriptions, queued
 * messages and unacknowledged inflight (resent with DUP); the same client id
 * on two nodes at once leaves one survivor and loses nothing; the session's
 * owner travels with it; after a node restart Session Present is 1 only for
 * sessions the cluster routes to.
 */
import assert from "node:assert/strict";
import { hashPassword } from "../../src/auth/passwords.ts";
import { connectClient, expectSilence, type Packet, RawClient } from "../helpers/broker.ts";
import mqtt from "mqtt";
import { eventually, TestCluster } from "../helpers/cluster.ts";
import { skipWithoutRedis } from "../helpers/redis.ts";
import { redisQuery } from "../helpers/redis_resp.ts";

const ignore = skipWithoutRedis();
const opts = { ignore, sanitizeOps: false, sanitizeResources: false };

type P = Packet & Record<string, unknown>;

const PERSISTENT = { clean: false, properties: { sessionExpiryInterval: 300 } };

const text = (p: P) => new TextDecoder().decode(p.payload as Uint8Array);

async function subscribe(c: RawClient, topic: string, qos: 0 | 1 | 2): Promise<void> {
  await c.sendPacket({ cmd: "subscribe", messageId: 1, subscriptions: [{ topic, qos }] });
  const ack = await c.expect("suback");
  assert.deepEqual(ack.granted, [qos]);
}

/** Acknowledges a received PUBLISH the way its QoS wants (QoS 2: PUBREC, PUBREL, PUBCOMP). */
async function acknowledge(c: RawClient, p: P): Promise<void> {
  if (p.qos === 1) await c.sendPacket({ cmd: "puback", messageId: p.messageId });
  if (p.qos === 2) await c.sendPacket({ cmd: "pubrec", messageId: p.messageId });
}

/**
 * Every packet `c` gets until `quietMs` pass without one or the connection closes. The first
 * may take up to `firstMs`: a takeover waits for the other node to write the session back.
 */
async function drain(c: RawClient, quietMs = 500, firstMs = 10_000): Promise<P[]> {
  const out: P[] = [];
  for (;;) {
    let p: Packet | null;
    try {
      p = await c.next(out.length === 0 ? firstMs : quietMs);
    } catch {
      return out;
    }
    if (p === null) return out;
    out.push(p as P);
  }
}

Deno.test({
  name: "cluster: a persistent session resumes on another node with queue, inflight and routes",
  ...opts,
  async fn() {
    await using cluster = await TestCluster.start({ names: ["a", "b", "c"] });
    const [a, b, c] = cluster.nodes;
    await using pub = await connectClient(c.port, { clientId: "pub" });
    const first = await RawClient.connect(a.port);
    const ack1 = await first.handshake("pers", 5, PERSISTENT);
    assert.equal(ack1.sessionPresent, false);
    await subscribe(first, "s/#", 2);
    await pub.publishAsync("s/1", "inflight-1", { qos: 1 });
    await pub.publishAsync("s/2", "inflight-2", { qos: 2 });
    const sent = [await first.expect("publish"), await first.expect("publish")];
    assert.deepEqual(sent.map(text), ["inflight-1", "inflight-2"]);
    // Not acknowledged; the client leaves normally (no will) with both still inflight.
    await first.sendPacket({ cmd: "disconnect" });
    await first.expectClosed();
    await pub.publishAsync("s/3", "queued-3", { qos: 1 });
    await pub.publishAsync("s/4", "queued-4", { qos: 2 });

    await using second = await RawClient.connect(b.port);
    const ack2 = await second.handshake("pers", 5, PERSISTENT);
    assert.equal(ack2.sessionPresent, true, "Session Present on the other node");
    const got = [];
    for (let i = 0; i < 4; i++) got.push(await second.expect("publish"));
    assert.deepEqual(got.map(text), ["inflight-1", "inflight-2", "queued-3", "queued-4"]);
    assert.deepEqual(got.map((p) => p.dup), [true, true, false, false], "inflight resent with DUP");
    assert.deepEqual(got.map((p) => p.qos), [1, 2, 1, 2]);
    // Resent inflight keeps its packet identifiers.
    assert.deepEqual(got.slice(0, 2).map((p) => p.messageId), sent.map((p) => p.messageId));
    for (const p of got) await acknowledge(second, p);
    for (const p of [got[1], got[3]]) {
      const rel = await second.expect("pubrel");
      assert.equal(rel.messageId, p.messageId);
      await second.sendPacket({ cmd: "pubcomp", messageId: p.messageId });
    }
    // The subscription came along: routed to b at once.
    await pub.publishAsync("s/5", "live-5", { qos: 1 });
    const live = await second.expect("publish");
    assert.equal(text(live), "live-5");
    await acknowledge(second, live);
    await expectSilence(second, 300);
  },
});

Deno.test({
  name: "cluster: one client id on two nodes at once: one survivor, 0x8E for the other, none lost",
  ...opts,
  async fn() {
    await using cluster = await TestCluster.start({ names: ["a", "b"] });
    const [a, b] = cluster.nodes;
    await using pub = await connectClient(b.port, { clientId: "pub" });
    const setup = await RawClient.connect(a.port);
    await setup.handshake("twin", 5, PERSISTENT);
    await subscribe(setup, "t/#", 1);
    await setup.sendPacket({ cmd: "disconnect" });
    await setup.expectClosed();
    const N = 30;
    for (let i = 0; i < N; i++) await pub.publishAsync(`t/${i}`, `q${i}`, { qos: 1 });

    for (let round = 0; round < 3; round++) {
      // Both CONNECTs leave at the same time, one to each node.
      const [ca, cb] = await Promise.all([RawClient.connect(a.port), RawClient.connect(b.port)]);
      const connect = { cmd: "connect", protocolId: "MQTT", protocolVersion: 5, clientId: "twin" };
      await Promise.all(
        [ca, cb].map((c) => c.sendPacket({ ...connect, keepalive: 60, ...PERSISTENT })),
      );
      const [pa, pb] = await Promise.all([drain(ca), drain(cb)]);
      // The kick crosses Redis: on a loaded machine the loser may hear of it after a quiet spell.
      await Promise.any([ca.expectClosed(10_000), cb.expectClosed(10_000)]).catch(() => {});
      const later = await Promise.all([drain(ca, 500, 500), drain(cb, 500, 500)]);
      const outcome = [
        { c: ca, packets: [...pa, ...later[0]] },
        { c: cb, packets: [...pb, ...later[1]] },
      ];
      const survivors = outcome.filter((o) => !o.c.closed);
      assert.equal(survivors.length, 1, `round ${round}: exactly one connection survives`);
      const loser = outcome.find((o) => o.c.closed)!;
      const lastOfLoser = loser.packets.at(-1);
      if (loser.packets.some((p) => p.cmd === "connack" && p.reasonCode === 0)) {
        assert.equal(lastOfLoser?.cmd, "disconnect", `round ${round}: the old one is told why`);
        assert.equal(lastOfLoser?.reasonCode, 0x8e);
      }
      const survivor = survivors[0];
      const publishes = survivor.packets.filter((p) => p.cmd === "publish");
      const payloads = new Set(publishes.map(text));
      if (round === 0) {
        for (let i = 0; i < N; i++) assert.ok(payloads.has(`q${i}`), `q${i} reached the survivor`);
      }
      if (round === 1) assert.ok(payloads.has("next"), "queued during round 0, reached round 1");
      // Acknowledge everything, then leave; the next round starts from an empty queue.
      for (const p of publishes) await acknowledge(survivor.c, p);
      await survivor.c.sendPacket({ cmd: "disconnect" });
      await survivor.c.expectClosed();
      ca.close();
      cb.close();
      if (round === 0) {
        // Queue one more for the next rounds: it too must not be lost in a race.
        await pub.publishAsync("t/next", "next", { qos: 1 });
      }
    }
    // What was acknowledged is gone; the next connection on either node gets nothing old.
    await using last = await RawClient.connect(b.port);
    const ack = await last.handshake("twin", 5, PERSISTENT);
    assert.equal(ack.sessionPresent, true);
    await expectSilence(last, 300);
  },
});

/**
 * Sends a CONNECT as `user` (password `<user>-pw`, clean start unless `extra` says otherwise)
 * without waiting for the CONNACK.
 */
async function connectAs(
  port: number,
  clientId: string,
  user: string,
  level: 4 | 5 = 5,
  extra: Record<string, unknown> = {},
): Promise<RawClient> {
  const c = await RawClient.connect(port, level);
  await c.sendPacket({
    cmd: "connect",
    protocolId: "MQTT",
    protocolVersion: level,
    clientId,
    clean: true,
    keepalive: 60,
    username: user,
    password: `${user}-pw`,
    ...extra,
  }, level);
  return c;
}

/**
 * A password file for alice and bob (password `<user>-pw`) inside the repository: the nodes run
 * there with the shipped permissions, which allow reading only below their working directory
 * (and the deployment's mount points). Removed after `fn`.
 */
async function withPasswords(fn: (file: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({
    dir: new URL("../../", import.meta.url).pathname,
    prefix: ".test-passwd-",
  });
  try {
    const file = `${dir}/passwd`;
    const line = async (u: string) => `${u}:${await hashPassword(`${u}-pw`, 1000)}`;
    await Deno.writeTextFile(file, `${await line("alice")}\n${await line("bob")}\n`);
    await fn(file);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test({
  name: "cluster: the session's owner travels with it: another user is refused 0x87 on any node",
  ...opts,
  fn: () =>
    withPasswords(async (file) => {
      await using cluster = await TestCluster.start({
        names: ["a", "b"],
        args: [`--auth.password_file=${file}`],
      });
      const [a, b] = cluster.nodes;
      const as = (u: string) => ({ ...PERSISTENT, username: u, password: `${u}-pw` });
      /** Bob asks for alice's client id on b: refused 0x87 and closed. */
      const bobRefused = async () => {
        const bob = await connectAs(b.port, "owned", "bob", 5, PERSISTENT);
        assert.equal((await bob.expect("connack")).reasonCode, 0x87);
        await bob.expectClosed();
      };
      // A session that is not stored (no expiry, no will; 3.1.1 clean session too) is alice's
      // all the same while she is connected: bob on b neither gets the id nor kicks her.
      for (const level of [5, 4] as const) {
        const id = `live-${level}`;
        await using live = await RawClient.connect(a.port, level);
        await live.handshake(id, level, { username: "alice", password: "alice-pw" });
        await using bob = await connectAs(b.port, id, "bob", level);
        const ack = await bob.expect("connack");
        assert.equal(level === 5 ? ack.reasonCode : ack.returnCode, level === 5 ? 0x87 : 5);
        await live.sendPacket({ cmd: "pingreq" }, level);
        await live.expect("pingresp");
      }
      // bob's CONNECT on alice's node right behind hers (it waits its turn there): refused when
      // its turn comes, alice untouched. And alice taking over her own connection on a keeps the
      // id hers for the other node.
      for (let i = 0; i < 5; i++) {
        const id = `race-${i}`;
        await using first = await connectAs(a.port, id, "alice");
        await using bob = await connectAs(a.port, id, "bob");
        assert.equal((await first.expect("connack")).reasonCode, 0);
        assert.equal((await bob.expect("connack")).reasonCode, 0x87, `round ${i}: bob got the id`);
        await first.sendPacket({ cmd: "pingreq" });
        await first.expect("pingresp");
        // Taken over by alice herself, on the same node: still alice's id cluster-wide.
        await using again = await RawClient.connect(a.port);
        await again.handshake(id, 5, { username: "alice", password: "alice-pw" });
        assert.equal((await first.expect("disconnect")).reasonCode, 0x8e);
        await using bob2 = await connectAs(b.port, id, "bob");
        assert.equal((await bob2.expect("connack")).reasonCode, 0x87, "bob on b after a takeover");
      }
      const alice = await RawClient.connect(a.port);
      await alice.handshake("owned", 5, as("alice"));
      // Alice is online on a: bob on b must neither get the id nor kick her.
      await bobRefused();
      await expectSilence(alice, 300);
      await alice.sendPacket({ cmd: "disconnect" });
      await alice.expectClosed();
      // Offline, stored in Redis: still alice's.
      await bobRefused();
      await using alice2 = await RawClient.connect(b.port);
      const ack = await alice2.handshake("owned", 5, as("alice"));
      assert.equal(ack.sessionPresent, true);
    }),
});

Deno.test({
  name: "cluster: after a node restart Session Present is 1 only for sessions routed to",
  ...opts,
  async fn() {
    await using cluster = await TestCluster.start({ names: ["a", "b"] });
    const b = cluster.node("b");
    const aPort = cluster.node("a").port;
    await using pub = await connectClient(b.port, { clientId: "pub" });
    for (const how of ["kill", "stop"] as const) {
      const id = `p9-${how}`;
      const p = await RawClient.connect(aPort);
      await p.handshake(id, 5, PERSISTENT);
      await subscribe(p, `r9/${how}/#`, 1);
      await p.sendPacket({ cmd: "disconnect" });
      await p.expectClosed();
      const transient = await RawClient.connect(aPort);
      await transient.handshake(`t9-${how}`, 5, { clean: true });
      await subscribe(transient, `r9/${how}/#`, 1);
      // The node goes away with both sessions: kill -9, or a clean stop (rolling restart).
      if (how === "kill") await cluster.node("a").kill();
      else await cluster.node("a").stop();
      transient.close();
      await pub.publishAsync(`r9/${how}/while-down`, "while-down", { qos: 1 });
      const a2 = await cluster.add("a", aPort);
      // The transient session died with its connection.
      await using t2 = await RawClient.connect(a2.port);
      const tack = await t2.handshake(`t9-${how}`, 5, PERSISTENT);
      assert.equal(tack.sessionPresent, false, `${how}: no session for a clean-start client`);
      await using p2 = await RawClient.connect(a2.port);
      const pack = await p2.handshake(id, 5, PERSISTENT);
      assert.equal(pack.sessionPresent, true, `${how}: the persistent session is present`);
      // Present means routed: published on b right after the CONNACK, it arrives.
      await pub.publishAsync(`r9/${how}/after`, "after", { qos: 1 });
      const got = (await drain(p2)).filter((x) => x.cmd === "publish").map(text);
      assert.deepEqual(got, ["while-down", "after"], `${how}: queued and live messages`);
    }
  },
});

Deno.test({
  name:
    "cluster: CONNECTs with one client id at once, on one node and on two, leave one connection",
  ...opts,
  async fn() {
    await using cluster = await TestCluster.start({ names: ["a", "b"] });
    const [a, b] = cluster.nodes;
    for (
      const [round, ports] of [["one node", [a.port, a.port, a.port, a.port]], [
        "two nodes",
        [a.port, b.port, a.port, b.port, a.port, b.port],
      ]] as const
    ) {
      const id = `storm-${ports.length}`;
      // Sent together, none waiting for another's CONNACK.
      const clients = ports.map((port) =>
        mqtt.connect({
          host: "127.0.0.1",
          port,
          protocolVersion: 5,
          clientId: id,
          clean: false,
          properties: { sessionExpiryInterval: 300 },
          reconnectPeriod: 0,
          connectTimeout: 15_000,
        })
      );
      const answered = new Set<mqtt.MqttClient>();
      for (const c of clients) {
        c.on("error", () => {});
        c.on("connect", () => answered.add(c));
        c.on("close", () => answered.add(c));
      }
      try {
        // Every CONNECT answered (CONNACK, or refused and closed)...
        await eventually(
          `${round}: every CONNECT answered`,
          () => answered.size === clients.length,
        );
        // ...and the takeovers done: the losers were told 0x8E and closed.
        await new Promise((r) => setTimeout(r, 1500));
        const alive = clients.filter((c) => c.connected).length;
        assert.equal(alive, 1, `${round}: ${alive} connections with one client id are up`);
      } finally {
        for (const c of clients) c.end(true);
      }
    }
  },
});

Deno.test({
  name: "cluster: a session taken over by another node leaves the first node's session index",
  ...opts,
  async fn() {
    await using cluster = await TestCluster.start({
      names: ["a", "b"],
      args: ["--redis.session_ttl_grace_ms=1000"],
    });
    const [a, b] = cluster.nodes;
    const port = cluster.redis.port;
    const members = async () => {
      const keys = await redisQuery(port, "KEYS", "*:sessions") as string[];
      const out: string[] = [];
      for (const k of keys) out.push(...await redisQuery(port, "SMEMBERS", k) as string[]);
      return out.sort();
    };
    const expiring = { clean: false, properties: { sessionExpiryInterval: 2 } };
    for (let i = 0; i < 5; i++) {
      const first = await connectClient(a.port, { clientId: `moved-${i}`, ...expiring });
      await first.subscribeAsync(`moved/${i}`, { qos: 1 });
      const second = await connectClient(b.port, { clientId: `moved-${i}`, ...expiring });
      await second.endAsync();
      first.end(true);
    }
    // Indexed once, by the node that holds each session now.
    assert.deepEqual(await members(), [0, 1, 2, 3, 4].map((i) => `moved-${i}`));
    // Expired (2 s) and gone from Redis: no index keeps any of them.
    await eventually("the index is empty", async () => (await members()).length === 0, 10_000);
  },
});

Deno.test({
  name: "cluster: a CONNECT answered 0x88 at the connect timeout leaves no session holding the id",
  ...opts,
  fn: () =>
    withPasswords(async (file) => {
      await using cluster = await TestCluster.start({
        names: ["a", "b"],
        args: [`--auth.password_file=${file}`, "--limits.connect_timeout=1"],
      });
      const [a, b] = cluster.nodes;
      const connect = (port: number, user: string) => connectAs(port, "ghost", user);
      await using first = await connect(b.port, "alice");
      assert.equal((await first.expect("connack")).reasonCode, 0);
      // b frozen: alice's CONNECT on a waits for b to let go, and is told 0x88 at 1 s.
      b.signal("SIGSTOP");
      {
        await using c = await connect(a.port, "alice");
        assert.equal((await c.expect("connack", 5000)).reasonCode, 0x88);
      }
      await new Promise((r) => setTimeout(r, 1500));
      b.signal("SIGCONT");
      first.close();
      // Nobody holds the id now: before, the late attach bound a session on a that nobody
      // used, and it kept the id alice's (bob refused 0x87) for good.
      await eventually("bob may have the id", async () => {
        await using bob = await connect(a.port, "bob");
        return (await bob.expect("connack", 5000)).reasonCode === 0;
      }, 15_000);
    }),
});

Deno.test({
  name: "cluster: a CONNECT refused at limits.max_sessions neither keeps the id's claim nor " +
    "kicks the id's connection on another node",
  ...opts,
  fn: () =>
    withPasswords(async (file) => {
      await using cluster = await TestCluster.start({
        names: ["a", "b"],
        args: [`--auth.password_file=${file}`, "--limits.max_sessions=1"],
      });
      const [a, b] = cluster.nodes;
      const connect = (port: number, user: string, id: string) => connectAs(port, id, user);
      await using filler = await connect(a.port, "alice", "filler");
      assert.equal((await filler.expect("connack")).reasonCode, 0);
      // a is full: alice's new id is refused there...
      {
        await using c = await connect(a.port, "alice", "ghost");
        assert.equal((await c.expect("connack", 5000)).reasonCode, 0x97);
      }
      // It claimed nothing: before, each refused id left its owner, user and meta keys in Redis
      // for as long as the node lived (fresh ids in a loop: three keys each).
      await expectSilence(filler, 300);
      const left = await redisQuery(cluster.redis.port, "KEYS", "mcloudtt:{s:ghost}:*");
      assert.deepEqual(left, []);
      // ...and so is her id that lives on b (a clean session, nothing stored to resume), without
      // the refused CONNECT taking it over first: before, b's connection was cut and the client
      // had none.
      await using onB = await connect(b.port, "alice", "mover");
      assert.equal((await onB.expect("connack")).reasonCode, 0);
      {
        await using c = await connect(a.port, "alice", "mover");
        assert.equal((await c.expect("connack", 5000)).reasonCode, 0x97);
      }
      await expectSilence(onB, 500);
      assert.equal(onB.closed, false, "the connection on b was kept");
      // The refused id was never alice's: bob may have it (b has room once alice leaves it).
      onB.close();
      await eventually("bob may have the id", async () => {
        await using bob = await connect(b.port, "bob", "ghost");
        return (await bob.expect("connack", 5000)).reasonCode === 0;
      }, 10_000);
    }),
});
