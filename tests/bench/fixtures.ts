/** Fixtures the bench's own tests share (report rendering needs a machine description). */
import type { MachineInfo } from "./machine.ts";

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
