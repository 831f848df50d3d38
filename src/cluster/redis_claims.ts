/**
 * Who owns each client id cluster-wide, and how a node takes one from
 * another: a compare-and-set owner key per client id holding
 * "<node> <claims so far>", a kick entry (`t` = k) written into the old
 * owner's inbox, and its released reply (`t` = r) written back into the
 * claimer's. A dead old owner never answers: the claim waits for the survivor
 * that handles it instead (see `untilHandled`).
 */
import { getLogger } from "@logtape/logtape";
import type { Config } from "../config/schema.ts";
import { bounded } from "./memory_hub.ts";
import type { RedisClient } from "./redis_connection.ts";
import type { InboxWriter } from "./inbox_writer.ts";
import type { ControlHandler } from "./redis_inbox.ts";
import type { Liveness } from "./redis_liveness.ts";
import { type ClusterKeys, type ClusterScripts, decodeUser, encodeUser } from "./redis_scripts.ts";
import { ForeignSessionError } from "./types.ts";

const log = getLogger(["mcloudtt", "cluster"]);

/** A kick found in a dead node's inbox: answered in its place once its sessions are adopted. */
export interface Kick {
  readonly from: string;
  readonly request: string;
}

export class SessionClaims {
  /** Takeovers waiting for the old owner's "released": request id -> resolve. */
  private readonly releases = new Map<string, () => void>();

  constructor(
    private readonly nodeId: string,
    private readonly keys: ClusterKeys,
    private readonly cmd: RedisClient,
    private readonly scripts: ClusterScripts,
    private readonly liveness: Liveness,
    private readonly writer: InboxWriter,
    private readonly cluster: Config["cluster"],
    /** True once the bus stopped: a claim stops waiting for a dead owner's survivor. */
    private readonly stopped: () => boolean,
    /** Another node took over `clientId` with claim number `epoch` (BusHost.sessionTakenOver). */
    private readonly takenOver: (clientId: string, epoch: number) => Promise<void> | undefined,
  ) {}

  /** Bus.claimSession. */
  async claim(
    clientId: string,
    numbered?: (epoch: number) => void,
    adoptingFrom?: string,
    owner?: string | null,
  ): Promise<number> {
    const adopting = adoptingFrom !== undefined;
    const keys: [string, string] = [this.keys.owner(clientId), this.keys.ownerUser(clientId)];
    // The owner key as last read: another user's claim after it refuses this one (ownerClaim).
    let expected = "*";
    if (adopting) {
      // A live node claimed it after the death: it gets the session once this one handed it back.
      const current = await this.cmd.get(keys[0]);
      const holder = current === null ? "" : current.slice(0, current.lastIndexOf(" "));
      if (holder !== "" && holder !== adoptingFrom && holder !== this.nodeId) return 0;
    } else {
      await this.untilHandled(clientId);
      if (owner !== undefined) expected = await this.refuseForeign(keys, owner) ?? "";
    }
    const user = owner === undefined ? "" : encodeUser(owner);
    // Recorded before the owner key (same connection, in order): a crash in between leaves an
    // id in the set whose key names another node, which the cleanup leaves alone.
    this.track(clientId, true);
    const previous = await this.scripts.ownerClaim(keys, this.nodeId, user, expected);
    if (previous?.startsWith("!")) {
      // Another user claimed the id since it was read: theirs; nobody is kicked.
      this.track(clientId, false);
      throw new ForeignSessionError(decodeUser(previous.slice(1)));
    }
    // The owner key holds "<node> <claims so far>"; this claim is the next one.
    const space = previous?.lastIndexOf(" ") ?? -1;
    const epoch = previous === null ? 1 : (Number(previous.slice(space + 1)) || 0) + 1;
    numbered?.(epoch);
    if (previous === null) return epoch;
    const old = previous.slice(0, space);
    if (old === this.nodeId || old === "") return epoch;
    if (!this.liveness.live.has(old) && !(await this.liveness.isLive(old))) return epoch;
    const request = crypto.randomUUID();
    const released = new Promise<void>((resolve) => this.releases.set(request, resolve));
    try {
      const sent = await this.writer.control(old, {
        t: "k",
        c: clientId,
        f: this.nodeId,
        q: request,
        e: String(epoch),
      });
      // Its inbox is gone: it left, or a survivor is finishing with it; wait for that.
      if (!sent) {
        if (!adopting) await this.untilHandled(clientId, old);
        return epoch;
      }
      // A node that died meanwhile never answers: stop waiting when its lease runs out.
      let done = false;
      let answered = false;
      released.then(() => answered = true);
      await Promise.race([
        bounded(released, this.cluster.takeover_timeout_ms),
        this.liveness.ended(old, () => done),
      ]);
      done = true;
      // It died holding the session: the survivor that handles it adopts the session with what
      // was left in its inbox and then owns it (this attach is outclaimed; the client's next
      // CONNECT takes the session from the survivor, complete).
      if (!answered && !adopting) await this.untilHandled(clientId, old);
    } finally {
      this.releases.delete(request);
    }
    return epoch;
  }

  /**
   * Throws ForeignSessionError when another live node holds the client id for a session of
   * another user. A session not stored (no expiry, no will) is known to other nodes only
   * through this record: without it any user could kick the owner's connection from elsewhere.
   * Returns the owner key as read: a claim by another user after it refuses this one in the
   * claim script (two users claiming at once: the first keeps the id).
   */
  private async refuseForeign(
    keys: [string, string],
    owner: string | null,
  ): Promise<string | null> {
    const [current, user] = await this.cmd.mget(keys[0], keys[1]);
    if (current === null || user === null || user === encodeUser(owner)) return current;
    const holder = current.slice(0, current.lastIndexOf(" "));
    if (holder === "" || holder === this.nodeId) return current;
    if (this.liveness.live.has(holder) || await this.liveness.isLive(holder)) {
      throw new ForeignSessionError(decodeUser(user));
    }
    return current;
  }

  /**
   * When `clientId`'s owner died and no survivor has handled it yet, waits
   * (at most a lease ttl plus the takeover timeout) until one has: the survivor
   * adopts the session and fills it with what was left in the dead node's
   * inbox, and this claim then takes it from the survivor like any other. A
   * claim that came first would load the session without those messages.
   */
  private async untilHandled(clientId: string, known?: string): Promise<void> {
    let old = known;
    if (old === undefined) {
      const current = await this.cmd.get(this.keys.owner(clientId));
      if (current === null) return;
      old = current.slice(0, current.lastIndexOf(" "));
    }
    if (old === "" || old === this.nodeId) return;
    const deadline = Date.now() + this.cluster.lease_ttl_ms + this.cluster.takeover_timeout_ms;
    while (!this.stopped() && Date.now() < deadline) {
      if (await this.liveness.isLive(old) || !(await this.liveness.unhandled(old))) return;
      await new Promise((r) => setTimeout(r, this.cluster.lease_renew_ms / 2));
    }
  }

  /** Bus.releaseSession. */
  release(clientId: string): void {
    const keys: [string, string] = [this.keys.owner(clientId), this.keys.ownerUser(clientId)];
    this.scripts.ownerRelease(keys, this.nodeId).catch((e) =>
      log.warn`releasing ${clientId}: ${(e as Error).message}`
    );
    this.track(clientId, false);
  }

  /**
   * Redis lost its data (restarted without persistence): writes again who holds the client ids
   * of the sessions here, and whose they are, unless a node claimed one since. Without this any
   * user could take the client id of another user's session, connected or offline, on another
   * node, and two nodes held it. The claim numbers were lost with them: this one is the clock's
   * millisecond, above any number a node holds for its own claim, so a later claim still
   * outnumbers it (a kick with a number at or below the holder's own is ignored). Returns how
   * many were written.
   */
  async restore(held: ReadonlyMap<string, { readonly owner: string | null }>): Promise<number> {
    const epoch = Date.now();
    let n = 0;
    const all = [...held];
    // A few hundred at a time: one pipeline each, not a round trip per session.
    for (let i = 0; i < all.length; i += 500) {
      const done = await Promise.all(
        all.slice(i, i + 500).map(([clientId, session]) => {
          this.track(clientId, true);
          const keys: [string, string] = [this.keys.owner(clientId), this.keys.ownerUser(clientId)];
          return this.scripts.ownerRestore(keys, this.nodeId, epoch, encodeUser(session.owner));
        }),
      );
      for (const k of done) n += k;
    }
    return n;
  }

  /** Adds `clientId` to (or removes it from) this node's set of written owner keys. */
  private track(clientId: string, claimed: boolean): void {
    const set = this.keys.owned(this.nodeId);
    (claimed ? this.cmd.sadd(set, clientId) : this.cmd.srem(set, clientId)).catch((e) =>
      log.warn`recording the owner key of ${clientId}: ${(e as Error).message}`
    );
  }

  /**
   * Deletes the owner keys (and user keys) that still name dead `node`, then its set of them.
   * Its adopted sessions were claimed by a survivor first, and a client that came back on a live
   * node claimed its id: the release script deletes a key only while it names `node`. Without
   * this, every clean session of a crashed node (server-assigned ids too) kept two keys in Redis
   * until its client id was used again, which for random ids is never.
   */
  async releaseAll(node: string): Promise<number> {
    const set = this.keys.owned(node);
    let cursor = "0";
    let released = 0;
    do {
      const [next, ids] = await this.cmd.sscan(set, cursor, "COUNT", 500);
      cursor = next;
      const done = await Promise.all(
        ids.map((id) =>
          this.scripts.ownerRelease([this.keys.owner(id), this.keys.ownerUser(id)], node)
        ),
      );
      for (const n of done) released += n > 0 ? 1 : 0;
    } while (cursor !== "0");
    await this.cmd.del(set);
    return released;
  }

  /** The bus stops: takeovers waiting for an answer stop waiting. */
  stop(): void {
    for (const r of this.releases.values()) r();
  }

  /** Kick and released entries from other nodes' takeovers (this node's inbox). */
  readonly control: ControlHandler = (fields) => {
    const type = fields.get("t");
    const request = fields.get("q") ?? "";
    if (type === "r") {
      this.releases.get(request)?.();
      return;
    }
    const clientId = fields.get("c");
    const from = fields.get("f");
    if (clientId === undefined || from === undefined) {
      log.warn("skipping a kick entry without client id or sender");
      return;
    }
    // Not awaited: closing the old connection must not hold up message delivery.
    (async () => {
      try {
        // A kick without a claim number (an older node) never beats a claim in progress here.
        await this.takenOver(clientId, Number(fields.get("e")) || 0);
      } catch (e) {
        log.warn`handing over ${clientId} to ${from}: ${(e as Error).message}`;
      }
      await this.writer.control(from, { t: "r", q: request });
    })().catch((e) => log.warn`replying to a kick from ${from}: ${(e as Error).message}`);
  };

  /** The kick a control entry of a dead node's inbox holds, or null. */
  kickOf(fields: Map<string, string>): Kick | null {
    const from = fields.get("f");
    if (fields.get("t") !== "k" || from === undefined) return null;
    return { from, request: fields.get("q") ?? "" };
  }

  /** Answers a kick the dead node it was sent to never answered. */
  answer(kick: Kick): void {
    this.writer.control(kick.from, { t: "r", q: kick.request }).catch(() => {});
  }
}
