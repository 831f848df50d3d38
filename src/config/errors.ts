/** Errors raised while reading and validating the configuration. */

/** Process exit status for a configuration problem (distinct from 1 = runtime failure). */
export const CONFIG_ERROR_EXIT_CODE = 2;

/** Details kept on a ConfigError for programs that want more than the one-line message. */
export interface ConfigErrorDetails {
  /** Dotted key (`limits.max_packet_size`), variable or flag the problem is about, if any. */
  key?: string;
  /** Where the offending value came from: a file path, `env NAME`, `flag --x`, `default`... */
  source?: string;
}

/** One configuration problem; `message` is a single line naming key, source, problem and fix. */
export class ConfigError extends Error {
  override readonly name = "ConfigError";
  /** Exit status main.ts should use after printing `message` to stderr. */
  readonly exitCode: number = CONFIG_ERROR_EXIT_CODE;
  readonly key?: string;
  readonly source?: string;

  constructor(message: string, details: ConfigErrorDetails = {}, options?: ErrorOptions) {
    super(`config error: ${message}`, options);
    this.key = details.key;
    this.source = details.source;
  }
}

/**
 * If `e` is a ConfigError, print its message to stderr and exit with status 2; otherwise rethrow,
 * so real bugs keep their stack trace.
 */
export function exitOnConfigError(e: unknown): never {
  if (e instanceof ConfigError) {
    console.error(e.message);
    Deno.exit(e.exitCode);
  }
  throw e;
}
