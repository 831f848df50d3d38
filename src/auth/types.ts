/**
 * The questions the broker core asks about a client: may it connect, publish
 * to a topic, subscribe to a filter. Implementations live beside this file
 * (password file, ACL, certificate identity) and are chosen by the broker's
 * configuration; the core only sees these interfaces.
 */

/** What a client presented when connecting. */
export interface ConnectRequest {
  clientId: string;
  username?: string;
  password?: Uint8Array;
  /** Identity taken from a verified client certificate, if the transport had one. */
  certificateIdentity?: string;
  /** A client certificate verified; set also when it lacks the part [tls] identity names. */
  certificateVerified?: boolean;
  /**
   * Why the verified certificate may not authenticate a TLS client (see PeerInfo). The broker
   * refuses such a client (CONNACK 0x87) before an embedder's Authenticator is asked.
   */
  certificateRefusal?: string;
  remoteAddress: string;
  protocolLevel: 3 | 4 | 5;
  /** When the connection was accepted (ms since epoch): the connect timeout counts from there. */
  acceptedAt?: number;
}

/** The outcome of authentication: the username the session runs as, or a CONNACK reason. */
export type AuthDecision =
  | { ok: true; username?: string }
  | { ok: false; reasonCode: number; reason: string };

export interface Authenticator {
  authenticate(req: ConnectRequest): AuthDecision | Promise<AuthDecision>;
  /**
   * MQTT 5 enhanced authentication: a new exchange for the Authentication Method `method` of a
   * CONNECT (or of a re-authentication), or undefined when it is not offered (CONNACK 0x8C).
   * Without it no method is offered.
   */
  exchange?(method: string, req: ConnectRequest): AuthExchange | undefined;
}

/** One enhanced-authentication exchange: the client's data in, the server's next step out. */
export interface AuthExchange {
  /** The Authentication Data of the CONNECT, then of each AUTH 0x18, in turn. */
  step(data: Uint8Array | undefined): AuthStep;
}

/**
 * A step of an exchange: more data for the client (AUTH 0x18), or the decision, with data for
 * the client (in CONNACK, or in AUTH 0x00 after a re-authentication).
 */
export type AuthStep =
  | { done: false; data: Uint8Array }
  | { done: true; decision: AuthDecision; data?: Uint8Array };

/** Who is asking, for authorization checks. */
export interface ClientContext {
  clientId: string;
  username?: string;
}

/**
 * The answer to a SUBSCRIBE: 0 refused, 1 granted (every matching message may be delivered),
 * 2 granted with a per-message check (`Authorizer.canReceive`) at delivery.
 */
export type SubscribeAccess = 0 | 1 | 2;

export interface Authorizer {
  canPublish(ctx: ClientContext, topic: string): boolean;
  canSubscribe(ctx: ClientContext, filter: string): boolean;
  /**
   * Like `canSubscribe`, but says whether messages must be checked at delivery. Authorizers
   * without it grant `canSubscribe` subscriptions unchecked.
   */
  subscribeAccess?(ctx: ClientContext, filter: string): SubscribeAccess;
  /** Whether a message on `topic` may be delivered to the client (asked only for access 2). */
  canReceive?(ctx: ClientContext, topic: string): boolean;
}

/** Lets everyone in with the username they sent: the development default. */
export const allowAll: Authenticator = {
  authenticate: (req) => ({ ok: true, username: req.username }),
};
