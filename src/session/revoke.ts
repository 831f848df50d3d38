/**
 * Revocation after the password file or ACL is reloaded (SIGHUP): what the new files forbid stops
 * at once instead of lasting until clients reconnect.
 */
import { getLogger } from "@logtape/logtape";
import { subscribeAccess } from "../auth/access.ts";
import type { PasswordFile } from "../auth/passwords.ts";
import { ReasonCode } from "../protocol/reason_codes.ts";
import type { BrokerCore } from "./core.ts";

const log = getLogger(["mcloudtt", "auth"]);

/**
 * Re-decides every subscription of every session, online or offline, against the core's current
 * authorizer: forbidden ones are removed (and the persistent session saved without them), the
 * others get their per-message check flag recomputed. Returns how many were removed.
 */
export function reapplySubscriptionAccess(core: BrokerCore): number {
  let removed = 0;
  for (const session of [...core.sessionList()]) {
    const ctx = { clientId: session.clientId, username: session.username };
    let changed = false;
    for (const sub of [...core.router.subscriptionsOf(session)]) {
      const access = subscribeAccess(core.authorizer, ctx, sub.key);
      if (access === 0) {
        core.unsubscribe(session, sub.key);
        changed = true;
        removed++;
        log.info("removed subscription {key} of {clientId}: the reloaded ACL forbids it", {
          key: sub.key,
          clientId: session.clientId,
        });
      } else {
        sub.needsCheck = access === 2;
      }
    }
    if (changed) core.sessionChanged(session);
  }
  return removed;
}

/**
 * Disconnects (MQTT 5: DISCONNECT 0x87) every client that logged in with a password whose entry
 * in the password file was removed or changed between `before` and `after`. Clients identified
 * by a certificate, and anonymous ones, are not affected. Returns how many were disconnected.
 */
export function disconnectRevokedPasswords(
  core: BrokerCore,
  before: PasswordFile | null,
  after: PasswordFile | null,
): number {
  if (before === null) return 0;
  let n = 0;
  for (const conn of [...core.connectionList()]) {
    if (!conn.connected || conn.peer.certificateIdentity !== undefined) continue;
    const username = conn.username;
    if (username === undefined) continue;
    const entry = before.entryOf(username);
    if (entry === undefined || after?.entryOf(username) === entry) continue;
    log.info("disconnecting {clientId}: the password of {username} was removed or changed", {
      clientId: conn.clientId,
      username,
    });
    conn.disconnect(ReasonCode.NotAuthorized, "credentials revoked");
    n++;
  }
  return n;
}
