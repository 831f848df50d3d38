/**
 * A persistent-session QoS 1 subscriber that keeps moving between two nodes
 * (disconnect, connect to the other one, every few hundred messages) while a
 * publisher on one node sends 6,000 numbered QoS 1 messages: it receives
 * every one, in publish order, its session is present after every hop, and
 * at the end nothing is left queued for it.
 *
 * Second copies: only resends with DUP of what was in flight when the client
 * left. A message published during a hop reaches both nodes (the old node
 * until it let go, the new node's holder from before it asked: see
 * src/session/handover.ts), and the session keeps one copy (moving_sessions.ts).
 */
import { skipWithoutRedis } from "../helpers/redis.ts";
import { hoppingSubscriber } from "./moving_sessions.ts";

Deno.test({
  name: "cluster: a subscriber hopping between nodes gets all 6,000 messages in order",
  ignore: skipWithoutRedis(),
  sanitizeOps: false,
  sanitizeResources: false,
  fn: () => hoppingSubscriber({ qos: 1, n: 6_000, hopEvery: 250 }),
});
