/**
 * A WebSocket client on a raw socket, framing by hand (RFC 6455), so a test can do what a
 * library would not: announce a frame larger than it sends, flood without reading, or watch the
 * close frame and the TCP end. Independent of the broker's transports.
 */
import mqttPacket from "mqtt-packet";
import { Arrivals, closeQuietly, type Packet } from "./broker.ts";
import { concatBytes } from "./wire.ts";

const enc = new TextEncoder();

export interface RawWsOptions {
  path?: string;
  /** CA certificate (PEM) to speak wss:// instead of ws://. */
  caCert?: string;
  /** An Origin header, as a browser sends its page's. */
  origin?: string;
  /** Sec-WebSocket-Version (13 unless given; 8 is the hybi-08 draft, whose origin header differs). */
  version?: 8 | 13;
}

/** An event seen on the connection: an MQTT packet, a close frame, or the end of the stream. */
export type WsEvent =
  | { kind: "packet"; packet: Packet }
  | { kind: "close"; code: number }
  | { kind: "end"; error?: string };

export class RawWsClient {
  private events = new Arrivals<WsEvent>("a WebSocket event");
  private parser = mqttPacket.parser({ protocolVersion: 5 });
  private pending: Uint8Array = new Uint8Array(0);
  /** Resolves when the socket ended (EOF or error). */
  readonly ended: Promise<void>;
  private reading: boolean;

  private constructor(readonly conn: Deno.Conn, rest: Uint8Array, read: boolean) {
    this.parser.on("packet", (p: Packet) => this.events.push({ kind: "packet", packet: p }));
    this.reading = read;
    this.pending = rest;
    this.ended = read ? this.readLoop() : Promise.resolve();
  }

  /** Opens the socket and completes the upgrade; `read` false leaves incoming bytes unread. */
  static async open(port: number, opts: RawWsOptions = {}, read = true): Promise<RawWsClient> {
    const conn: Deno.Conn = opts.caCert
      ? await Deno.connectTls({ hostname: "localhost", port, caCerts: [opts.caCert] })
      : await Deno.connect({ hostname: "127.0.0.1", port });
    await writeAll(
      conn,
      enc.encode(
        `GET ${opts.path ?? "/mqtt"} HTTP/1.1\r\nHost: localhost:${port}\r\n` +
          `Upgrade: websocket\r\nConnection: Upgrade\r\n` +
          `Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: ${
            opts.version ?? 13
          }\r\n` +
          `Sec-WebSocket-Protocol: mqtt\r\n` +
          (opts.origin === undefined
            ? ""
            : `${opts.version === 8 ? "Sec-WebSocket-Origin" : "Origin"}: ${opts.origin}\r\n`) +
          "\r\n",
      ),
    );
    let head: Uint8Array = new Uint8Array(0);
    const buf = new Uint8Array(4096);
    for (;;) {
      const n = await conn.read(buf);
      if (n === null) throw new Error("closed during the WebSocket upgrade");
      head = concatBytes([head, buf.subarray(0, n)]);
      const text = new TextDecoder().decode(head);
      const end = text.indexOf("\r\n\r\n");
      if (end >= 0) {
        if (!text.startsWith("HTTP/1.1 101")) throw new Error(`upgrade refused: ${text}`);
        return new RawWsClient(conn, head.subarray(end + 4), read);
      }
    }
  }

  private async readLoop(): Promise<void> {
    this.consume(new Uint8Array(0));
    const buf = new Uint8Array(65536);
    try {
      for (;;) {
        const n = await this.conn.read(buf);
        if (n === null) break;
        this.consume(buf.subarray(0, n));
      }
      this.events.push({ kind: "end" });
    } catch (e) {
      this.events.push({ kind: "end", error: e instanceof Error ? e.name : String(e) });
    }
  }

  /** Parses server frames (unmasked) out of the stream. */
  private consume(chunk: Uint8Array): void {
    let b = this.pending = concatBytes([this.pending, chunk]);
    for (;;) {
      if (b.length < 2) break;
      let len = b[1] & 0x7f;
      let off = 2;
      if (len === 126) {
        if (b.length < 4) break;
        len = (b[2] << 8) | b[3];
        off = 4;
      } else if (len === 127) {
        if (b.length < 10) break;
        len = Number(new DataView(b.buffer, b.byteOffset + 2, 8).getBigUint64(0));
        off = 10;
      }
      if (b.length < off + len) break;
      const opcode = b[0] & 0x0f;
      const payload = b.subarray(off, off + len);
      if (opcode === 0x8) {
        this.events.push({ kind: "close", code: len >= 2 ? (payload[0] << 8) | payload[1] : 1005 });
      } else if (opcode === 0x2 || opcode === 0x0) {
        this.parser.parse(Buffer.from(payload));
      }
      b = b.subarray(off + len);
    }
    this.pending = b.slice();
  }

  /** The next event (packet, close frame or end); throws after `timeoutMs`. */
  async next(timeoutMs = 3000): Promise<WsEvent> {
    if (!this.reading) throw new Error("this client does not read");
    // Never null: the stream's end is an event of its own, and end() is never called.
    return (await this.events.take(timeoutMs))!;
  }

  /** Waits for an MQTT packet of type `cmd`. */
  async expect(cmd: string, timeoutMs = 3000): Promise<Packet & Record<string, unknown>> {
    const e = await this.next(timeoutMs);
    if (e.kind !== "packet" || e.packet.cmd !== cmd) {
      throw new Error(`expected ${cmd}, got ${JSON.stringify(e)}`);
    }
    return e.packet as Packet & Record<string, unknown>;
  }

  /** Sends `payload` as one masked binary frame. */
  send(payload: Uint8Array): Promise<void> {
    return writeAll(this.conn, frame(payload));
  }

  /** Sends an MQTT packet (MQTT 5) in one binary frame. */
  sendPacket(packet: Record<string, unknown>): Promise<void> {
    return this.send(
      new Uint8Array(mqttPacket.generate(packet as unknown as Packet, {
        protocolVersion: 5,
      })),
    );
  }

  /** Sends CONNECT and expects CONNACK 0. */
  async handshake(clientId: string): Promise<void> {
    await this.sendPacket({
      cmd: "connect",
      protocolId: "MQTT",
      protocolVersion: 5,
      clientId,
      clean: true,
      keepalive: 0,
    });
    const ack = await this.expect("connack");
    if (ack.reasonCode !== 0) throw new Error(`CONNACK ${ack.reasonCode}`);
  }

  close(): void {
    closeQuietly(this.conn);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.close();
    await this.ended;
  }
}

/** A masked binary frame header announcing `length` payload bytes (mask of zeros). */
export function frameHeader(length: number, opcode = 0x2, fin = true): Uint8Array {
  const h: number[] = [(fin ? 0x80 : 0) | opcode];
  if (length < 126) h.push(0x80 | length);
  else if (length < 65536) h.push(0x80 | 126, length >> 8, length & 0xff);
  else {
    h.push(0x80 | 127);
    for (let i = 7; i >= 0; i--) h.push(Math.floor(length / 2 ** (8 * i)) & 0xff);
  }
  // A zero mask leaves the payload as it is, so a test can stream it without copying.
  h.push(0, 0, 0, 0);
  return new Uint8Array(h);
}

/** A whole masked binary frame around `payload`. */
export function frame(payload: Uint8Array): Uint8Array {
  return concatBytes([frameHeader(payload.length), payload]);
}

export async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  let off = 0;
  while (off < bytes.length) off += await conn.write(bytes.subarray(off));
}
