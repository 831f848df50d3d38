import assert from "node:assert/strict";
import { MessageIds } from "../../src/cluster/codec.ts";
import { SeenIds } from "../../src/cluster/seen_ids.ts";

Deno.test("an id comes once; the same id again is a duplicate, whatever came between", () => {
  const ids = new MessageIds();
  const seen = new SeenIds(1024);
  const all = Array.from({ length: 3000 }, () => ids.next());
  // Every third id reaches this node (the others went to other nodes), in order...
  const mine = all.filter((_, i) => i % 3 === 0);
  for (const id of mine) assert.equal(seen.firstTime(id), true, id);
  // ...and the last XADD's ids come again after later ones (a resent command).
  for (const id of mine.slice(-50)) assert.equal(seen.firstTime(id), false, id);
  // Ids that never came are new even when below the highest seen (a late first copy).
  assert.equal(seen.firstTime(all[all.length - 2]), true);
  assert.equal(seen.firstTime(all[all.length - 2]), false);
});

Deno.test("ids of several processes are told apart; beyond the window an id counts as new", () => {
  const a = new MessageIds();
  const b = new MessageIds();
  const seen = new SeenIds(64, 2);
  const a1 = a.next();
  const b1 = b.next();
  assert.equal(seen.firstTime(a1), true);
  assert.equal(seen.firstTime(b1), true, "the same counter value from another process");
  assert.equal(seen.firstTime(a1), false);
  // 64 later ids of a: a1 left the window and is delivered again rather than dropped unseen.
  for (let i = 0; i < 64; i++) seen.firstTime(a.next());
  assert.equal(seen.firstTime(a1), true);
  // A third process: the one heard from least recently (b) is forgotten.
  const c = new MessageIds();
  seen.firstTime(a.next());
  assert.equal(seen.firstTime(c.next()), true);
  assert.equal(seen.firstTime(b1), true, "b was forgotten: at least once, not dropped");
  // Ids other software wrote, or none, always go through.
  assert.equal(seen.firstTime(""), true);
  assert.equal(seen.firstTime("x"), true);
  assert.equal(seen.firstTime("x"), true);
});

Deno.test("memory is bounded: one window per remembered process", () => {
  const seen = new SeenIds(1 << 17, 8);
  for (let p = 0; p < 100; p++) {
    const ids = new MessageIds();
    for (let i = 0; i < 10; i++) seen.firstTime(ids.next());
  }
  const origins = (seen as unknown as { origins: Map<string, unknown> }).origins;
  assert.equal(origins.size, 8);
});
