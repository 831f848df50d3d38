/**
 * MQTT 5 enhanced authentication for one connection (sections 3.15 and 4.12): a CONNECT with an
 * Authentication Method starts an exchange of AUTH packets (Continue authentication, 0x18) that
 * ends in CONNACK; once connected, the client may authenticate again (Re-authenticate, 0x19),
 * ending in AUTH Success or DISCONNECT. What the exchange proves is the authenticator's business
 * (auth/scram.ts behind PolicyAuthenticator); this module runs the packets around it.
 */
import type { AuthExchange, AuthStep, ConnectRequest } from "../auth/types.ts";
import { encodeAuth, encodeConnack } from "../protocol/control.ts";
import {
  checkFixedHeader,
  type ConnectPacket,
  decodeAuth,
  PacketType,
} from "../protocol/decode.ts";
import { ProtocolError, ReasonCode } from "../protocol/reason_codes.ts";
import { authenticated, refuse, requestOf } from "./connect_flow.ts";
import type { Connection } from "./connection.ts";
import { State } from "./connection_state.ts";
import { connackProperties, type Negotiated } from "./negotiate.ts";

/** A connection's enhanced authentication: its method, and the exchange under way if any. */
export interface AuthState {
  readonly method: string;
  exchange: AuthExchange | null;
  /** The CONNECT the exchange answers, until CONNACK; null for a re-authentication. */
  connect: { pkt: ConnectPacket; n: Negotiated } | null;
  /** When the re-authentication under way began (clock ms): it has `limits.connect_timeout`. */
  since: number;
}

/** CONNECT asked for enhanced authentication by `method`: its first step, or 0x8C. */
export function startExchange(
  c: Connection,
  method: string,
  req: ConnectRequest,
  pkt: ConnectPacket,
  n: Negotiated,
): void {
  const exchange = c.host.exchange(method, req);
  if (exchange === undefined) {
    return refuse(c, ReasonCode.BadAuthenticationMethod, `authentication method not offered`);
  }
  c.auth = { method, exchange, connect: { pkt, n }, since: 0 };
  // The client has proven nothing yet: its AUTH packets are held to the CONNECT's bound, not
  // limits.max_packet_size (raised for what is pipelined behind CONNECT, which the backlog
  // bounds). Else a stranger made the broker keep a packet of max_packet_size per socket until
  // the connect timeout. Restored when the exchange ends (`advance`).
  c.framer.maxPacketSize = Math.min(
    c.host.limits.maxConnectPacketSize,
    c.host.limits.maxPacketSize,
  );
  // Read on: the client's next AUTH is needed (packets other than AUTH are refused meanwhile,
  // and the connect timeout still counts from the accept).
  c.state = State.Authenticating;
  advance(c, exchange.step(pkt.properties.authenticationData));
}

/**
 * A packet while the CONNECT's exchange is under way: only AUTH (Continue authentication, the
 * CONNECT's method) or DISCONNECT [MQTT-3.1.2-30, MQTT-4.12.0-4]. False when it ended reading.
 */
export function duringExchange(
  c: Connection,
  header: number,
  buf: Uint8Array,
  start: number,
  end: number,
): boolean {
  const type = header >> 4;
  checkFixedHeader(type, header & 0x0f, 5);
  if (type === PacketType.DISCONNECT) {
    c.end(false);
    return false;
  }
  if (type !== PacketType.AUTH) {
    throw new ProtocolError(
      ReasonCode.ProtocolError,
      "only AUTH may answer an AUTH before CONNACK",
    );
  }
  const a = c.auth!;
  const p = decodeAuth(buf, start, end);
  if (p.reasonCode !== ReasonCode.ContinueAuthentication || p.method !== a.method) {
    throw new ProtocolError(ReasonCode.ProtocolError, "AUTH must continue the CONNECT's method");
  }
  advance(c, a.exchange!.step(p.data));
  return c.state !== State.Closed;
}

/** AUTH from a connected client: a re-authentication, or its next step [MQTT-4.12.1-1]. */
export function onAuth(c: Connection, buf: Uint8Array, start: number, end: number): void {
  const a = c.auth;
  if (a === null) {
    throw new ProtocolError(ReasonCode.ProtocolError, "AUTH without an authentication method");
  }
  const p = decodeAuth(buf, start, end);
  if (p.method !== a.method) {
    throw new ProtocolError(ReasonCode.ProtocolError, "AUTH with another authentication method");
  }
  if (p.reasonCode === ReasonCode.ReAuthenticate && a.exchange === null) {
    const exchange = c.host.exchange(a.method, requestOf(c, c.clientId, c.username, 5));
    if (exchange === undefined) {
      // The method was withdrawn since CONNECT ([auth] reloaded): no longer vouched for.
      return c.disconnect(ReasonCode.NotAuthorized, "authentication method no longer offered");
    }
    a.exchange = exchange;
    a.since = c.host.clock.now();
    return advance(c, exchange.step(p.data));
  }
  if (p.reasonCode === ReasonCode.ContinueAuthentication && a.exchange !== null) {
    return advance(c, a.exchange.step(p.data));
  }
  throw new ProtocolError(
    ReasonCode.ProtocolError,
    `AUTH 0x${p.reasonCode.toString(16)} out of turn`,
  );
}

/**
 * Called by the keep-alive sweep: a re-authentication started and left unfinished for longer than
 * `limits.connect_timeout` ends the connection with 0x87, as the same exchange before CONNACK
 * would. Else a client could keep an exchange (its nonces and the authenticator's state) open for
 * ever, and go on under the identity it set out to prove again. True when it ended it. While this
 * side is not reading (`held`: over its rate, acknowledgements or forwards waiting), the client's
 * next AUTH may be waiting in the socket: the time starts again, as its keep alive does.
 */
export function reauthOverdue(c: Connection, now: number, held: boolean): boolean {
  const a = c.auth;
  if (a === null || a.exchange === null || a.connect !== null) return false;
  if (held) a.since = now;
  if (now - a.since <= c.host.limits.connectTimeoutMs) return false;
  c.disconnect(ReasonCode.NotAuthorized, "re-authentication not finished in time");
  return true;
}

/** The exchange's next step: more data for the client, or its end. */
function advance(c: Connection, s: AuthStep): void {
  const a = c.auth!;
  if (!s.done) {
    const packet = encodeAuth(ReasonCode.ContinueAuthentication, a.method, s.data);
    if (c.fits(packet.length)) c.outbox.push(packet);
    else tooLarge(c, "AUTH");
    return;
  }
  a.exchange = null;
  const connect = a.connect;
  if (connect !== null) {
    a.connect = null;
    c.framer.maxPacketSize = c.host.limits.maxPacketSize;
    const n = connect.n;
    n.auth = { method: a.method, data: s.data };
    if (s.decision.ok) {
      const size = encodeConnack(5, true, 0, connackProperties(n, c.host.limits)).length;
      if (!c.fits(size)) return tooLarge(c, "CONNACK");
    }
    // As for a password check: nothing more is read until the session is attached.
    c.pauseReading();
    const step = authenticated(c, s.decision, connect.pkt, n);
    if (step instanceof Promise) step.catch((e) => c.fail(e));
    return;
  }
  const d = s.decision;
  if (!d.ok) return c.disconnect(ReasonCode.NotAuthorized, d.reason);
  // The session belongs to the user who connected: proving another identity does not move it.
  if (d.username !== c.username) {
    return c.disconnect(ReasonCode.NotAuthorized, "re-authenticated as another user");
  }
  const packet = encodeAuth(ReasonCode.Success, a.method, s.data);
  if (c.fits(packet.length)) c.outbox.push(packet);
  else tooLarge(c, "AUTH");
}

/**
 * The exchange's next packet would not fit the client's Maximum Packet Size: refused with 0x95
 * before CONNACK (a CONNACK that small fits from 5 bytes on), or disconnected with it after.
 */
function tooLarge(c: Connection, what: string): void {
  const reason = `${what} of the exchange exceeds the client's Maximum Packet Size`;
  if (c.state === State.Connected) c.disconnect(ReasonCode.PacketTooLarge, reason);
  else refuse(c, ReasonCode.PacketTooLarge, reason);
}
