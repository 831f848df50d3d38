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

/**
 * Characters that would break the one line or change how a terminal shows it: C0 and C1 controls
 * (a newline, a NUL), line and paragraph separators, and the bidirectional overrides. Names and
 * paths in a message come from whoever set them (a quoted TOML key, a flag, an env name, a path).
 */
// deno-lint-ignore no-control-regex
const UNPRINTABLE = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]/g;

/** `text` with every UNPRINTABLE character written as a `\uXXXX` escape. */
export function printable(text: string): string {
  return text.replace(UNPRINTABLE, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
}

const MAX_NAME_CHARS = 80;

/** A name or path someone typed, made printable and cut to a length that fits in a message. */
export function shownName(name: string): string {
  const text = printable(name);
  return text.length > MAX_NAME_CHARS ? `${text.slice(0, MAX_NAME_CHARS - 3)}...` : text;
}

/** One configuration problem; `message` is a single line naming key, source, problem and fix. */
export class ConfigError extends Error {
  override readonly name = "ConfigError";
  /** Exit status main.ts should use after printing `message` to stderr. */
  readonly exitCode: number = CONFIG_ERROR_EXIT_CODE;
  readonly key?: string;
  readonly source?: string;

  constructor(message: string, details: ConfigErrorDetails = {}, options?: ErrorOptions) {
    // Escaped here, once, so that no name or value quoted in any message can break its one line.
    super(`config error: ${printable(message)}`, options);
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
