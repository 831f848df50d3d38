/**
 * MQTT over TLS on node:tls. Deno.listenTls cannot ask for or verify client
 * certificates, and cannot swap certificates while running; node:tls in Deno
 * does both (`requestCert`, `getPeerCertificate()`, `setSecureContext`).
 */
import tls from "node:tls";
import type { Server, Socket } from "node:net";
import { X509Certificate } from "node:crypto";
import { chainTrusted, parsePem } from "../auth/cert_chain.ts";
import { MAX_CHAIN } from "../auth/cert_check.ts";
import { getLogger } from "@logtape/logtape";
import { type CertIdentityMode, readPeerCertificate } from "../auth/cert_identity.ts";
import { resumeSocket } from "./pause.ts";
import { admittedOf, closeWithGrace, listenServer, trackSockets } from "./node_server.ts";
import { bridgeSocket } from "./tls_read.ts";
import { type WriteRequest, writeRequest, writeTls } from "./tls_write.ts";
import type { TlsMaterial } from "./tls_material.ts";
import type { Acceptor, ByteWriter, Listener, PeerInfo } from "./types.ts";

const log = getLogger(["mcloudtt", "tls"]);

export type ClientCertMode = "required" | "optional" | "none";

/** What a listener secured by TLS (tls, wss) is configured with. */
export interface SecureListenOptions {
  hostname: string;
  port: number;
  material: TlsMaterial;
  clientCert: ClientCertMode;
  identity: CertIdentityMode;
  /** A peer must finish the TLS handshake within this many ms (limits.connect_timeout). */
  handshakeTimeoutMs: number;
}

export interface TlsListenOptions extends SecureListenOptions {
  /** How long a closing connection keeps reading (limits.close_linger_ms). */
  lingerMs: number;
}

/** node:tls server options for a client certificate mode. */
export function secureOptions(material: TlsMaterial, mode: ClientCertMode): tls.TlsOptions {
  const f = material.files;
  if (mode === "none") {
    // No `ca`: Deno's node:tls would send all of it in every handshake (cert_chain.ts).
    return { key: f.key, cert: material.servedChain(), minVersion: "TLSv1.2" };
  }
  return {
    key: f.key,
    cert: f.cert,
    ca: material.caList(),
    requestCert: true,
    rejectUnauthorized: mode === "required",
    minVersion: "TLSv1.2",
  };
}

/**
 * A node TLS or HTTPS server made by `create` for `opts` (certificates, client certificate
 * mode, handshake bound) that takes new certificates whenever their files change (`unwatch`
 * stops that), with its open sockets (for closeWithGrace).
 */
export function secureServer<S extends tls.Server>(
  create: (options: tls.TlsOptions) => S,
  opts: SecureListenOptions,
  acceptor?: Acceptor,
  transport: "tls" | "wss" = "tls",
): { server: S; sockets: Set<Socket>; unwatch: () => void } {
  const server = create({
    ...secureOptions(opts.material, opts.clientCert),
    handshakeTimeout: opts.handshakeTimeoutMs,
  });
  const sockets = trackSockets(server, acceptor);
  // The CAs in force: cafile's text changed, or one of its certificates expired (tls_material.ts).
  let ca = opts.material.caList().join("\n");
  // Parsed when a resumed session needs them, once per change of `ca`.
  let trusted: X509Certificate[] | null = null;
  // Peers whose certificate verified, checked again when the client CA changes.
  const verified = new Set<tls.TLSSocket>();
  if (opts.clientCert !== "none") {
    server.on("secureConnection", (socket: tls.TLSSocket) => {
      if (!socket.authorized) return;
      if (socket.isSessionReused() && !chainTrusted(peerChain(socket), trusted ??= parsePem(ca))) {
        refuseResumed(socket, transport, acceptor);
        return;
      }
      verified.add(socket);
      socket.once("close", () => verified.delete(socket));
    });
  }
  const unwatch = opts.material.onChange(() => {
    server.setSecureContext(secureOptions(opts.material, opts.clientCert));
    const now = opts.material.caList().join("\n");
    if (now === ca) return;
    ca = now;
    trusted = null;
    closeUntrusted(verified, now);
  });
  return { server, sockets, unwatch };
}

/**
 * Closes a peer that resumed a TLS session whose certificate cafile no longer vouches for. A
 * resumed session (a TLS 1.3 ticket, a TLS 1.2 session) is not verified again: the runtime
 * reports the certificate of the session's first handshake as authorized, and Deno's node:tls
 * has no way to turn resumption off (sessionTimeout, SSL_OP_NO_TICKET are ignored). A client
 * whose CA was taken out of cafile, or expired, so went on connecting without presenting any
 * certificate, as long as its ticket lasted (measured: refused in a full handshake, accepted
 * with CONNACK 0 as its certificate's identity when resuming, over TLS 1.3 and 1.2).
 */
function refuseResumed(socket: tls.TLSSocket, transport: "tls" | "wss", acceptor?: Acceptor) {
  const remote = `${socket.remoteAddress}:${socket.remotePort}`;
  const reason = "resumed a TLS session whose client certificate tls.cafile no longer vouches for";
  log.info("TLS handshake with {remote_address} failed on {listener}: {reason}", {
    remote_address: remote,
    listener: transport,
    reason,
  });
  acceptor?.handshakeFailed?.(transport, remote, reason);
  socket.destroy();
}

/**
 * Closes the peers whose certificate chain no longer leads to a CA of `caPem`. Taking a CA out of
 * cafile is how its certificates are withdrawn (there is no CRL), and a CA certificate that
 * expired leaves it too; without this, a connection it vouched for would last until the client
 * reconnected.
 */
function closeUntrusted(peers: Set<tls.TLSSocket>, caPem: string): void {
  if (peers.size === 0) return;
  const trusted = parsePem(caPem);
  let closed = 0;
  for (const socket of [...peers]) {
    if (chainTrusted(peerChain(socket), trusted)) continue;
    socket.destroy();
    closed++;
  }
  if (closed > 0) {
    log.warn(
      "tls.cafile changed or one of its CA certificates expired: closed {closed} connections " +
        "whose client certificate it no longer vouches for",
      { closed },
    );
  }
}

/** The peer's certificate and the issuers its handshake reported, leaf first. */
function peerChain(socket: tls.TLSSocket): X509Certificate[] {
  const chain: X509Certificate[] = [];
  let cert: tls.DetailedPeerCertificate | undefined = socket.getPeerCertificate(true);
  while (cert?.raw !== undefined && cert.raw.length > 0 && chain.length < MAX_CHAIN) {
    try {
      chain.push(new X509Certificate(cert.raw));
    } catch {
      break;
    }
    // A self-signed root is reported as its own issuer.
    if (cert.issuerCertificate === cert) break;
    cert = cert.issuerCertificate;
  }
  return chain;
}

/**
 * What the broker learns of a peer that finished its TLS handshake: its address and, when it
 * presented a certificate that verified, that fact and the identity the certificate carries.
 */
export function securePeer(
  socket: tls.TLSSocket,
  transport: "tls" | "wss",
  mode: CertIdentityMode,
): PeerInfo {
  const peer: PeerInfo = {
    remoteAddress: `${socket.remoteAddress}:${socket.remotePort}`,
    transport,
    certificateIdentity: undefined,
    certificateVerified: false,
  };
  // Deno reports `authorized` on a listener that asked for no certificate too: only a
  // certificate that is there counts as verified.
  if (!socket.authorized) return peer;
  const cert = socket.getPeerCertificate(true);
  if (cert?.raw === undefined || cert.raw.length === 0) return peer;
  peer.certificateVerified = true;
  const expiresAt = chainExpiresAt(cert);
  if (Number.isFinite(expiresAt)) peer.certificateExpiresAt = expiresAt;
  const reading = readPeerCertificate(cert, mode);
  if (reading.refusal !== undefined) {
    // Left without an identity, so an embedder's authenticator that does not know the refusal
    // sees a verified certificate that names no one, not a client to let in.
    peer.certificateRefusal = reading.refusal;
    return peer;
  }
  peer.certificateIdentity = reading.identity;
  return peer;
}

/**
 * The earliest notAfter of the chain the handshake verified, leaf first: an intermediate the
 * client presented may expire before its certificate does, and the handshake vouched for the
 * chain only until then. Node's text form ("Dec  2 05:35:16 2026 GMT"); NaN without one.
 */
function chainExpiresAt(leaf: tls.DetailedPeerCertificate): number {
  let earliest = NaN;
  let cert: tls.DetailedPeerCertificate | undefined = leaf;
  for (let n = 0; n < MAX_CHAIN && cert?.raw !== undefined && cert.raw.length > 0; n++) {
    const t = Date.parse(cert.valid_to);
    if (Number.isFinite(t) && (Number.isNaN(earliest) || t < earliest)) earliest = t;
    // A self-signed root is reported as its own issuer.
    if (cert.issuerCertificate === cert) break;
    cert = cert.issuerCertificate;
  }
  return earliest;
}

/**
 * A ByteWriter over a node TLS socket: a write completes when the socket flushed the bytes to
 * the kernel. The outbox writes through `writeThen`, whose callback goes to the write as it is:
 * no promise and no closures per write (`write` is there for segments). Both go straight to the
 * TLS handle where they can (tls_write.ts); the outbox keeps one write in flight at a time.
 */
export function socketSink(socket: Socket, lingerMs: number): ByteWriter {
  let linger: ReturnType<typeof setTimeout> | undefined;
  // Made at the first write: the handle holds on to it while a write is in flight.
  let req: WriteRequest | null = null;
  return {
    write(bytes: Uint8Array): Promise<void> {
      return new Promise((resolve, reject) => {
        writeTls(socket, req ??= writeRequest(), bytes, (err) => (err ? reject(err) : resolve()));
      });
    },
    writeThen(bytes: Uint8Array, done: (r: unknown) => void): void {
      // Called back with null or nothing once written, with the error otherwise, and never
      // before this returns.
      writeTls(socket, req ??= writeRequest(), bytes, done);
    },
    end(): void {
      // end() flushes what is queued and half-closes; reading goes on (the connection
      // discards it) until the peer closes or time is up, so unread input causes no reset.
      if (linger !== undefined || socket.destroyed) return;
      socket.end();
      resumeSocket(socket);
      linger = setTimeout(() => socket.destroy(), lingerMs);
      socket.once("close", () => clearTimeout(linger));
    },
    close(): void {
      socket.destroy();
    },
  };
}

/**
 * Binds a node TLS/HTTPS server, logging and counting refused handshakes (a client without a
 * valid certificate is an expected event, not an error).
 */
export async function listenNode(
  server: Server,
  hostname: string,
  port: number,
  acceptor?: Acceptor,
  transport?: "tls" | "wss",
): Promise<{ address: string; port: number }> {
  if (transport !== undefined) {
    server.on("tlsClientError", (err: Error, socket?: tls.TLSSocket) => {
      // Deno's node:tls leaves the address on the wrapped TCP socket (`_parent`) at this point.
      const raw = socket?.remoteAddress !== undefined
        ? socket
        : (socket as unknown as { _parent?: Socket } | undefined)?._parent;
      const remote = raw?.remoteAddress === undefined
        ? "unknown"
        : `${raw.remoteAddress}:${raw.remotePort}`;
      log.info("TLS handshake with {remote_address} failed on {listener}: {reason}", {
        remote_address: remote,
        listener: transport,
        reason: err.message,
      });
      acceptor?.handshakeFailed?.(transport, remote, err.message);
      // Deno's node:tls emits this on the handshake timeout and leaves both sockets open: a peer
      // that never sends (or trickles) its ClientHello would hold a max_connections slot and a
      // descriptor for ever. A failed handshake has no further use either way.
      socket?.destroy();
      raw?.destroy();
    });
  }
  return await listenServer(server, hostname, port);
}

/** Starts an MQTT-over-TLS listener. */
export async function listenTls(acceptor: Acceptor, opts: TlsListenOptions): Promise<Listener> {
  const { server, sockets, unwatch } = secureServer((o) => tls.createServer(o), opts, acceptor);
  server.on("secureConnection", (socket: tls.TLSSocket) => {
    // Refused just before (a resumed session secureServer does not trust).
    if (socket.destroyed) return;
    socket.setNoDelay(true);
    const handler = acceptor.accept(
      socketSink(socket, opts.lingerMs),
      securePeer(socket, "tls", opts.identity),
      admittedOf(socket),
    );
    bridgeSocket(socket, handler);
  });
  const addr = await listenNode(server, opts.hostname, opts.port, acceptor, "tls");
  return {
    kind: "tls",
    hostname: addr.address,
    port: addr.port,
    close(): Promise<void> {
      unwatch();
      return closeWithGrace(server, sockets);
    },
  };
}
