/**
 * Errors that escape every handler. A broker in an unknown state is worse than a restarted one:
 * the error is logged and the process exits 1, so the orchestrator (Kubernetes, systemd) starts
 * a fresh one. Errors inside one connection never get here: the connection closes (0x83).
 */
import { getLogger } from "@logtape/logtape";

const log = getLogger(["mcloudtt", "main"]);

/** Exit status after an unexpected error (2 is for configuration problems). */
export const FATAL_EXIT_CODE = 1;

function describe(e: unknown): string {
  return e instanceof Error ? (e.stack ?? `${e.name}: ${e.message}`) : String(e);
}

/** Installs the process-wide "error" and "unhandledrejection" listeners. */
export function exitOnUncaughtErrors(exit: (code: number) => void = Deno.exit): void {
  globalThis.addEventListener("error", (e) => {
    e.preventDefault();
    log.fatal("uncaught error, exiting: {error}", { error: describe(e.error) });
    exit(FATAL_EXIT_CODE);
  });
  globalThis.addEventListener("unhandledrejection", (e) => {
    e.preventDefault();
    log.fatal("unhandled promise rejection, exiting: {error}", { error: describe(e.reason) });
    exit(FATAL_EXIT_CODE);
  });
}
