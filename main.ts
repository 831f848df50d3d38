/**
 * mcloudtt command line: `serve` (default), `certs`, `passwd`, `check-config`, `bq-adapter`.
 */
import { Broker } from "./src/broker.ts";
import { type Config, exitOnConfigError, loadConfig } from "./src/config/mod.ts";
import { devCertCommands, ensureCertificates } from "./src/ops/dev_certs.ts";
import { setupLogging } from "./src/ops/log.ts";
import denoJson from "./deno.json" with { type: "json" };

const VERSION = denoJson.version;

const HELP = `mcloudtt ${VERSION} - a cloud-native MQTT 5 / 3.1.1 broker

Usage:
  mcloudtt [serve] [options]       start the broker (default)
  mcloudtt check-config [options]  validate the configuration and exit
  mcloudtt certs [...]             generate a CA, broker and client certificates (certs --help)
  mcloudtt passwd [...]            manage a password file (passwd --help)
  mcloudtt bq-adapter [options]    write a broker's messages to BigQuery ([adapter], [bigquery])

Options:
  --config PATH              config file (default: ./config.toml if present; env MCLOUDTT_CONFIG)
  --<section>.<key> VALUE    override one config key, e.g. --ports.tcp 1884 --general.secure false
  -h, --help                 show this help
  -V, --version              show the version

Every key can also be set with MCLOUDTT_<SECTION>_<KEY>, e.g. MCLOUDTT_LIMITS_MAX_PACKET_SIZE=65536.
See config.toml for every key and its default.`;

async function serve(config: Config): Promise<number> {
  await setupLogging(config.general.log_level);
  let generated = false;
  try {
    generated = await ensureCertificates(config);
  } catch (e) {
    exitOnConfigError(e);
  }
  const broker = new Broker(config);
  try {
    await broker.start();
  } catch (e) {
    // Unreadable certificates, password file or ACL, or a port in use: the operator must fix it.
    console.error(`mcloudtt: cannot start: ${e instanceof Error ? e.message : e}`);
    return 2;
  }
  if (generated) {
    const tcp = broker.addresses.find((a) => a.kind === "tls");
    console.error(
      "mcloudtt: generated development certificates in certs/ (CA, broker, client).\n" +
        (tcp
          ? "Try it from another terminal:\n  " + devCertCommands(tcp.port).join("\n  ") + "\n"
          : ""),
    );
  }
  Deno.addSignalListener("SIGHUP", () => broker.reload());
  // Last line of defence: a bug in one connection's callback must not end every session.
  globalThis.addEventListener("error", (e) => {
    e.preventDefault();
    console.error("mcloudtt: uncaught error (broker keeps running):", e.error);
  });
  globalThis.addEventListener("unhandledrejection", (e) => {
    e.preventDefault();
    console.error("mcloudtt: unhandled rejection (broker keeps running):", e.reason);
  });
  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    console.error(`mcloudtt: ${signal} received, shutting down`);
    await broker.stop();
    Deno.exit(0);
  };
  Deno.addSignalListener("SIGINT", () => stop("SIGINT"));
  Deno.addSignalListener("SIGTERM", () => stop("SIGTERM"));
  return await new Promise<number>(() => {});
}

async function main(args: string[]): Promise<number> {
  const command = args[0] && !args[0].startsWith("-") ? args[0] : "serve";
  const rest = command === args[0] ? args.slice(1) : args;
  if (command === "certs") {
    const { runCertsCommand } = await import("./src/cli/certs.ts");
    return await runCertsCommand(rest);
  }
  if (command === "passwd") {
    const { runPasswdCommand } = await import("./src/cli/passwd.ts");
    return await runPasswdCommand(rest);
  }
  if (command !== "serve" && command !== "check-config" && command !== "bq-adapter") {
    console.error(`mcloudtt: unknown command "${command}"; see mcloudtt --help`);
    return 2;
  }
  let loaded;
  try {
    loaded = loadConfig({ args: rest });
  } catch (e) {
    exitOnConfigError(e);
  }
  for (const arg of loaded.rest) {
    if (arg === "-h" || arg === "--help") {
      console.log(HELP);
      return 0;
    }
    if (arg === "-V" || arg === "--version") {
      console.log(`mcloudtt ${VERSION}`);
      return 0;
    }
    console.error(`mcloudtt: unknown argument "${arg}"; see mcloudtt --help`);
    return 2;
  }
  if (command === "check-config") {
    const { checkSecurityFiles } = await import("./src/auth/check.ts");
    const problems = await checkSecurityFiles(loaded.config);
    for (const problem of problems) console.error(`config error: ${problem}`);
    if (problems.length > 0) return 2;
    console.log(`configuration OK${loaded.file ? ` (${loaded.file})` : " (defaults)"}`);
    return 0;
  }
  if (command === "bq-adapter") {
    const { runBqAdapter } = await import("./src/cli/bq_adapter.ts");
    return await runBqAdapter(loaded.config);
  }
  return await serve(loaded.config);
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
