/** What the bench ran on, for the report. */

import { BROKERS, nodeVersion } from "./brokers.ts";

/** Hardware and software versions of this run. */
export interface MachineInfo {
  readonly cpuModel: string;
  readonly cores: number;
  readonly memoryGiB: number;
  readonly kernel: string;
  readonly deno: string;
  readonly v8: string;
  readonly node: string;
  readonly mosquitto: string;
  readonly aedes: string;
  readonly mcloudtt: string;
}

async function cpuModel(): Promise<string> {
  try {
    const info = await Deno.readTextFile("/proc/cpuinfo");
    return /^model name\s*:\s*(.+)$/m.exec(info)?.[1]?.trim() ?? "unknown";
  } catch {
    return "unknown";
  }
}

/** Collects machine and version facts. */
export async function machineInfo(): Promise<MachineInfo> {
  const [model, node, mosquitto, aedes, mcloudtt] = await Promise.all([
    cpuModel(),
    nodeVersion(),
    BROKERS.mosquitto.version(),
    BROKERS.aedes.version(),
    BROKERS.mcloudtt.version(),
  ]);
  return {
    cpuModel: model,
    cores: navigator.hardwareConcurrency,
    memoryGiB: Math.round((Deno.systemMemoryInfo().total / 1024 ** 3) * 10) / 10,
    kernel: Deno.osRelease(),
    deno: Deno.version.deno,
    v8: Deno.version.v8,
    node,
    mosquitto,
    aedes,
    mcloudtt,
  };
}
