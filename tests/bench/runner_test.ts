import assert from "node:assert/strict";
import { roundOrder } from "./runner.ts";

Deno.test("roundOrder: each round starts one target later, every target once per round", () => {
  const t = ["mcloudtt", "floor", "mosquitto"];
  assert.deepEqual(roundOrder(t, 1), ["mcloudtt", "floor", "mosquitto"]);
  assert.deepEqual(roundOrder(t, 2), ["floor", "mosquitto", "mcloudtt"]);
  assert.deepEqual(roundOrder(t, 3), ["mosquitto", "mcloudtt", "floor"]);
  assert.deepEqual(roundOrder(t, 4), roundOrder(t, 1));
  // No target is first in two of the first three rounds.
  assert.equal(new Set([1, 2, 3].map((r) => roundOrder(t, r)[0])).size, 3);
  assert.deepEqual(roundOrder([], 2), []);
  assert.deepEqual(t, ["mcloudtt", "floor", "mosquitto"]);
});
