/**
 * The security files a configuration points at, checked as `serve` would load them: the broker
 * certificate set (see cert_check.ts), the password file and the ACL file. `check-config` reports
 * these problems before a deploy instead of at the first start or the first handshake.
 */
import { anyListenerTls, type Config, mayGenerateDevCerts } from "../config/mod.ts";
import { Acl } from "./acl.ts";
import { checkCertFiles, formatCertProblem } from "./cert_check.ts";
import { PasswordFile } from "./passwords.ts";

/** One line per problem, each naming the config key; empty when everything would load. */
export async function checkSecurityFiles(config: Config): Promise<string[]> {
  const problems: string[] = [];
  if (anyListenerTls(config) && !(await devCertsWouldBeGenerated(config))) {
    for (const p of await checkCertFiles(config.tls)) problems.push(formatCertProblem(p));
  }
  const a = config.auth;
  if (a.password_file !== "") {
    try {
      await PasswordFile.load(a.password_file);
    } catch (e) {
      problems.push(`auth.password_file: ${message(e)}`);
    }
  }
  if (a.acl_file !== "") {
    try {
      await Acl.load(a.acl_file);
    } catch (e) {
      problems.push(`auth.acl_file: ${message(e)}`);
    }
  }
  return problems;
}

/** `serve` generates development certificates when all three default paths are missing. */
async function devCertsWouldBeGenerated(config: Config): Promise<boolean> {
  if (!mayGenerateDevCerts(config)) return false;
  const t = config.tls;
  for (const path of [t.certfile, t.keyfile, t.cafile]) {
    try {
      await Deno.stat(path);
      return false;
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) return false;
    }
  }
  return true;
}

function message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
