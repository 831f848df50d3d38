/** The Store contract against every store that runs without an outside server. */
import { MemoryStore } from "../../src/store/memory.ts";
import { SqliteStore } from "../../src/store/sqlite.ts";
import { runStoreContract } from "./contract.ts";

runStoreContract({
  name: "memory (durable)",
  newStore: () => new MemoryStore(true),
  skip: [
    {
      reason: "applies ops to plain objects: nothing can fail mid-batch, nothing outlives it",
      tests: [
        "batch is atomic",
        "reopen keeps everything",
        "a batch written again leaves the state as written once",
      ],
    },
  ],
});

const root = await Deno.makeTempDir({ prefix: "mcloudtt-store-contract-" });
globalThis.addEventListener("unload", () => Deno.removeSync(root, { recursive: true }));
let n = 0;

for (const sync of ["ack-after-write", "async"] as const) {
  runStoreContract({
    name: `sqlite (${sync})`,
    newStore: () => new SqliteStore({ dir: `${root}/${sync}-${n++}`, sync }),
    reopen: (closed) => new SqliteStore(closed.options),
    // Every run opens a new file, fsyncs included: fewer than the default keeps this file fast.
    numRuns: 25,
    skip: [{
      reason: "one transaction: a write that failed applied nothing, its replay is its first",
      tests: ["a batch written again leaves the state as written once"],
    }],
  });
}
