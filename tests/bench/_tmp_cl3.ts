import { parseOptions } from "./options.ts";
import { BENCH_LIMITS, startMcloudttCluster } from "./brokers.ts";
import { persistentPairs } from "./durability.ts";
import { onNodes } from "./layouts.ts";
import { measureLoad } from "./measure.ts";
const o = { ...parseOptions(["--quick"])!, drainS: 40 };
const dir = await Deno.makeTempDir({ prefix: "durbench-cl-" });
const c = await startMcloudttCluster(2, BENCH_LIMITS, dir, [`--redis.durability=async`]);
try {
  const m = await measureLoad(
    { broker: c, level: 5, options: o },
    onNodes(persistentPairs(16, 2), 0, [1]),
  );
  console.log(JSON.stringify(m.metrics));
  const r = (...a: string[]) =>
    new Deno.Command("redis-cli", { args: ["-p", String(c.redisPort), ...a] }).outputSync();
  const t = (...a: string[]) => new TextDecoder().decode(r(...a).stdout);
  console.log(t("--scan"));
  for (const k of t("--scan").split("\n").filter((k) => k)) {
    const type = t("type", k).trim();
    const len = type === "list"
      ? t("llen", k)
      : type === "stream"
      ? t("xlen", k) + t("xinfo", "groups", k)
      : type === "hash"
      ? t("hgetall", k).slice(0, 400)
      : type;
    console.log(k, type, len.trim());
  }
} finally {
  await c.stop();
}
console.log(dir);
Deno.exit(0);
