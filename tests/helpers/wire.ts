/**
 * Byte builders for raw-socket tests, independent of the broker's own codec: a test that sends
 * hand-made bytes must not share the code it is testing.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { collect, connectClient, endClient, RawClient, startBroker } from "./broker.ts";

const enc = new TextEncoder();

/** A length-prefixed string; a Uint8Array is sent as-is (for ill-formed UTF-8). */
export function str(s: string | Uint8Array): number[] {
  const b = typeof s === "string" ? enc.encode(s) : s;
  return [b.length >> 8, b.length & 0xff, ...b];
}

/** A Variable Byte Integer. */
export function varint(n: number): number[] {
  const out: number[] = [];
  do {
    let b = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) b |= 0x80;
    out.push(b);
  } while (n > 0);
  return out;
}

/** The bytes of `parts`, one after the other, in a new array. */
export function concatBytes(parts: (Uint8Array | number[])[]): Uint8Array {
  const arrays = parts.map((p) => p instanceof Uint8Array ? p : new Uint8Array(p));
  // Copied out of Buffer.concat's (possibly pooled) Buffer: callers compare plain Uint8Arrays.
  return new Uint8Array(Buffer.concat(arrays));
}

/** A packet with a correct remaining length around `body`. */
export function frame(header: number, body: number[]): Uint8Array {
  return new Uint8Array([header, ...varint(body.length), ...body]);
}

/** Two MQTT.js clients exchanging messages: proves the broker still serves others. */
export async function bystanders(port: number, protocolVersion: 4 | 5 = 5) {
  const sub = await connectClient(port, { clientId: "bystander-sub", protocolVersion });
  const pub = await connectClient(port, { clientId: "bystander-pub", protocolVersion });
  const inbox = collect(sub);
  await sub.subscribeAsync("bystander/alive", { qos: 1 });
  let n = 0;
  return {
    async assertServing(): Promise<void> {
      const payload = `ping ${++n}`;
      await pub.publishAsync("bystander/alive", payload, { qos: 1 });
      assert.equal((await inbox.next()).payload, payload);
    },
    async [Symbol.asyncDispose](): Promise<void> {
      await endClient(pub);
      await endClient(sub);
    },
  };
}

/** The fields of a hand-made PUBLISH (see publishBytes). */
export interface PublishFields {
  topic: string | Uint8Array;
  qos?: number;
  packetId?: number;
  /** Raw property bytes (MQTT 5; omitted for 3.1.1). */
  props?: number[];
  payload?: string;
  /** Extra fixed-header flag bits (retain, dup). */
  flags?: number;
  v5?: boolean;
}

/** PUBLISH bytes built by hand, so invalid fields can be sent. */
export function publishBytes(f: PublishFields): Uint8Array {
  const qos = f.qos ?? 0;
  const body = [
    ...str(f.topic),
    ...(qos > 0 ? [(f.packetId ?? 1) >> 8, (f.packetId ?? 1) & 0xff] : []),
    ...((f.v5 ?? true) ? [...varint(f.props?.length ?? 0), ...(f.props ?? [])] : []),
    ...enc.encode(f.payload ?? "x"),
  ];
  return frame(0x30 | (qos << 1) | (f.flags ?? 0), body);
}

/**
 * Sends `v5Bytes` after CONNACK on a broker with `limits` and expects DISCONNECT `code` then a
 * close; `v4Bytes`, when given, sent by a 3.1.1 client, must close it without a packet; clients
 * beside them keep being served.
 */
export async function assertRefused(
  v5Bytes: Uint8Array,
  code: number,
  opts: { v4Bytes?: Uint8Array; limits?: Record<string, unknown> } = {},
): Promise<void> {
  await using b = await startBroker({ limits: opts.limits ?? {} });
  await using others = await bystanders(b.port);
  await using c = await RawClient.connect(b.port, 5);
  await c.handshake("offender");
  await c.send(v5Bytes);
  const d = await c.expect("disconnect");
  assert.equal(d.reasonCode, code, `DISCONNECT 0x${(d.reasonCode as number).toString(16)}`);
  assert.equal(await c.next(), null, "still open after DISCONNECT");
  if (opts.v4Bytes !== undefined) {
    await using c4 = await RawClient.connect(b.port, 4);
    await c4.handshake("offender311", 4);
    await c4.send(opts.v4Bytes);
    assert.equal(await c4.next(), null, "3.1.1 connection still open");
  }
  await others.assertServing();
}
