import assert from "node:assert/strict";
import { RouteTrie, sharedFilter } from "../../src/cluster/route_trie.ts";
import { dispatch, Rotation } from "../../src/cluster/dispatch.ts";

Deno.test("route trie: plain routes match per MQTT rules and never include this node", () => {
  const t = new RouteTrie("me");
  t.set("a/+/c", "n1", true);
  t.set("a/#", "n2", true);
  t.set("#", "n3", true);
  t.set("a/b/c", "me", true);
  assert.deepEqual([...t.plan("a/b/c").remote].sort(), ["n1", "n2", "n3"]);
  assert.deepEqual([...t.plan("a").remote].sort(), ["n2", "n3"]);
  assert.deepEqual([...t.plan("$SYS/a").remote], []);
  t.set("$SYS/#", "n1", true);
  assert.deepEqual([...t.plan("$SYS/a").remote], ["n1"]);
});

Deno.test("route trie: removal prunes, dropNode forgets a node, the cache follows changes", () => {
  const t = new RouteTrie("me");
  t.set("x/y/z", "n1", true);
  assert.deepEqual(t.plan("x/y/z").remote, ["n1"]);
  t.set("x/y/z", "n1", false);
  assert.deepEqual(t.plan("x/y/z").remote, []);
  assert.equal(t.size, 0);
  t.set("p/#", "n1", true);
  t.set("$share/g/p/#", "n1", true);
  t.set("q", "n2", true);
  assert.deepEqual(t.dropNode("n1").sort(), ["$share/g/p/#", "p/#"]);
  assert.deepEqual(t.nodes(), ["n2"]);
  assert.deepEqual(t.plan("p/1"), { remote: [], groups: [] });
  assert.equal(sharedFilter("$share/g/a/b"), "a/b");
  assert.equal(sharedFilter("a/b"), null);
});

Deno.test("dispatch: local policy serves held groups here; round robin rotates over every holder", () => {
  const t = new RouteTrie("me");
  t.set("$share/g/s", "me", true);
  t.set("$share/g/s", "n1", true);
  t.set("$share/h/s", "n1", true);
  t.set("$share/h/s", "n2", true);
  const local = dispatch(t.plan("s"), "me", "local", new Rotation())!;
  assert.equal(local.localGroups, null);
  assert.deepEqual([...local.dests], [["n1", ["$share/h/s"]]]);

  const rotation = new Rotation();
  const seen = { me: 0, n1: 0 };
  for (let i = 0; i < 10; i++) {
    const d = dispatch(t.plan("s"), "me", "round_robin", rotation)!;
    const away = [...d.dests.values()].flat().includes("$share/g/s");
    if (away) {
      seen.n1++;
      assert.deepEqual([...d.localGroups!], [], "g is served elsewhere for this message");
    } else {
      seen.me++;
      assert.ok(d.localGroups === null || d.localGroups.has("$share/g/s"));
    }
    // h is held by n1 and n2 only: always exactly one of them.
    const hHolders = [...d.dests].filter(([, g]) => g.includes("$share/h/s"));
    assert.equal(hHolders.length, 1);
  }
  assert.deepEqual(seen, { me: 5, n1: 5 });
});

Deno.test("dispatch: a shared group's member is picked on a node that is not behind when any is", () => {
  const t = new RouteTrie("me");
  for (const n of ["n1", "n2", "n3"]) t.set("$share/g/s", n, true);
  const rotation = new Rotation();
  const behind = (n: string) => n === "n2";
  const chosen = (avoid?: (n: string) => boolean) => {
    const d = dispatch(t.plan("s"), "me", "round_robin", rotation, avoid)!;
    return [...d.dests].find(([, g]) => g.includes("$share/g/s"))![0];
  };
  // While n2 is behind the turn skips it, and the others still take turns.
  const seen = Array.from({ length: 6 }, () => chosen(behind));
  assert.ok(!seen.includes("n2"), `n2 was picked while behind: ${seen}`);
  assert.deepEqual(new Set(seen), new Set(["n1", "n3"]));
  // Caught up: it takes its turns again.
  assert.ok(Array.from({ length: 3 }, () => chosen()).includes("n2"));
  // Every holder behind: the group is still served (by one of them).
  assert.ok(["n1", "n2", "n3"].includes(chosen(() => true)));
});
