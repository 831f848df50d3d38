import { parseOptions } from "./options.ts";
import { BENCH_LIMITS, startMcloudttCluster } from "./brokers.ts";
import { persistentPairs } from "./durability.ts";
import { onNodes } from "./layouts.ts";
import { measureLoad } from "./measure.ts";
const o = { ...parseOptions(["--quick"])!, drainS: 10 };
const dir = await Deno.makeTempDir({ prefix: "durbench-cl-" });
const c = await startMcloudttCluster(2, BENCH_LIMITS, dir, [
  `--redis.durability=${Deno.args[0] ?? "async"}`,
  "--general.log_level=info",
]);
try {
  const m = await measureLoad(
    { broker: c, level: 5, options: o },
    onNodes(persistentPairs(Number(Deno.args[1] ?? 16), 1), 0, [1]),
  );
  console.log(JSON.stringify(m));
} finally {
  await c.stop();
}
console.log(dir);
Deno.exit(0);
