/**
 * Soak: the broker as shipped (main.ts, the shipped V8 flags, storage on) under a mixed, partly
 * hostile load for many minutes (soak_load.ts), its memory sampled every 10 s, to show that
 * memory levels off. Run by hand (README.md, "Soak"):
 *
 *   deno run -A tests/bench/soak.ts [--minutes N] [--quick]
 *
 * Exit 0 when RSS and heap after the major GCs (troughs of V8's saw-tooth, soak_report.ts) grow
 * less than MAX_RSS_SLOPE and MAX_HEAP_SLOPE, no QoS 1 message was lost and the sessions and
 * connections at the end are the ones the load holds; else 1.
 */
import { parseArgs } from "node:util";
import { BENCH_LIMITS, freePort, launch, mcloudttArgs, type RunningBroker } from "./brokers.ts";
import { killAll } from "./children.ts";
import { rssBytes } from "./procstat.ts";
import { SoakLoad, type SoakPlan } from "./soak_load.ts";
import {
  mib,
  mibPerMinute,
  parseMetrics,
  sampleLine,
  sampleTable,
  type SoakSample,
  toSample,
  troughs,
} from "./soak_report.ts";

/**
 * RSS growth (MiB per minute, least squares over the samples after major GCs from the first
 * quarter of the run on) above which the run fails. The churn opens ~660 connections a minute
 * and the broker routes ~20k messages a minute: a leak of 1.5 KiB per connection or 50 bytes
 * per message crosses it. What the load legitimately holds varies by less than that between
 * troughs: the slow subscriber's queue (0-3.4 MiB, a one-minute cycle) and the offline
 * session's (under 0.6 MiB); the first 10 s run measured troughs 3.5 minutes apart within
 * 0.6 MiB of each other.
 */
const MAX_RSS_SLOPE = 1;
/** The same for the JS heap in use after major GCs. */
const MAX_HEAP_SLOPE = 1;

const FULL: SoakPlan = {
  idle: 500,
  pairs: 8,
  pairRate: 200,
  churnLanes: 2,
  retainedTopics: 2000,
  retainedRate: 40,
  retainedReadEveryMs: 20_000,
  busyRate: 100,
  slowEveryMs: 60_000,
  offlineEveryMs: 55_000,
  feedRate: 10,
};

const QUICK: SoakPlan = {
  ...FULL,
  idle: 100,
  pairs: 4,
  pairRate: 100,
  churnLanes: 1,
  retainedTopics: 200,
  retainedReadEveryMs: 10_000,
  slowEveryMs: 20_000,
  offlineEveryMs: 15_000,
};

const REPO_ROOT = new URL("../../", import.meta.url).pathname;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function startBroker(dir: string, httpPort: number): Promise<RunningBroker> {
  const port = freePort();
  const extra = [
    "--http.enabled=true",
    "--http.bind=127.0.0.1",
    `--http.port=${httpPort}`,
    "--storage.enabled=true",
    `--storage.dir=${dir}/data`,
  ];
  return await launch(
    Deno.execPath(),
    mcloudttArgs(port, BENCH_LIMITS, extra),
    port,
    `${dir}/mcloudtt.log`,
    60_000,
    REPO_ROOT,
  );
}

async function scrape(httpPort: number): Promise<Map<string, number>> {
  const res = await fetch(`http://127.0.0.1:${httpPort}/metrics`);
  return parseMetrics(await res.text());
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    args: Deno.args,
    options: { minutes: { type: "string" }, quick: { type: "boolean" } },
  });
  const quick = values.quick === true;
  const minutes = Number(values.minutes ?? (quick ? 1 : 10));
  const plan = quick ? QUICK : FULL;
  const sampleMs = quick ? 5_000 : 10_000;
  const dir = await Deno.makeTempDir({ prefix: "mcloudtt-soak-" });
  const httpPort = freePort();
  const broker = await startBroker(dir, httpPort);
  const rev = new TextDecoder().decode(
    (await new Deno.Command("git", { args: ["rev-parse", "--short", "HEAD"], cwd: REPO_ROOT })
      .output()).stdout,
  ).trim();
  const out: string[] = [];
  const say = (line: string) => {
    console.log(line);
    out.push(line);
  };
  say(
    `# Soak: ${minutes} min${quick ? " (--quick)" : ""}, code ${rev}, ${new Date().toISOString()}`,
  );
  say("");
  say(`Plan: ${JSON.stringify(plan)}; limits ${JSON.stringify(BENCH_LIMITS)}; store ${dir}/data`);
  say("");
  const load = new SoakLoad(broker.port, plan);
  const samples: SoakSample[] = [];
  const t0 = performance.now();
  const takeSample = async (): Promise<SoakSample> => {
    const [rss, m] = await Promise.all([rssBytes(broker.pid), scrape(httpPort)]);
    const s = toSample((performance.now() - t0) / 1000, rss, m);
    const st = load.stats;
    say(sampleLine(
      s,
      `sent ${
        st.pairSent.join("/")
      } churned ${st.churned} ret ${st.retainedSets}+${st.retainedClears} errors ${st.errors}`,
    ));
    return s;
  };
  const reasons: string[] = [];
  let exited = false;
  try {
    const base = await takeSample();
    await load.start();
    say(`load started after ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    const end = t0 + minutes * 60_000;
    while (performance.now() < end) {
      await sleep(Math.min(sampleMs, end - performance.now()));
      samples.push(await takeSample());
    }
    await load.stop();
    // The churned persistent sessions expire 5 s after they went, their wills 2 s after.
    await sleep(8_000);
    say("after the load stopped and the churned sessions expired:");
    const settled = await takeSample();
    const standing = load.standing();
    await load.close();
    await sleep(2_000);
    say("after every client left:");
    const empty = await takeSample();

    const st = load.stats;
    const half = (minutes * 60) / 2;
    const rssSlope = mibPerMinute(samples, (s) => s.rss, half);
    // Judged: the troughs after the major GCs from the first quarter on (the retained set fills
    // in the first minutes).
    const lows = troughs(samples).filter((s) => s.t >= half / 2);
    const lowRss = mibPerMinute(lows, (s) => s.rss, 0);
    const lowHeap = mibPerMinute(lows, (s) => s.heapUsed, 0);
    const lowsText = lows.map((s) => `${Math.round(s.t)} s: ${mib(s.rss)} / ${mib(s.heapUsed)}`)
      .join(", ");
    const heapSlope = mibPerMinute(samples, (s) => s.heapUsed, half);
    const extSlope = mibPerMinute(samples, (s) => s.external, half);
    const last = samples[samples.length - 1] ?? settled;
    const lost = load.qos1Lost();
    const lat = st.latency.map((l) => l.takeSummary());
    const ms = (us: number) => (us / 1000).toFixed(2);
    const qos1Pairs = Math.floor(plan.pairs / 2);
    say("");
    say("## Samples");
    say("");
    say(sampleTable([base, ...samples, settled, empty]));
    say("");
    say("## Figures");
    say("");
    say(
      `- RSS: ${mib(base.rss)} MiB before the load, ${mib(last.rss)} MiB at the end of it, max ${
        mib(Math.max(...samples.map((s) => s.rss)))
      }; slope over the second half ${rssSlope.toFixed(3)} MiB/min (every sample, not judged)`,
    );
    say(
      `- after each major GC from t = ${half / 2} s (t: RSS / heap used MiB): ${
        lowsText || "none"
      }; slope RSS ${lowRss.toFixed(3)} MiB/min (limit ${MAX_RSS_SLOPE}), heap used ${
        lowHeap.toFixed(3)
      } MiB/min (limit ${MAX_HEAP_SLOPE})`,
    );
    say(
      `- heap used: ${mib(base.heapUsed)} -> ${mib(last.heapUsed)} MiB, slope ${
        heapSlope.toFixed(3)
      } MiB/min (every sample); heap total ${mib(last.heapTotal)} MiB; external ${
        mib(last.external)
      } MiB, slope ${extSlope.toFixed(3)} MiB/min`,
    );
    say(
      `- settled: sessions ${settled.sessionsOnline} online + ${settled.sessionsOffline} offline, ${settled.connections} connections; the load holds ${standing} (expected offline: 0)`,
    );
    say(
      `- every client gone: sessions ${empty.sessionsOnline} online + ${empty.sessionsOffline} offline (expected 0 + ${
        qos1Pairs + 1
      }: the QoS 1 pairs' subscribers and the offline session), ${empty.connections} connections, RSS ${
        mib(empty.rss)
      } MiB, heap used ${mib(empty.heapUsed)} MiB`,
    );
    say(
      `- pairs: QoS 0 sent ${st.pairSent[0]}, received ${
        st.pairReceived[0]
      } (missing ${load.qos0Missing()}); QoS 1 sent ${st.pairSent[1]}, received ${
        st.pairReceived[1]
      }, acknowledged and lost ${lost.pairs}; duplicates ${st.pairDuplicates}; reconnects ${st.pairReconnects}`,
    );
    say(
      `- latency (publish to delivery, all samples): QoS 0 p50 ${ms(lat[0].p50)} ms, p99 ${
        ms(lat[0].p99)
      } ms, max ${ms(lat[0].max)} ms; QoS 1 p50 ${ms(lat[1].p50)} ms, p99 ${
        ms(lat[1].p99)
      } ms, max ${ms(lat[1].max)} ms`,
    );
    say(
      `- offline session: ${st.offlineVisits} visits, ${st.offlineReceived} received, acknowledged and lost ${lost.offline}`,
    );
    say(
      `- churn: ${st.churned} connections (${settled.connects} CONNACKs in all), ${settled.expired} sessions expired, ${settled.wills} wills published (the churn dropped ${st.churnWills} sockets with a will)`,
    );
    say(
      `- retained: ${st.retainedSets} sets, ${st.retainedClears} clears, ${settled.retained} held at the end; the wildcard reader got ${
        st.retainedReads.join(", ")
      }`,
    );
    say(
      `- slow subscriber: ${st.slowVisits} visits; messages dropped in all ${settled.dropped}; queued at the end of the load ${last.queued} (${
        mib(last.queuedBytes)
      } MiB)`,
    );
    say(
      `- load errors: ${st.errors}${
        st.firstErrors.length ? ` (${st.firstErrors.join("; ")})` : ""
      }`,
    );

    if (!quick && lows.length < 2) {
      reasons.push(`${lows.length} major GC(s) after warm-up: too few to judge, run longer`);
    } else if (!quick && !(lowRss < MAX_RSS_SLOPE && lowHeap < MAX_HEAP_SLOPE)) {
      reasons.push(
        `after major GCs RSS grows ${lowRss.toFixed(3)}, heap ${lowHeap.toFixed(3)} MiB/min`,
      );
    }
    if (lost.pairs + lost.offline > 0) {
      reasons.push(`QoS 1 lost: ${lost.pairs} (pairs), ${lost.offline} (offline session)`);
    }
    if (settled.sessionsOnline !== standing || settled.sessionsOffline !== 0) {
      reasons.push(
        `sessions at the end ${settled.sessionsOnline}+${settled.sessionsOffline}, expected ${standing}+0`,
      );
    }
    if (settled.connections !== standing) {
      reasons.push(`connections at the end ${settled.connections}, expected ${standing}`);
    }
    if (empty.sessionsOnline !== 0 || empty.sessionsOffline !== qos1Pairs + 1) {
      reasons.push(
        `sessions after all left ${empty.sessionsOnline}+${empty.sessionsOffline}, expected 0+${
          qos1Pairs + 1
        }`,
      );
    }
    if (st.errors > 0) reasons.push(`${st.errors} load errors`);
  } catch (e) {
    exited = true;
    reasons.push(`run failed: ${e instanceof Error ? e.stack : String(e)}`);
    say(await broker.logTail());
  } finally {
    await broker.stop();
  }
  say("");
  say(
    reasons.length === 0
      ? `Verdict: PASS (memory levels off${
        quick ? ": not judged with --quick" : ""
      }, no QoS 1 loss)`
      : `Verdict: FAIL\n${reasons.map((r) => `- ${r}`).join("\n")}`,
  );
  await Deno.writeTextFile(`${dir}/report.md`, out.join("\n") + "\n");
  console.log(`(report: ${dir}/report.md${exited ? `, broker log: ${dir}/mcloudtt.log` : ""})`);
  return reasons.length === 0 ? 0 : 1;
}

if (import.meta.main) {
  Deno.addSignalListener("SIGINT", () => {
    killAll();
    Deno.exit(130);
  });
  Deno.exit(await main());
}
