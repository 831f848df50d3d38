/** What every transport gives the broker, and what the broker gives it. */
import type { ByteWriter } from "../protocol/outbox.ts";
import type { Admitted } from "../session/admission.ts";
import type { ConnectionHandler, PeerInfo } from "../session/host.ts";

export type { Admitted, ByteWriter, ConnectionHandler, PeerInfo };

/** The broker side a transport hands each accepted byte stream to. */
export interface Acceptor {
  /**
   * A byte stream for MQTT. `admitted`: its socket as admit() was given it, for a socket that
   * was open before (a TLS handshake, a WebSocket upgrade): limits.connect_timeout counts from
   * its accept, and it may be closed to make room until its CONNECT is accepted.
   */
  accept(sink: ByteWriter, peer: PeerInfo, admitted?: Admitted): ConnectionHandler;
  /**
   * A socket was accepted, before any handshake: false means close it at once (the broker holds
   * as many as it may, all past CONNECT). `held` sockets (TLS, WebSocket: they reach accept()
   * only after their handshake or upgrade) are counted until `released()`; `admitted` is how
   * the broker may close one (the oldest not past CONNECT) to make room for a new socket.
   */
  admit?(held: boolean, admitted?: Admitted): boolean;
  /** A socket admitted with `held` closed. */
  released?(admitted?: Admitted): void;
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
