/**
 * The CONNECT handshake of one connection: protocol level, negotiation,
 * authentication and session attach (either may be asynchronous: reading
 * waits meanwhile), then CONNACK and the packets the client pipelined behind
 * CONNECT. Runs on the Connection's own state (see connection.ts).
 */
import { getLogger } from "@logtape/logtape";
import { AUTH_FAILURE, hex } from "../ops/log.ts";
import type { AuthDecision, ConnectRequest } from "../auth/types.ts";
import { startExchange } from "./auth_flow.ts";
import { encodeConnack } from "../protocol/control.ts";
import { type ConnectPacket, connectPreamble, decodeConnect } from "../protocol/decode.ts";
import type { ProtocolLevel } from "../protocol/decode.ts";
import { ReasonCode } from "../protocol/reason_codes.ts";
import type { Connection } from "./connection.ts";
import { State } from "./connection_state.ts";
import { type AttachResult, certificateExpired } from "./host.ts";
import { acceptedConnack, buildWill, negotiateConnect, type Negotiated } from "./negotiate.ts";
import { RateLimit, rateLimited } from "./rate_limit.ts";

const log = getLogger(["mcloudtt", "connection"]);

/** Protocol level to the version operators know. */
const PROTOCOL_NAMES: Record<number, string> = { 3: "3.1", 4: "3.1.1", 5: "5" };

/** The CONNECT packet `buf[start, end)`: the first packet of `c`. */
export function onConnect(c: Connection, buf: Uint8Array, start: number, end: number): void {
  const pre = connectPreamble(buf, start, end);
  if (pre.kind === "bad-name") {
    // Not MQTT at all: no answer is owed [MQTT-3.1.2-1].
    c.end(false);
    return;
  }
  if (pre.kind === "bad-level") {
    c.host.metrics.connectsRefused++;
    // Answer in the format the client can read: v5 clients get reason 0x84.
    c.outbox.push(
      pre.level >= 5
        ? encodeConnack(5, false, ReasonCode.UnsupportedProtocolVersion)
        : encodeConnack(4, false, ReasonCode.UnsupportedProtocolVersion),
    );
    c.end(false);
    return;
  }
  c.level = pre.level;
  c.v5 = pre.level === 5;
  const pkt = decodeConnect(buf, start, end);
  // Known from here on, so a refusal's CONNACK fits it too [MQTT-3.2.2-19].
  c.clientMaxPacket = pkt.properties.maximumPacketSize ?? 0;
  const host = c.host;
  const n = negotiateConnect(pkt, host.limits, host);
  if ("code" in n) {
    if (pkt.clientId !== "") c.clientId = pkt.clientId;
    return refuse(c, n.code, n.reason);
  }
  c.clientId = n.clientId;
  c.keepAliveTimeout = n.keepAliveTimeoutMs;
  if (host.metrics.connectionsCurrent > host.limits.maxConnections) {
    return refuse(c, ReasonCode.QuotaExceeded, "connection limit reached");
  }
  c.sendWindow = n.sendWindow;
  c.aliasMax = n.clientTopicAliasMax;

  const req = requestOf(c, n.clientId, pkt.username, pkt.protocolLevel, pkt.password, c.since);
  const method = pkt.properties.authenticationMethod;
  if (method !== undefined) return startExchange(c, method, req, pkt, n);
  const decision = host.authenticate(req);
  if (decision instanceof Promise) {
    waitFor(c, decision.then((d) => authenticated(c, d, pkt, n)));
  } else {
    authenticated(c, decision, pkt, n);
  }
}

/**
 * What authentication judges `c` on: `clientId`, `username` and what its socket showed
 * (certificate, address). The CONNECT adds its password; a re-authentication has none.
 */
export function requestOf(
  c: Connection,
  clientId: string,
  username: string | undefined,
  protocolLevel: ProtocolLevel,
  password?: Uint8Array,
  acceptedAt?: number,
): ConnectRequest {
  const peer = c.peer;
  // One object shape for every login (a connect storm makes many).
  return {
    clientId,
    username,
    password,
    certificateIdentity: peer.certificateIdentity,
    certificateVerified: peer.certificateVerified,
    certificateRefusal: peer.certificateRefusal,
    remoteAddress: peer.remoteAddress,
    protocolLevel,
    acceptedAt,
  };
}

/** Holds reading and packet handling until `step` (authentication, attach) is done. */
function waitFor(c: Connection, step: Promise<void>): void {
  c.state = State.Authenticating;
  c.pauseReading();
  step.catch((e) => c.fail(e));
}

/**
 * Refuses the connection with CONNACK `code` and closes it; `login` marks a refused login
 * (credentials, certificate), whose line other lines cannot crowd out (src/ops/log.ts).
 */
export function refuse(c: Connection, code: number, reason: string, login = false): void {
  c.host.metrics.connectsRefused++;
  log.info("refused {client_id} from {remote_address} with {reason_code}: {reason}", {
    client_id: c.clientId,
    remote_address: c.peer.remoteAddress,
    listener: c.peer.transport,
    reason_code: hex(code),
    reason,
    ...(login ? { [AUTH_FAILURE]: true } : {}),
  });
  const connack = encodeConnack(
    c.level as ProtocolLevel,
    false,
    code,
    { reasonString: reason },
    c.clientMaxPacket,
  );
  // Under 5 bytes even a refusal does not fit the client's Maximum Packet Size [MQTT-3.1.2-24].
  if (c.fits(connack.length)) c.outbox.push(connack);
  c.end(false);
}

/**
 * The authentication's decision `d` on the CONNECT `pkt` of `c` (by the password policy, or at
 * the end of an enhanced-authentication exchange): refused, or on to the will's check, the
 * session and CONNACK; a promise while the session is attached elsewhere (cluster).
 */
export function authenticated(
  c: Connection,
  d: AuthDecision,
  pkt: ConnectPacket,
  n: Negotiated,
): void | Promise<void> {
  if (c.state === State.Closed) return;
  // Failures are counted by the authentication policy (src/auth/authenticator.ts).
  if (!d.ok) return refuse(c, d.reasonCode, d.reason, d.reasonCode !== ReasonCode.ServerBusy);
  // The handshake vouched for the identity only until the certificate's notAfter, which may
  // have passed before the CONNECT came or while it was authenticated: the sweep would end the
  // connection only after it was accepted (and had taken over a session).
  if (certificateExpired(c.peer, c.host.clock.now())) {
    return refuse(c, ReasonCode.NotAuthorized, "client certificate expired", true);
  }
  c.username = d.username;
  if (pkt.will && !c.host.mayPublish(c.clientId, d.username, pkt.will.topic)) {
    return refuse(c, ReasonCode.NotAuthorized, "will topic not authorized");
  }
  const attachResult = c.host.attach(c, {
    cleanStart: pkt.cleanStart,
    owner: d.username ?? null,
  });
  if (attachResult instanceof Promise) {
    const step = attachResult.then((a) => attached(c, a, pkt, n));
    if (c.state !== State.Authenticating) waitFor(c, step);
    return step;
  }
  attached(c, attachResult, pkt, n);
}

function attached(c: Connection, a: AttachResult, pkt: ConnectPacket, n: Negotiated): void {
  if (c.state === State.Closed) return;
  if (!a.ok) return refuse(c, a.code, a.reason);
  const { session, present } = a;
  c.session = session;
  session.setExpiry(n.grantedExpiry);
  c.connectExpiryZero = n.requestedExpiry === 0;
  session.setWill(buildWill(pkt, c.clientId));
  c.state = State.Connected;
  c.leavePending();
  const limits = c.host.limits;
  if (rateLimited(limits.rate)) {
    c.rate = new RateLimit(limits.rate, limits.sweepIntervalMs, c.host.clock.now(), c.host.metrics);
  }
  c.host.sessionChanged(session);

  c.outbox.push(
    acceptedConnack(c.level as ProtocolLevel, present, n, c.host.limits, c.clientMaxPacket),
  );
  c.host.metrics.connects++;
  c.since = c.host.clock.now();
  // Checked first: the fields would be gathered for every CONNECT even when info is off.
  if (log.isEnabledFor("info")) {
    log.info(
      "client {client_id} connected from {remote_address} over {listener}: MQTT " +
        "{protocol_version}, user {username}, keep alive {keep_alive} s, clean start " +
        "{clean_start}, session present {session_present}",
      {
        client_id: c.clientId,
        username: c.username ?? null,
        certificate_identity: c.peer.certificateIdentity ?? null,
        remote_address: c.peer.remoteAddress,
        listener: c.peer.transport,
        protocol_version: PROTOCOL_NAMES[c.level] ?? String(c.level),
        keep_alive: n.keepAliveTimeoutMs / 1500,
        clean_start: pkt.cleanStart,
        session_present: present,
      },
    );
  }
  session.attach(c);
  c.releaseGate();
  c.replayPending();
}
