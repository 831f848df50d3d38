/** Traffic through outboxes over real sockets, shared by the outbox tests of each transport. */
import assert from "node:assert/strict";
import { type Outbox, type OutboxOwner, pooledBuffers } from "../../src/protocol/outbox.ts";

/** Records what an outbox reports. */
export class RecordingOwner implements OutboxOwner {
  drains = 0;
  failure: unknown = null;
  drained(): void {
    this.drains++;
  }
  writeFailed(e: unknown): void {
    this.failure = e;
  }
}

/** `n` bytes of a pattern that differs by `seed`. */
export function pattern(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
}

/**
 * Writes 200 packets of mixed sizes through each outbox, one per connection per event-loop turn
 * like a paced load, so each flush takes a pooled buffer another connection's completed write
 * just gave back; asserts that each peer (`readExactly(k, n)` reads `n` bytes at connection k's
 * far end) received exactly its own bytes, in order, and that buffers went back to the pool.
 */
export async function assertPooledWritesDoNotMix(
  outboxes: Outbox[],
  readExactly: (k: number, n: number) => Promise<Uint8Array>,
): Promise<void> {
  const rounds = 200;
  const sizes = [4, 70, 300, 1500];
  const expected: number[][] = outboxes.map(() => []);
  const readers = outboxes.map((_, k) => {
    let n = 0;
    for (let r = 0; r < rounds; r++) n += sizes[(r + k) % sizes.length];
    return readExactly(k, n);
  });
  for (let r = 0; r < rounds; r++) {
    outboxes.forEach((o, k) => {
      const packet = pattern(sizes[(r + k) % sizes.length], r * 7 + k);
      o.push(packet);
      expected[k].push(...packet);
    });
    await new Promise((resolve) => setTimeout(resolve, 0));
  }
  const got = await Promise.all(readers);
  got.forEach((bytes, k) => assert.deepEqual(Array.from(bytes), expected[k]));
  assert.ok(pooledBuffers() > 0, "completed writes returned their buffers to the pool");
}
