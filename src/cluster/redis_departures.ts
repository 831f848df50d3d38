/**
 * Nodes that went away, seen from a survivor: a dead node (its lease ran
 * out, and Liveness picked this node to handle it) has its sessions adopted,
 * its routes withdrawn, what was left in its inbox delivered to the adopted
 * sessions and the takeovers that waited for it answered; an incarnation that
 * left no lease behind has its stale routes withdrawn when a node starts.
 */
import { getLogger } from "@logtape/logtape";
import type { RedisClient } from "./redis_connection.ts";
import type { Kick, SessionClaims } from "./redis_claims.ts";
import { drainInbox } from "./redis_inbox.ts";
import type { Liveness } from "./redis_liveness.ts";
import type { RouteSync } from "./redis_routes.ts";
import type { ClusterKeys } from "./redis_scripts.ts";
import type { OrphanDelivery } from "./types.ts";

const log = getLogger(["mcloudtt", "cluster"]);

export class Departures {
  constructor(
    private readonly nodeId: string,
    private readonly keys: ClusterKeys,
    private readonly cmd: RedisClient,
    private readonly routes: RouteSync,
    private readonly liveness: Liveness,
    private readonly claims: SessionClaims,
    /** BusHost.nodeDown: adopts the dead node's sessions. */
    private readonly nodeDown: (node: string) => Promise<OrphanDelivery | void> | undefined,
  ) {}

  /** One survivor cleans up after a dead node (called by Liveness after it won the claim). */
  async dead(node: string): Promise<void> {
    // Adopt first: the sessions' routes are here before the dead node's are withdrawn, so a
    // publish in between reaches them (possibly twice, never not at all).
    let orphans: OrphanDelivery | void = undefined;
    const kicks: Kick[] = [];
    try {
      orphans = await this.nodeDown(node);
    } catch (e) {
      log.error`nodeDown(${node}) failed: ${(e as Error).stack ?? e}`;
    }
    try {
      const n = await this.routes.purge(node);
      log.warn`node ${node} is dead: withdrew its ${n} routes`;
      // What was forwarded to the dead node and acknowledged to its publishers is in its inbox:
      // once no node forwards there any more, it goes to the adopted sessions.
      await this.routes.settle();
      const inbox = this.keys.inbox(node);
      const left = await drainInbox(
        this.cmd,
        inbox,
        (msg, groups, redelivery) => orphans?.deliver(msg, groups, redelivery),
        (fields) => {
          // A takeover waiting for the dead node: answered in its place once the adopted
          // sessions are complete (below).
          const kick = this.claims.kickOf(fields);
          if (kick !== null) kicks.push(kick);
        },
      );
      if (left > 0) log.info`delivered ${left} messages left in the inbox of dead node ${node}`;
      const released = await this.claims.releaseAll(node);
      if (released > 0) log.info`deleted ${released} client id owner keys of dead node ${node}`;
      await this.routes.forgetApplied(node);
      await this.cmd.del(inbox);
    } finally {
      // The adopted sessions stop holding what reached them meanwhile, even after a failure.
      await Promise.resolve(orphans?.done()).catch((e) =>
        log.error`finishing the adoption from ${node} failed: ${(e as Error).message}`
      );
      for (const k of kicks) this.claims.answer(k);
    }
  }

  /** Routes of incarnations that are gone (no lease) are withdrawn when a node starts. */
  async purgeDeparted(): Promise<void> {
    const holders = await this.routes.tableNodes();
    for (const node of holders) {
      if (node === this.nodeId || this.liveness.live.has(node)) continue;
      // A lease that ran out but is still listed is not a departure: its node was cut off from
      // Redis as this one was (a failover) and renews, or it died and is handled as dead
      // (sessions adopted before its routes go).
      if ((await this.cmd.zscore(this.keys.nodes, node)) !== null) continue;
      const n = await this.routes.purge(node);
      log.info`withdrew ${n} stale routes of departed node ${node}`;
    }
  }
}
