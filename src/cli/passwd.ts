/**
 * `mcloudtt passwd`: adds, updates and deletes users in a password file.
 *
 * ```
 * passwd [-c] [--hash sha512|sha256] [--iterations N] FILE USER [PASSWORD]
 *                                  add or update USER (-c: create/overwrite FILE)
 * passwd -D FILE USER              delete USER
 * ```
 */

import {
  DEFAULT_ITERATIONS,
  DEFAULT_ITERATIONS_SHA256,
  hashPassword,
  MAX_ITERATIONS,
  PasswordFile,
  PasswordFileError,
  SaslprepError,
  splitPasswordLine,
  usernameProblem,
} from "../auth/passwords.ts";
import { dirname } from "node:path";
import { permissionProblem } from "../ops/permissions.ts";

/** Where the command reads the new password and writes its messages; defaults use the terminal. */
export interface PasswdIo {
  /** Returns the new password; by default prompts twice on a TTY, else reads one stdin line. */
  readPassword?: (prompt: string) => Promise<string>;
  stdout?: (text: string) => void;
  stderr?: (text: string) => void;
}

/** Raised for a failure that should end the command with a one-line message. */
export class PasswdCommandError extends Error {
  override name = "PasswdCommandError";

  constructor(message: string, readonly exitCode: number = 1) {
    super(message);
  }
}

const USAGE = [
  "usage: mcloudtt passwd [-c] [--hash sha512|sha256] [--iterations N] FILE USER [PASSWORD]",
  "       mcloudtt passwd -D FILE USER",
  "  -c            create FILE, replacing any existing one",
  "  -D            delete USER from FILE",
  "  --hash        sha512 (default: password logins and SCRAM-SHA-512) or sha256 (password",
  "                logins and SCRAM-SHA-256)",
  `  --iterations  PBKDF2 iterations (default ${DEFAULT_ITERATIONS} with sha512, ` +
  `${DEFAULT_ITERATIONS_SHA256} with sha256)`,
  "Without PASSWORD, it is prompted for twice on a terminal, or read as one line from stdin.",
].join("\n") + "\n";

// MQTT carries passwords as binary data of at most 65535 bytes.
const MAX_PASSWORD_BYTES = 65535;

interface Options {
  readonly create: boolean;
  readonly remove: boolean;
  /** Undefined: the default of `hash`. */
  readonly iterations?: number;
  readonly hash: "sha512" | "sha256";
  readonly file: string;
  readonly user: string;
  readonly password?: string;
}

/** Runs `passwd` with the arguments after the subcommand name; returns the process exit code. */
export async function runPasswdCommand(args: string[], io: PasswdIo = {}): Promise<number> {
  const stdout = io.stdout ?? writeTo(Deno.stdout);
  const stderr = io.stderr ?? writeTo(Deno.stderr);
  try {
    const options = parseArgs(args);
    if (options === "help") {
      stdout(USAGE);
      return 0;
    }
    if (options.remove) {
      await deleteUser(options.file, options.user);
    } else {
      const password = options.password ??
        await (io.readPassword ?? ((prompt) => readPasswordFromStdin(prompt, stderr)))(
          "Password: ",
        );
      await setUser(options, password);
    }
    return 0;
  } catch (error) {
    if (error instanceof PasswdCommandError) {
      stderr(`mcloudtt passwd: ${error.message}\n`);
      if (error.exitCode === 2) stderr(USAGE);
      return error.exitCode;
    }
    if (error instanceof PasswordFileError) {
      stderr(`mcloudtt passwd: ${error.message}\n`);
      return 1;
    }
    throw error;
  }
}

function usageError(message: string): PasswdCommandError {
  return new PasswdCommandError(message, 2);
}

function parseArgs(args: string[]): Options | "help" {
  let create = false;
  let remove = false;
  let iterations: number | undefined;
  let hash: "sha512" | "sha256" | undefined;
  const positional: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (arg === "--") {
      positional.push(...args.slice(i + 1));
      break;
    }
    if (arg === "-h" || arg === "--help") return "help";
    if (arg === "-c") create = true;
    else if (arg === "-D") remove = true;
    else if (arg === "--iterations" || arg.startsWith("--iterations=")) {
      const value = arg.includes("=") ? arg.slice(arg.indexOf("=") + 1) : args[++i];
      // Bounded as the file's reader bounds it: a larger count was refused by hashPassword with
      // a RangeError, which ended the command with a stack trace instead of this message.
      if (value === undefined || !/^[1-9][0-9]{0,8}$/.test(value) || +value > MAX_ITERATIONS) {
        throw usageError(`--iterations needs a positive integer (at most ${MAX_ITERATIONS})`);
      }
      iterations = Number(value);
    } else if (arg === "--hash" || arg.startsWith("--hash=")) {
      const value = arg.includes("=") ? arg.slice(arg.indexOf("=") + 1) : args[++i];
      if (value !== "sha512" && value !== "sha256") {
        throw usageError("--hash needs sha512 or sha256");
      }
      hash = value;
    } else if (arg.startsWith("-") && arg !== "-") throw usageError(`unknown option '${arg}'`);
    else positional.push(arg);
  }
  if (create && remove) throw usageError("-c and -D cannot be combined");
  // Taken and ignored, they let `-D --hash sha256` look as if it removed only that kind of entry.
  if (remove && (hash !== undefined || iterations !== undefined)) {
    throw usageError("-D takes no --hash or --iterations");
  }
  const [file, user, password, ...extra] = positional;
  if (file === undefined || user === undefined) throw usageError("FILE and USER are required");
  if (extra.length > 0 || (remove && password !== undefined)) {
    throw usageError("too many arguments");
  }
  const problem = usernameProblem(user);
  if (problem !== undefined) throw new PasswdCommandError(problem);
  return { create, remove, iterations, hash: hash ?? "sha512", file, user, password };
}

async function setUser(options: Options, password: string): Promise<void> {
  if (password === "") throw new PasswdCommandError("password must not be empty");
  if (new TextEncoder().encode(password).length > MAX_PASSWORD_BYTES) {
    throw new PasswdCommandError(`password must be at most ${MAX_PASSWORD_BYTES} bytes`);
  }
  const lines = options.create ? [] : await readLines(options.file);
  const scheme = options.hash === "sha256" ? "scram-sha256" : "scram-sha512";
  // Keys are derived from the password as SASLprep prepares it (SCRAM's rule): one it refuses,
  // a control character say, could be entered by no standard SCRAM client.
  const hash = await hashPassword(password, options.iterations, scheme).catch((e) => {
    throw e instanceof SaslprepError ? new PasswdCommandError(e.message) : e;
  });
  if (options.create) await makeParent(options.file);
  const entry = `${options.user}:${hash}`;
  const index = lines.findIndex((line) => splitPasswordLine(line)?.username === options.user);
  if (index >= 0) lines[index] = entry;
  else lines.push(entry);
  await writeAtomically(options.file, lines);
}

async function deleteUser(file: string, user: string): Promise<void> {
  const lines = await readLines(file);
  const kept = lines.filter((line) => splitPasswordLine(line)?.username !== user);
  if (kept.length === lines.length) throw new PasswdCommandError(`${file}: no user '${user}'`);
  await writeAtomically(file, kept);
}

/** Reads the file as lines, refusing to edit one that does not parse. */
async function readLines(file: string): Promise<string[]> {
  let text: string;
  try {
    text = await Deno.readTextFile(file);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) {
      throw new PasswdCommandError(`${file} does not exist (use -c to create it)`);
    }
    throw new PasswdCommandError(
      `cannot read ${file}: ${permissionProblem(error) ?? (error as Error).message}`,
    );
  }
  PasswordFile.parse(text, file);
  const lines = text.split("\n");
  if (lines.at(-1) === "") lines.pop();
  return lines;
}

/**
 * Creates the directory `-c` is to write the file in (0700: it holds a password file), as the
 * README's first step does with `data/passwords.txt` on a fresh checkout, where `data/` is made
 * only by the broker's first start. A failure is left to the write, whose message names the file
 * and, for a path outside the shipped permissions, the fix (mkdir is refused there even for a
 * directory that exists).
 */
async function makeParent(file: string): Promise<void> {
  await Deno.mkdir(dirname(file), { recursive: true, mode: 0o700 }).catch(() => {});
}

/** Writes via a temporary file and rename so that readers never see a half-written file. */
async function writeAtomically(file: string, lines: string[]): Promise<void> {
  const suffix = crypto.getRandomValues(new Uint32Array(1))[0].toString(16);
  const temp = `${file}.tmp-${suffix}`;
  const text = lines.length === 0 ? "" : lines.join("\n") + "\n";
  try {
    const handle = await Deno.open(temp, { write: true, createNew: true, mode: 0o600 });
    try {
      const bytes = new TextEncoder().encode(text);
      let offset = 0;
      while (offset < bytes.length) offset += await handle.write(bytes.subarray(offset));
      // The mode given to open is reduced by the umask; make sure it is exactly 0600.
      await Deno.chmod(temp, 0o600);
      await handle.sync();
    } finally {
      handle.close();
    }
    await Deno.rename(temp, file);
  } catch (error) {
    await Deno.remove(temp).catch(() => {});
    throw new PasswdCommandError(
      `cannot write ${file}: ${permissionProblem(error) ?? (error as Error).message}`,
    );
  }
}

async function readPasswordFromStdin(
  prompt: string,
  stderr: (text: string) => void,
): Promise<string> {
  if (!Deno.stdin.isTerminal()) {
    const line = await readStdinLine();
    if (line === undefined) throw new PasswdCommandError("no password on stdin");
    return line;
  }
  const first = await readHidden(prompt, stderr);
  const second = await readHidden("Reenter password: ", stderr);
  if (first !== second) throw new PasswdCommandError("passwords do not match");
  return first;
}

/** Reads up to the first newline; undefined at immediate end of input. */
async function readStdinLine(): Promise<string | undefined> {
  const chunks: Uint8Array[] = [];
  let total = 0;
  const buffer = new Uint8Array(4096);
  for (;;) {
    const n = await Deno.stdin.read(buffer);
    if (n === null) {
      if (total === 0) return undefined;
      break;
    }
    const chunk = buffer.slice(0, n);
    const newline = chunk.indexOf(0x0a);
    chunks.push(newline >= 0 ? chunk.subarray(0, newline) : chunk);
    total += n;
    if (newline >= 0) break;
    if (total > MAX_PASSWORD_BYTES + 2) break;
  }
  const line = decode(concat(chunks));
  return line.endsWith("\r") ? line.slice(0, -1) : line;
}

/** Reads one line from the terminal with echo off. */
async function readHidden(prompt: string, stderr: (text: string) => void): Promise<string> {
  const bytes: number[] = [];
  const buffer = new Uint8Array(64);
  // Echo goes off before the prompt appears, so fast typing (or type-ahead) is never shown.
  Deno.stdin.setRaw(true);
  stderr(prompt);
  try {
    for (;;) {
      const n = await Deno.stdin.read(buffer);
      if (n === null) break;
      for (const byte of buffer.subarray(0, n)) {
        if (byte === 0x0d || byte === 0x0a) return decode(bytes);
        // Raw mode turns off signals, so Ctrl-C and Ctrl-D arrive as bytes.
        if (byte === 0x03 || byte === 0x04) throw new PasswdCommandError("aborted");
        if (byte === 0x7f || byte === 0x08) {
          dropLastCharacter(bytes);
        } else {
          bytes.push(byte);
        }
        if (bytes.length > MAX_PASSWORD_BYTES) {
          throw new PasswdCommandError(`password must be at most ${MAX_PASSWORD_BYTES} bytes`);
        }
      }
    }
    return decode(bytes);
  } finally {
    Deno.stdin.setRaw(false);
    stderr("\n");
  }
}

/** Backspace removes a whole UTF-8 sequence, not just its last byte. */
function dropLastCharacter(bytes: number[]): void {
  for (;;) {
    const byte = bytes.pop();
    // Stop after removing a byte that is not a continuation byte (10xxxxxx).
    if (byte === undefined || (byte & 0xc0) !== 0x80) return;
  }
}

function decode(bytes: Uint8Array | number[]): string {
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(new Uint8Array(bytes));
  } catch {
    throw new PasswdCommandError("password is not valid UTF-8");
  }
}

function concat(chunks: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(chunks.reduce((sum, chunk) => sum + chunk.length, 0));
  let offset = 0;
  for (const chunk of chunks) {
    out.set(chunk, offset);
    offset += chunk.length;
  }
  return out;
}

function writeTo(stream: { writeSync(bytes: Uint8Array): number }): (text: string) => void {
  const encoder = new TextEncoder();
  return (text) => {
    const bytes = encoder.encode(text);
    let offset = 0;
    while (offset < bytes.length) offset += stream.writeSync(bytes.subarray(offset));
  };
}
