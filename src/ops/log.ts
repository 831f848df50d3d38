/** Logging setup for the CLI. Embedders configure @logtape/logtape themselves (or not at all). */
import { configure, getConsoleSink, type LogLevel } from "@logtape/logtape";

/** Maps our config level to logtape's. */
function toLevel(level: "debug" | "info" | "warning" | "error"): LogLevel {
  return level;
}

/** Sends logs at `level` and above to stderr. */
export async function setupLogging(level: "debug" | "info" | "warning" | "error"): Promise<void> {
  await configure({
    reset: true,
    sinks: { console: getConsoleSink() },
    loggers: [
      { category: ["mcloudtt"], lowestLevel: toLevel(level), sinks: ["console"] },
      { category: ["logtape", "meta"], lowestLevel: "warning", sinks: ["console"] },
    ],
  });
}
