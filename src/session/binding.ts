/**
 * Which session a connection that passed authentication gets, and how a session ends: another
 * user's client id is refused, a live connection with the same id is taken over, a session is
 * resumed, replaced (Clean Start, expired) or made new within limits.max_sessions; an ending
 * session's will, routes and stored state go, and the shared-subscription messages it held are
 * handed to another member.
 */
import { getLogger } from "@logtape/logtape";
import { ReasonCode } from "../protocol/reason_codes.ts";
import { RateLimitedLog } from "../sinks/stats.ts";
import type { BrokerCore } from "./core.ts";
import type { AttachingConnection, AttachRequest, AttachResult } from "./host.ts";
import type { Session } from "./session.ts";

const log = getLogger(["mcloudtt", "core"]);

export class SessionBinding {
  /** The client id `bind` is giving to a new connection, while it runs. */
  private current: string | null = null;
  private readonly limitLog = new RateLimitedLog((m) => log.warn(m));

  constructor(private readonly core: BrokerCore) {}

  /** A refusal when another user's session holds `conn`'s client id on this node, else null. */
  foreignHere(conn: AttachingConnection, req: AttachRequest): AttachResult | null {
    const here = this.core.sessions.get(conn.clientId);
    return here === undefined || here.owner === req.owner
      ? null
      : this.refuseForeign(conn, here.owner);
  }

  /** Counted with the CONNACK that carries it (connect_flow.ts `refuse`), not here. */
  refuseForeign(conn: AttachingConnection, owner: string | null): AttachResult {
    log.warn("refused {clientId} from {addr}: the session belongs to another user", {
      clientId: conn.clientId,
      addr: conn.peer.remoteAddress,
      owner: owner ?? "(anonymous)",
    });
    return {
      ok: false,
      code: ReasonCode.NotAuthorized,
      reason: "client id is in use by another user",
    };
  }

  bind(conn: AttachingConnection, req: AttachRequest): AttachResult {
    this.current = conn.clientId;
    try {
      return this.bindNow(conn, req);
    } finally {
      this.current = null;
    }
  }

  private bindNow(conn: AttachingConnection, req: AttachRequest): AttachResult {
    // A session belongs to its user: on every path here (a cluster attach checks again, since
    // it waited for its claim and load meanwhile).
    const foreign = this.foreignHere(conn, req);
    if (foreign !== null) return foreign;
    const id = conn.clientId;
    let session = this.core.sessions.get(id);
    if (session !== undefined && session.link !== null) {
      // The old connection goes first so its will follows the usual rules.
      session.link.takenOver();
    }
    session = this.core.sessions.get(id);
    if (
      session !== undefined &&
      (req.cleanStart ||
        (session.link === null && session.expiresAt !== 0 &&
          this.core.clock.now() >= session.expiresAt))
    ) {
      // Clean Start, or a session whose expiry passed since the last sweep: it is not resumed.
      if (!req.cleanStart) this.core.metrics.sessionsExpired++;
      this.end(session);
      session = undefined;
    }
    let present = false;
    if (session === undefined) {
      // Only a new client id is refused: an existing session is still resumed or replaced.
      const full = this.sessionLimitRefusal();
      if (full !== null) return full;
      session = this.core.newSession(id);
      session.owner = req.owner;
      this.core.sessions.set(id, session);
    } else {
      present = true;
      // Reconnecting in time cancels a delayed will [MQTT-3.1.3-9].
      session.setWill(null);
      this.core.detached.delete(session);
    }
    return { ok: true, session, present };
  }

  /**
   * The refusal of a new session when limits.max_sessions are held here, else null. Counted
   * where its CONNACK goes out (connect_flow.ts).
   */
  sessionLimitRefusal(): AttachResult | null {
    if (this.core.sessions.size < this.core.limits.maxSessions) return null;
    this.limitLog.note(
      `refused a new session: ${this.core.sessions.size} sessions held (limits.max_sessions)`,
    );
    return { ok: false, code: ReasonCode.QuotaExceeded, reason: "session limit reached" };
  }

  /** Ends `session`: its will, routes and stored state go; shared messages it held move on. */
  end(session: Session): void {
    this.core.wills.sessionEnding(session);
    this.core.detached.delete(session);
    this.core.unsubscribeAll(session);
    const persisted = session.expiryInterval !== 0 || this.core.journal !== null;
    // Taken before clear(); handed on once the session is out of its groups (above).
    const leftovers = session.sharedLeftovers();
    session.clear();
    if (this.core.sessions.get(session.clientId) === session) {
      this.core.sessions.delete(session.clientId);
      // Ended because a new connection takes the client id here (bind): the claim is its.
      if (this.current !== session.clientId) this.core.bus.releaseSession(session.clientId);
      const journal = this.core.journal;
      const id = session.clientId;
      const taking = this.core.wills.taking(id);
      if (persisted && journal !== null) {
        if (taking === undefined) journal.push({ type: "session-delete", clientId: id });
        // Deleting the session first would delete its will before the store hands it over.
        else {
          taking.then(() => {
            if (!this.core.sessions.has(id)) journal.push({ type: "session-delete", clientId: id });
          });
        }
      }
    }
    if (leftovers !== null) {
      for (const [msg, group] of leftovers) {
        // A member here first; else one on another node (a cluster).
        if (
          this.core.router.redeliverShared(msg, group) ||
          this.core.bus.forwardShared(msg, group.key)
        ) this.core.metrics.sharedRedelivered++;
      }
    }
  }
}
