/** Fixtures the bench's own tests share: a machine description, one test PKI, a Mosquitto. */
import type { MachineInfo } from "./machine.ts";
import { BENCH_LIMITS, BROKERS, type RunningBroker } from "./brokers.ts";
import { type BenchPki, benchPki } from "./tls.ts";

/** A made-up machine for tests that render a report. */
export const TEST_MACHINE: MachineInfo = {
  cpuModel: "cpu",
  cores: 2,
  memoryGiB: 1,
  kernel: "k",
  deno: "d",
  v8: "v",
  node: "n",
  mosquitto: "m",
  aedes: "a",
  mcloudtt: "c",
};

let pki: BenchPki | undefined;

/** One PKI for every TLS test of a test process (made by `main.ts certs`), removed at its end. */
export async function sharedBenchPki(): Promise<BenchPki> {
  if (pki === undefined) {
    pki = await benchPki();
    const dir = pki.dir;
    globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
  }
  return pki;
}

/** Runs `fn` against a Mosquitto started for it (with a TLS listener when `overTls`). */
export async function withMosquitto(
  overTls: boolean,
  fn: (broker: RunningBroker) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "bench-test-" });
  const broker = await BROKERS.mosquitto.start(BENCH_LIMITS, dir, {
    tls: overTls ? await sharedBenchPki() : undefined,
  });
  try {
    await fn(broker);
  } finally {
    await broker.stop();
    await Deno.remove(dir, { recursive: true });
  }
}
