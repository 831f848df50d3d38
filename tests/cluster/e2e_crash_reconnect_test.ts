/**
 * kill -9 of the node of a persistent QoS 1 subscriber while a publisher on
 * another node sends continuously: the subscriber's connection breaks at
 * once and it reconnects to a survivor right away, before the cluster has
 * noticed the death. Every acknowledged message reaches it, in order.
 *
 * A claim of a session whose node died waits until a survivor handled the
 * death: the survivor fills the session with what was left in the dead
 * node's inbox and hands it back. Messages published while the death went
 * unnoticed reach both the dead node's inbox and the new node's routes; the
 * session keeps one copy, so the only second copies are resends with DUP of
 * what was in flight at the kill, and, without DUP, messages the dead node
 * sent in its last moment before the store heard of them
 * (moving_sessions.ts).
 */
import { skipWithoutRedis } from "../helpers/redis.ts";
import { crashReconnect } from "./moving_sessions.ts";

Deno.test({
  name: "cluster: a subscriber whose node is killed reconnects at once and loses nothing",
  ignore: skipWithoutRedis(),
  sanitizeOps: false,
  sanitizeResources: false,
  fn: () => crashReconnect(1),
});
