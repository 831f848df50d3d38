/**
 * The process environment the broker ships with, beside its permissions (permissions.ts): set by
 * `deno task start` and `dev`, by the Dockerfile for the compiled binary, by `deno task cluster`
 * for its nodes, and by `deno task bench` for the mcloudtt it measures
 * (tests/ops/runtime_env_test.ts checks that they agree). It is read by the C library when the
 * process starts, so the program cannot set it for itself.
 */

/** One environment variable and why the broker runs with it (the README lists the same). */
export interface RuntimeVariable {
  name: string;
  value: string;
  why: string;
}

export const RUNTIME_ENV: readonly RuntimeVariable[] = [
  {
    name: "GLIBC_TUNABLES",
    value: "glibc.malloc.mxfast=0",
    why: "no malloc fastbins: every scavenge frees thousands of small ArrayBuffer backing " +
      "stores, and with fastbins the next larger allocation on the main thread merges them all " +
      "at once, a stall of 2-4 ms (the broker's p99.9 over TLS, issue 14); without them each " +
      "free coalesces as it happens, on the thread that frees",
  },
];

/** The variables as an environment object (for Deno.Command's `env`). */
export const RUNTIME_ENV_VARS: Readonly<Record<string, string>> = Object.fromEntries(
  RUNTIME_ENV.map((v) => [v.name, v.value]),
);

/** The variables as shell assignments, `NAME=value ...`, as a task line starts with them. */
export const RUNTIME_ENV_PREFIX: string = RUNTIME_ENV.map((v) => `${v.name}=${v.value}`).join(" ");
