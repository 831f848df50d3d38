/**
 * The cluster's Redis keys and Lua scripts. Every script touches keys of one
 * hash tag only (`{rt}` routes, `{nodes}` leases, `{s:<client id>}` one
 * session), so each runs on one Redis Cluster slot. Scripts are registered
 * with ioredis's defineCommand, which sends EVALSHA and falls back to EVAL
 * when a restarted Redis answers NOSCRIPT.
 */
import type { RedisClient } from "./redis_connection.ts";

/** Key names under the configured prefix. */
export class ClusterKeys {
  /** Route table: hash `<node>\n<key>` -> local subscriber count. */
  readonly table: string;
  /** Route log: stream of `k` key, `n` node, `p` "1" present / "0" gone. */
  readonly log: string;
  /** Last route-log id each node applied (for the SUBACK fence). */
  readonly applied: string;
  /** Set when the cluster state was written; gone after a Redis restart without persistence. */
  readonly marker: string;
  /** Sorted set: node incarnation -> lease deadline (ms, Redis clock). */
  readonly nodes: string;

  constructor(readonly prefix: string) {
    this.table = `${prefix}:{rt}:table`;
    this.log = `${prefix}:{rt}:log`;
    this.applied = `${prefix}:{rt}:applied`;
    this.marker = `${prefix}:{rt}:marker`;
    this.nodes = `${prefix}:{nodes}`;
  }

  /** Set of the route keys `node` holds (so a dead node's routes can be withdrawn). */
  nodeRoutes(node: string): string {
    return `${this.prefix}:{rt}:n:${node}`;
  }
  /** Claimed (SET NX) by the one survivor that handles dead `node`. */
  deadClaim(node: string): string {
    return `${this.prefix}:{nodes}:dead:${node}`;
  }
  /** Stream of forwarded messages and control entries for one node incarnation. */
  inbox(node: string): string {
    return `${this.prefix}:{n:${node}}:inbox`;
  }
  /** Owner of a client id: `<node> <epoch>`. */
  owner(clientId: string): string {
    return `${this.prefix}:{s:${clientId}}:own`;
  }
  /**
   * Set of the client ids whose owner key `node` wrote: a survivor clears the ones still naming a
   * dead node (sessions nobody stored are never adopted, so their keys had no one to delete them).
   */
  owned(node: string): string {
    return `${this.prefix}:{n:${node}}:owned`;
  }
  /** Who the session of the node in `owner` belongs to (see `encodeUser`); same hash slot. */
  ownerUser(clientId: string): string {
    return `${this.prefix}:{s:${clientId}}:user`;
  }
}

/** Approximate length the route log is trimmed to (nodes that fell further behind reload). */
export const ROUTE_LOG_MAXLEN = 100_000;

/**
 * Sets `node`'s count for a route key; appends to the log only when the route
 * appears or disappears. Absolute, so a retry or a re-announce is harmless.
 * KEYS: table, log, nodeRoutes. ARGV: node, key, count, maxlen.
 * Returns the log entry id, or false when nothing changed for other nodes.
 * A withdrawal deletes before it appends: Redis lets a script that has written go on writing
 * under OOM (`maxmemory`), so withdrawals go through while Redis is full; an appearing route is
 * refused whole then, and written again (RouteSync.writeAgainLater).
 */
const ROUTE_SET = `
local field = ARGV[1] .. "\\n" .. ARGV[2]
local old = tonumber(redis.call('HGET', KEYS[1], field) or '0')
local new = tonumber(ARGV[3])
if new > 0 then
  redis.call('HSET', KEYS[1], field, new)
  redis.call('SADD', KEYS[3], ARGV[2])
else
  redis.call('HDEL', KEYS[1], field)
  redis.call('SREM', KEYS[3], ARGV[2])
end
if (old > 0) ~= (new > 0) then
  return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*',
    'k', ARGV[2], 'n', ARGV[1], 'p', new > 0 and '1' or '0')
end
return false
`;

/**
 * Withdraws every route of a node (dead, departed or leaving).
 * KEYS: table, log, nodeRoutes. ARGV: node, maxlen. Returns the number withdrawn.
 */
const ROUTE_PURGE = `
local keys = redis.call('SMEMBERS', KEYS[3])
for _, key in ipairs(keys) do
  redis.call('HDEL', KEYS[1], ARGV[1] .. "\\n" .. key)
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'k', key, 'n', ARGV[1], 'p', '0')
end
redis.call('DEL', KEYS[3])
return #keys
`;

/**
 * Renews this node's lease on Redis's clock and reads the others'.
 * KEYS: nodes, dead claim of this node. ARGV: node, ttl ms, mustExist ("1" once joined).
 * Returns {state, now ms, live nodes..., "|", expired nodes...}; state: 0 renewed; 1 a survivor
 * handled this node as dead (its claim says "done"): lease registered again; 2 a survivor is
 * handling it now: not renewed; 3 the lease vanished without a claim (Redis lost it): registered
 * again.
 */
const LEASE_TICK = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = 0
local claim = redis.call('GET', KEYS[2])
if claim == 'done' then
  state = 1
  redis.call('DEL', KEYS[2])
elseif claim then
  state = 2
elseif ARGV[3] == '1' and not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  state = 3
end
if state ~= 2 then redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1]) end
local out = {state, now}
for _, n in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')) do out[#out + 1] = n end
out[#out + 1] = '|'
for _, n in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now, 'LIMIT', 0, 16)) do
  out[#out + 1] = n
end
return out
`;

/**
 * Claims a dead node for this one to handle, only while its lease is still
 * listed and run out (a node that renewed meanwhile, or one already handled,
 * is not claimed). KEYS: nodes, dead claim. ARGV: node, me, claim ms.
 * Returns 1 when claimed.
 */
const DEAD_CLAIM = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local deadline = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not deadline or tonumber(deadline) >= now then return 0 end
if redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3], 'NX') then return 1 end
return 0
`;

/**
 * A dead node was handled: its lease goes, and its claim says "done" (for
 * `doneMs`) so the node, should it wake up, learns it was expelled.
 * KEYS: nodes, dead claim. ARGV: node, done ms.
 */
const DEAD_DONE = `
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], 'done', 'PX', ARGV[2])
return 1
`;

/**
 * Makes a node the owner of a client id, bumping the epoch, and records whose session it is
 * (ARGV[2], "" for unknown: the record is dropped). ARGV[3]: the owner key as the claimer last
 * read it ("" for none; "*" to skip): when another user's claim came in between, nothing is
 * changed and "!" followed by that user's record is returned (two users claiming one id at once:
 * the first keeps it, the second kicks nobody).
 * KEYS: owner, user. ARGV: node, user, expected. Returns the previous `<node> <epoch>` or false.
 */
const OWNER_CLAIM = `
local old = redis.call('GET', KEYS[1])
if ARGV[3] ~= '*' and ARGV[2] ~= '' and (old or '') ~= ARGV[3] then
  local u = redis.call('GET', KEYS[2])
  if u and u ~= ARGV[2] then return '!' .. u end
end
local epoch = 0
if old then epoch = tonumber(string.match(old, ' (%d+)$') or '0') end
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. (epoch + 1))
if ARGV[2] == '' then redis.call('DEL', KEYS[2]) else redis.call('SET', KEYS[2], ARGV[2]) end
return old or false
`;

/** Clears ownership (and whose it was) if `node` still holds it. KEYS: owner, user. ARGV: node. */
const OWNER_RELEASE = `
local cur = redis.call('GET', KEYS[1])
if cur and string.sub(cur, 1, #ARGV[1] + 1) == ARGV[1] .. ' ' then
  redis.call('DEL', KEYS[2])
  return redis.call('DEL', KEYS[1])
end
return 0
`;

/**
 * Writes an owner (and whose session it is) Redis lost, unless a node claimed the id since.
 * KEYS: owner, user. ARGV: node, epoch, user. Returns 1 when written.
 */
const OWNER_RESTORE = `
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. ARGV[2])
if ARGV[3] ~= '' then redis.call('SET', KEYS[2], ARGV[3]) end
return 1
`;

/** A session owner as the user key holds it: "u:" and the name, or "-" for anonymous. */
export function encodeUser(owner: string | null): string {
  return owner === null ? "-" : `u:${owner}`;
}

/** The owner `encodeUser` wrote. */
export function decodeUser(raw: string): string | null {
  return raw.startsWith("u:") ? raw.slice(2) : null;
}

type ScriptArg = string | number;
type ScriptFn = (...args: ScriptArg[]) => Promise<unknown>;

/** Typed handles on the scripts of one client. */
export interface ClusterScripts {
  routeSet(keys: [string, string, string], node: string, key: string, n: number): Promise<
    string | null
  >;
  routePurge(keys: [string, string, string], node: string): Promise<number>;
  leaseTick(
    keys: [string, string],
    node: string,
    ttlMs: number,
    mustExist: boolean,
  ): Promise<LeaseTick>;
  deadClaim(keys: [string, string], node: string, me: string, claimMs: number): Promise<boolean>;
  deadDone(keys: [string, string], node: string, doneMs: number): Promise<void>;
  ownerClaim(
    keys: [string, string],
    node: string,
    user: string,
    expected: string,
  ): Promise<string | null>;
  ownerRelease(keys: [string, string], node: string): Promise<number>;
  ownerRestore(keys: [string, string], node: string, epoch: number, user: string): Promise<number>;
}

/** What a lease renewal found (see LEASE_TICK). */
export enum LeaseState {
  Renewed = 0,
  Handled = 1,
  Handling = 2,
  Vanished = 3,
}

export interface LeaseTick {
  state: LeaseState;
  now: number;
  live: string[];
  expired: string[];
}

/** Registers the scripts on `client` and returns typed callers. */
export function defineScripts(client: RedisClient): ClusterScripts {
  const defs: Record<string, [number, string]> = {
    mcRouteSet: [3, ROUTE_SET],
    mcRoutePurge: [3, ROUTE_PURGE],
    mcLeaseTick: [2, LEASE_TICK],
    mcDeadClaim: [2, DEAD_CLAIM],
    mcDeadDone: [2, DEAD_DONE],
    mcOwnerClaim: [2, OWNER_CLAIM],
    mcOwnerRelease: [2, OWNER_RELEASE],
    mcOwnerRestore: [2, OWNER_RESTORE],
  };
  for (const [name, [numberOfKeys, lua]] of Object.entries(defs)) {
    client.defineCommand(name, { numberOfKeys, lua });
  }
  // defineCommand adds methods ioredis's types cannot know about.
  const fn = (name: string): ScriptFn => {
    const f = (client as unknown as Record<string, ScriptFn>)[name];
    return (...args) => f.apply(client, args);
  };
  const routeSet = fn("mcRouteSet");
  const routePurge = fn("mcRoutePurge");
  const leaseTick = fn("mcLeaseTick");
  const deadClaim = fn("mcDeadClaim");
  const deadDone = fn("mcDeadDone");
  const ownerClaim = fn("mcOwnerClaim");
  const ownerRelease = fn("mcOwnerRelease");
  const ownerRestore = fn("mcOwnerRestore");
  return {
    routeSet: async (keys, node, key, n) =>
      (await routeSet(...keys, node, key, n, ROUTE_LOG_MAXLEN)) as string | null,
    routePurge: async (keys, node) => Number(await routePurge(...keys, node, ROUTE_LOG_MAXLEN)),
    leaseTick: async (keys, node, ttlMs, mustExist) => {
      const raw = (await leaseTick(...keys, node, ttlMs, mustExist ? "1" : "0")) as (
        | string
        | number
      )[];
      const bar = raw.indexOf("|");
      return {
        state: Number(raw[0]) as LeaseState,
        now: Number(raw[1]),
        live: raw.slice(2, bar).map(String),
        expired: raw.slice(bar + 1).map(String),
      };
    },
    deadClaim: async (keys, node, me, claimMs) =>
      Number(await deadClaim(...keys, node, me, claimMs)) === 1,
    deadDone: async (keys, node, doneMs) => {
      await deadDone(...keys, node, doneMs);
    },
    ownerClaim: async (keys, node, user, expected) =>
      (await ownerClaim(...keys, node, user, expected)) as string | null,
    ownerRelease: async (keys, node) => Number(await ownerRelease(...keys, node)),
    ownerRestore: async (keys, node, epoch, user) =>
      Number(await ownerRestore(...keys, node, epoch, user)),
  };
}
