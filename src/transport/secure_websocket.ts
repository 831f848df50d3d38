/**
 * MQTT over secure WebSocket on node:https + npm:ws. Deno.serve cannot verify
 * client certificates, and Deno.upgradeWebSocket does not work on node:http
 * requests, so this path uses the ws package's upgrade handling instead.
 */
import https from "node:https";
import type { IncomingMessage } from "node:http";
import type { Duplex } from "node:stream";
import type { TLSSocket } from "node:tls";
import { type RawData, type WebSocket, WebSocketServer } from "ws";
import type { CertIdentityMode } from "../auth/cert_identity.ts";
import {
  type ClientCertMode,
  closeWithGrace,
  listenNode,
  peerIdentity,
  secureOptions,
  trackSockets,
} from "./tls.ts";
import type { TlsMaterial } from "./tls_material.ts";
import type { Acceptor, Listener } from "./types.ts";
import { pickSubprotocol } from "./websocket.ts";

export interface WssListenOptions {
  hostname: string;
  port: number;
  path: string;
  material: TlsMaterial;
  clientCert: ClientCertMode;
  identity: CertIdentityMode;
  /** A peer must finish the TLS handshake within this many ms (limits.connect_timeout). */
  handshakeTimeoutMs: number;
}

function refuse(socket: Duplex, status: number, text: string): void {
  socket.end(`HTTP/1.1 ${status} ${text}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
}

/** Starts a secure WebSocket listener. */
export async function listenSecureWebSocket(
  acceptor: Acceptor,
  opts: WssListenOptions,
): Promise<Listener> {
  const server = https.createServer({
    ...secureOptions(opts.material, opts.clientCert),
    handshakeTimeout: opts.handshakeTimeoutMs,
  }, (_req, res) => {
    res.writeHead(426, { "content-type": "text/plain" });
    res.end("MQTT over WebSocket: upgrade required");
  });
  const sockets = trackSockets(server);
  const unwatch = opts.material.onChange(() => {
    server.setSecureContext(secureOptions(opts.material, opts.clientCert));
  });
  const wss = new WebSocketServer({
    noServer: true,
    maxPayload: 0x7fffffff,
    handleProtocols: (protocols: Set<string>) => {
      const p = pickSubprotocol([...protocols].join(","));
      return p ? p : false;
    },
  });
  server.on("upgrade", (req: IncomingMessage, socket: Duplex, head: Uint8Array) => {
    const url = new URL(req.url ?? "/", "https://localhost");
    if (url.pathname !== opts.path) return refuse(socket, 404, "Not Found");
    if (pickSubprotocol(req.headers["sec-websocket-protocol"]) === null) {
      return refuse(socket, 400, "Bad Request");
    }
    const tlsSocket = req.socket as TLSSocket;
    if (opts.clientCert === "required" && !tlsSocket.authorized) {
      return refuse(socket, 403, "Forbidden");
    }
    wss.handleUpgrade(req, socket, head as Buffer, (ws: WebSocket) => {
      const handler = acceptor.accept({
        write(bytes: Uint8Array): Promise<void> {
          return new Promise((resolve, reject) => {
            ws.send(bytes, { binary: true }, (err?: Error) => (err ? reject(err) : resolve()));
          });
        },
        close(): void {
          ws.close(1000);
          setTimeout(() => ws.terminate(), 1000).unref?.();
        },
      }, {
        remoteAddress: `${tlsSocket.remoteAddress}:${tlsSocket.remotePort}`,
        transport: "wss",
        certificateIdentity: peerIdentity(tlsSocket, opts.identity),
      });
      ws.on("message", (data: RawData, isBinary: boolean) => {
        if (!isBinary) {
          ws.close(1003, "MQTT needs binary frames");
          return;
        }
        const chunks = Array.isArray(data) ? data : [data];
        for (const c of chunks) handler.data(c as Uint8Array);
      });
      ws.on("close", () => handler.closed());
      ws.on("error", () => {});
    });
  });
  let closing = false;
  server.on("secureConnection", (socket: TLSSocket) => {
    // A handshake that completes after close() began would otherwise idle and hold close() open.
    if (closing) socket.destroy();
  });
  const addr = await listenNode(server, opts.hostname, opts.port, acceptor, "wss");
  return {
    kind: "wss",
    hostname: addr.address,
    port: addr.port,
    close(): Promise<void> {
      closing = true;
      unwatch();
      wss.close();
      server.closeAllConnections?.();
      return closeWithGrace(server, sockets);
    },
  };
}
