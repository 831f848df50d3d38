/**
 * Users of a cluster who would harm each other across its nodes. The ACL: a wildcard
 * subscription or a retained message on one node never carries another node's forbidden topics,
 * and a share group's message goes to a member allowed to read it wherever that member is.
 * Session ownership: after Redis lost its data, another user still cannot take a client id.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import type { MqttClient } from "mqtt";
import { hashPassword } from "../../src/auth/passwords.ts";
import { collect, connackOf, connectClient, delay, RawClient } from "../helpers/broker.ts";
import { eventually, TestCluster } from "../helpers/cluster.ts";
import { skipWithoutRedis } from "../helpers/redis.ts";
import { redisQuery } from "../helpers/redis_resp.ts";
import {
  answerScram,
  authDataOf,
  connectScram,
  ScramClient,
  scramProperties,
} from "../helpers/scram_client.ts";

const ignore = skipWithoutRedis();
const opts = { ignore, sanitizeOps: false, sanitizeResources: false };

/** alice reads and writes everything; mallory only public/#. */
async function withAcl(fn: (args: string[]) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({
    dir: new URL("../../", import.meta.url).pathname,
    prefix: ".test-acl-",
  });
  try {
    const line = async (u: string) => `${u}:${await hashPassword(`${u}-pw`, 1000)}`;
    await Deno.writeTextFile(`${dir}/passwd`, `${await line("alice")}\n${await line("mallory")}\n`);
    await Deno.writeTextFile(
      `${dir}/acl`,
      "user alice\ntopic readwrite #\nuser mallory\ntopic readwrite public/#\n",
    );
    await fn([`--auth.password_file=${dir}/passwd`, `--auth.acl_file=${dir}/acl`]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const as = (user: string, clientId: string) => ({
  username: user,
  password: `${user}-pw`,
  clientId,
});

Deno.test({
  name: "cluster: a share group's message goes to a member on another node allowed to read it, " +
    "not to nobody when this node's members may not",
  ...opts,
  fn: () =>
    withAcl(async (args) => {
      // "local": a node holding the group serves it itself (the default).
      await using cluster = await TestCluster.start({ names: ["a", "b"], args });
      const [a, b] = cluster.nodes;
      await using mallory = await connectClient(a.port, as("mallory", "m-wild"));
      const malloryGot = collect(mallory);
      await mallory.subscribeAsync("#", { qos: 1 });
      await using alice = await connectClient(b.port, as("alice", "a-pub"));
      await alice.publishAsync("secret/r", "retained", { qos: 1, retain: true });
      // The same group on both nodes: mallory's member on a, alice's on b.
      await using member = await connectClient(b.port, as("alice", "a-member"));
      const memberGot = collect(member);
      await member.subscribeAsync("$share/g/#", { qos: 1 });
      await using intruder = await connectClient(a.port, as("mallory", "m-member"));
      const intruderGot = collect(intruder);
      const [granted] = await intruder.subscribeAsync("$share/g/#", { qos: 1 });
      assert.equal(granted.qos, 1, "granted: the ACL checks each message");
      await using pub = await connectClient(a.port, as("alice", "a-pub-on-a"));
      const n = 10;
      for (let i = 0; i < n; i++) await pub.publishAsync("secret/s", `${i}`, { qos: 1 });
      await pub.publishAsync("public/p", "open", { qos: 1 });
      // Before, a served the group (it holds a member), none of its members could read the
      // message and it was dropped: alice's member got none of the 10.
      await eventually(
        `alice's member gets all ${n} (has ${memberGot.messages.length})`,
        () => memberGot.messages.filter((m) => m.topic === "secret/s").length >= n,
        15_000,
      );
      assert.deepEqual(
        memberGot.messages.filter((m) => m.topic === "secret/s").map((m) => m.payload),
        Array.from({ length: n }, (_, i) => `${i}`),
      );
      // A fresh wildcard subscriber on a gets no retained secret from b.
      await using late = await connectClient(a.port, as("mallory", "m-late"));
      const lateGot = collect(late);
      await late.subscribeAsync("#", { qos: 1 });
      await eventually("mallory gets public/p", () =>
        malloryGot.messages.some((m) => m.topic === "public/p"));
      await delay(300);
      for (const got of [malloryGot, intruderGot, lateGot]) {
        assert.deepEqual(
          got.messages.filter((m) =>
            !m.topic.startsWith("public/")
          ),
          [],
        );
      }
    }),
});

Deno.test({
  name: "cluster: after Redis restarted without its data, another user still cannot take a " +
    "client id held on another node, and its owner's new connection still takes it over",
  ...opts,
  fn: () =>
    withAcl(async (args) => {
      await using cluster = await TestCluster.start({ names: ["a", "b"], args });
      const [a, b] = cluster.nodes;
      const kept = { clean: false, properties: { sessionExpiryInterval: 600 } };
      // On a: a clean session (known to Redis only by its owner keys) and a persistent one.
      await using clean = await connectClient(a.port, as("alice", "dev-clean"));
      await using persistent = await connectClient(a.port, {
        ...as("alice", "dev-kept"),
        ...kept,
      });
      await persistent.subscribeAsync("x/#", { qos: 1 });
      const ended = new Map<string, string>();
      for (const [id, c] of [["dev-clean", clean], ["dev-kept", persistent]] as const) {
        c.on("disconnect", (p) => ended.set(id, `DISCONNECT 0x${p.reasonCode?.toString(16)}`));
        c.on("close", () => ended.set(id, ended.get(id) ?? "closed"));
      }
      const resyncs = (out: string) => out.split("cluster state resynchronised").length;
      const [beforeA, beforeB] = [resyncs(a.output()), resyncs(b.output())];
      await cluster.redis.restart(true);
      // Both nodes found Redis empty and wrote their state again.
      await eventually(
        "both nodes resynchronised",
        () => resyncs(a.output()) > beforeA && resyncs(b.output()) > beforeB,
        20_000,
      );
      // Before, the owner keys were gone for good: mallory got both ids on b (CONNACK 0) while
      // alice's connections on a went on, two nodes holding each id.
      for (const id of ["dev-clean", "dev-kept"]) {
        assert.equal(await connackOf(b.port, { ...as("mallory", id), ...kept }), 0x87, id);
      }
      assert.deepEqual([...ended], [], "alice's connections on a are untouched");
      // alice herself moves her session to b: a lets go of it (0x8E), one holder again.
      await using moved = await connectClient(b.port, { ...as("alice", "dev-kept"), ...kept });
      await eventually("a closed alice's old connection", () => ended.has("dev-kept"), 15_000);
      assert.equal(ended.get("dev-kept"), "DISCONNECT 0x8e");
      assert.ok(moved.connected);
      const owner = await redisQuery(cluster.redis.port, "GET", "mcloudtt:{s:dev-kept}:own");
      assert.match(String(owner), new RegExp(`^${b.nodeId} `));
    }),
});

Deno.test({
  name: "cluster: what arrives for a session while it moves from a frozen node is held within " +
    "limits.max_queued_bytes, not max_queued_messages of any size",
  ...opts,
  async fn() {
    const maxBytes = 1024 * 1024;
    await using cluster = await TestCluster.start({
      names: ["a", "b"],
      args: [
        `--limits.max_queued_bytes=${maxBytes}`,
        "--cluster.takeover_timeout_ms=30000",
        "--general.log_format=json",
        "--general.log_levels=core=debug",
      ],
    });
    const [a, b] = cluster.nodes;
    const kept = { clean: false, properties: { sessionExpiryInterval: 600 } };
    const first = await connectClient(a.port, { clientId: "mover", ...kept });
    await first.subscribeAsync("big/#", { qos: 1 });
    await using pub = await connectClient(b.port, { clientId: "big-pub" });
    // a frozen (a stalled VM): the session's client comes back on b, whose takeover waits for a
    // to let go, holding meanwhile what is published for the session.
    a.signal("SIGSTOP");
    let moved: MqttClient | null = null as MqttClient | null;
    const moving = connectClient(b.port, { clientId: "mover", ...kept, connectTimeout: 60_000 })
      .then((c) => moved = c);
    try {
      await eventually("b holds the session's routes", async () => {
        const fields = await redisQuery(cluster.redis.port, "HKEYS", "mcloudtt:{rt}:table");
        return (fields as string[]).includes(`${b.nodeId}\nbig/#`);
      });
      const n = 40;
      const payload = Buffer.alloc(256 * 1024);
      for (let i = 0; i < n; i++) await pub.publishAsync("big/x", payload, { qos: 1 });
      a.signal("SIGCONT");
      await moving;
      first.end(true);
      const line = await b.proc.waitFor(/\{[^\n]*"message":"handed \d+ messages[^\n]*\}/, 30_000);
      const { n: handed, dropped, duplicates } = JSON.parse(line[0]) as Record<string, number>;
      assert.ok(handed + dropped + duplicates >= n, `the holder saw the ${n}: ${line[0]}`);
      // Before: all 40 (10 MiB) were held for a session whose queue may hold 1 MiB.
      const held = handed + duplicates;
      assert.ok(held <= maxBytes / payload.length, `held ${held} of 256 KiB: ${line[0]}`);
      console.log(line[0]);
    } finally {
      a.signal("SIGCONT");
      first.end(true);
      await moving.catch(() => {});
      moved?.end(true);
    }
  },
});

Deno.test({
  name: "cluster: two users claiming one new client id on two nodes at once: one gets it and " +
    "keeps its connection, the other is refused 0x87 without kicking it",
  ...opts,
  fn: () =>
    withAcl(async (args) => {
      await using cluster = await TestCluster.start({ names: ["a", "b"], args });
      const [a, b] = cluster.nodes;
      const kept = { clean: false, properties: { sessionExpiryInterval: 600 } };
      /** Resolves once `c` had a QoS 1 publish acknowledged; rejects when it closed first. */
      const stillConnected = (c: MqttClient) =>
        new Promise<void>((resolve, reject) => {
          const closed = () => reject(new Error("its connection was closed"));
          const timer = setTimeout(() => reject(new Error("no PUBACK within 10 s")), 10_000);
          c.once("close", closed);
          if (!c.connected) closed();
          c.publishAsync("public/ping", "", { qos: 1 }).then(() => resolve(), reject).finally(
            () => {
              clearTimeout(timer);
              c.off("close", closed);
            },
          );
        });
      const kicked: string[] = [];
      for (let i = 0; i < 12; i++) {
        const id = `race-${i}`;
        const both = await Promise.allSettled([
          connectClient(a.port, { ...as("alice", id), ...kept }),
          connectClient(b.port, { ...as("mallory", id), ...kept }),
        ]);
        const won = both.flatMap((r) => r.status === "fulfilled" ? [r.value] : []);
        const lost = both.flatMap((r) => r.status === "rejected" ? [r.reason] : []);
        try {
          assert.equal(won.length, 1, `${id}: one of the two gets the id`);
          assert.equal((lost[0] as { code?: number }).code, 0x87, `${id}: ${lost[0]}`);
          // Before, the second claim kicked the first one's connection (0x8E) and was refused
          // only then, when it found the session was not its user's: in 4 rounds of 12
          // nobody was left connected.
          await stillConnected(won[0]).catch((e) => kicked.push(`${id}: ${e.message}`));
        } finally {
          for (const c of won) c.end(true);
        }
      }
      assert.deepEqual(kicked, [], "the refused claim kicked the one that got the id");
    }),
});

Deno.test({
  name: "cluster: a SCRAM-SHA-512 login on one node resumes the session left on another (the " +
    "attach waits for the cluster), each node proving itself, and the queued message arrives",
  ...opts,
  fn: () =>
    withAcl(async (args) => {
      await using cluster = await TestCluster.start({ names: ["a", "b"], args });
      const [a, b] = cluster.nodes;
      // The inbox is made before the connection opens: a resumed session's queued messages come
      // right after CONNACK.
      const scramLogin = (port: number) => {
        const s = new ScramClient("alice", "alice-pw");
        let verified = false;
        let inbox: ReturnType<typeof collect> | undefined;
        return connectClient(port, {
          clientId: "alice-scram",
          clean: false,
          properties: scramProperties(s, { sessionExpiryInterval: 300 }),
        }, (client) => {
          answerScram(client, s);
          client.once("connect", (p) => (verified = s.verify(p.properties?.authenticationData)));
          inbox = collect(client);
        }).then((client) => ({ client, verified, inbox: inbox! }));
      };
      const first = await scramLogin(a.port);
      assert.ok(first.verified, "node a proved it holds alice's keys");
      await first.client.subscribeAsync("inbox/alice", { qos: 1 });
      await first.client.endAsync();
      await using pub = await connectClient(a.port, as("alice", "a-sender"));
      await pub.publishAsync("inbox/alice", "while away", { qos: 1 });

      const second = await scramLogin(b.port);
      assert.ok(second.verified, "node b proved it too");
      assert.equal((await second.inbox.next(10_000)).payload, "while away");
      await second.client.endAsync();
    }),
});

Deno.test({
  name: "cluster: an unknown user's SCRAM salt is the same from every node and after a node " +
    "restarts (the decoy key is the cluster's secret in Redis), so no node tells a real user " +
    "from an unknown one by a salt that moves",
  ...opts,
  fn: () =>
    withAcl(async (args) => {
      await using cluster = await TestCluster.start({ names: ["a", "b"], args });
      const saltOf = async (port: number, user: string) => {
        await using c = await RawClient.connect(port, 5);
        await connectScram(c, `probe-${user}`, new ScramClient(user, "guess").first());
        return Buffer.from(authDataOf(await c.expect("auth"))).toString().split(",")[1];
      };
      const [a, b] = cluster.nodes;
      const nobody = await saltOf(a.port, "nobody");
      const alice = await saltOf(a.port, "alice");
      assert.match(nobody, /^s=/);
      assert.equal(await saltOf(b.port, "nobody"), nobody);
      assert.equal(await saltOf(b.port, "alice"), alice);
      assert.notEqual(await saltOf(b.port, "nobody2"), nobody);
      await a.stop();
      const again = await cluster.add("a");
      assert.equal(await saltOf(again.port, "nobody"), nobody);
      assert.equal(await saltOf(again.port, "alice"), alice);
    }),
});
