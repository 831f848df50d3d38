/**
 * MQTT over WebSocket, plain and secure, on node:http(s) + npm:ws: binary
 * frames carry the MQTT byte stream; packets may span frames and a frame may
 * hold several packets (the framer handles both). ws is used on both paths
 * because it offers what Deno.upgradeWebSocket does not: a payload limit
 * checked on a frame's header before its payload is buffered (`maxPayload`),
 * and pausing the socket when the broker asks the client to wait (read gate).
 */
import http from "node:http";
import { getLogger } from "@logtape/logtape";
import type { IncomingMessage, Server } from "node:http";
import type { Duplex } from "node:stream";
import { type RawData, type ServerOptions, type WebSocket, WebSocketServer } from "ws";
import { pauseUnderlying, resumeUnderlying } from "./pause.ts";
import { admittedOf, closeWithGrace, listenServer, openFor, trackSockets } from "./node_server.ts";
import { oneRequestHead, releaseReads } from "./http_reads.ts";
import { FLOOD_CHUNK } from "./throttle.ts";
import type { Acceptor, ConnectionHandler, Listener, PeerInfo } from "./types.ts";
import { type FrameReads, joinFrameReads } from "./ws_reads.ts";
import { normalizeOrigin, originAllowed } from "./ws_origin.ts";

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

/** What the HTTP and WebSocket layers need to know, whatever the security. */
export interface WsOptions {
  path: string;
  /**
   * Largest WebSocket message payload accepted: a frame announcing more is
   * refused from its header (close 1009), before it is buffered. Twice
   * limits.max_packet_size, since a message may carry several packets
   * [MQTT-6.0.0-2]; the framer holds each packet to max_packet_size (0x95).
   */
  maxPayload: number;
  /**
   * Bytes a connection may send before its CONNECT has been read (frame headers included):
   * limits.max_connect_packet_size, what may be pipelined behind it (max_connect_backlog) and
   * room for frame headers. ws buffers a message whole, up to `maxPayload`, where the framer
   * would hold a first packet over TCP to max_connect_packet_size.
   */
  maxFirstBytes: number;
  /**
   * Milliseconds a connection may take from its TCP accept to the WebSocket upgrade, TLS
   * handshake included (limits.connect_timeout); the MQTT connection's connect timeout counts
   * from the same accept. A socket that never upgrades is cut.
   */
  upgradeTimeoutMs: number;
  /** Milliseconds a closing WebSocket waits for the client's close frame (limits.close_linger_ms). */
  lingerMs: number;
  /**
   * Origins whose pages may upgrade (`[listeners.ws] allowed_origins`, as ws_origin.ts reads
   * them; "*": any; empty or absent: none). An upgrade that carries another Origin is refused
   * with 403, before MQTT; one without an Origin (not a browser) is not affected.
   */
  allowedOrigins?: readonly string[];
}

export interface WsListenOptions extends WsOptions {
  hostname: string;
  port: number;
}

function refuse(socket: Duplex, status: number, text: string): void {
  socket.end(`HTTP/1.1 ${status} ${text}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
}

/** Every write is one binary frame: the options object is the same for all of them. */
const BINARY = { binary: true } as const;

/**
 * The write side of a ws WebSocket as the broker's ByteWriter. The outbox writes through
 * `writeThen`: ws calls the callback once the frame is written to the socket (with nothing or
 * null, or the error), never before send() returns, so no promise is made per write.
 */
export class WsSink {
  private done = false;
  constructor(private readonly ws: WebSocket, private readonly lingerMs: number) {}

  write(bytes: Uint8Array): Promise<void> {
    return new Promise((resolve, reject) => {
      this.ws.send(bytes, BINARY, (err?: Error) => (err ? reject(err) : resolve()));
    });
  }

  writeThen(bytes: Uint8Array, done: (r: unknown) => void): void {
    this.ws.send(bytes, BINARY, done);
  }

  /** Close handshake: ws keeps reading (the broker discards) until the client answers or time is up. */
  end(): void {
    if (this.done) return;
    this.done = true;
    this.ws.close(1000);
    lingerThenTerminate(this.ws, this.lingerMs);
  }

  close(): void {
    this.done = true;
    this.ws.terminate();
  }
}

function lingerThenTerminate(ws: WebSocket, ms: number): void {
  const t = setTimeout(() => ws.terminate(), ms);
  ws.once("close", () => clearTimeout(t));
}

/**
 * Feeds a ws WebSocket's binary messages to `handler`, pausing the socket while its read gate
 * is set, and for one event-loop turn after every FLOOD_CHUNK bytes read: over wss a flooding
 * peer is read again and again within one turn, as over TLS (see tls.ts), and starved the
 * writes to everyone else (measured: 4.5% of a QoS 0 flood reached its subscriber).
 */
function bridge(
  ws: WebSocket,
  socket: Duplex,
  handler: ConnectionHandler,
  opts: WsOptions,
  reads: FrameReads | null,
): void {
  const lingerMs = opts.lingerMs;
  boundFirstMessage(ws, socket, handler, opts.maxFirstBytes, reads);
  let paused = false;
  let unpausedBytes = 0;
  const resume = () => {
    const gate = handler.readGate;
    if (gate !== null) {
      gate.then(resume);
      return;
    }
    paused = false;
    resumeUnderlying(socket);
    ws.resume();
  };
  let refused = false;
  ws.on("message", (data: RawData, isBinary: boolean) => {
    // Nothing after a text frame is acted on, though ws still reads while the close goes out.
    if (refused) return;
    if (!isBinary) {
      // MQTT over WebSocket uses binary frames only; a text frame is a protocol violation
      // [MQTT-6.0.0-1].
      refused = true;
      ws.close(1003, "MQTT needs binary frames");
      lingerThenTerminate(ws, lingerMs);
      return;
    }
    if (Array.isArray(data)) {
      for (const c of data) {
        handler.data(c, c.length);
        unpausedBytes += c.length;
      }
    } else {
      const bytes = data instanceof ArrayBuffer ? new Uint8Array(data) : data;
      handler.data(bytes, bytes.length);
      unpausedBytes += bytes.length;
    }
    if (paused) return;
    const gate = handler.readGate;
    if (gate !== null) {
      // Backpressure as over TCP: stop reading the socket until the broker catches up.
      paused = true;
      unpausedBytes = 0;
      ws.pause();
      pauseUnderlying(socket);
      gate.then(resume);
    } else if (unpausedBytes >= FLOOD_CHUNK) {
      paused = true;
      unpausedBytes = 0;
      ws.pause();
      pauseUnderlying(socket);
      setImmediate(resume);
    }
  });
  ws.on("close", () => handler.closed());
  ws.on("error", () => {
    // ws answers protocol errors (such as a frame over maxPayload: 1009) with a close frame,
    // then would read and discard until the peer answers. A peer that broke the protocol is
    // not read any further: cut it once the close frame is on its way.
    setTimeout(() => ws.terminate(), 0);
  });
}

/**
 * Cuts a peer that sends more than `max` bytes before its CONNECT has been read. Counted on the
 * socket, after ws took each chunk (a CONNECT completed in it has reached the handler by then):
 * until then the peer is unknown, and ws would buffer its first message up to maxPayload, so
 * sockets that never authenticate could each hold 2 x max_packet_size. With `reads` every frame
 * counts as announced, at least FRAME_CHARGE bytes (ws_reads.ts), else the bytes read. The
 * count stops at CONNECT; a first message holding CONNECT and more than max_connect_backlog
 * behind it is cut, as over TCP when authentication takes a moment.
 */
function boundFirstMessage(
  ws: WebSocket,
  socket: Duplex,
  handler: ConnectionHandler,
  max: number,
  reads: FrameReads | null,
): void {
  let read = 0;
  const count = (chunk: Uint8Array) => {
    if (handler.awaitingConnect !== true) {
      socket.off("data", count);
      return;
    }
    read = reads !== null ? reads.charged : read + chunk.length;
    if (read <= max) return;
    socket.off("data", count);
    refuseTooLarge(ws, "CONNECT too large");
  };
  socket.on("data", count);
}

/**
 * Closes with 1009 (message too big), as ws does for a frame over maxPayload, and reads nothing
 * more: cut once the close frame is on its way.
 */
function refuseTooLarge(ws: WebSocket, reason = "message too large"): void {
  ws.close(1009, reason);
  setTimeout(() => ws.terminate(), 0);
}

/**
 * Serves MQTT over WebSocket on `server` (node:http or node:https): HTTP
 * requests get 426, upgrades to another path 404, upgrades from a page whose
 * origin is not allowed 403, upgrades without an MQTT subprotocol 400. `admit` may refuse an upgrade (returning an HTTP status)
 * and describes the peer.
 */
export function serveWebSocket(
  server: Server,
  acceptor: Acceptor,
  opts: WsOptions,
  peer: (req: IncomingMessage) => PeerInfo | number,
  connectionEvent: "connection" | "secureConnection" = "connection",
): WebSocketServer {
  oneRequestHead(server, connectionEvent);
  // A socket that has not asked for its upgrade within the timeout is cut: before the upgrade
  // no MQTT connection exists, so neither its connect timeout nor any limit would apply, and a
  // silent or slow client would hold its descriptor for as long as the runtime lets it.
  const upgradeTimers = new WeakMap<object, ReturnType<typeof setTimeout>>();
  server.on(connectionEvent, (socket: Duplex) => {
    // From the TCP accept: over wss the TLS handshake took its part already.
    const left = Math.max(0, opts.upgradeTimeoutMs - openFor(socket));
    const timer = setTimeout(() => socket.destroy(), left);
    upgradeTimers.set(socket, timer);
    socket.once("close", () => clearTimeout(timer));
  });
  // One request on a connection, answered and closed: nothing here serves plain HTTP, and the
  // parser is given that one request head alone (http_reads.ts).
  server.on("request", (req: IncomingMessage, res: http.ServerResponse) => {
    res.shouldKeepAlive = false;
    const url = new URL(req.url ?? "/", "http://localhost");
    if (url.pathname !== opts.path) {
      res.writeHead(404, { "content-type": "text/plain" });
      res.end("not found");
      return;
    }
    res.writeHead(426, { "content-type": "text/plain" });
    res.end("MQTT over WebSocket: upgrade required");
  });
  // closeTimeout (ws 8.23) is not in @types/ws 8.18 yet.
  const options: ServerOptions & { closeTimeout: number } = {
    noServer: true,
    maxPayload: opts.maxPayload,
    // After a close handshake the socket is ended and given this long to close before it is
    // destroyed. ws's default is 30 s: a client that sent its close frame and then kept the TCP
    // connection open held its MQTT connection (and the slot, and its will) for 30 s.
    closeTimeout: opts.lingerMs,
    perMessageDeflate: false,
    handleProtocols: (protocols: Set<string>) => {
      const p = pickSubprotocol([...protocols].join(","));
      return p ? p : false;
    },
  };
  const wss = new WebSocketServer(options);
  // The config checked each is an origin; written as browsers send them, once.
  const origins = (opts.allowedOrigins ?? []).map((o) => normalizeOrigin(o) ?? o);
  server.on("upgrade", (req: IncomingMessage, socket: Duplex, head: Uint8Array) => {
    // The socket leaves node:http: what follows is WebSocket frames, read by ws.
    releaseReads(socket);
    clearTimeout(upgradeTimers.get(socket));
    // node:http lets go of the socket here, its error listener included: a peer that resets it
    // (after a refusal, or during the handshake) would be an uncaught error and end the process.
    socket.on("error", () => socket.destroy());
    const url = new URL(req.url ?? "/", "http://localhost");
    if (url.pathname !== opts.path) return refuse(socket, 404, "Not Found");
    // Browsers of the hybi-08 draft, which ws still accepts, named the header Sec-WebSocket-Origin.
    const origin = req.headers.origin ?? req.headers["sec-websocket-origin"];
    if (!originAllowed(origins, origin)) {
      log.info(
        "refused a WebSocket upgrade from {remote_address}: a web page of {origin}, not in " +
          "listeners.ws.allowed_origins",
        {
          remote_address: `${req.socket.remoteAddress}:${req.socket.remotePort}`,
          origin: String(origin),
        },
      );
      return refuse(socket, 403, "Forbidden");
    }
    if (pickSubprotocol(req.headers["sec-websocket-protocol"]) === null) {
      return refuse(socket, 400, "Bad Request");
    }
    const info = peer(req);
    if (typeof info === "number") return refuse(socket, info, "Forbidden");
    wss.handleUpgrade(req, socket, head as Buffer, (ws: WebSocket) => {
      // Before anything is read: ws would hold each small read of a frame, and each fragment of
      // a message, on its own (ws_reads.ts).
      const reads = joinFrameReads(socket, opts.maxPayload, () => refuseTooLarge(ws));
      const handler = acceptor.accept(new WsSink(ws, opts.lingerMs), info, admittedOf(socket));
      bridge(ws, socket, handler, opts, reads);
    });
  });
  return wss;
}

/** Starts a plain WebSocket listener. */
export async function listenWebSocket(
  acceptor: Acceptor,
  opts: WsListenOptions,
): Promise<Listener> {
  const server = http.createServer();
  const sockets = trackSockets(server, acceptor);
  const wss = serveWebSocket(server, acceptor, opts, (req) => ({
    remoteAddress: `${req.socket.remoteAddress}:${req.socket.remotePort}`,
    transport: "ws",
  }));
  const addr = await listenServer(server, opts.hostname, opts.port);
  return {
    kind: "ws",
    hostname: addr.address,
    port: addr.port,
    close(): Promise<void> {
      wss.close();
      server.closeAllConnections?.();
      return closeWithGrace(server, sockets);
    },
  };
}
