/**
 * MQTT over WebSocket without TLS, on Deno.serve + Deno.upgradeWebSocket:
 * binary frames carry the MQTT byte stream; packets may span frames and a
 * frame may hold several packets (the framer handles both).
 */
import { getLogger } from "@logtape/logtape";
import type { Acceptor, ConnectionHandler, Listener } from "./types.ts";

const log = getLogger(["mcloudtt", "ws"]);

/** Subprotocols we speak, most preferred first ("mqttv3.1" is what old clients offer). */
export const MQTT_SUBPROTOCOLS = ["mqtt", "mqttv3.1"];

/**
 * Picks the subprotocol from a Sec-WebSocket-Protocol header; "" when the
 * client offered none (accepted for lenient clients), null when it offered
 * only protocols we do not speak.
 */
export function pickSubprotocol(header: string | null | undefined): string | null {
  if (!header) return "";
  const offered = header.split(",").map((s) => s.trim());
  for (const p of MQTT_SUBPROTOCOLS) if (offered.includes(p)) return p;
  return null;
}

/** Wires a WHATWG WebSocket to a connection handler. */
export function bridgeWebSocket(ws: WebSocket, handler: ConnectionHandler): void {
  ws.binaryType = "arraybuffer";
  ws.onmessage = (e: MessageEvent) => {
    if (typeof e.data === "string") {
      // MQTT over WebSocket uses binary frames only; a text frame is a protocol violation.
      ws.close(1003, "MQTT needs binary frames");
      return;
    }
    handler.data(new Uint8Array(e.data as ArrayBuffer));
  };
  ws.onclose = () => handler.closed();
  ws.onerror = () => {
    // onclose follows
  };
}

/** A ByteSink over a WHATWG WebSocket. */
export function webSocketSink(
  ws: WebSocket,
): { write(b: Uint8Array): Promise<void>; close(): void } {
  return {
    write(bytes: Uint8Array): Promise<void> {
      if (ws.readyState !== WebSocket.OPEN) return Promise.reject(new Error("WebSocket closed"));
      ws.send(bytes);
      // send() queues; let the caller's backpressure see the queue drain.
      if (ws.bufferedAmount < 256 * 1024) return Promise.resolve();
      return new Promise((resolve) => {
        const poll = () => {
          if (ws.readyState !== WebSocket.OPEN || ws.bufferedAmount < 64 * 1024) resolve();
          else setTimeout(poll, 5);
        };
        poll();
      });
    },
    close(): void {
      try {
        ws.close(1000);
      } catch {
        // already closed
      }
    },
  };
}

export interface WsListenOptions {
  hostname: string;
  port: number;
  path: string;
}

/** Starts a plain WebSocket listener. */
export function listenWebSocket(acceptor: Acceptor, opts: WsListenOptions): Promise<Listener> {
  return new Promise((resolve, reject) => {
    let server: Deno.HttpServer<Deno.NetAddr>;
    try {
      server = Deno.serve({
        hostname: opts.hostname,
        port: opts.port,
        onListen: (addr) => {
          resolve({
            kind: "ws",
            hostname: addr.hostname,
            port: addr.port,
            close: () => server.shutdown(),
          });
        },
        onError: (e) => {
          log.error("WebSocket request failed: {error}", { error: String(e) });
          return new Response("internal error", { status: 500 });
        },
      }, (req, info) => {
        const url = new URL(req.url);
        if (url.pathname !== opts.path) return new Response("not found", { status: 404 });
        if (req.headers.get("upgrade")?.toLowerCase() !== "websocket") {
          return new Response("MQTT over WebSocket: upgrade required", { status: 426 });
        }
        const protocol = pickSubprotocol(req.headers.get("sec-websocket-protocol"));
        if (protocol === null) return new Response("subprotocol must be mqtt", { status: 400 });
        // The request is consumed by the upgrade: read the peer address first.
        const remote = `${info.remoteAddr.hostname}:${info.remoteAddr.port}`;
        const { socket, response } = Deno.upgradeWebSocket(req, protocol ? { protocol } : {});
        socket.onopen = () => {
          const handler = acceptor.accept(webSocketSink(socket), {
            remoteAddress: remote,
            transport: "ws",
          });
          bridgeWebSocket(socket, handler);
        };
        return response;
      });
    } catch (e) {
      reject(e);
    }
  });
}
