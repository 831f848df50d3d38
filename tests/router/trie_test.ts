/**
 * The subscription trie must answer exactly what the brute-force matcher
 * (`filterMatches`, checked first against the spec's own examples) answers,
 * across adds, replacements, removals and shared subscriptions.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { filterMatches } from "../../src/protocol/topic.ts";
import { type MatchResult, SubscriptionTrie } from "../../src/router/trie.ts";
import type { Subscriber, Subscription } from "../../src/router/types.ts";

function subscriber(clientId: string, online = true): Subscriber {
  return { clientId, online, deliver() {} };
}

function subscription(
  who: Subscriber,
  filter: string,
  group: string | null = null,
  qos: 0 | 1 | 2 = 0,
): Subscription {
  return {
    subscriber: who,
    key: group === null ? filter : `$share/${group}/${filter}`,
    filter,
    group,
    qos,
    noLocal: false,
    retainAsPublished: false,
    retainHandling: 0,
    subscriptionId: 0,
    idList: null,
  };
}

// ---- the reference matcher against the spec's examples (MQTT 5 section 4.7) ----

Deno.test("filterMatches agrees with the spec's wildcard examples", () => {
  const cases: [string, string, boolean][] = [
    // 4.7.1.2 multi-level wildcard
    ["sport/tennis/player1/#", "sport/tennis/player1", true],
    ["sport/tennis/player1/#", "sport/tennis/player1/ranking", true],
    ["sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", true],
    ["sport/#", "sport", true],
    ["#", "sport/tennis", true],
    ["#", "/", true],
    // 4.7.1.3 single-level wildcard
    ["sport/tennis/+", "sport/tennis/player1", true],
    ["sport/tennis/+", "sport/tennis/player2", true],
    ["sport/tennis/+", "sport/tennis/player1/ranking", false],
    ["sport/+", "sport", false],
    ["sport/+", "sport/", true],
    ["+/+", "/finance", true],
    ["/+", "/finance", true],
    ["+", "/finance", false],
    ["+", "sport", true],
    ["+/tennis/#", "sport/tennis/player1", true],
    // 4.7.2 topics beginning with $ [MQTT-4.7.2-1]
    ["#", "$SYS/monitor/Clients", false],
    ["#", "$SYS", false],
    ["+/monitor/Clients", "$SYS/monitor/Clients", false],
    ["$SYS/#", "$SYS/monitor/Clients", true],
    ["$SYS/monitor/+", "$SYS/monitor/Clients", true],
    ["$SYS/#", "$SYS", true],
    // 4.7.3 case sensitive, empty levels are levels
    ["ACCOUNTS", "Accounts", false],
    ["a//b", "a//b", true],
    ["a/+/b", "a//b", true],
    ["a/b", "a/b/", false],
    ["a/b/", "a/b/", true],
  ];
  for (const [filter, topic, want] of cases) {
    assert.equal(filterMatches(filter, topic), want, `${filter} vs ${topic}`);
  }
});

/** Subscriptions matched for `topic`, as sorted "client filter" strings. */
function matchedKeys(r: MatchResult): string[] {
  const out: string[] = [];
  for (const t of r.targets) {
    for (const s of t.subs) {
      assert.equal(s.subscriber, t.subscriber, "a target only holds its subscriber's subs");
      out.push(`${s.subscriber.clientId} ${s.filter}`);
    }
  }
  return out.sort();
}

Deno.test("the trie matches the spec's wildcard examples", () => {
  const trie = new SubscriptionTrie();
  const filters = [
    "sport/tennis/player1/#",
    "sport/#",
    "sport/tennis/+",
    "sport/+",
    "+/+",
    "/+",
    "+",
    "#",
    "$SYS/#",
    "+/monitor/Clients",
  ];
  for (const f of filters) trie.add(subscription(subscriber(f), f));
  const expect = (topic: string) =>
    filters.filter((f) => filterMatches(f, topic)).map((f) => `${f} ${f}`).sort();
  for (
    const topic of [
      "sport",
      "sport/",
      "sport/tennis/player1",
      "sport/tennis/player1/ranking",
      "/finance",
      "$SYS/monitor/Clients",
      "$SYS",
      "other",
    ]
  ) {
    assert.deepEqual(matchedKeys(trie.match(topic)), expect(topic), topic);
  }
  // Spot checks that do not depend on filterMatches.
  assert.deepEqual(matchedKeys(trie.match("$SYS/monitor/Clients")), ["$SYS/# $SYS/#"]);
  assert.deepEqual(matchedKeys(trie.match("sport")), ["# #", "+ +", "sport/# sport/#"]);
});

// ---- model-based property test -----------------------------------------------

const LEVELS = ["a", "b", "", "$SYS"];
const levelArb = fc.constantFrom(...LEVELS);

/** Filters over a small alphabet, so random topics often hit them. */
const filterArb = fc.tuple(
  fc.array(fc.oneof(levelArb, fc.constant("+")), { minLength: 1, maxLength: 3 }),
  fc.boolean(),
).map(([levels, hash]) => (hash ? [...levels, "#"] : levels).join("/"))
  .chain((f) => fc.constantFrom(f, "#", "+"));

const topicArb = fc.array(fc.constantFrom(...LEVELS, "c"), { minLength: 1, maxLength: 4 })
  .map((l) => l.join("/"))
  .filter((t) => t.length > 0);

const CLIENTS = ["c0", "c1", "c2"];
const GROUPS = [null, null, "g", "h"];

type Op =
  | { kind: "add"; client: number; filter: string; group: string | null; qos: 0 | 1 | 2 }
  | { kind: "remove"; client: number; filter: string; group: string | null }
  | { kind: "match"; topic: string };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  fc.record({
    kind: fc.constant("add" as const),
    client: fc.integer({ min: 0, max: CLIENTS.length - 1 }),
    filter: filterArb,
    group: fc.constantFrom(...GROUPS),
    qos: fc.constantFrom<0 | 1 | 2>(0, 1, 2),
  }),
  fc.record({
    kind: fc.constant("remove" as const),
    client: fc.integer({ min: 0, max: CLIENTS.length - 1 }),
    filter: filterArb,
    group: fc.constantFrom(...GROUPS),
  }),
  fc.record({ kind: fc.constant("match" as const), topic: topicArb }),
);

/** Every topic over the alphabet up to 3 levels: checked after each change. */
const ALL_TOPICS: string[] = (() => {
  const out = new Set<string>();
  const alphabet = [...LEVELS, "c"];
  const rec = (prefix: string[]) => {
    if (prefix.length > 0) out.add(prefix.join("/"));
    if (prefix.length === 3) return;
    for (const l of alphabet) rec([...prefix, l]);
  };
  rec([]);
  out.delete("");
  return [...out];
})();

/** The brute-force answer: plain subscriptions and share groups that match. */
function modelMatch(model: Map<string, Subscription>, topic: string) {
  const plain: string[] = [];
  const groups = new Map<string, string[]>();
  for (const s of model.values()) {
    if (!filterMatches(s.filter, topic)) continue;
    if (s.group === null) plain.push(`${s.subscriber.clientId} ${s.filter} q${s.qos}`);
    else {
      const g = `${s.group} ${s.filter}`;
      groups.set(g, [...(groups.get(g) ?? []), `${s.subscriber.clientId} q${s.qos}`]);
    }
  }
  return {
    plain: plain.sort(),
    groups: [...groups.entries()].map(([g, m]) => `${g}: ${m.sort().join(",")}`).sort(),
  };
}

function trieMatch(trie: SubscriptionTrie, topic: string) {
  const r = trie.match(topic);
  const plain: string[] = [];
  const seen = new Set<Subscriber>();
  for (const t of r.targets) {
    assert.ok(!seen.has(t.subscriber), "one target per subscriber");
    seen.add(t.subscriber);
    for (const s of t.subs) {
      assert.equal(s.subscriber, t.subscriber);
      plain.push(`${s.subscriber.clientId} ${s.filter} q${s.qos}`);
    }
  }
  const groups = r.groups.map((g) =>
    `${g.name} ${g.filter}: ${
      g.members.map((m) => `${m.subscriber.clientId} q${m.qos}`).sort().join(",")
    }`
  );
  return { plain: plain.sort(), groups: groups.sort() };
}

Deno.test("trie.match returns exactly what the brute-force matcher returns, through adds and removes", () => {
  const clients = CLIENTS.map((c) => subscriber(c));
  fc.assert(
    fc.property(fc.array(opArb, { minLength: 1, maxLength: 30 }), (ops) => {
      const trie = new SubscriptionTrie();
      // Keyed like the trie: one subscription per (subscriber, filter, group).
      const model = new Map<string, Subscription>();
      const keyOf = (client: number, filter: string, group: string | null) =>
        `${client}|${group ?? ""}|${filter}`;
      for (const op of ops) {
        if (op.kind === "match") {
          assert.deepEqual(trieMatch(trie, op.topic), modelMatch(model, op.topic), op.topic);
          continue;
        }
        const k = keyOf(op.client, op.filter, op.group);
        if (op.kind === "add") {
          const s = subscription(clients[op.client], op.filter, op.group, op.qos);
          trie.add(s);
          model.set(k, s);
        } else {
          const removed = trie.remove(clients[op.client], op.filter, op.group);
          assert.equal(removed, model.delete(k), "remove reports whether it existed");
        }
        assert.equal(trie.size, model.size, "size");
      }
      // Everything, after the last change (and again, from the cache).
      for (let pass = 0; pass < 2; pass++) {
        for (const t of ALL_TOPICS) {
          assert.deepEqual(trieMatch(trie, t), modelMatch(model, t), t);
        }
      }
    }),
    { numRuns: 150 },
  );
});

Deno.test("adding then removing a subscription restores the previous answers, cached ones included", () => {
  fc.assert(
    fc.property(
      fc.array(fc.tuple(filterArb, fc.constantFrom(...GROUPS)), { maxLength: 8 }),
      filterArb,
      fc.constantFrom(...GROUPS),
      (base, extraFilter, extraGroup) => {
        const trie = new SubscriptionTrie();
        const others = subscriber("others");
        for (const [f, g] of base) trie.add(subscription(others, f, g));
        // Fill the match cache before the change.
        const before = ALL_TOPICS.map((t) => trieMatch(trie, t));
        const newcomer = subscriber("newcomer");
        trie.add(subscription(newcomer, extraFilter, extraGroup));
        const during = ALL_TOPICS.map((t) => trieMatch(trie, t));
        for (let i = 0; i < ALL_TOPICS.length; i++) {
          if (!filterMatches(extraFilter, ALL_TOPICS[i])) continue;
          // A cache that was not invalidated would still show the old answer.
          assert.notDeepEqual(during[i], before[i], `add is visible for ${ALL_TOPICS[i]}`);
        }
        assert.ok(trie.remove(newcomer, extraFilter, extraGroup));
        assert.deepEqual(ALL_TOPICS.map((t) => trieMatch(trie, t)), before);
        assert.equal(trie.remove(newcomer, extraFilter, extraGroup), false, "second remove");
      },
    ),
    { numRuns: 100 },
  );
});

Deno.test("subscribing again to the same filter replaces the subscription instead of adding one", () => {
  const trie = new SubscriptionTrie();
  const c = subscriber("c");
  trie.add(subscription(c, "a/+", null, 0));
  trie.add(subscription(c, "a/+", null, 2));
  trie.add(subscription(c, "a/#", null, 1));
  assert.equal(trie.size, 2);
  const r = trie.match("a/b");
  assert.equal(r.targets.length, 1, "one target for one subscriber");
  assert.deepEqual(r.targets[0].subs.map((s) => [s.filter, s.qos]).sort(), [
    ["a/#", 1],
    ["a/+", 2],
  ]);
});

Deno.test("a share group is matched once per message however many members it has", () => {
  const trie = new SubscriptionTrie();
  const [m1, m2, m3] = [subscriber("m1"), subscriber("m2"), subscriber("m3")];
  trie.add(subscription(m1, "s/+", "g"));
  trie.add(subscription(m2, "s/+", "g"));
  trie.add(subscription(m3, "s/#", "g")); // same name, other filter: another share
  trie.add(subscription(m1, "s/+")); // and a plain subscription of a member
  const r = trie.match("s/x");
  assert.deepEqual(r.groups.map((g) => `${g.name} ${g.filter} ${g.members.length}`).sort(), [
    "g s/# 1",
    "g s/+ 2",
  ]);
  assert.deepEqual(matchedKeys(r), ["m1 s/+"]);
  // Removing the last member removes the group.
  trie.remove(m3, "s/#", "g");
  assert.equal(trie.match("s/x").groups.length, 1);
});

Deno.test("a share group rotates over its members and prefers connected ones", () => {
  const trie = new SubscriptionTrie();
  const a = subscriber("a");
  const b = subscriber("b");
  const c = { clientId: "c", online: false, deliver() {} };
  for (const s of [a, b, c]) trie.add(subscription(s, "jobs", "workers"));
  const [group] = trie.match("jobs").groups;
  const picks = Array.from({ length: 6 }, () => group.pick()?.subscriber.clientId);
  // [MQTT-4.8.2] each message goes to one member; offline "c" is skipped while others are up.
  assert.deepEqual(picks, ["a", "b", "a", "b", "a", "b"]);
  // With nobody connected, messages still go round (they queue in the sessions).
  const lonely = new SubscriptionTrie();
  const x = { clientId: "x", online: false, deliver() {} };
  const y = { clientId: "y", online: false, deliver() {} };
  lonely.add(subscription(x, "q", "g"));
  lonely.add(subscription(y, "q", "g"));
  const [g2] = lonely.match("q").groups;
  assert.deepEqual([g2.pick(), g2.pick(), g2.pick()].map((s) => s?.subscriber.clientId), [
    "x",
    "y",
    "x",
  ]);
});

Deno.test("topics beginning with $ are not matched by leading wildcards, even with a warm cache", () => {
  const trie = new SubscriptionTrie();
  trie.add(subscription(subscriber("all"), "#"));
  trie.add(subscription(subscriber("plus"), "+/x"));
  trie.add(subscription(subscriber("sys"), "$SYS/#"));
  // [MQTT-4.7.2-1]
  assert.deepEqual(matchedKeys(trie.match("$SYS/x")), ["sys $SYS/#"]);
  assert.deepEqual(matchedKeys(trie.match("$SYS/x")), ["sys $SYS/#"]);
  assert.deepEqual(matchedKeys(trie.match("SYS/x")), ["all #", "plus +/x"]);
});

Deno.test("the match cache stays within its byte limit and keeps answering correctly", () => {
  const limit = 64 * 1024;
  const trie = new SubscriptionTrie(limit);
  const subs = Array.from({ length: 50 }, (_, i) => subscriber(`c${i}`));
  for (const s of subs) trie.add(subscription(s, "#"));
  trie.add(subscription(subs[0], "t/+/x"));
  let peak = 0;
  for (let round = 0; round < 3; round++) {
    for (let i = 0; i < 1000; i++) {
      const m = trie.match(`t/${i}/x`);
      assert.equal(m.targets.length, 50);
      assert.equal(m.targets[0].subs.length, 2);
      peak = Math.max(peak, trie.cachedBytes);
    }
  }
  assert.ok(peak > 0, "a repeated topic is cached");
  assert.ok(peak <= limit, `the cache held ${peak} bytes, over its ${limit} byte limit`);
  const none = new SubscriptionTrie(0);
  none.add(subscription(subs[0], "#"));
  for (let i = 0; i < 3; i++) none.match("a/b");
  assert.equal(none.cachedBytes, 0, "a limit of 0 caches nothing");
});
