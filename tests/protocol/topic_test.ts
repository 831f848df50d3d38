/** Topic name and topic filter rules (MQTT 5 sections 4.7 and 4.8.2). */
import assert from "node:assert/strict";
import fc from "fast-check";
import {
  isValidFilter,
  parseFilter,
  type TopicLimits,
  topicNameProblem,
} from "../../src/protocol/topic.ts";

const ROOMY: TopicLimits = { maxTopicLength: 65535, maxTopicLevels: 1000 };

Deno.test("valid topic filters are accepted as they are", () => {
  const valid = [
    "a",
    "a/b",
    "sport/tennis/player1",
    "+",
    "#",
    "+/+",
    "/+",
    "+/tennis/#",
    "sport/+/player1",
    "sport/#",
    "a/+/b/+/c",
    "/",
    "//",
    "a//b",
    "$SYS/#",
    "$SYS/+/x",
    "ü/€/😀",
    " ",
  ];
  for (const f of valid) {
    assert.ok(isValidFilter(f), f);
    assert.deepEqual(parseFilter(f, ROOMY), { key: f, filter: f, group: null }, f);
  }
});

Deno.test("misplaced wildcards and empty filters are refused", () => {
  const invalid = [
    "", // [MQTT-4.7.3-1] at least one character
    "sport/tennis#", // [MQTT-4.7.1-1] # must occupy a whole level...
    "sport/tennis/#/ranking", // ...and be the last level
    "#/a",
    "##",
    "a#",
    "#a",
    "sport+", // [MQTT-4.7.1-2] + must occupy a whole level
    "+sport",
    "sport/+tennis",
    "a/b+/c",
    "++",
    "+#",
  ];
  for (const f of invalid) {
    assert.equal(isValidFilter(f), false, f);
    assert.equal(parseFilter(f, ROOMY), "invalid", f);
  }
});

Deno.test("shared subscription filters are split into group and filter", () => {
  // [MQTT-4.8.2-1] $share/{ShareName}/{filter}
  assert.deepEqual(parseFilter("$share/g/a/b", ROOMY), {
    key: "$share/g/a/b",
    filter: "a/b",
    group: "g",
  });
  assert.deepEqual(parseFilter("$share/consumers/sport/#", ROOMY), {
    key: "$share/consumers/sport/#",
    filter: "sport/#",
    group: "consumers",
  });
  assert.deepEqual(parseFilter("$share/g/+", ROOMY), {
    key: "$share/g/+",
    filter: "+",
    group: "g",
  });
  assert.deepEqual(parseFilter("$share/g//", ROOMY), {
    key: "$share/g//",
    filter: "/",
    group: "g",
  });
  // Not the share prefix: ordinary filters that happen to start with $share.
  assert.deepEqual(parseFilter("$share", ROOMY), { key: "$share", filter: "$share", group: null });
  assert.deepEqual(parseFilter("$shared/g/a", ROOMY), {
    key: "$shared/g/a",
    filter: "$shared/g/a",
    group: null,
  });
});

Deno.test("malformed shared subscription filters are refused", () => {
  const invalid = [
    "$share/", // no share name, no filter
    "$share/g", // [MQTT-4.8.2-2] a filter must follow the share name
    "$share/g/", // empty filter
    "$share//a", // [MQTT-4.8.2-1] share name at least one character
    "$share/g+/a", // [MQTT-4.8.2-2] share name without + or #
    "$share/+/a",
    "$share/#/a",
    "$share/g#/a",
    "$share/g/a#", // the filter part follows the usual wildcard rules
    "$share/g/#/a",
  ];
  for (const f of invalid) assert.equal(parseFilter(f, ROOMY), "invalid", f);
});

Deno.test("filters longer than the configured limits are refused as too long", () => {
  const limits: TopicLimits = { maxTopicLength: 8, maxTopicLevels: 3 };
  assert.notEqual(typeof parseFilter("abcdefgh", limits), "string");
  assert.equal(parseFilter("abcdefghi", limits), "too-long");
  assert.notEqual(typeof parseFilter("a/b/c", limits), "string");
  assert.equal(parseFilter("a/b/c/d", limits), "too-long");
  // Empty levels count as levels.
  assert.notEqual(typeof parseFilter("/a/", limits), "string");
  assert.equal(parseFilter("a//b/", limits), "too-long");
  assert.equal(parseFilter("+/+/+/#", limits), "too-long");
  // Validity is decided before length: an invalid long filter is invalid.
  assert.equal(parseFilter("a#/b/c/d/e/f", limits), "invalid");
  // The limits apply to the filter part of a shared subscription.
  assert.equal(parseFilter("$share/g/a/b/c/d", limits), "too-long");
  assert.notEqual(typeof parseFilter("$share/group/a/b/c", limits), "string");
});

Deno.test("topic length is measured in UTF-8 bytes, not UTF-16 units", () => {
  const limits: TopicLimits = { maxTopicLength: 4, maxTopicLevels: 10 };
  // "é" is 2 bytes, "€" 3, "😀" 4 (two UTF-16 units).
  assert.equal(topicNameProblem("éé", limits), null);
  assert.equal(topicNameProblem("ééa", limits), "too-long");
  assert.equal(topicNameProblem("€a", limits), null);
  assert.equal(topicNameProblem("€ab", limits), "too-long");
  assert.equal(topicNameProblem("😀", limits), null);
  assert.equal(topicNameProblem("😀a", limits), "too-long");
  assert.notEqual(typeof parseFilter("😀", limits), "string");
  assert.equal(parseFilter("😀/", limits), "too-long");
  assert.equal(parseFilter("éé+", limits), "invalid");
});

Deno.test("the length limit agrees with the UTF-8 encoding for any string", () => {
  fc.assert(
    fc.property(
      fc.string({ unit: "binary", minLength: 1, maxLength: 30 }).filter((s) => !/[+#]/.test(s)),
      (t) => {
        const bytes = new TextEncoder().encode(t).length;
        const at = (maxTopicLength: number) =>
          topicNameProblem(t, { maxTopicLength, maxTopicLevels: 1000 });
        assert.equal(at(bytes), null);
        assert.equal(at(bytes - 1), "too-long");
      },
    ),
    { numRuns: 300 },
  );
});

Deno.test("topic names may not be empty or contain wildcards", () => {
  // [MQTT-4.7.3-1] at least one character; [MQTT-3.3.2-2] no wildcard characters.
  for (const t of ["", "+", "#", "a/+", "a/#", "a+", "sport/tennis#", "+/x"]) {
    assert.equal(topicNameProblem(t, ROOMY), "invalid", t);
  }
  for (const t of ["a", "a/b", "/", "//", "/finance", "$SYS/broker", "ü/😀", "a b"]) {
    assert.equal(topicNameProblem(t, ROOMY), null, t);
  }
});

Deno.test("topic names longer than the configured limits are refused as too long", () => {
  const limits: TopicLimits = { maxTopicLength: 10, maxTopicLevels: 3 };
  assert.equal(topicNameProblem("a/b/c", limits), null);
  assert.equal(topicNameProblem("a/b/c/d", limits), "too-long");
  assert.equal(topicNameProblem("a//", limits), null);
  assert.equal(topicNameProblem("a///", limits), "too-long");
  assert.equal(topicNameProblem("0123456789", limits), null);
  assert.equal(topicNameProblem("0123456789x", limits), "too-long");
});
