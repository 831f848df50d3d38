/**
 * The contract every RetainedStore must keep, written once and run against
 * each implementation: `retainedStoreContract(name, factory)`. Today that is
 * the in-memory store; a cluster store registers itself the same way.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { utf8 } from "../../src/protocol/bytes.ts";
import { Message } from "../../src/protocol/message.ts";
import { filterMatches } from "../../src/protocol/topic.ts";
import { MemoryRetainedStore, type RetainedStore } from "../../src/router/retained.ts";

/** Makes a fresh, empty store; may be async for stores behind a network. */
export type RetainedStoreFactory = () => RetainedStore | Promise<RetainedStore>;

function retained(topic: string, payload = topic): Message {
  return new Message(topic, utf8(topic), utf8(payload), 1, true, null, 0, "publisher");
}

/** Matches of `filter` as sorted "topic=payload" strings (stores need not keep object identity). */
async function found(store: RetainedStore, filter: string): Promise<string[]> {
  const msgs = await store.match(filter);
  return msgs.map((m) => `${m.topic}=${new TextDecoder().decode(m.payload)}`).sort();
}

async function setAll(store: RetainedStore, topics: string[]): Promise<void> {
  for (const t of topics) await store.set(retained(t));
}

const self = (topics: string[]) => topics.map((t) => `${t}=${t}`).sort();

/** Registers the shared RetainedStore tests for one implementation. */
export function retainedStoreContract(
  name: string,
  factory: RetainedStoreFactory,
  dispose: (store: RetainedStore) => void | Promise<void> = () => {},
): void {
  const test = (what: string, fn: (store: RetainedStore) => Promise<void>) =>
    Deno.test(`${name}: ${what}`, async () => {
      const store = await factory();
      try {
        await fn(store);
      } finally {
        await dispose(store);
      }
    });

  test("a retained message is found by its exact topic and nothing else", async (s) => {
    assert.equal(s.size, 0);
    await s.set(retained("a/b", "v1"));
    assert.equal(s.size, 1);
    assert.deepEqual(await found(s, "a/b"), ["a/b=v1"]);
    assert.deepEqual(await found(s, "a"), []);
    assert.deepEqual(await found(s, "a/b/c"), []);
    assert.deepEqual(await found(s, "A/b"), [], "topics are case sensitive");
  });

  test("setting a topic again replaces its retained message", async (s) => {
    // [MQTT-3.3.1-5] the new retained message replaces any existing one.
    await s.set(retained("a/b", "v1"));
    await s.set(retained("a/b", "v2"));
    assert.equal(s.size, 1);
    assert.deepEqual(await found(s, "a/b"), ["a/b=v2"]);
    assert.deepEqual(await found(s, "#"), ["a/b=v2"]);
  });

  test("deleting removes only that topic; deleting an unknown topic changes nothing", async (s) => {
    await setAll(s, ["a", "a/b", "a/b/c", "a/d"]);
    assert.equal(s.size, 4);
    await s.delete("a/b");
    assert.equal(s.size, 3);
    assert.deepEqual(await found(s, "#"), self(["a", "a/b/c", "a/d"]), "parent and child stay");
    await s.delete("a/b"); // already gone
    await s.delete("x/y"); // never there
    await s.delete("a/b/c/d"); // below an existing topic
    await s.delete("a/d/"); // differs by an empty level
    assert.equal(s.size, 3);
    assert.deepEqual(await found(s, "#"), self(["a", "a/b/c", "a/d"]));
  });

  test("deleting a deep topic keeps its parents and siblings, and the topic can be set again", async (s) => {
    await setAll(s, ["p", "p/q/r/s", "p/q/x"]);
    await s.delete("p/q/r/s");
    assert.deepEqual(await found(s, "#"), self(["p", "p/q/x"]));
    await s.delete("p/q/x");
    assert.deepEqual(await found(s, "#"), self(["p"]));
    await s.delete("p");
    assert.equal(s.size, 0);
    assert.deepEqual(await found(s, "#"), []);
    await s.set(retained("p/q/r/s", "again"));
    assert.deepEqual(await found(s, "p/+/+/s"), ["p/q/r/s=again"]);
    assert.equal(s.size, 1);
  });

  test("+ matches exactly one level, including an empty one", async (s) => {
    await setAll(s, ["a", "a/b", "a/c", "a/b/c", "a/", "/a", "a//b", "b/b"]);
    assert.deepEqual(await found(s, "a/+"), self(["a/b", "a/c", "a/"]));
    assert.deepEqual(await found(s, "+/b"), self(["a/b", "b/b"]));
    assert.deepEqual(await found(s, "+"), self(["a"]));
    assert.deepEqual(await found(s, "+/a"), self(["/a"]));
    assert.deepEqual(await found(s, "a/+/b"), self(["a//b"]));
    assert.deepEqual(await found(s, "+/+/+"), self(["a/b/c", "a//b"]));
  });

  test("# matches its parent level and everything below", async (s) => {
    await setAll(s, ["a", "a/b", "a/b/c", "a/", "ab", "b"]);
    // [MQTT-4.7.1-2] "sport/#" also matches "sport".
    assert.deepEqual(await found(s, "a/#"), self(["a", "a/b", "a/b/c", "a/"]));
    assert.deepEqual(await found(s, "a/b/#"), self(["a/b", "a/b/c"]));
    assert.deepEqual(await found(s, "#"), self(["a", "a/b", "a/b/c", "a/", "ab", "b"]));
    assert.deepEqual(await found(s, "+/#"), self(["a", "a/b", "a/b/c", "a/", "ab", "b"]));
    assert.deepEqual(await found(s, "c/#"), []);
  });

  test("topics beginning with $ are matched only by filters that start with them", async (s) => {
    await setAll(s, ["$SYS", "$SYS/x", "$SYS/y/z", "$other", "x", "a/$b"]);
    // [MQTT-4.7.2-1] no leading wildcard matches a $ topic.
    assert.deepEqual(await found(s, "#"), self(["x", "a/$b"]));
    assert.deepEqual(await found(s, "+"), self(["x"]));
    assert.deepEqual(await found(s, "+/x"), []);
    assert.deepEqual(await found(s, "+/#"), self(["x", "a/$b"]));
    assert.deepEqual(await found(s, "$SYS/#"), self(["$SYS", "$SYS/x", "$SYS/y/z"]));
    assert.deepEqual(await found(s, "$SYS/+"), self(["$SYS/x"]));
    assert.deepEqual(await found(s, "$other"), self(["$other"]));
    // $ is only special at the start of a topic.
    assert.deepEqual(await found(s, "a/+"), self(["a/$b"]));
  });

  test("a cursor yields each topic's message as it is when reached, and none set after it was made", async (s) => {
    await setAll(s, ["a/1", "a/2", "a/3", "a/4", "b/1"]);
    const c = s.cursor("a/#");
    const first = c.next();
    assert.equal(first.done, false);
    const seen = [first.value!.topic];
    // Changes while the cursor is suspended, as they happen during a slow subscriber's stream.
    const rest = ["a/1", "a/2", "a/3", "a/4"].filter((t) => t !== seen[0]);
    await s.set(retained(rest[0], "newer")); // replaced: the subscriber gets it live instead
    await s.delete(rest[1]); // deleted: not sent
    await s.set(retained("a/5")); // set later: delivered live, not by the cursor
    await s.set(retained("a/deep/x")); // the same
    for (let r = c.next(); !r.done; r = c.next()) seen.push(r.value.topic);
    assert.deepEqual(seen.sort(), [seen[0], rest[2]].sort());
    // A new cursor sees the store as it is now.
    assert.deepEqual(
      (await found(s, "a/#")).map((x) => x.split("=")[0]),
      [rest[0], "a/5", "a/deep/x", seen[0], rest[2]].sort(),
    );
  });

  Deno.test(`${name}: match agrees with the brute-force matcher after random sets and deletes`, async () => {
    const levels = ["a", "b", "", "$S"];
    const topicArb = fc.array(fc.constantFrom(...levels), { minLength: 1, maxLength: 3 })
      .map((l) => l.join("/")).filter((t) => t.length > 0);
    const filterArb = fc.tuple(
      fc.array(fc.constantFrom(...levels, "+"), { minLength: 1, maxLength: 3 }),
      fc.boolean(),
    ).map(([l, hash]) => (hash ? [...l, "#"] : l).join("/"));
    const opArb = fc.tuple(fc.boolean(), topicArb, fc.nat(9));
    await fc.assert(
      fc.asyncProperty(fc.array(opArb, { maxLength: 25 }), fc.array(filterArb), async (ops, fs) => {
        const s = await factory();
        try {
          const model = new Map<string, string>();
          for (const [isSet, topic, v] of ops) {
            if (isSet) {
              await s.set(retained(topic, `v${v}`));
              model.set(topic, `v${v}`);
            } else {
              await s.delete(topic);
              model.delete(topic);
            }
          }
          assert.equal(s.size, model.size);
          for (const f of ["#", "+", "$S/#", ...fs]) {
            const want = [...model].filter(([t]) => filterMatches(f, t))
              .map(([t, v]) => `${t}=${v}`).sort();
            assert.deepEqual(await found(s, f), want, f);
          }
        } finally {
          await dispose(s);
        }
      }),
      { numRuns: 100 },
    );
  });
}

retainedStoreContract("MemoryRetainedStore", () => new MemoryRetainedStore());

Deno.test("MemoryRetainedStore prunes the levels a delete leaves empty", () => {
  // Not visible through the interface, but a broker that churns through
  // short-lived topics would otherwise grow without bound.
  const s = new MemoryRetainedStore();
  type Node = { children(): IterableIterator<[string, Node]> };
  const root = () => (s as unknown as { root: Node }).root;
  const names = (n: Node) => [...n.children()].map(([name]) => name);
  s.set(retained("a/b/c/d"));
  s.set(retained("a/x"));
  s.delete("a/b/c/d");
  assert.deepEqual(names(root()), ["a"]);
  assert.deepEqual(names([...root().children()][0][1]), ["x"]);
  s.delete("a/x");
  assert.deepEqual(names(root()), [], "nothing left under the root");
});

Deno.test("MemoryRetainedStore says which limit is reached once no message of a new topic fits", () => {
  // "a" with an empty payload is the smallest message there is: 160 + 48 + 2 + 1 bytes.
  const smallest = () => new Message("a", utf8("a"), new Uint8Array(0), 0, true, null, 0, "p");
  const least = 211;
  const big = retained("t/1", "x".repeat(1000));
  const bytes = new MemoryRetainedStore({ maxMessages: 10, maxBytes: 2000 });
  assert.equal(bytes.limitReached(), null);
  assert.ok(bytes.set(big));
  const left = bytes.room().bytes;
  assert.equal(bytes.room().messages, 9);
  // Room for the smallest message: not reached, and it fits.
  assert.ok(left >= least, `${left} left`);
  assert.equal(bytes.limitReached(), null);
  assert.equal(bytes.limitPassed(smallest()), null);
  // "t/2" costs 160 + 2 * 48 + 6 + 3 bytes and its payload: 100 bytes are left after it.
  assert.ok(bytes.set(retained("t/2", "y".repeat(left - 265 - 100))));
  // Less than the smallest message left: every new topic's message would pass max_retained_bytes.
  assert.ok(bytes.room().bytes < least, `${bytes.room().bytes} left`);
  assert.equal(bytes.limitReached(), "max_retained_bytes");
  assert.equal(bytes.limitPassed(smallest()), "max_retained_bytes");

  const count = new MemoryRetainedStore({ maxMessages: 2, maxBytes: 1 << 20 });
  count.set(retained("b"));
  assert.equal(count.limitReached(), null);
  count.set(retained("c"));
  assert.equal(count.limitReached(), "max_retained_messages");
  assert.equal(count.limitPassed(smallest()), "max_retained_messages");
  assert.deepEqual(
    new MemoryRetainedStore({ maxMessages: 0, maxBytes: 0 }).limitReached(),
    "max_retained_messages",
  );
});
