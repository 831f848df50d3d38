/**
 * Builds the one validated Config: defaults < config file < MCLOUDTT_* environment < flags.
 */
import { isAbsolute, resolve } from "node:path";
import { ConfigError, shownName } from "./errors.ts";
import { issueToError } from "./format.ts";
import { ENV_CONFIG_FILE, KEYS } from "./keys.ts";
import { type Config, type DeepPartial, validateConfig } from "./schema.ts";
import {
  envLayer,
  type Layer,
  mergeLayers,
  objectLayer,
  type Source,
  splitArgs,
  tomlLayer,
} from "./sources.ts";

/** File looked for in the working directory when no config file is named. */
export const DEFAULT_CONFIG_FILE = "config.toml";

/** Inputs of loadConfig; each defaults to the running process's own. */
export interface LoadOptions {
  /**
   * Command-line arguments. Config flags (`--config PATH`, `--<section>.<key>[=]VALUE`) are
   * consumed; every other argument is handed back in `LoadedConfig.rest`. Default: `Deno.args`.
   */
  args?: readonly string[];
  /** Environment variables. Default: `Deno.env.toObject()`. */
  env?: Readonly<Record<string, string | undefined>>;
  /** Directory that `./config.toml` and relative config paths are resolved against. Default: cwd. */
  cwd?: string;
}

/** Result of loadConfig. */
export interface LoadedConfig {
  config: Config;
  /** Arguments that were not config flags, in their original order, for main.ts to parse. */
  rest: string[];
  /** Absolute path of the config file that was read, or null when defaults, env and flags only. */
  file: string | null;
  /** Where each key that was set came from (dotted path -> source); keys not in it are defaults. */
  sources: ReadonlyMap<string, Source>;
}

/** The configuration with nothing set: every key at its default. */
export function defaultConfig(): Config {
  const result = validateConfig({});
  // The defaults are valid by construction; example_test checks them against config.toml.
  if (!result.ok) throw new Error(`invalid defaults: ${result.issues[0].message}`);
  return result.config;
}

const defaults = defaultConfig() as unknown as Record<string, unknown>;

function validateMerged(layers: readonly Layer[]): { config: Config; merged: Layer } {
  const merged = mergeLayers(layers);
  const result = validateConfig(merged.values);
  if (result.ok) return { config: result.config, merged };
  throw issueToError(result.issues[0], merged, defaults);
}

function validate(layers: readonly Layer[]): Config {
  return validateMerged(layers).config;
}

/**
 * Largest config file read: the shipped config.toml, every key with its comment, is under 30 KB.
 * Without a bound, a path given by mistake (a log file, /dev/zero) was read whole into memory,
 * or forever.
 */
const MAX_CONFIG_FILE_BYTES = 1024 * 1024;

/**
 * The file's bytes, up to MAX_CONFIG_FILE_BYTES + 1. Read in chunks rather than by its size:
 * a pipe (`--config <(...)`) or a device has no size to trust.
 */
function readBounded(file: string): Uint8Array {
  using handle = Deno.openSync(file, { read: true });
  const out = new Uint8Array(MAX_CONFIG_FILE_BYTES + 1);
  let length = 0;
  while (length < out.length) {
    const n = handle.readSync(out.subarray(length));
    if (n === null) break;
    length += n;
  }
  return out.subarray(0, length);
}

/** Read the named file, or ./config.toml if present; a named file that is missing is an error. */
function readConfigFile(
  named: { path: string; from: string } | undefined,
  cwd: string,
): { layer: Layer; file: string } | undefined {
  const given = named?.path ?? DEFAULT_CONFIG_FILE;
  const label = shownName(given);
  const from = named?.from ?? "default location";
  const refuse = (reason: string, cause?: unknown) =>
    new ConfigError(
      `config file ${label} (from ${from}) ${reason}`,
      { key: named?.from, source: from },
      { cause },
    );
  // "" would name the working directory itself. (An empty MCLOUDTT_CONFIG never comes here.)
  if (given === "") {
    throw new ConfigError(`--config (from command line): is empty; give the path of a TOML file`, {
      key: "--config",
      source: "command line",
    });
  }
  const file = isAbsolute(given) ? given : resolve(cwd, given);
  let bytes: Uint8Array;
  try {
    bytes = readBounded(file);
  } catch (e) {
    if (!named && e instanceof Deno.errors.NotFound) return undefined;
    const reason = e instanceof Deno.errors.NotFound
      ? "does not exist"
      : `cannot be read (${e instanceof Error ? e.message : String(e)})`;
    throw refuse(`${reason}; fix the path or create the file`, e);
  }
  if (bytes.length > MAX_CONFIG_FILE_BYTES) {
    throw refuse(
      `is larger than ${MAX_CONFIG_FILE_BYTES} bytes, far more than any configuration; ` +
        "check that the path names the config file",
    );
  }
  let text: string;
  try {
    // TOML is UTF-8; replacing bad bytes with U+FFFD silently changed the values they were in.
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch (e) {
    const line = new TextDecoder().decode(bytes).split("\n")
      .findIndex((l) => l.includes("\uFFFD")) + 1;
    throw refuse(
      `is not valid UTF-8${line > 0 ? ` (line ${line})` : ""}; save it as UTF-8`,
      e,
    );
  }
  return { layer: tomlLayer(text, label), file };
}

/**
 * The process environment. Under the shipped permissions (`--allow-env=MCLOUDTT_*
 * --ignore-env`) this lists just the MCLOUDTT_* variables; with no env permission at all, only
 * the known keys are looked up one by one (unknown MCLOUDTT_* names then go unnoticed).
 */
function readEnv(): Record<string, string | undefined> {
  try {
    return Deno.env.toObject();
  } catch (e) {
    if (!(e instanceof Deno.errors.NotCapable)) throw e;
    const out: Record<string, string | undefined> = {};
    for (const name of [...KEYS.map((k) => k.envName), ENV_CONFIG_FILE]) {
      try {
        out[name] = Deno.env.get(name);
      } catch {
        // not granted: as if unset
      }
    }
    return out;
  }
}

/**
 * Load and validate the configuration from file, environment and flags (see LoadOptions).
 * Throws ConfigError, with a one-line message, on the first problem found.
 */
export function loadConfig(options: LoadOptions = {}): LoadedConfig {
  const args = options.args ?? Deno.args;
  const env = options.env ?? readEnv();
  const cwd = options.cwd ?? Deno.cwd();

  const flags = splitArgs(args);
  // An empty MCLOUDTT_CONFIG counts as unset, the usual shell idiom for "no value".
  const envConfig = env[ENV_CONFIG_FILE] || undefined;
  const named = flags.configFile !== undefined
    ? { path: flags.configFile, from: "--config" }
    : envConfig !== undefined
    ? { path: envConfig, from: ENV_CONFIG_FILE }
    : undefined;
  // Problems are reported in the order flags, environment, file: the first one found wins.
  const fromEnv = envLayer(env);
  const fromFile = readConfigFile(named, cwd);

  const layers = [fromFile?.layer, fromEnv, flags.layer].filter((l): l is Layer => !!l);
  const { config, merged } = validateMerged(layers);
  return { config, rest: flags.rest, file: fromFile?.file ?? null, sources: merged.sources };
}

/**
 * Validate an in-process configuration (the embedding API and tests): keys left out get their
 * defaults; no file, environment or flags are read. Throws ConfigError like loadConfig.
 */
export function resolveConfig(partial: DeepPartial<Config> = {}): Config {
  // The root must be a plain object: null threw a TypeError, and a string or an array was read
  // as keys "0", "1"... (an array of tables even passed as an empty config).
  const root: unknown = partial;
  if (root === null || typeof root !== "object" || Array.isArray(root)) {
    throw new ConfigError(
      `the config passed to resolveConfig() is ${
        Array.isArray(root) ? "an array" : root === null ? "null" : `a ${typeof root}`
      }: it must be an object of tables ({ general: {...}, ports: {...} })`,
      { source: "resolveConfig()" },
    );
  }
  return validate([
    objectLayer(partial as Record<string, unknown>, { kind: "object", label: "resolveConfig()" }),
  ]);
}
