/** What the Redis-loss tests check once the nodes wrote their state again. */
import { collect, connectClient, endClient, RawClient } from "../helpers/broker.ts";
import type { ClusterNode, TestCluster } from "../helpers/cluster.ts";
import type { RedisBackend } from "../helpers/redis.ts";

/** The retained messages under `r/#` a node started now (named `name`) sends: topic -> payload. */
export async function retainedOnNewNode<R extends RedisBackend>(
  cluster: TestCluster<R>,
  name: string,
  count: number,
): Promise<{ received: number; byTopic: Map<string, string> }> {
  const node = await cluster.add(name);
  const sub = await connectClient(node.port, { clientId: "late" });
  const got = collect(sub);
  await sub.subscribeAsync("r/#", { qos: 1 });
  for (let i = 0; i < count; i++) await got.next(10_000);
  await got.none(300);
  await endClient(sub);
  const byTopic = new Map(got.messages.map((m) => [m.topic, String(m.payload)]));
  return { received: got.messages.length, byTopic };
}

/** Kills `node`, starts it again on its port and tells whether `clientId`'s session is there. */
export async function sessionAfterRestart<R extends RedisBackend>(
  cluster: TestCluster<R>,
  node: ClusterNode,
  clientId: string,
  connect: Record<string, unknown>,
): Promise<boolean> {
  await node.kill();
  const again = await cluster.add(node.name, node.port);
  const raw = await RawClient.connect(again.port);
  const ack = await raw.handshake(clientId, 5, connect);
  raw.close();
  return ack.sessionPresent === true;
}
