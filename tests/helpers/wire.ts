/**
 * Byte builders for raw-socket tests, independent of the broker's own codec: a test that sends
 * hand-made bytes must not share the code it is testing.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { collect, connectClient, endClient } from "./broker.ts";

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
