/**
 * Logging setup for the CLI: every line on stderr, as readable text or one JSON object per line,
 * with UTC ISO-8601 timestamps and a level per module. Embedders configure @logtape/logtape
 * themselves (or not at all).
 *
 * Modules are the second part of a logger's category: `getLogger(["mcloudtt", "connection"])`
 * is module `connection`.
 */
import { configure, type LogLevel, type LogRecord, type Sink } from "@logtape/logtape";

export type LevelName = "debug" | "info" | "warning" | "error";
export type LogFormat = "text" | "json";

export interface LogOptions {
  /** Lowest level logged by modules without their own level. */
  level: LevelName;
  format: LogFormat;
  /** `[general] log_levels`: "connection=debug,tls=warning". */
  levels?: string;
  /** Where each finished line (with its newline) goes; default: stderr, synchronously. */
  write?: (line: string) => void;
  /** `[general] log_value_max`: characters of one string value kept in a line (LOG_VALUE_MAX). */
  valueMax?: number;
  /** `[general] log_rate`: info and debug lines per second, 0 for no bound (LOG_RATE). */
  rate?: number;
}

/**
 * Default of `[general] log_value_max`. A client chooses its client id, user name and topics
 * (up to 65,535 bytes each, before it is authenticated too), and one line is written per
 * connection attempt: uncut, a refused 64 KB client id made a 64 KB line, 32 MB of log for 500
 * attempts in under a second. Real ids and topics fit in far less.
 */
export const LOG_VALUE_MAX = 256;

/**
 * Default of `[general] log_rate`: info and debug lines per second. Anyone who reaches a
 * listener makes the broker write a line per connection attempt (refused, not MQTT, no CONNECT,
 * TLS handshake failed); the write is synchronous, so a flood of attempts also spends the event
 * loop on stderr. Above the rate lines are dropped and counted; warnings and errors always pass
 * (the ones a client can cause per packet are rate-limited where they are logged).
 */
export const LOG_RATE = 1000;

/** An MQTT reason code as operators read it in specs and other brokers' logs: `0x8E`. */
export function hex(code: number): string {
  return `0x${code.toString(16).toUpperCase().padStart(2, "0")}`;
}

/** Parses `module=level,module=level`; the schema has already checked the syntax. */
export function parseLogLevels(text: string): Map<string, LevelName> {
  const out = new Map<string, LevelName>();
  for (const part of text.split(",")) {
    const [name, level] = part.split("=").map((s) => s.trim());
    if (name && level) out.set(name, level as LevelName);
  }
  return out;
}

/**
 * Control characters, DEL, C1 controls and the Unicode line separators: in a text log line a
 * value carrying one (a client id, a user name, a topic: a client chooses them, before it is
 * authenticated too) could start a forged line or move a terminal's cursor.
 */
// deno-lint-ignore no-control-regex -- control characters are what this looks for
const UNSAFE = /[\x00-\x1f\x7f-\x9f\u2028\u2029]/g;

function escapeControl(c: string): string {
  switch (c) {
    case "\n":
      return "\\n";
    case "\r":
      return "\\r";
    case "\t":
      return "\\t";
  }
  const code = c.charCodeAt(0);
  return code > 0xff ? `\\u${code.toString(16)}` : `\\x${code.toString(16).padStart(2, "0")}`;
}

/** `s` with its control characters written as escapes (`\n`, `\x1b`), for a text log line. */
function escapeForText(s: string): string {
  return s.replace(UNSAFE, escapeControl);
}

/** Characters of one string value kept in a line; set by setupLogging. */
let valueMax = LOG_VALUE_MAX;

/** `s` cut to `valueMax` characters, saying how many more there were. */
function clip(s: string): string {
  return s.length <= valueMax ? s : `${s.slice(0, valueMax)}...[${s.length - valueMax} more]`;
}

/**
 * A value inside a message: strings as they are (no quotes) but cut at `valueMax`, the rest
 * compactly (a stack trace whole). In a text line (`text`) every control character is escaped,
 * a stack trace's line breaks too: one record, one line.
 */
function renderValue(v: unknown, text: boolean): string {
  const s = typeof v === "string" ? clip(v) : valueText(v);
  return text ? escapeForText(s) : s;
}

function valueText(v: unknown): string {
  if (typeof v === "string") return v;
  if (v instanceof Error) return v.stack ?? `${v.name}: ${v.message}`;
  if (v === undefined || v === null) return "-";
  if (typeof v === "object" && v !== null) {
    try {
      return JSON.stringify(v, jsonReplacer);
    } catch {
      return String(v);
    }
  }
  return String(v);
}

/** The message with its values filled in; `text`: escaped for a text line (JSON escapes its own). */
function renderMessage(record: LogRecord, text: boolean): string {
  const parts = record.message;
  let s = "";
  for (let i = 0; i < parts.length; i++) {
    s += i % 2 === 0 ? parts[i] as string : renderValue(parts[i], text);
  }
  return s;
}

function moduleOf(record: LogRecord): string {
  return record.category.length > 1 ? record.category.slice(1).join(".") : record.category[0];
}

const LEVEL_TEXT: Record<LogLevel, string> = {
  trace: "TRACE",
  debug: "DEBUG",
  info: "INFO ",
  warning: "WARN ",
  error: "ERROR",
  fatal: "FATAL",
};

/** `2025-01-02T03:04:05.678Z INFO  connection: client connected ...` */
export function formatText(record: LogRecord): string {
  const time = new Date(record.timestamp).toISOString();
  return `${time} ${LEVEL_TEXT[record.level]} ${moduleOf(record)}: ${
    renderMessage(record, true)
  }\n`;
}

function jsonReplacer(_key: string, value: unknown): unknown {
  if (value instanceof Error) {
    return { name: value.name, message: value.message, stack: value.stack };
  }
  if (typeof value === "bigint") return value.toString();
  if (value instanceof Uint8Array) return `<${value.length} bytes>`;
  return value;
}

/**
 * One JSON object per line: time, level, module, message, then the record's properties; a
 * property named like one of the first four does not replace it.
 */
export function formatJson(record: LogRecord): string {
  const line: Record<string, unknown> = {
    time: new Date(record.timestamp).toISOString(),
    level: record.level,
    module: moduleOf(record),
    message: renderMessage(record, false),
  };
  for (const key in record.properties) {
    if (key in line) continue;
    const v = record.properties[key];
    line[key] = typeof v === "string" ? clip(v) : v;
  }
  return JSON.stringify(line, jsonReplacer) + "\n";
}

const encoder = new TextEncoder();

/** Writes a whole line to stderr before returning, so nothing is lost when the process exits. */
export function writeStderr(line: string): void {
  const bytes = encoder.encode(line);
  let off = 0;
  while (off < bytes.length) off += Deno.stderr.writeSync(bytes.subarray(off));
}

/** Configures the `mcloudtt` loggers as `options` say. */
export async function setupLogging(options: LogOptions): Promise<void> {
  const format = options.format === "json" ? formatJson : formatText;
  const write = options.write ?? writeStderr;
  valueMax = options.valueMax ?? LOG_VALUE_MAX;
  const emit = (record: LogRecord) => {
    try {
      write(format(record));
    } catch {
      // A closed stderr must not take the broker down with it.
    }
  };
  const budget = new LineBudget(options.rate ?? LOG_RATE, emit);
  const out: Sink = (record) => {
    if (budget.admits(record)) emit(record);
  };
  const modules = [...parseLogLevels(options.levels ?? "")].map(([name, level]) => ({
    category: ["mcloudtt", name],
    lowestLevel: level as LogLevel,
    sinks: ["out"],
    // Its own sink and level: a module may be noisier or quieter than the rest.
    parentSinks: "override" as const,
  }));
  await configure({
    reset: true,
    sinks: { out },
    loggers: [
      { category: ["mcloudtt"], lowestLevel: options.level, sinks: ["out"] },
      ...modules,
      { category: ["logtape", "meta"], lowestLevel: "warning", sinks: ["out"] },
    ],
  });
}

/**
 * The property that marks a refused login's line (`auth_failure: true`): it has a budget of its
 * own under general.log_rate, so lines anyone can cause for nothing (a socket that is not MQTT,
 * a failed TLS handshake) cannot use up the second before a password guess is written.
 */
export const AUTH_FAILURE = "auth_failure";

/**
 * At most `rate` info and debug lines per second (0: no bound), and `rate` more for refused
 * logins. What is dropped is counted and reported in one warning when its second is over.
 */
class LineBudget {
  private windowStart = 0;
  private used = 0;
  private usedByLogins = 0;
  private dropped = 0;
  private timer: ReturnType<typeof setTimeout> | undefined;

  constructor(private readonly rate: number, private readonly emit: (r: LogRecord) => void) {}

  admits(record: LogRecord): boolean {
    if (this.rate === 0 || (record.level !== "info" && record.level !== "debug")) return true;
    const now = Date.now();
    if (now - this.windowStart >= 1000) {
      this.report();
      this.windowStart = now;
      this.used = 0;
      this.usedByLogins = 0;
    }
    if (record.properties[AUTH_FAILURE] === true) {
      if (this.usedByLogins < this.rate) {
        this.usedByLogins++;
        return true;
      }
    } else if (this.used < this.rate) {
      this.used++;
      return true;
    }
    if (this.dropped++ === 0) {
      // The report must come even if no other line does; it must not hold the process open.
      this.timer = setTimeout(() => this.report(), this.windowStart + 1000 - now);
      Deno.unrefTimer(this.timer);
    }
    return false;
  }

  private report(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (this.dropped === 0) return;
    const dropped = this.dropped;
    this.dropped = 0;
    const rate = this.rate;
    this.emit({
      category: ["mcloudtt", "main"],
      level: "warning",
      message: ["dropped ", dropped, " info and debug lines over general.log_rate = ", rate, "/s"],
      rawMessage: "dropped {dropped} info and debug lines over general.log_rate = {rate}/s",
      timestamp: Date.now(),
      properties: { dropped, rate },
    });
  }
}
