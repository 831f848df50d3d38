/**
 * What a node writes to the store again after Redis lost its data (restarted without
 * persistence): every session it holds and every retained message it holds, once it notices the
 * loss; and, at once, the sessions a store write found missing.
 *
 * A session is otherwise written again only when something changes it (the journal's
 * MissingSessionError): an offline session nobody touches stayed missing from Redis, and was
 * gone once its node stopped or died, with what was queued for it. Retained messages were never
 * written again: a node started afterwards, or every node after a rolling restart, had none of
 * them, though each had been acknowledged.
 *
 * Every node holds the retained messages, so every node writes them: each with its version, and
 * Redis keeps the newest of a topic's (retain_version.ts). A deletion made before the loss is
 * gone with Redis's tombstones, so a node still holding the older message (its inbox behind by
 * more than the loss) could bring it back: the same window a TOMBSTONE_MS bounds otherwise.
 *
 * A page at a time (`[storage] retained_page_messages` operations), each written before the
 * next is taken, so what waits for the store stays bounded however much there is; while Redis
 * is unreachable the rewrite waits with everything else.
 */
import { getLogger } from "@logtape/logtape";
import type { BrokerCore } from "./core.ts";
import type { Journal } from "./journal.ts";
import type { Session } from "./session.ts";

const log = getLogger(["mcloudtt", "core"]);

export class StoreRewrite {
  private running: Promise<void> | null = null;
  private again = false;

  constructor(private readonly core: BrokerCore) {}

  /** Starts a rewrite, or has the running one start over once done (Redis lost its data again). */
  request(): void {
    if (this.running !== null) {
      this.again = true;
      return;
    }
    this.running = this.loop().finally(() => this.running = null);
  }

  /**
   * The store holds nothing of these sessions any more (a write found them gone): those held
   * here are written whole again, from memory, so that what was acknowledged for them since is
   * kept.
   */
  sessions(clientIds: readonly string[]): void {
    for (const id of clientIds) {
      const s = this.core.sessions.get(id);
      if (s !== undefined) this.writeWhole(s);
    }
  }

  /** Writes `s` whole (state and subscriptions); false when it is not kept in the store. */
  private writeWhole(s: Session): boolean {
    if (s.journal === null) return false;
    s.persist(this.core.subscriptionsOf(s));
    return true;
  }

  private async loop(): Promise<void> {
    do {
      this.again = false;
      try {
        await this.rewrite();
      } catch (e) {
        log.error`writing the state again after Redis lost it failed: ${(e as Error).stack ?? e}`;
      }
    } while (this.again && this.core.journal?.isClosed === false);
  }

  private async rewrite(): Promise<void> {
    const core = this.core;
    const journal = core.journal;
    if (journal === null) return;
    const page = Math.max(1, core.limits.retainedPage.messages);
    let inPage = 0;
    /** Waits for the page's writes once it is full; false when the broker stopped. */
    const next = async (): Promise<boolean> => {
      if (++inPage < page) return !journal.isClosed;
      inPage = 0;
      return await written(journal);
    };
    let sessions = 0;
    // A Map's iterator stays valid while sessions come and go: one created meanwhile is written
    // by its own connect; one ended meanwhile is not visited.
    for (const s of core.sessions.values()) {
      if (!this.writeWhole(s)) continue;
      sessions++;
      if (!await next()) return;
    }
    const retained = core.router.retained;
    const now = core.clock.now();
    let messages = 0;
    // Clients cannot publish to "$" topics, and $SYS is never stored: "#" walks all there is.
    const c = retained.cursor("#");
    for (let r = c.next(); !r.done; r = c.next()) {
      const msg = r.value;
      if (msg.expired(now)) continue;
      journal.push({ type: "retain", msg, version: retained.versionOf(msg.topic) });
      messages++;
      if (!await next()) return;
    }
    if (!await written(journal)) return;
    log.warn(
      "redis had lost its data: wrote {sessions} sessions and {messages} retained messages held " +
        "here again",
      { sessions, messages },
    );
  }
}

/** Waits until what was pushed so far is written; false when the journal closed meanwhile. */
async function written(journal: Journal): Promise<boolean> {
  await journal.pending?.catch(() => {});
  return !journal.isClosed;
}
