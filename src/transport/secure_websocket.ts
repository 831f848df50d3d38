/**
 * MQTT over secure WebSocket on node:https + npm:ws. Deno.serve cannot verify
 * client certificates; node:https in Deno can (`requestCert`,
 * `getPeerCertificate()`, `setSecureContext`). The WebSocket side is shared
 * with the plain listener (websocket.ts).
 */
import https from "node:https";
import type { TLSSocket } from "node:tls";
import { closeWithGrace } from "./node_server.ts";
import { listenNode, type SecureListenOptions, securePeer, secureServer } from "./tls.ts";
import { readCipherShared } from "./tls_read.ts";
import { writeInPieces } from "./tls_write.ts";
import type { Acceptor, Listener } from "./types.ts";
import { serveWebSocket, type WsOptions } from "./websocket.ts";

export interface WssListenOptions extends WsOptions, SecureListenOptions {}

/** Starts a secure WebSocket listener. */
export async function listenSecureWebSocket(
  acceptor: Acceptor,
  opts: WssListenOptions,
): Promise<Listener> {
  const { server, sockets, unwatch } = secureServer(
    (o) => https.createServer(o),
    opts,
    acceptor,
    "wss",
  );
  const wss = serveWebSocket(server, acceptor, opts, (req) => {
    const tlsSocket = req.socket as TLSSocket;
    if (opts.clientCert === "required" && !tlsSocket.authorized) return 403;
    return securePeer(tlsSocket, "wss", opts.identity);
  }, "secureConnection");
  let closing = false;
  server.on("secureConnection", (socket: TLSSocket) => {
    // A handshake that completes after close() began would otherwise idle and hold close() open.
    if (closing) socket.destroy();
    else if (!socket.destroyed) {
      readCipherShared(socket);
      // ws writes through node's stream: large writes in pieces, or 48 KiB a turn (tls_write.ts).
      writeInPieces(socket);
    }
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
