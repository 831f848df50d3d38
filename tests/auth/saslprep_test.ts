import assert from "node:assert/strict";
import { saslprep, SaslprepError } from "../../src/auth/saslprep.ts";

Deno.test("SASLprep gives RFC 4013 section 3's examples", async () => {
  const prepared: [string, string][] = [
    ["I\u00ADX", "IX"], // SOFT HYPHEN mapped to nothing
    ["user", "user"], // no transformation
    ["USER", "USER"], // case preserved, will not match #2
    ["\u00AA", "a"], // output is NFKC, input in ISO 8859-1
    ["\u2168", "IX"], // output is NFKC, will match #1
  ];
  for (const [input, output] of prepared) {
    for (const use of ["stored", "query"] as const) {
      assert.equal(await saslprep(input, use), output, `${JSON.stringify(input)} (${use})`);
    }
  }
  // Error: prohibited character; error: bidirectional check.
  const refused = [["\u0007", /U\+0007, a control character/], ["\u0627\u0031", /right-to-left/]];
  for (const [input, reason] of refused as [string, RegExp][]) {
    for (const use of ["stored", "query"] as const) {
      await assert.rejects(saslprep(input, use), (e: unknown) => {
        assert.ok(e instanceof SaslprepError, String(e));
        assert.match(e.message, reason);
        return true;
      });
    }
  }
});

Deno.test("SASLprep maps non-ASCII spaces to SPACE and full-width letters to ASCII", async () => {
  assert.equal(await saslprep("pass\u00A0word\uFF01\uFF21", "stored"), "pass word!A");
  assert.equal(await saslprep("\u3000x\u2003", "query"), " x ");
});

Deno.test("SASLprep refuses unassigned code points in stored strings only, and names each refused character", async () => {
  // U+1F600 was assigned after Unicode 3.2, the version RFC 3454's tables are of.
  await assert.rejects(saslprep("smile\u{1F600}", "stored"), /U\+1F600 unassigned in Unicode 3\.2/);
  assert.equal(await saslprep("smile\u{1F600}", "query"), "smile\u{1F600}");
  const refused: [string, RegExp][] = [
    ["a\uE000", /U\+E000, a private-use character/],
    ["a\uFFFF", /U\+FFFF, a non-character/],
    ["a\u0085", /U\+0085, a control character/],
    ["a\u200E", /U\+200E, a format, tagging or display-changing character/],
    ["\u0627a\u0627", /mixes right-to-left and left-to-right/],
  ];
  for (const [input, reason] of refused) {
    await assert.rejects(saslprep(input, "query"), reason, JSON.stringify(input));
  }
});

Deno.test("a string of characters mapped to nothing prepares to the empty string", async () => {
  // The package alone fails on this with a TypeError.
  assert.equal(await saslprep("\u00AD", "stored"), "");
  assert.equal(await saslprep("\u00AD\u034F\uFEFF", "query"), "");
});
