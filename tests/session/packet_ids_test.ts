import assert from "node:assert/strict";
import { PacketIdTable } from "../../src/session/packet_ids.ts";

Deno.test("packet id table: get, has, delete, size and insertion order", () => {
  const t = new PacketIdTable<string>();
  for (const id of [5, 3, 9, 1]) t.set(id, `m${id}`);
  assert.equal(t.size, 4);
  assert.equal(t.get(9), "m9");
  assert.equal(t.has(2), false);
  assert.equal(t.get(2), undefined);
  assert.deepEqual(t.keys(), [5, 3, 9, 1]);
  assert.equal(t.delete(3), true);
  assert.equal(t.delete(3), false);
  t.set(5, "again");
  assert.deepEqual(t.entries(), [[5, "again"], [9, "m9"], [1, "m1"]]);
  assert.equal(t.size, 3);
});

Deno.test("packet id table: ids sharing a slot and many entries, order kept", () => {
  const t = new PacketIdTable<number>(16);
  t.set(1, 1);
  assert.equal(t.fits(17), false, "17 shares slot 1 of 16");
  t.set(17, 17);
  t.set(65535, 65535);
  t.set(33, 33);
  assert.deepEqual(t.keys(), [1, 17, 65535, 33]);
  assert.equal(t.delete(1), true);
  assert.equal(t.get(17), 17, "found after the entry before it left");
  assert.equal(t.get(33), 33);
  const many = new PacketIdTable<number>();
  const ids = Array.from({ length: 3000 }, (_, i) => ((i * 7919) % 65535) + 1);
  for (const id of ids) many.set(id, id);
  assert.equal(many.size, 3000);
  assert.deepEqual(many.keys(), ids);
  for (const id of ids) assert.equal(many.get(id), id);
  // Deleting while going through a copy of the entries is safe.
  for (const [id] of many.entries()) many.delete(id);
  assert.equal(many.size, 0);
});

Deno.test("packet id table: ids the client picks to share their low bits do not grow it", () => {
  // Incoming QoS 2 ids are the client's choice: 1 and 32769 share every slot below 65,536.
  const t = new PacketIdTable<true>();
  for (const id of [1, 32769, 16385, 49153, 4097, 8193, 12289, 20481]) t.set(id, true);
  assert.equal(t.size, 8);
  assert.equal(t.capacity, 16, "eight entries fit in the smallest table");
  for (const id of [16385, 1, 20481]) t.delete(id);
  assert.deepEqual(t.keys(), [32769, 49153, 4097, 8193, 12289]);
  assert.equal(t.has(1), false);
});

Deno.test("packet id table: random adds and deletes agree with a Map", () => {
  let seed = 12345;
  const random = (n: number) => (seed = (seed * 1103515245 + 12345) % 2147483648) % n;
  const t = new PacketIdTable<number>();
  const m = new Map<number, number>();
  for (let step = 0; step < 20_000; step++) {
    // Ids from a small range with shared low bits, so probes collide and deletions shift.
    const id = (random(24) * 64 + random(3)) % 65535 + 1;
    if (random(3) === 0) assert.equal(t.delete(id), m.delete(id));
    else {
      t.set(id, step);
      m.set(id, step);
    }
    assert.equal(t.size, m.size);
  }
  for (const [id, v] of m) assert.equal(t.get(id), v);
  assert.deepEqual(t.keys(), [...m.keys()], "insertion order, replacements keep their place");
});

// Nepotism (see packet_ids.ts): a Map with entries added and deleted at the message rate
// promotes its replaced hash tables, and what they hold, to the old generation; the table
// must not. Both run in a child with V8's GC trace; the Map run shows the test can fail.
const CHURN = `
import { PacketIdTable } from ${
  JSON.stringify(new URL("../../src/session/packet_ids.ts", import.meta.url).href)
};
const kind = Deno.args[0];
const tables = Array.from({ length: 16 }, () => kind === "map" ? new Map() : new PacketIdTable());
// Per table: its next packet id and a ring of the ids in flight, oldest first. Acknowledgements
// come in batches (a client acknowledges what one read brought), so a table holds a few
// entries at a time, and a Map of that size makes a new hash table every few additions.
const next = new Array(16).fill(1);
const rings = Array.from({ length: 16 }, () => new Int32Array(64));
const heads = new Array(16).fill(0);
const tails = new Array(16).fill(0);
const payload = new Uint8Array(64);
for (let n = 0; n < 1_500_000; n++) {
  const k = n & 15, t = tables[k], ring = rings[k];
  let pid = next[k];
  if (kind !== "map") while (!t.fits(pid)) pid = pid === 65535 ? 1 : pid + 1;
  next[k] = pid === 65535 ? 1 : pid + 1;
  t.set(pid, { msg: payload.slice(), packetId: pid });
  ring[heads[k]++ & 63] = pid;
  if (heads[k] - tails[k] === 3) {
    while (heads[k] - tails[k] > 0) t.delete(ring[tails[k]++ & 63]);
  }
  // A full collection (the broker has them: its old generation grows) promotes what is live,
  // the tables in use among it.
  if (n % 500_000 === 1000) (globalThis as unknown as { gc(): void }).gc();
}
if (tables.some((t) => t.size > 48)) throw new Error("a table should hold at most 48");
`;

async function promotedBytes(kind: "map" | "table"): Promise<number> {
  const file = await Deno.makeTempFile({ suffix: ".ts" });
  try {
    await Deno.writeTextFile(file, CHURN);
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-read", "--v8-flags=--trace-gc-nvp,--expose-gc", file, kind],
      stdout: "piped",
      stderr: "inherit",
    }).output();
    assert.equal(out.code, 0);
    let promoted = 0;
    for (const m of new TextDecoder().decode(out.stdout).matchAll(/"promoted":(\d+)/g)) {
      promoted += Number(m[1]);
    }
    return promoted;
  } finally {
    await Deno.remove(file);
  }
}

Deno.test("packet id table: churn promotes nothing to the old generation, unlike a Map", async () => {
  const [table, map] = await Promise.all([promotedBytes("table"), promotedBytes("map")]);
  assert.ok(table < 2 * 1024 * 1024, `the table promoted ${table} B`);
  assert.ok(
    map > 20 * table && map > 2 * 1024 * 1024,
    `a Map promoted ${map} B (table ${table} B)`,
  );
});
