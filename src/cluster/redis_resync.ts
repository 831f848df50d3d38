/**
 * Bringing a node and Redis back in line: after a reconnect, a Redis restart (in Redis Cluster
 * mode, one master's), an expulsion, or on the reconcile timer. The lease, the inbox group and
 * this node's routes are written again and the route mirror reloaded (the log may have been
 * trimmed or lost meanwhile); when Redis lost the cluster state (redis_marker.ts) the holders of
 * client ids, the sessions and the retained messages are written again too. Every step is
 * idempotent; one resync runs at a time, and one asked for meanwhile runs after it.
 */
import { getLogger } from "@logtape/logtape";
import { Cluster } from "ioredis";
import type { RedisClient } from "./redis_connection.ts";
import type { SessionClaims } from "./redis_claims.ts";
import type { Departures } from "./redis_departures.ts";
import type { InboxReader } from "./redis_inbox.ts";
import type { Liveness } from "./redis_liveness.ts";
import type { StateMarker } from "./redis_marker.ts";
import type { RouteSync } from "./redis_routes.ts";
import type { BusHost } from "./types.ts";

const log = getLogger(["mcloudtt", "cluster"]);

/** How often a resync that keeps failing says so. */
const RETRY_LOG_MS = 10_000;

/** What a resync works on (the bus's parts). */
export interface ResyncParts {
  cmd: RedisClient;
  marker: StateMarker;
  liveness: Liveness;
  claims: SessionClaims;
  departures: Departures;
  routes: RouteSync;
  reader: () => InboxReader | null;
  host: () => BusHost | null;
  /** True from the node's joining until it stops. */
  active: () => boolean;
  reconcileMs: number;
}

export class Resync {
  private running: Promise<void> | null = null;
  private again = false;
  private reconcile: ReturnType<typeof setInterval> | null = null;
  /** The resync that reloads the routes whole once the nodes kept live (`stateLost`) are not. */
  private cleanReload: ReturnType<typeof setTimeout> | null = null;

  constructor(private readonly p: ResyncParts) {}

  /** True while a resync runs (readiness says so). */
  get busy(): boolean {
    return this.running !== null;
  }

  /** Starts the reconcile timer and listens for what asks for a resync. */
  start(): void {
    const cmd = this.p.cmd;
    cmd.on("ready", () => {
      this.p.liveness.connectionBack();
      this.request("reconnected");
    });
    // Redis Cluster: a master that restarts leaves the client "ready"; only that node's connection
    // ends. The resync retries until the master answers again, and its witness (redis_marker.ts)
    // tells whether it came back empty.
    if (cmd instanceof Cluster) {
      cmd.on("-node", () => this.request("a redis cluster node's connection closed"));
    }
    this.reconcile = setInterval(() => this.request("reconcile"), this.p.reconcileMs);
  }

  stop(): void {
    if (this.reconcile !== null) clearInterval(this.reconcile);
    if (this.cleanReload !== null) clearTimeout(this.cleanReload);
    this.reconcile = this.cleanReload = null;
  }

  request(why: string): void {
    if (!this.p.active()) return;
    if (this.running !== null) {
      this.again = true;
      return;
    }
    this.running = this.run(why).finally(() => {
      this.running = null;
      if (this.again) {
        this.again = false;
        this.request(why);
      }
    });
  }

  /** A resync with a full route reload once the other nodes had time to announce theirs. */
  private cleanReloadLater(): void {
    if (this.cleanReload !== null) clearTimeout(this.cleanReload);
    this.cleanReload = setTimeout(() => {
      this.cleanReload = null;
      this.request("routes announced again after redis lost them");
    }, Math.max(0, this.p.liveness.keptUntil - Date.now()));
  }

  private async run(why: string): Promise<void> {
    const p = this.p;
    // Kept across attempts: the first one adopts the new marker value, and a retry must still
    // write the state again.
    let lost = false;
    let warnedAt = -Infinity;
    for (let attempt = 1; p.active(); attempt++) {
      try {
        if (p.cmd.status !== "ready") return; // the next "ready" asks again
        if (await p.marker.check()) {
          lost = true;
          p.liveness.stateLost();
        }
        await p.liveness.tick(false);
        // Expelled: a survivor is still handling this node; its renewal resyncs once it is done.
        if (p.liveness.expelled) return;
        const host = p.host();
        if (lost && host?.sessions !== undefined) {
          const n = await p.claims.restore(host.sessions);
          if (n > 0) log.info`wrote the holder of ${n} client ids again (redis lost them)`;
        }
        if (lost) host?.storeLost?.();
        await p.reader()?.ensureGroup();
        await p.departures.purgeDeparted();
        await p.routes.reannounce();
        // The other nodes announce their routes again once they notice the loss: until then
        // (while they are kept live, and in any resync meanwhile) the routes known of them stay.
        // Reloading at once dropped them, and with them QoS 1 messages acknowledged for their
        // subscribers (291-305 of 1,200 with one node paused 1.5 s).
        if (lost) this.cleanReloadLater();
        await p.routes.reload(Date.now() < p.liveness.keptUntil);
        if (why !== "reconcile" || lost) log.info`cluster state resynchronised (${why})`;
        return;
      } catch (e) {
        // Once every 10 s: a Redis Cluster master down for minutes made a line every 2 s.
        const now = Date.now();
        if (now - warnedAt >= RETRY_LOG_MS) {
          warnedAt = now;
          log.warn`resynchronising (${why}) failed (attempt ${attempt}): ${
            (e as Error).message
          }; retrying`;
        }
        await new Promise((r) => setTimeout(r, Math.min(2000, 100 * attempt)));
      }
    }
  }
}
