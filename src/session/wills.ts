/**
 * When a session's will is published (its connection ended without a normal
 * DISCONNECT, its delay ran out, or its session ends first) and how: through
 * BrokerCore's one way in for messages, and for a session adopted from a dead
 * node only after the store handed the will over (once, cluster-wide).
 */
import { getLogger } from "@logtape/logtape";
import { Message } from "../protocol/message.ts";
import type { PublishInfo } from "../sinks/types.ts";
import { isClusterStore } from "../store/types.ts";
import type { BrokerCore } from "./core.ts";
import type { WillOutcome } from "./host.ts";
import type { Session } from "./session.ts";
import type { Will } from "./session_types.ts";

const log = getLogger(["mcloudtt", "core"]);

const WILL_INFO: PublishInfo = Object.freeze({
  clientId: "",
  username: undefined,
  receivedAt: 0,
  kind: "will",
});

export class Wills {
  /** Adopted sessions whose will is being taken from the store (cluster-wide once). */
  private readonly takingWill = new Map<string, Promise<unknown>>();

  constructor(private readonly core: BrokerCore) {}

  /** The session lost its connection at `now`: its will goes now, later, or not at all. */
  connectionLost(session: Session, now: number): WillOutcome {
    const will = session.will;
    if (will === null) return "none";
    if (will.delay === 0 || session.expiryInterval === 0) {
      this.publish(session);
      return "sent";
    }
    session.willAt = now + Math.min(will.delay, session.expiryInterval) * 1000;
    return "delayed";
  }

  /** Sweep: publishes a detached session's will once its delay ran out. */
  publishDue(session: Session, now: number): void {
    if (session.willAt !== 0 && now >= session.willAt) this.publish(session);
  }

  /** The session ends: a will still waiting for its delay is sent now [MQTT-3.1.3-9]. */
  sessionEnding(session: Session): void {
    if (session.will !== null && session.link === null && session.willAt !== 0) {
      this.publish(session);
    }
  }

  /** Resolves once the store handed over (or kept) the will of `clientId`; undefined if not taking. */
  taking(clientId: string): Promise<unknown> | undefined {
    return this.takingWill.get(clientId);
  }

  private publish(session: Session): void {
    const will = session.will;
    session.setWill(null);
    if (will === null) return;
    const store = this.core.store;
    if (this.core.adopted.has(session.clientId) && isClusterStore(store)) {
      // A session adopted from a dead node: its client may have come back on another node
      // since; the store hands the will to its owner once, cluster-wide.
      const id = session.clientId;
      const taking = store.takeWill(id).then(
        (w) => w !== null && this.send(session, will),
        (e) =>
          log.error("taking the will of {clientId}: {error}", { clientId: id, error: String(e) }),
      ).finally(() => {
        if (this.takingWill.get(id) === taking) this.takingWill.delete(id);
      });
      this.takingWill.set(id, taking);
      return;
    }
    this.send(session, will);
  }

  private send(session: Session, will: Will): void {
    const core = this.core;
    const m = will.msg;
    // Checked at CONNECT, and again now: the ACL may have been reloaded since (SIGHUP), or the
    // broker restarted with another, while the will waited for its connection to end.
    if (!core.mayPublish(session.clientId, session.username, m.topic)) {
      log.info("dropped the will of {clientId}: the ACL no longer lets it publish to {topic}", {
        clientId: session.clientId,
        topic: m.topic,
      });
      core.sessionChanged(session);
      return;
    }
    const msg = will.expiry >= 0
      ? new Message(
        m.topic,
        m.topicBytes,
        m.payload,
        m.qos,
        m.retain,
        m.props,
        core.clock.now() + will.expiry * 1000,
        m.origin,
      )
      : m;
    core.metrics.willsPublished++;
    log.debug("publishing will of {clientId} to {topic}", {
      clientId: session.clientId,
      topic: m.topic,
    });
    core.publish(msg, { ...WILL_INFO, clientId: session.clientId, username: session.username });
    core.sessionChanged(session);
  }
}
