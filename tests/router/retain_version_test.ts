/**
 * Retained updates of one topic made on different nodes carry versions: a store keeps the newest,
 * whatever order the updates reach it in, and a recent deletion keeps an older update from
 * bringing its message back (so every node of a cluster ends with the same retained message).
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { utf8 } from "../../src/protocol/bytes.ts";
import { Message } from "../../src/protocol/message.ts";
import {
  MemoryRetainedStore,
  TOMBSTONE_BYTES_MAX,
  TOMBSTONE_MS,
  TOMBSTONES_MAX,
} from "../../src/router/retained.ts";
import { NO_VERSION, RetainClock } from "../../src/router/retain_version.ts";

function retained(topic: string, payload: string): Message {
  return new Message(topic, utf8(topic), utf8(payload), 0, true, null, 0, "");
}

const text = (m: Message | undefined) =>
  m === undefined ? "(none)" : new TextDecoder().decode(m.payload);

Deno.test("versions grow with the clock, never go back, and order two processes in one millisecond", () => {
  let now = 1_700_000_000_000;
  const a = new RetainClock(() => now, 1);
  const b = new RetainClock(() => now, 2);
  const a1 = a.next();
  const b1 = b.next();
  assert.ok(a1 < b1, "same millisecond: the tags decide");
  now += 1;
  const a2 = a.next();
  assert.ok(a2 > b1, "a later millisecond wins over any tag");
  now -= 5_000; // the clock stepped back
  assert.equal(a.next(), a2, "a process's versions never go back");
  assert.ok(NO_VERSION < a1, "no version is older than all");
  assert.equal(a1.length, b1.length, "fixed width: compared as strings");
});

Deno.test("a store keeps the newest update of a topic, in any order of arrival", () => {
  fc.assert(
    fc.property(
      fc.array(fc.record({ del: fc.boolean(), key: fc.integer(), tag: fc.nat(0xffff) }), {
        minLength: 1,
        maxLength: 12,
      }),
      (ups) => {
        // Update k: made at millisecond k on a process with its own tag, a set or a delete.
        const versioned = ups.map((u, k) => ({
          ver: new RetainClock(() => 1_700_000_000_000 + k, u.tag).next(),
          del: u.del,
          payload: `p${k}`,
          key: u.key,
        }));
        const newest = versioned[versioned.length - 1];
        const arrival = [...versioned].sort((x, y) => x.key - y.key);
        for (const order of [versioned, arrival]) {
          const s = new MemoryRetainedStore();
          for (const u of order) {
            if (u.del) s.delete("t", u.ver);
            else s.set(retained("t", u.payload), u.ver);
          }
          assert.equal(text(s.match("t")[0]), newest.del ? "(none)" : newest.payload);
        }
      },
    ),
  );
});

Deno.test("a deletion is remembered for a while: an older update that comes late does not bring the message back", () => {
  let now = 0;
  const s = new MemoryRetainedStore(undefined, () => now);
  s.set(retained("t", "old"), "0000000000001aaaa");
  s.delete("t", "0000000000003aaaa");
  s.set(retained("t", "late"), "0000000000002aaaa");
  assert.deepEqual(s.match("t"), []);
  // Newer than the deletion: stored.
  s.set(retained("t", "new"), "0000000000004aaaa");
  assert.equal(text(s.match("t")[0]), "new");
  // Updates without a version (stored before versions existed) always apply.
  s.set(retained("t", "unversioned"));
  assert.equal(text(s.match("t")[0]), "unversioned");
  // Bounded: at most TOMBSTONES_MAX deletions, none older than TOMBSTONE_MS.
  for (let i = 0; i < TOMBSTONES_MAX + 10; i++) s.delete(`gone/${i}`, "0000000000005aaaa");
  assert.equal(s.tombstoneCount, TOMBSTONES_MAX);
  now += TOMBSTONE_MS;
  s.delete("later", "0000000000006aaaa");
  assert.equal(s.tombstoneCount, 1);
  // Forgotten: an old update is stored again (at least the newest one that arrives).
  s.set(retained("gone/5", "back"), "0000000000001aaaa");
  assert.equal(text(s.match("gone/5")[0]), "back");
});

Deno.test("remembered deletions are bounded in bytes: clears of long absent topics cannot grow memory", () => {
  let now = 0;
  const s = new MemoryRetainedStore(undefined, () => now);
  const long = (i: number) => `${i}/${"x".repeat(30_000)}`;
  let kept = 0;
  for (let i = 0; i < 100; i++) {
    if (s.tombstoneFits(long(i))) kept++;
    s.delete(long(i), "0000000000005aaaa");
  }
  // About 60 KB each against a budget of TOMBSTONE_BYTES_MAX: the rest are not remembered.
  assert.equal(s.tombstoneCount, kept);
  assert.ok(kept * 60_000 <= TOMBSTONE_BYTES_MAX && kept >= 10, `${kept} kept`);
  // Not remembered: a late older set of such a topic is stored (the bound's price).
  s.set(retained(long(99), "late"), "0000000000004aaaa");
  assert.equal(text(s.match(long(99))[0]), "late");
  // Once the remembered ones are older than TOMBSTONE_MS there is room again.
  now += TOMBSTONE_MS;
  assert.equal(s.tombstoneFits(long(200)), true);
  assert.equal(s.tombstoneCount, 0);
});
