/**
 * A client id's owner key (and its user key) in Redis lives as long as some
 * node holds the id: a node killed with -9 or the last node leaving must not
 * leave the keys of its clean sessions behind for good (server-assigned ids
 * are never used again, so nobody else would delete them).
 */
import assert from "node:assert/strict";
import { connectClient } from "../helpers/broker.ts";
import { eventually, TestCluster } from "../helpers/cluster.ts";
import { skipWithoutRedis } from "../helpers/redis.ts";
import { redisQuery } from "../helpers/redis_resp.ts";
import { ClusterKeys } from "../../src/cluster/redis_scripts.ts";

const ignore = skipWithoutRedis();
const opts = { ignore, sanitizeOps: false, sanitizeResources: false };
const keys = new ClusterKeys("mcloudtt");

/** Owner keys in Redis: client id -> the node incarnation named in it. */
async function owners(port: number): Promise<Map<string, string>> {
  const names = await redisQuery(port, "KEYS", "mcloudtt:{s:*}:own") as string[];
  const out = new Map<string, string>();
  for (const name of names) {
    const value = await redisQuery(port, "GET", name) as string | null;
    if (value === null) continue;
    const id = name.slice("mcloudtt:{s:".length, -"}:own".length);
    out.set(id, value.slice(0, value.lastIndexOf(" ")));
  }
  return out;
}

async function userKeys(port: number): Promise<number> {
  return (await redisQuery(port, "KEYS", "mcloudtt:{s:*}:user") as string[]).length;
}

Deno.test({
  name: "cluster: the owner keys of a node killed with -9 are deleted by the survivor; " +
    "adopted sessions and ids that moved keep theirs",
  ...opts,
  async fn() {
    await using cluster = await TestCluster.start({ names: ["a", "b"] });
    const [a, b] = cluster.nodes;
    const port = cluster.redis.port;
    const clients = [];
    for (let i = 0; i < 20; i++) clients.push(await connectClient(a.port, { clientId: `c${i}` }));
    // Server-assigned client ids: random, never seen again once their node is gone.
    for (let i = 0; i < 3; i++) clients.push(await connectClient(a.port, { clientId: "" }));
    const persistent = { clean: false, properties: { sessionExpiryInterval: 300 } };
    clients.push(await connectClient(a.port, { clientId: "keeper", ...persistent }));
    // One id moves from a to b while both live: a's record of it must go too.
    const first = await connectClient(a.port, { clientId: "mover" });
    await using moved = await connectClient(b.port, { clientId: "mover" });
    assert.equal(moved.connected, true);
    await eventually("mover's first connection closed", () => !first.connected);

    await eventually("owner keys written", async () => {
      const own = await owners(port);
      return [...own.values()].filter((n) => n === a.nodeId).length === 24;
    });
    const recorded = await redisQuery(port, "SMEMBERS", keys.owned(a.nodeId)) as string[];

    await a.kill();
    for (const c of clients) c.end(true);
    // The survivor adopts "keeper" (stored) and deletes every other key still naming a.
    await eventually("no owner key names the dead node", async () => {
      const own = await owners(port);
      return ![...own.values()].includes(a.nodeId);
    }, 15_000);
    const own = await owners(port);
    assert.equal(own.get("keeper"), b.nodeId, "the adopted session is owned by the survivor");
    assert.equal(own.get("mover"), b.nodeId, "the id held on b keeps its owner");
    assert.equal(own.size, 2, `left: ${[...own.keys()].join(", ")}`);
    // The set goes once its keys are released, one round trip after the last of them.
    await eventually(
      "the dead node's set of owner keys deleted",
      async () => (await redisQuery(port, "EXISTS", keys.owned(a.nodeId))) === 0,
    );
    assert.equal(await userKeys(port), 2);
    // How: a's set of the ids it holds (read before the kill), without the one that moved.
    assert.equal(recorded.includes("mover"), false, "an id taken over left a's set");
    assert.equal(recorded.length, 24);
  },
});

Deno.test({
  name: "cluster: the last node leaving cleanly leaves no owner keys behind",
  ...opts,
  async fn() {
    await using cluster = await TestCluster.start({ names: ["solo"] });
    const [solo] = cluster.nodes;
    const port = cluster.redis.port;
    const persistent = { clean: false, properties: { sessionExpiryInterval: 300 } };
    const clients = [];
    for (let i = 0; i < 5; i++) clients.push(await connectClient(solo.port, { clientId: `s${i}` }));
    clients.push(await connectClient(solo.port, { clientId: "stored", ...persistent }));
    await eventually("owner keys written", async () => (await owners(port)).size === 6);
    await solo.stop();
    for (const c of clients) c.end(true);
    assert.equal((await owners(port)).size, 0);
    assert.equal(await userKeys(port), 0);
    assert.equal(await redisQuery(port, "EXISTS", keys.owned(solo.nodeId)), 0);
  },
});
