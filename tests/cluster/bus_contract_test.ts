import { MemoryHub } from "../../src/cluster/memory_hub.ts";
import { runBusContract } from "./contract.ts";

runBusContract({
  name: "memory hub",
  newCluster(n) {
    const hub = new MemoryHub();
    const buses = Array.from({ length: n }, () => hub.bus());
    return Promise.resolve({
      buses,
      kill: (i) => hub.kill(buses[i].nodeId),
      close: async () => {
        for (const b of buses) await b.stop();
      },
    });
  },
});
