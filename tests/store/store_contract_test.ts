/** The Store contract against every store that runs without an outside server. */
import { MemoryStore } from "../../src/store/memory.ts";
import { runStoreContract } from "./contract.ts";

runStoreContract({
  name: "memory (durable)",
  newStore: () => new MemoryStore(true),
  skip: [
    {
      reason: "applies ops to plain objects: nothing can fail mid-batch, nothing outlives it",
      tests: ["batch is atomic", "reopen keeps everything"],
    },
  ],
});
