/** What every transport gives the broker, and what the broker gives it. */
import type { ByteWriter } from "../protocol/outbox.ts";
import type { ConnectionHandler, PeerInfo } from "../session/host.ts";

export type { ByteWriter, ConnectionHandler, PeerInfo };

/** The broker side a transport hands each accepted byte stream to. */
export interface Acceptor {
  /**
   * A byte stream for MQTT. `openMs`: how long its socket has been open already (a TLS
   * handshake, a WebSocket upgrade): limits.connect_timeout counts from the socket's accept.
   */
  accept(sink: ByteWriter, peer: PeerInfo, openMs?: number): ConnectionHandler;
  /**
   * A socket was accepted, before any handshake: false means close it at once (the broker holds
   * as many as it may). `held` sockets (TLS, WebSocket: they reach accept() only after their
   * handshake or upgrade) are counted until `released()`.
   */
  admit?(held: boolean): boolean;
  /** A socket admitted with `held` closed. */
  released?(): void;
  /** A TLS handshake failed before any MQTT was spoken (counted in metrics). */
  handshakeFailed?(transport: "tls" | "wss", remoteAddress: string, reason: string): void;
}

/** A running listener. */
export interface Listener {
  readonly kind: "tcp" | "tls" | "ws" | "wss";
  readonly hostname: string;
  readonly port: number;
  /** Stops accepting; open connections are closed by the broker. */
  close(): Promise<void>;
}
