/** Fixtures the bench's own tests share: a machine description for reports, one test PKI. */
import type { MachineInfo } from "./machine.ts";
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
