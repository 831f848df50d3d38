/**
 * QoS 2 exactly once across the cluster in the two windows where a message
 * reaches one session from two nodes (see moving_sessions.ts): a subscriber
 * hopping between nodes while messages flow, and a subscriber reconnecting
 * elsewhere before the cluster noticed that its node was killed.
 */
import { skipWithoutRedis } from "../helpers/redis.ts";
import { crashReconnect, hoppingSubscriber } from "./moving_sessions.ts";

const ignore = skipWithoutRedis();
const opts = { ignore, sanitizeOps: false, sanitizeResources: false };

Deno.test({
  name: "cluster: QoS 2 to a subscriber hopping between nodes arrives exactly once",
  ...opts,
  fn: () => hoppingSubscriber({ qos: 2, n: 3000, hopEvery: 100 }),
});

Deno.test({
  name: "cluster: QoS 2 to a subscriber whose node is killed arrives exactly once",
  ...opts,
  fn: () => crashReconnect(2),
});
