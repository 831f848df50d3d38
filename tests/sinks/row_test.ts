import assert from "node:assert/strict";
import { encodePayload, RowIds, toRow } from "../../src/sinks/row.ts";
import { testMessage } from "./contract.ts";

Deno.test("payloads are text when well-formed UTF-8, else base64, and say which", () => {
  assert.deepEqual(encodePayload(new TextEncoder().encode("héllo ✓")), {
    payload: "héllo ✓",
    payload_encoding: "utf8",
  });
  assert.deepEqual(encodePayload(new Uint8Array([0xc3, 0x28, 0xff])), {
    payload: "wyj/",
    payload_encoding: "base64",
  });
  assert.deepEqual(encodePayload(new Uint8Array()), { payload: "", payload_encoding: "utf8" });
  // A payload is a view into the bytes of its packet: only the view is encoded.
  const packet = new Uint8Array([0x41, 0x42, 0xff, 0x00, 0xfe, 0x43]);
  assert.deepEqual(encodePayload(packet.subarray(2, 5)), {
    payload: "/wD+",
    payload_encoding: "base64",
  });
  // 200 KiB of bytes that are not UTF-8 come back whole.
  const big = new Uint8Array(200 * 1024).map((_, i) => (i * 7 + 0x80) & 0xff);
  const row = encodePayload(big);
  assert.equal(row.payload_encoding, "base64");
  assert.deepEqual(Uint8Array.from(atob(row.payload), (c) => c.charCodeAt(0)), big);
});

Deno.test("a row carries the properties, publisher and receive time of its message", () => {
  const msg = testMessage("x/y", "1", "dev-1", {
    qos: 2,
    retain: true,
    contentType: "application/json",
    payloadFormatIndicator: 1,
    userProperties: [["k", "v"], ["k", "w"]],
  });
  const row = toRow(
    msg,
    { clientId: "dev-1", username: undefined, receivedAt: 0, kind: "client" },
    "n1",
    "id-1",
  );
  assert.equal(row.payload_format_indicator, 1);
  assert.equal(row.content_type, "application/json");
  assert.deepEqual(row.user_properties, [{ key: "k", value: "v" }, { key: "k", value: "w" }]);
  assert.equal(row.username, null);
  assert.equal(row.publish_time, "1970-01-01T00:00:00.000Z");
  assert.equal(row.qos, 2);
  assert.equal(row.retain, true);
});

Deno.test("row ids never repeat, within a run or across runs started in the same millisecond", () => {
  const ids = new Set<string>();
  for (const gen of [new RowIds("node", 1000), new RowIds("node", 1000)]) {
    for (let i = 0; i < 1000; i++) ids.add(gen.next());
  }
  assert.equal(ids.size, 2000);
});
