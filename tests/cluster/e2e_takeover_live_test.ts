/**
 * A session taken over by a new connection on another node while its old
 * connection still receives and acknowledges, several times while messages
 * flow (moving_sessions.ts): what the old connection completed in the
 * overlap is remembered with the session (`[cluster] dedupe_window`), so the
 * new connection does not get it again: no second copy without DUP at QoS 1,
 * exactly once at QoS 2. (With dedupe_window = 0 the QoS 1 case saw about
 * a hundred second copies without DUP.)
 */
import { skipWithoutRedis } from "../helpers/redis.ts";
import { takenOverWhileConnected } from "./moving_sessions.ts";

const ignore = skipWithoutRedis();
const opts = { ignore, sanitizeOps: false, sanitizeResources: false };

Deno.test({
  name: "cluster: QoS 1 to a session taken over while its old connection still acknowledges " +
    "comes again only as DUP resends",
  ...opts,
  fn: () => takenOverWhileConnected(1),
});

Deno.test({
  name: "cluster: QoS 2 to a session taken over while its old connection still acknowledges " +
    "arrives exactly once",
  ...opts,
  fn: () => takenOverWhileConnected(2),
});
