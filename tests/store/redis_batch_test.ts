/** How a batch's sessions are cut into chunks (src/store/redis_batch.ts). */
import assert from "node:assert/strict";
import { chunks, type SessionOp } from "../../src/store/redis_batch.ts";
import type { StoredMessage } from "../../src/store/types.ts";

const msg = (bytes: number): StoredMessage => ({
  topic: "t",
  payload: new Uint8Array(bytes),
  qos: 1,
  retain: false,
  props: null,
  expiresAt: 0,
  origin: "p",
});
const enqueue = (clientId: string, bytes: number): SessionOp => ({
  type: "enqueue",
  clientId,
  seq: 1,
  item: { msg: msg(bytes), qos: 1, retain: false, subIds: null },
});

Deno.test("chunks: sessions in order, cut once a chunk's payloads reach the bound", () => {
  const by = new Map<string, SessionOp[]>();
  for (let i = 0; i < 10; i++) by.set(`c${i}`, [enqueue(`c${i}`, 300)]);
  const cut = [...chunks(by, 1000)];
  // About 400 bytes a session encoded: two fit under 1000, a third does not.
  assert.deepEqual(cut, [["c0", "c1"], ["c2", "c3"], ["c4", "c5"], ["c6", "c7"], ["c8", "c9"]]);
  assert.deepEqual([...chunks(by, 1 << 20)], [[...by.keys()]], "all in one under a large bound");
});

Deno.test("chunks: a session larger than the bound goes alone, its ops never split", () => {
  const by = new Map<string, SessionOp[]>([
    ["small", [enqueue("small", 10)]],
    ["big", [enqueue("big", 5000), enqueue("big", 5000)]],
    ["after", [enqueue("after", 10), { type: "dequeue", clientId: "after", seq: 1 }]],
  ]);
  assert.deepEqual([...chunks(by, 1000)], [["small"], ["big"], ["after"]]);
  assert.deepEqual([...chunks(new Map(), 1000)], []);
});
