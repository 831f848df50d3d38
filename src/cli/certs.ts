/**
 * `mcloudtt certs`: writes the development/operator PKI (see certs/README.md).
 *
 * ```
 * certs [--dir DIR] [--name HOST]... [--client NAME]... [--days N] [--force]
 * certs client NAME [--dir DIR] [--san NAME]... [--days N] [--force]
 * ```
 */
import { CertsError, generateCertificates, issueClientCertificate } from "../auth/certs.ts";

/** Where the command writes its messages; defaults use the console. */
export interface CertsIo {
  stdout?: (text: string) => void;
  stderr?: (text: string) => void;
}

/** Raised for a command line that cannot be understood; ends the command with exit code 2. */
export class CertsUsageError extends Error {
  override name = "CertsUsageError";
}

const USAGE = `usage:
  mcloudtt certs [--dir DIR] [--name HOST]... [--client NAME]... [--days N] [--force]
      create the CA (or reuse DIR/ca.crt + DIR/ca.key), the broker and client certificates
  mcloudtt certs client NAME [--dir DIR] [--san NAME]... [--days N] [--force]
      issue DIR/client/NAME.crt from the existing CA
DIR defaults to "certs".`;

/** Run `mcloudtt certs`; `args` are the words after `certs`. Returns the exit code. */
export async function runCertsCommand(args: readonly string[], io: CertsIo = {}): Promise<number> {
  const stdout = io.stdout ?? console.log;
  const stderr = io.stderr ?? console.error;
  try {
    const parsed = parseCertsArgs(args);
    if (parsed.mode === "help") {
      stdout(USAGE);
      return 0;
    }
    if (parsed.mode === "client") {
      const files = await issueClientCertificate({
        dir: parsed.dir,
        name: parsed.clientName,
        san: parsed.sans,
        days: parsed.days,
        overwrite: parsed.force,
      });
      stdout(`wrote ${files.cert}`);
      stdout(`wrote ${files.key}`);
      return 0;
    }
    const result = await generateCertificates({
      dir: parsed.dir,
      brokerNames: parsed.names,
      clients: parsed.clients.length > 0 ? parsed.clients : undefined,
      days: parsed.days,
      overwrite: parsed.force,
    });
    if (result.ca.reused) stdout(`reused CA ${result.ca.cert}`);
    for (const path of result.written) stdout(`wrote ${path}`);
    return 0;
  } catch (error) {
    if (error instanceof CertsUsageError) {
      stderr(`mcloudtt certs: ${error.message}\n${USAGE}`);
      return 2;
    }
    if (error instanceof CertsError) {
      stderr(`mcloudtt certs: ${error.message}`);
      return 1;
    }
    throw error;
  }
}

interface CertsArgs {
  mode: "all" | "client";
  dir: string;
  names: string[];
  clients: string[];
  sans: string[];
  days?: number;
  force: boolean;
  clientName: string;
}

function parseCertsArgs(args: readonly string[]): CertsArgs | { mode: "help" } {
  const rest = [...args];
  const mode = rest[0] === "client" ? "client" : "all";
  if (mode === "client") rest.shift();
  const parsed: CertsArgs = {
    mode,
    dir: "certs",
    names: [],
    clients: [],
    sans: [],
    force: false,
    clientName: "",
  };
  const positional: string[] = [];
  while (rest.length > 0) {
    const word = rest.shift()!;
    if (word === "-h" || word === "--help") return { mode: "help" };
    if (!word.startsWith("--")) {
      positional.push(word);
      continue;
    }
    const eq = word.indexOf("=");
    const flag = eq === -1 ? word : word.slice(0, eq);
    if (flag === "--force") {
      parsed.force = true;
      continue;
    }
    const value = eq === -1 ? rest.shift() : word.slice(eq + 1);
    if (value === undefined || value === "") throw new CertsUsageError(`${flag} needs a value`);
    if (flag === "--dir") parsed.dir = value;
    else if (flag === "--days") parsed.days = parseDays(value);
    else if (flag === "--name" && mode === "all") parsed.names.push(value);
    else if (flag === "--client" && mode === "all") parsed.clients.push(value);
    else if (flag === "--san" && mode === "client") parsed.sans.push(value);
    else throw new CertsUsageError(`unknown option ${flag}`);
  }
  if (mode === "client") {
    if (positional.length !== 1) throw new CertsUsageError("'certs client' needs exactly one NAME");
    parsed.clientName = positional[0];
  } else if (positional.length > 0) {
    throw new CertsUsageError(`unexpected argument ${positional[0]}`);
  }
  return parsed;
}

function parseDays(text: string): number {
  const days = Number(text);
  if (!Number.isInteger(days) || days < 1) {
    throw new CertsUsageError("--days must be a positive integer");
  }
  return days;
}
