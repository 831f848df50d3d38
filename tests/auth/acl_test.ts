import assert from "node:assert/strict";
import fc from "fast-check";
import { Acl, type AclContext, AclParseError, SubscribeAccess } from "../../src/auth/acl.ts";

const { Denied, Granted, Filtered } = SubscribeAccess;

const alice: AclContext = { username: "alice", clientId: "alice-laptop" };
const bob: AclContext = { username: "bob", clientId: "bob-phone" };
const anon: AclContext = { clientId: "anon-1" };

const example = `
# comments
pattern readwrite devices/%c/#        # applies to everyone
user alice                            # following topic lines apply to alice
topic read sensors/#
topic write actuators/alice/+
client dev-42
topic readwrite fleet/42/#
anonymous
topic read public/#
`;

Deno.test("user rules apply only to that username", () => {
  const acl = Acl.parse(example, "acl");
  assert.equal(acl.canSubscribe(alice, "sensors/#"), true);
  assert.equal(acl.canReceive(alice, "sensors/a/temp"), true);
  assert.equal(acl.canPublish(alice, "sensors/a/temp"), false);
  assert.equal(acl.canPublish(alice, "actuators/alice/valve"), true);
  assert.equal(acl.canPublish(alice, "actuators/alice/valve/extra"), false);
  assert.equal(acl.canSubscribe(alice, "actuators/alice/valve"), false);
  assert.equal(acl.canSubscribe(bob, "sensors/#"), false);
  assert.equal(acl.canPublish(bob, "actuators/alice/valve"), false);
});

Deno.test("client rules apply only to that client id, whatever the username", () => {
  const acl = Acl.parse(example, "acl");
  for (const username of ["carol", undefined]) {
    const ctx = { username, clientId: "dev-42" };
    assert.equal(acl.canPublish(ctx, "fleet/42/status"), true);
    assert.equal(acl.subscribeAccess(ctx, "fleet/42/#"), Granted);
    // Wider than the rule: granted, and each message is checked at delivery.
    assert.equal(acl.subscribeAccess(ctx, "fleet/#"), Filtered);
    assert.equal(acl.subscribeAccess(ctx, "fleet/43/#"), Denied);
  }
  assert.equal(acl.canPublish({ username: "carol", clientId: "dev-43" }, "fleet/42/status"), false);
});

Deno.test("anonymous rules apply only to clients without a username", () => {
  const acl = Acl.parse(example, "acl");
  assert.equal(acl.canSubscribe(anon, "public/news"), true);
  assert.equal(acl.canPublish(anon, "public/news"), false);
  assert.equal(acl.canSubscribe(alice, "public/news"), false);
  // A zero-length username is still a username.
  assert.equal(acl.canSubscribe({ username: "", clientId: "x" }, "public/news"), false);
});

Deno.test("without a matching rule everything is denied", () => {
  const acl = Acl.parse("", "empty");
  assert.equal(acl.canPublish(alice, "a"), false);
  assert.equal(acl.canSubscribe(alice, "#"), false);
  assert.equal(acl.canReceive(anon, "a"), false);
});

Deno.test("pattern rules substitute %c and %u per client", () => {
  const acl = Acl.parse(
    "pattern readwrite devices/%c/#\npattern read users/%u/inbox\npattern write out/u-%u/c-%c\n",
    "acl",
  );
  assert.equal(acl.canPublish(alice, "devices/alice-laptop/state"), true);
  assert.equal(acl.canPublish(alice, "devices/bob-phone/state"), false);
  assert.equal(acl.canSubscribe(bob, "devices/bob-phone/#"), true);
  assert.equal(acl.subscribeAccess(bob, "devices/bob-phone/#"), Granted);
  assert.equal(acl.subscribeAccess(bob, "devices/+/#"), Filtered);
  assert.equal(acl.canReceive(alice, "users/alice/inbox"), true);
  assert.equal(acl.canReceive(bob, "users/alice/inbox"), false);
  assert.equal(acl.canPublish(alice, "out/u-alice/c-alice-laptop"), true);
  assert.equal(acl.canPublish(alice, "out/u-alice/c-bob-phone"), false);
  // No username: %u rules grant nothing, %c rules still work.
  assert.equal(acl.canReceive(anon, "users//inbox"), false);
  assert.equal(acl.canPublish(anon, "devices/anon-1/x"), true);
});

Deno.test("client ids or usernames containing wildcards or '/' do not widen a pattern", () => {
  const acl = Acl.parse("pattern readwrite devices/%c/#\npattern read users/%u\n", "acl");
  for (const clientId of ["#", "+", "a/b", "x#", "+/+"]) {
    const ctx = { clientId };
    assert.equal(acl.canPublish(ctx, `devices/other/state`), false, clientId);
    assert.equal(acl.canSubscribe(ctx, "devices/#"), false, clientId);
    assert.equal(acl.canSubscribe(ctx, `devices/${clientId}`), false, clientId);
    assert.equal(acl.canPublish(ctx, "devices/a/b/c"), false, clientId);
  }
  for (const username of ["#", "+", "bob/../alice"]) {
    const ctx = { username, clientId: "c" };
    assert.equal(acl.canSubscribe(ctx, "users/#"), false, username);
    assert.equal(acl.canReceive(ctx, "users/alice"), false, username);
  }
});

Deno.test("a substituted value cannot turn a rule into one for $ topics", () => {
  const acl = Acl.parse("pattern readwrite %c/#\n", "acl");
  assert.equal(acl.canPublish({ clientId: "dev1" }, "dev1/x"), true);
  assert.equal(acl.canSubscribe({ clientId: "$SYS" }, "$SYS/#"), false);
  assert.equal(acl.canReceive({ clientId: "$SYS" }, "$SYS/broker/uptime"), false);
});

Deno.test("deny overrides allows from any applicable rule", () => {
  const acl = Acl.parse(
    `pattern readwrite #
pattern deny secret/#
user alice
topic deny private/+/keys
client dev-42
topic deny fleet/#
`,
    "acl",
  );
  assert.equal(acl.canPublish(bob, "secret/plans"), false);
  assert.equal(acl.canReceive(bob, "secret"), false);
  assert.equal(acl.canPublish(bob, "private/x/keys"), true);
  assert.equal(acl.canPublish(alice, "private/x/keys"), false);
  assert.equal(acl.canReceive(alice, "private/x/keys"), false);
  assert.equal(acl.canReceive(alice, "private/x/other"), true);
  assert.equal(acl.canPublish({ clientId: "dev-42" }, "fleet/1"), false);
  assert.equal(acl.canPublish({ clientId: "dev-43" }, "fleet/1"), true);
  // A subscription that could receive a denied topic is granted and filtered at delivery; one
  // whose every topic is denied is refused.
  assert.equal(acl.subscribeAccess(bob, "#"), Filtered);
  assert.equal(acl.subscribeAccess(bob, "+/plans"), Filtered);
  assert.equal(acl.subscribeAccess(bob, "+/+"), Filtered);
  assert.equal(acl.subscribeAccess(bob, "secret"), Denied);
  assert.equal(acl.subscribeAccess(bob, "secret/#"), Denied);
  assert.equal(acl.subscribeAccess(bob, "secret/+/x"), Denied);
  assert.equal(acl.subscribeAccess(bob, "public/#"), Granted);
  assert.equal(acl.subscribeAccess(alice, "private/+/+"), Filtered);
  assert.equal(acl.subscribeAccess(alice, "private/x/keys"), Denied);
  assert.equal(acl.subscribeAccess(alice, "private/+/other"), Granted);
  assert.equal(acl.subscribeAccess(alice, "private/x/keys/more"), Granted);
  assert.equal(acl.subscribeAccess({ clientId: "dev-42" }, "fleet/#"), Denied);
});

Deno.test("subscribe: granted when a read rule covers the filter, filtered when one intersects it", () => {
  const access = (pattern: string, filter: string) =>
    Acl.parse(`pattern read ${pattern}`, "acl").subscribeAccess(alice, filter);
  const cases: [string, string, number][] = [
    ["sensors/#", "sensors/+/temp", Granted],
    ["sensors/#", "sensors/#", Granted],
    ["sensors/#", "sensors", Granted],
    ["sensors/#", "sensors/a/b/c", Granted],
    ["sensors/+", "sensors/+", Granted],
    ["sensors/+", "sensors/a", Granted],
    ["sensors/+/temp", "sensors/+/temp", Granted],
    ["#", "#", Granted],
    ["#", "+/+/x", Granted],
    ["+/#", "a/b", Granted],
    ["a/+/#", "a/b/#", Granted],
    ["a//b", "a//b", Granted],
    ["$SYS/#", "$SYS/broker/+", Granted],
    ["$SYS/+/uptime", "$SYS/broker/uptime", Granted],
    ["sensors/+", "sensors/#", Filtered],
    ["sensors/a", "sensors/+", Filtered],
    ["sensors/+/temp", "sensors/#", Filtered],
    ["sensors/+/temp", "sensors/+/+", Filtered],
    ["sensors/#", "+/temp", Filtered],
    ["sensors", "sensors/#", Filtered],
    ["a/+/#", "a/#", Filtered],
    ["$SYS/broker/#", "$SYS/#", Filtered],
    ["sensors/+", "sensors", Denied],
    ["sensors/+", "sensors/a/b", Denied],
    ["sensors/#", "other/#", Denied],
    ["#", "$SYS/#", Denied],
    ["#", "$SYS/broker/uptime", Denied],
    ["+/#", "$SYS/x", Denied],
    ["$SYS/#", "#", Denied],
    ["$SYS/#", "+/broker", Denied],
  ];
  for (const [pattern, filter, expected] of cases) {
    assert.equal(access(pattern, filter), expected, `read ${pattern}, subscribe ${filter}`);
  }
});

Deno.test("$ topics are only granted by rules that start with the same $ level", () => {
  const acl = Acl.parse("pattern readwrite #\npattern read $SYS/broker/#\n", "acl");
  assert.equal(acl.canReceive(alice, "$SYS/broker/uptime"), true);
  assert.equal(acl.canReceive(alice, "$SYS/other"), false);
  assert.equal(acl.canPublish(alice, "$SYS/broker/uptime"), false);
  assert.equal(acl.canReceive(alice, "$other/x"), false);
  assert.equal(acl.canReceive(alice, "a/$SYS"), true);
  assert.equal(acl.canSubscribe(alice, "$SYS/broker/#"), true);
  assert.equal(acl.subscribeAccess(alice, "$SYS/#"), Filtered);
  assert.equal(acl.subscribeAccess(alice, "$other/#"), Denied);
});

Deno.test("$share subscriptions are checked on the inner filter", () => {
  const acl = Acl.parse("pattern read jobs/#\n", "acl");
  assert.equal(acl.canSubscribe(alice, "$share/workers/jobs/+"), true);
  assert.equal(acl.subscribeAccess(alice, "$share/workers/#"), Filtered);
  assert.equal(acl.canSubscribe(alice, "$share/workers/other/#"), false);
  assert.equal(acl.canSubscribe(alice, "$share/workers"), false);
  assert.equal(acl.canSubscribe(alice, "$share//jobs/a"), false);
  assert.equal(acl.canSubscribe(alice, "$share/g+/jobs/a"), false);
});

Deno.test("invalid filters and topics are refused", () => {
  const acl = Acl.parse("pattern readwrite #\n", "acl");
  assert.equal(acl.canSubscribe(alice, "a/#/b"), false);
  assert.equal(acl.canSubscribe(alice, "a/b+"), false);
  assert.equal(acl.canSubscribe(alice, ""), false);
  assert.equal(acl.canPublish(alice, "a/+"), false);
  assert.equal(acl.canPublish(alice, "a/#"), false);
  assert.equal(acl.canReceive(alice, ""), false);
});

Deno.test("a lone # in the topic position is the wildcard and trailing comments are allowed", () => {
  const acl = Acl.parse("user alice # admin\ntopic readwrite # # all of it\n", "acl");
  assert.equal(acl.canSubscribe(alice, "#"), true);
  assert.equal(acl.canPublish(alice, "x/y"), true);
  // Words after the topic are an error rather than silently dropped.
  assert.throws(() => Acl.parse("user alice\ntopic read # all of it\n", "acl"), /unexpected 'all'/);
});

Deno.test("parse errors name the file, the line and what is wrong", () => {
  const cases: [string, RegExp][] = [
    ["topic read a", /'topic' must follow a 'user', 'client' or 'anonymous' line/],
    ["pattern readonly a", /unknown access 'readonly'/],
    ["pattern read", /'pattern' needs an access/],
    ["user", /'user' needs a username/],
    ["client", /'client' needs a client id/],
    ["user # forgot the name", /'user' needs a username/],
    ["pattern read a/#/b", /'a\/#\/b' is not a valid topic filter/],
    ["pattern read a/b+", /is not a valid topic filter/],
    ["pattern read a b", /unexpected 'b' after pattern line/],
    ["anonymous extra", /unexpected 'extra'/],
    ["group admins", /unknown directive 'group'/],
    ["constructor", /unknown directive 'constructor'/],
    ["pattern constructor a", /unknown access 'constructor'/],
    ["pattern read $share/g/a", /\$share subscriptions are checked on/],
  ];
  for (const [line, message] of cases) {
    assert.throws(
      () => Acl.parse(`# header\n\n${line}\n`, "/etc/mcloudtt/acl"),
      (error: unknown) => {
        assert.ok(error instanceof AclParseError, `${line}: ${error}`);
        assert.match(error.message, /^\/etc\/mcloudtt\/acl:3: /);
        assert.match(error.message, message);
        assert.equal(error.line, 3);
        return true;
      },
    );
  }
});

Deno.test("load reads the ACL from a file and reports a missing one", async () => {
  const path = await Deno.makeTempFile();
  try {
    await Deno.writeTextFile(path, "user alice\ntopic read a/#\n");
    const acl = await Acl.load(path);
    assert.equal(acl.canSubscribe(alice, "a/b"), true);
  } finally {
    await Deno.remove(path);
  }
  await assert.rejects(Acl.load("/nonexistent/acl"), (error: unknown) => {
    assert.ok(error instanceof AclParseError);
    assert.match(error.message, /^\/nonexistent\/acl: cannot read/);
    return true;
  });
});

// --- properties -------------------------------------------------------------------------------

const LITERALS = ["a", "b", "", "$SYS", "$x", "c1"];
const literal = fc.constantFrom(...LITERALS);
const filterLevels = fc.tuple(
  fc.array(fc.oneof(literal, fc.constant("+")), { minLength: 1, maxLength: 4 }),
  fc.boolean(),
).map(([levels, hash]) => (hash ? [...levels, "#"] : levels));
const filterText = fc.oneof(
  // A single empty level would be the empty string, which is not a filter.
  filterLevels.map((levels) => levels.join("/")).filter((filter) => filter !== ""),
  fc.constant("#"),
);
const ruleLine = fc.tuple(
  fc.constantFrom("read", "readwrite", "read", "write", "deny"),
  fc.oneof(filterText, fc.constantFrom("%u/#", "%c/+", "a/%u", "$SYS/%c/#")),
).map(([access, pattern]) => `pattern ${access} ${pattern}`);
const aclText = fc.array(ruleLine, { minLength: 1, maxLength: 6 }).map((lines) => lines.join("\n"));
const context = fc.record({
  username: fc.constantFrom(undefined, "a", "b", "+", "$SYS"),
  clientId: fc.constantFrom("a", "c1", "#", "$x"),
});

/** Builds a concrete topic matched by `filter`, using `choices` to fill the wildcards. */
function instantiate(filter: string, choices: number[]): string {
  const levels = filter.split("/");
  const out: string[] = [];
  let next = 0;
  const pick = (position: number) => {
    const options = position === 0 ? LITERALS.filter((l) => !l.startsWith("$")) : LITERALS;
    return options[choices[next++ % choices.length] % options.length];
  };
  for (const level of levels) {
    if (level === "+") out.push(pick(out.length));
    else if (level === "#") {
      const extra = choices[next++ % choices.length] % 3;
      // A leading '#' must produce at least one level; '#' also matches the parent alone.
      const count = out.length === 0 ? extra + 1 : extra;
      for (let i = 0; i < count; i++) out.push(pick(out.length));
    } else out.push(level);
  }
  return out.join("/");
}

Deno.test("property: an unchecked subscription can receive every topic it matches, a refused one none", () => {
  let granted = 0;
  let denied = 0;
  fc.assert(
    fc.property(
      aclText,
      context,
      filterText,
      fc.array(fc.nat(20), { minLength: 1, maxLength: 8 }),
      (text, ctx, filter, choices) => {
        const acl = Acl.parse(text, "prop");
        const access = acl.subscribeAccess(ctx, filter);
        if (access === Filtered) return;
        const topic = instantiate(filter, choices);
        if (topic === "") return; // one empty level: not a valid topic name
        if (access === Granted) granted++;
        else denied++;
        assert.equal(
          acl.canReceive(ctx, topic),
          access === Granted,
          `${filter} -> ${topic}\n${text}`,
        );
      },
    ),
    { numRuns: 3000 },
  );
  // Guard against a generator that never exercises the implications.
  assert.ok(granted > 100 && denied > 100, `only ${granted} granted, ${denied} denied`);
});

Deno.test("property: subscribing to a plain topic is the same decision as receiving it", () => {
  fc.assert(
    fc.property(
      aclText,
      context,
      fc.array(literal, { minLength: 1, maxLength: 4 }),
      (text, ctx, levels) => {
        const topic = levels.join("/");
        if (topic === "") return;
        const acl = Acl.parse(text, "prop");
        assert.equal(acl.canSubscribe(ctx, topic), acl.canReceive(ctx, topic), `${topic}\n${text}`);
      },
    ),
    { numRuns: 2000 },
  );
});
