// The C latency probe (probe/*.c via probe.ts): it builds warning-free, delivers every
// message through a real Mosquitto (TCP and TLS, MQTT 5 and 3.1.1, QoS 0 and 1), feeds the bench's
// latency metrics, copes with packets split and coalesced at any byte, and exits non-zero when
// the broker refuses or closes. Short windows: this checks the client, not the broker.

import assert from "node:assert/strict";
import { BENCH_LIMITS, BROKERS } from "./brokers.ts";
import { measureProbeLatency, type RunContext } from "./measure.ts";
import { type BenchOptions, parseOptions, UsageError } from "./options.ts";
import { buildProbe, type ProbeMark, type ProbeOptions, runProbe } from "./probe.ts";
import { latencyClientLines, markdown } from "./report.ts";
import { levelName, type RunResult } from "./runner.ts";
import { allScenarios } from "./scenarios.ts";
import { concat, framed, FrameReader, type ProtocolLevel, readU16, readVarint } from "./wire.ts";
import { sharedBenchPki, TEST_MACHINE, withMosquitto } from "./fixtures.ts";

const build = await buildProbe();
if (!build.ok) {
  if (Deno.env.get("CI")) {
    throw new Error(`CI is set but the latency probe cannot be built: ${build.reason}`);
  }
  console.warn(`\n!!! SKIPPING the latency probe tests: ${build.reason} !!!\n`);
}
const mosquittoMissing = await BROKERS.mosquitto.unavailable();
if (mosquittoMissing !== null) {
  if (Deno.env.get("CI")) {
    throw new Error(`CI is set but Mosquitto is missing: ${mosquittoMissing}`);
  }
  console.warn(`\n!!! SKIPPING the probe tests against Mosquitto: ${mosquittoMissing} !!!\n`);
}
const probe = build.ok ? build.path : "";

/** Needs the probe. */
function probeTest(name: string, fn: () => Promise<void>): void {
  Deno.test({ name, ignore: !build.ok, fn });
}

/** Needs the probe and Mosquitto. */
function mosquittoTest(name: string, fn: () => Promise<void>): void {
  Deno.test({ name, ignore: !build.ok || mosquittoMissing !== null, fn });
}

const tls = sharedBenchPki;

let ids = 0;
const base = (port: number, over: Partial<ProbeOptions> = {}): ProbeOptions => ({
  host: "127.0.0.1",
  port,
  pairs: 4,
  rate: 1_000,
  qos: 0,
  version: 5,
  warmupS: 0.3,
  windowS: 1,
  drainS: 2,
  idPrefix: `probe-test-${Deno.pid}-${ids++}`,
  ...over,
});

probeTest("the probe compiles without a warning under -Wall -Wextra", () => {
  assert.ok(build.ok);
  assert.equal(build.warnings, "");
  return Promise.resolve();
});

for (const transport of ["tcp", "tls"] as const) {
  for (const version of [5, 4] as const) {
    for (const qos of [0, 1] as const) {
      mosquittoTest(
        `Mosquitto over ${transport}, MQTT ${
          levelName(version)
        }, QoS ${qos}: every message delivered`,
        () =>
          withMosquitto(transport === "tls", async (broker) => {
            const seen: [ProbeMark, number][] = [];
            const { result: r, marks } = await runProbe(
              probe,
              base(broker.port, { qos, version, tls: broker.tls }),
              (mark) => {
                seen.push([mark, performance.now()]);
              },
            );
            assert.deepEqual(seen.map(([m]) => m), ["window-start", "window-end"]);
            assert.ok(marks["window-end"]! - marks["window-start"]! > 800, JSON.stringify(marks));
            assert.ok(r.sent > 1_000, `sent ${r.sent}`); // 1.3 s at 1000 msg/s
            assert.equal(r.received, r.sent);
            assert.equal(r.duplicates, 0);
            assert.equal(r.acked, qos === 1 ? r.sent : 0);
            // 1 000 msg/s over a 1 s window.
            assert.ok(r.count > 800 && r.count < 1_200, `samples ${r.count}`);
            assert.equal(r.count, r.window_received);
            assert.ok(r.window_sent > 800 && r.window_sent < 1_200, `window sent ${r.window_sent}`);
            assert.ok(r.p50 > 0, `p50 ${r.p50}`);
            assert.ok(r.p50 <= r.p90 && r.p90 <= r.p99 && r.p99 <= r.p999 && r.p999 <= r.max);
            assert.ok(r.max < 1_000_000, `max ${r.max} µs`);
            assert.ok(r.cpu_us > 0, "the probe's CPU over the window");
          }),
      );
    }
  }
}

const options: BenchOptions = {
  ...parseOptions(["--quick"])!,
  durationS: 1,
  pacedWarmupS: 0.3,
  drainS: 2,
};

mosquittoTest(
  "a probe latency run fills the bench's latency and broker CPU metrics",
  () =>
    withMosquitto(true, async (broker) => {
      const ctx: RunContext = { broker, level: 4, options };
      const { metrics, errors } = await measureProbeLatency(ctx, {
        pairs: 16,
        rate: 2_000,
        qos: 1,
      });
      assert.deepEqual(errors, []);
      for (
        const key of [
          "p50_us",
          "p99_us",
          "p999_us",
          "max_us",
          "samples",
          "delivered_per_s",
          "published_per_s",
          "broker_cpu_pct",
          "broker_cpu_us_per_msg",
          "broker_rss_mb",
          "gen_cpu_pct",
          "gen_max_worker_cpu_pct",
        ]
      ) assert.ok(Number.isFinite(metrics[key]), `${key} = ${metrics[key]}`);
      assert.ok(metrics.samples > 1_600 && metrics.samples < 2_400, `samples ${metrics.samples}`);
      assert.ok(metrics.delivered_per_s > 1_600 && metrics.delivered_per_s < 2_400);
      assert.ok(metrics.broker_cpu_us_per_msg > 0);
      assert.equal(metrics.received, metrics.sent);
      assert.equal(metrics.duplicates, 0);
      assert.equal(metrics.undelivered_pct, 0);
      assert.ok(metrics.p50_us <= metrics.p99_us && metrics.p99_us <= metrics.max_us);
    }),
);

mosquittoTest(
  "payloads with 3- and 4-byte Remaining Lengths arrive whole",
  () =>
    withMosquitto(false, async (broker) => {
      for (const payloadBytes of [20_000, 2_200_000]) {
        const { result: r } = await runProbe(
          probe,
          base(broker.port, { pairs: 2, rate: 10, qos: 1, payloadBytes, windowS: 0.5 }),
        );
        assert.ok(r.sent >= 5, `payload ${payloadBytes}: sent ${r.sent}`);
        assert.equal(r.received, r.sent, `payload ${payloadBytes}`);
        assert.equal(r.acked, r.sent);
      }
    }),
);

mosquittoTest(
  "over TLS the broker's certificate must chain to the CA given",
  () =>
    withMosquitto(true, async (broker) => {
      // The server certificate itself is no CA: verification fails.
      const wrongCa = { ca: await Deno.readTextFile((await tls()).certFile) };
      await assert.rejects(
        runProbe(probe, base(broker.port, { windowS: 0.2, tls: wrongCa })),
        /certificate verify failed/,
      );
      // Plain MQTT to a TLS listener: the broker drops the connection.
      await assert.rejects(runProbe(probe, base(broker.port, { windowS: 0.2 })), /exited with 1/);
    }),
);

// ---- A fake broker, for what a well-behaved broker never does ----------------------------------

type FakeMode =
  /** A relay: PUBLISH to the topic's subscriber, bytes split and coalesced at random. */
  | "relay"
  /** The relay, closing every connection `closeAfterMs` after the last SUBSCRIBE. */
  | "close-after-setup"
  /** Accepts and closes at once. */
  | "close-at-connect"
  /** CONNACK with a refusal. */
  | "refuse";

interface Fake {
  readonly port: number;
  /** CONNECTs seen: client ids. */
  readonly clients: string[];
  stop(): Promise<void>;
}

const enc = new TextEncoder();
const dec = new TextDecoder();

/** One client connection of the fake broker; writes go out in random pieces when `chop`. */
class FakeConn {
  private queue: Uint8Array[] = [];
  private writing = false;
  version: ProtocolLevel = 5;
  nextId = 1;
  closed = false;

  constructor(readonly conn: Deno.Conn, private readonly chop: boolean) {}

  send(bytes: Uint8Array): void {
    this.queue.push(bytes);
    if (!this.writing) void this.pump();
  }

  private async pump(): Promise<void> {
    this.writing = true;
    try {
      while (this.queue.length > 0 && !this.closed) {
        // Whatever queued meanwhile goes out together (several packets per read), in pieces of
        // 1 to 40 bytes with short pauses between some (a packet split over several reads).
        if (this.chop) await new Promise((r) => setTimeout(r, Math.random() < 0.5 ? 0 : 2));
        const all = concat(this.queue.splice(0));
        let at = 0;
        while (at < all.length) {
          const size = this.chop ? 1 + Math.floor(Math.random() * 40) : all.length - at;
          at += await this.conn.write(all.subarray(at, Math.min(all.length, at + size)));
          if (this.chop && Math.random() < 0.2) await new Promise((r) => setTimeout(r, 1));
        }
      }
    } catch {
      // The probe is gone.
    } finally {
      this.writing = false;
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    try {
      this.conn.close();
    } catch {
      // Closed already.
    }
  }
}

function fakeBroker(mode: FakeMode, closeAfterMs = 300): Fake {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns = new Set<FakeConn>();
  const subscribers = new Map<string, FakeConn>();
  const clients: string[] = [];
  let closeTimer: ReturnType<typeof setTimeout> | undefined;
  const serve = async (c: FakeConn) => {
    const reader = new FrameReader();
    const buf = new Uint8Array(64 * 1024);
    const onPacket = (type: number, flags: number, b: Uint8Array, body: number, end: number) => {
      if (type === 1) { // CONNECT: "MQTT", level, flags, keep alive, [props], client id
        c.version = b[body + 6] as ProtocolLevel;
        let at = body + 10;
        if (c.version === 5) {
          const [plen, after] = readVarint(b, at);
          at = after + plen;
        }
        clients.push(dec.decode(b.subarray(at + 2, at + 2 + readU16(b, at))));
        if (mode === "refuse") {
          c.send(framed(0x20, c.version === 5 ? [0, 0x87, 0] : [0, 0x05]));
          return;
        }
        // MQTT 5: Receive Maximum 10 and a user property the probe must skip.
        const props = [0x21, 0, 10, 0x26, 0, 1, 0x6b, 0, 1, 0x76];
        c.send(framed(0x20, c.version === 5 ? [0, 0, props.length, ...props] : [0, 0]));
      } else if (type === 8) { // SUBSCRIBE
        const id = readU16(b, body);
        let at = body + 2;
        if (c.version === 5) {
          const [plen, after] = readVarint(b, at);
          at = after + plen;
        }
        const topic = dec.decode(b.subarray(at + 2, at + 2 + readU16(b, at)));
        const qos = b[at + 2 + readU16(b, at)] & 3;
        subscribers.set(topic, c);
        c.send(
          framed(0x90, c.version === 5 ? [id >> 8, id & 255, 0, qos] : [id >> 8, id & 255, qos]),
        );
        if (mode === "close-after-setup") {
          clearTimeout(closeTimer);
          closeTimer = setTimeout(() => {
            for (const x of conns) x.close();
          }, closeAfterMs);
        }
      } else if (type === 3) { // PUBLISH: acknowledge, relay with a property added (MQTT 5)
        const qos = (flags >> 1) & 3;
        const tlen = readU16(b, body);
        const topic = dec.decode(b.subarray(body + 2, body + 2 + tlen));
        let at = body + 2 + tlen;
        let id = 0;
        if (qos > 0) {
          id = readU16(b, at);
          at += 2;
        }
        if (c.version === 5) {
          const [plen, after] = readVarint(b, at);
          at = after + plen;
        }
        const payload = [...b.subarray(at, end)];
        if (qos === 1) {
          c.send(framed(0x40, c.version === 5 ? [id >> 8, id & 255, 0] : [id >> 8, id & 255]));
        }
        const sub = subscribers.get(topic);
        if (sub === undefined) return;
        const outId = sub.nextId;
        sub.nextId = outId === 65535 ? 1 : outId + 1;
        const t = [...enc.encode(topic)];
        sub.send(framed(0x30 | (qos << 1), [
          t.length >> 8,
          t.length & 255,
          ...t,
          ...(qos > 0 ? [outId >> 8, outId & 255] : []),
          // Message Expiry Interval 60 s.
          ...(sub.version === 5 ? [5, 0x02, 0, 0, 0, 60] : []),
          ...payload,
        ]));
      } else if (type === 12) {
        c.send(new Uint8Array([0xd0, 0]));
      } else if (type === 14) {
        c.close();
      }
      // PUBACKs from subscribers: nothing to do.
    };
    try {
      for (;;) {
        const n = await c.conn.read(buf);
        if (n === null) break;
        reader.push(buf, n, onPacket);
      }
    } catch {
      // Closed.
    }
    c.close();
    conns.delete(c);
  };
  const accepting = (async () => {
    try {
      for await (const conn of listener) {
        const c = new FakeConn(conn, mode === "relay");
        if (mode === "close-at-connect") {
          c.close();
          continue;
        }
        conns.add(c);
        void serve(c);
      }
    } catch {
      // Listener closed.
    }
  })();
  return {
    port: (listener.addr as Deno.NetAddr).port,
    clients,
    async stop() {
      clearTimeout(closeTimer);
      listener.close();
      for (const c of conns) c.close();
      await accepting;
    },
  };
}

async function withFake(mode: FakeMode, fn: (fake: Fake) => Promise<void>): Promise<void> {
  const fake = fakeBroker(mode);
  try {
    await fn(fake);
  } finally {
    await fake.stop();
  }
}

for (const version of [5, 4] as const) {
  probeTest(
    `MQTT ${levelName(version)}: packets split at any byte and several per read are all parsed`,
    () =>
      withFake("relay", async (fake) => {
        const { result: r } = await runProbe(
          probe,
          base(fake.port, { pairs: 3, rate: 600, qos: 1, version, warmupS: 0.2, windowS: 1 }),
        );
        assert.ok(r.sent > 600, `sent ${r.sent}`);
        assert.equal(r.received, r.sent);
        assert.equal(r.acked, r.sent);
        assert.equal(r.duplicates, 0);
        assert.ok(r.p50 > 0 && r.p50 <= r.p99 && r.p99 <= r.max);
        // The broker's Receive Maximum (10) caps the publishers' window (MQTT 5 only).
        assert.equal(r.receive_maximum, version === 5 ? 10 : 100);
      }),
  );
}

probeTest(
  "client ids are unique per run: interleaved runs never take over a session",
  () =>
    withFake("relay", async (fake) => {
      const run = () => runProbe(probe, base(fake.port, { pairs: 2, windowS: 0.2, warmupS: 0 }));
      await Promise.all([run(), run()]);
      assert.equal(fake.clients.length, 8);
      assert.equal(new Set(fake.clients).size, 8, fake.clients.join(" "));
    }),
);

const FAILURES = {
  "close-after-setup": "closes the connections during the run",
  "close-at-connect": "closes a connection before CONNACK",
  refuse: "refuses the connection",
} as const;

for (const mode of ["close-after-setup", "close-at-connect", "refuse"] as const) {
  probeTest(
    `a broker that ${FAILURES[mode]} makes the probe exit non-zero at once`,
    () =>
      withFake(mode, async (fake) => {
        const started = performance.now();
        await assert.rejects(
          runProbe(probe, base(fake.port, { warmupS: 0.5, windowS: 5 })),
          (e: Error) => {
            assert.match(e.message, /exited with 1/);
            assert.match(e.message, mode === "refuse" ? /CONNACK refused/ : /closed by the broker/);
            return true;
          },
        );
        // Not a hang until the end of the schedule (0.5 + 5 s + drain).
        const elapsed = performance.now() - started;
        assert.ok(elapsed < 3_000, `${elapsed} ms`);
      }),
  );
}

probeTest("bad arguments exit with 2 and the usage", async () => {
  const out = await new Deno.Command(probe, { args: ["--port", "1"], stderr: "piped" }).output();
  assert.equal(out.code, 2);
  assert.match(dec.decode(out.stderr), /usage: paced_probe/);
});

// ---- Options and report (no compiler needed) --------------------------------------------------

Deno.test("--latency-client: probe by default, deno on request, nothing else", () => {
  const defaults = parseOptions([])!;
  assert.equal(defaults.latencyClient, "probe");
  assert.equal(defaults.latencyClientGiven, false);
  const deno = parseOptions(["--latency-client", "deno"])!;
  assert.equal(deno.latencyClient, "deno");
  assert.equal(deno.latencyClientGiven, true);
  assert.throws(() => parseOptions(["--latency-client=go"]), UsageError);
  const latency = allScenarios(defaults).filter((s) => s.kind === "latency");
  assert.equal(latency.length, 4);
  assert.ok(latency.every((s) => s.description.includes("C probe")));
  assert.ok(
    allScenarios(deno).filter((s) => s.kind === "latency").every((s) =>
      s.description.includes("Deno worker")
    ),
  );
});

Deno.test("the report header names the latency client", () => {
  const result: RunResult = {
    scenario: "latency-2k-qos0",
    kind: "latency",
    broker: "mosquitto",
    level: 5,
    transport: "tcp",
    round: 1,
    metrics: { p50_us: 50, p99_us: 100, p999_us: 150, max_us: 200, gen_cpu_pct: 12 },
    errors: [],
  };
  const input = {
    startedAt: new Date(),
    machine: TEST_MACHINE,
    options: parseOptions([])!,
    limits: BENCH_LIMITS,
    skipped: {},
    descriptions: {},
    results: [result],
  };
  assert.match(markdown(input), /Latency client: the C probe/);
  const fallback = {
    ...input,
    options: { ...input.options, latencyClient: "deno" as const, latencyClientNote: "no cc" },
  };
  assert.match(latencyClientLines(fallback)[0], /Deno worker clients.*could not be built: no cc/);
  // No latency runs, no sentence.
  assert.deepEqual(latencyClientLines({ ...input, results: [] }), []);
});
