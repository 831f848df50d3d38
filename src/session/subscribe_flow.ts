/**
 * SUBSCRIBE and UNSUBSCRIBE packets of one connection: decide, apply through
 * the core, and answer with SUBACK/UNSUBACK once what they confirm is written
 * (store, cluster routes), in the order the requests came.
 */
import { encodeSuback, encodeUnsuback } from "../protocol/control.ts";
import { decodeSubscribe, decodeUnsubscribe, type ProtocolLevel } from "../protocol/decode.ts";
import { ReasonCode } from "../protocol/reason_codes.ts";
import { parseFilter } from "../protocol/topic.ts";
import type { Subscription } from "../router/types.ts";
import type { Connection } from "./connection.ts";
import { State } from "./connection_state.ts";
import { decideSubscriptions, sendRetained, wantsRetained } from "./subscribe.ts";

/** The SUBSCRIBE `buf[start, end)` from the client of `c`. */
export function onSubscribe(c: Connection, buf: Uint8Array, start: number, end: number): void {
  const host = c.host;
  const level = c.level as ProtocolLevel;
  const pkt = decodeSubscribe(buf, start, end, level);
  const session = c.session!;
  const decisions = decideSubscriptions(
    pkt,
    session,
    host.limits,
    (filter) => host.maySubscribe(c.clientId, c.username, filter),
    host.subscriptionUsage(session),
  );
  const codes: number[] = [];
  const withRetained: Subscription[] = [];
  let waits: Promise<void>[] | null = null;
  const changed: Subscription[] = [];
  for (const d of decisions) {
    if (d.sub === undefined) {
      if (d.code === ReasonCode.QuotaExceeded) host.metrics.subscriptionsRefused++;
      codes.push(d.code);
      continue;
    }
    const r = host.subscribe(session, d.sub);
    changed.push(d.sub);
    if (r.ready !== null) (waits ??= []).push(r.ready);
    codes.push(d.sub.qos);
    if (wantsRetained(d.sub, r.existed)) withRetained.push(d.sub);
    else if (r.existed) session.retargetRetained(d.sub);
  }
  host.subscriptionsChanged(session, changed);
  // A subscription the client was told about must survive a crash.
  const written = session.written;
  if (written !== null) (waits ??= []).push(written);
  const finish = () => {
    if (c.state === State.Closed) return;
    if (!reply(c, encodeSuback(level, pkt.packetId, codes), "SUBACK")) return;
    if (withRetained.length !== 0) sendRetained(host, session, withRetained);
  };
  if (waits === null) finish();
  // A route that could not be written is retried by the cluster; the local subscription holds.
  else Promise.all(waits).catch(() => {}).then(finish);
}

/** The UNSUBSCRIBE `buf[start, end)` from the client of `c`. */
export function onUnsubscribe(c: Connection, buf: Uint8Array, start: number, end: number): void {
  const pkt = decodeUnsubscribe(buf, start, end, c.level as ProtocolLevel);
  const codes: number[] = [];
  const session = c.session!;
  const removed: string[] = [];
  for (const f of pkt.filters) {
    const tf = parseFilter(f, c.host.limits);
    if (typeof tf === "string") codes.push(ReasonCode.TopicFilterInvalid);
    else if (c.host.unsubscribe(session, tf.key)) {
      removed.push(tf.key);
      codes.push(ReasonCode.Success);
    } else codes.push(ReasonCode.NoSubscriptionExisted);
  }
  c.host.subscriptionsChanged(session, removed);
  const unsuback = encodeUnsuback(c.level as ProtocolLevel, pkt.packetId, codes);
  const written = session.written;
  if (written === null) reply(c, unsuback, "UNSUBACK");
  else {
    // The same chain as a waiting SUBACK's, so replies keep the order of their requests.
    Promise.all([written]).catch(() => {}).then(() => {
      if (c.state !== State.Closed) reply(c, unsuback, "UNSUBACK");
    });
  }
}

/**
 * Sends a SUBACK or UNSUBACK, unless it is larger than the client's Maximum Packet Size (one
 * code per filter: a SUBSCRIBE of many filters from a client allowing small packets), which the
 * server must not send [MQTT-3.1.2-24]: then DISCONNECT 0x95 Packet too large, since the client
 * would otherwise wait for it forever. False when the connection closed.
 */
function reply(c: Connection, packet: Uint8Array, what: string): boolean {
  if (c.fits(packet.length)) {
    c.outbox.push(packet);
    return true;
  }
  c.disconnect(
    ReasonCode.PacketTooLarge,
    `${what} of ${packet.length} bytes exceeds the client's Maximum Packet Size`,
  );
  return false;
}
