/**
 * What the Store contract's cases compare a store with: the reference model (a durable
 * `MemoryStore` fed the same batches) and what a store must load for it. Apart from the cases
 * so that every group of them (contract.ts, contract_sessions.ts, contract_retained.ts)
 * compares the same way.
 */
import assert from "node:assert/strict";
import { MissingSessionError } from "../../src/store/errors.ts";
import { MemoryStore } from "../../src/store/memory.ts";
import type { Store, StoredMessage, StoreOp } from "../../src/store/types.ts";
import { loadRetained, normalRetained, normalSession, normalSessions } from "./fixtures.ts";

export async function expectLoaded(
  store: Store,
  sessions: Parameters<typeof normalSessions>[0],
  retained: readonly StoredMessage[],
): Promise<void> {
  assert.deepEqual(normalSessions(await store.loadSessions()), normalSessions(sessions));
  const loaded = await loadRetained(store);
  // Handed over in topic order, every time.
  const topics = loaded.map((m) => m.topic);
  assert.deepEqual(topics, [...topics].sort());
  assert.deepEqual(normalRetained(loaded), normalRetained(retained));
  for (const s of sessions) {
    const one = await store.loadSession(s.clientId);
    assert.ok(one, `loadSession(${JSON.stringify(s.clientId)}) is null`);
    assert.deepEqual(normalSession(one), normalSession(s));
  }
}

/** What the reference model loads after `batches`. */
export async function model(batches: readonly (readonly StoreOp[])[]) {
  const m = new MemoryStore(true);
  await m.open();
  for (const b of batches) await m.write(b);
  return { sessions: await m.loadSessions(), retained: await loadRetained(m) };
}

/**
 * Writes `batches` to `store` and checks it loads what the memory model loads. A shared store
 * names the sessions it does not hold that a batch changes in part (MissingSessionError, so the
 * core writes them whole) after writing the rest: what the model's "ignored" leaves.
 */
export async function writeAndCompare(store: Store, batches: readonly (readonly StoreOp[])[]) {
  for (const b of batches) {
    await store.write(b).catch((e) => {
      if (!(e instanceof MissingSessionError && store.shared)) throw e;
    });
  }
  const want = await model(batches);
  await expectLoaded(store, want.sessions, want.retained);
  const ids = new Set(want.sessions.map((s) => s.clientId));
  for (const id of ["c1", "c2", "nobody"]) {
    if (!ids.has(id)) assert.equal(await store.loadSession(id), null);
  }
}
