/**
 * mcloudtt command line: `serve` (default), `certs`, `passwd`, `check-config`, `bq-adapter`.
 */
import { getLogger } from "@logtape/logtape";
import { Broker, BrokerStopped } from "./src/broker.ts";
import { RedisUnavailable } from "./src/cluster/errors.ts";
import { type Config, exitOnConfigError, loadConfig } from "./src/config/mod.ts";
import { formatEffective } from "./src/config/effective.ts";
import { brokerTarget } from "./src/ops/broker_target.ts";
import { devCertCommands, ensureCertificates } from "./src/ops/dev_certs.ts";
import { exitOnUncaughtErrors } from "./src/ops/fatal.ts";
import { setupLogging } from "./src/ops/log.ts";
import { Operations } from "./src/ops/operations.ts";
import { permissionProblem } from "./src/ops/permissions.ts";
import denoJson from "./deno.json" with { type: "json" };

const VERSION = denoJson.version;
const log = getLogger(["mcloudtt", "main"]);

const HELP = `mcloudtt ${VERSION} - a cloud-native MQTT 5 / 3.1.1 broker

Usage:
  mcloudtt [serve] [options]       start the broker (default)
  mcloudtt check-config [options]  validate the configuration, print it with the source of
                                   every value, and exit
  mcloudtt certs [...]             generate a CA, broker and client certificates (certs --help)
  mcloudtt passwd [...]            manage a password file (passwd --help)
  mcloudtt bq-adapter [options]    write a broker's messages to BigQuery ([adapter], [bigquery])

Options:
  --config PATH              config file (default: ./config.toml if present; env MCLOUDTT_CONFIG)
  --<section>.<key> VALUE    override one config key, e.g. --ports.tcp 1884 --general.secure false
  -h, --help                 show this help
  -V, --version              show the version

Every key can also be set with MCLOUDTT_<SECTION>_<KEY>, e.g. MCLOUDTT_LIMITS_MAX_PACKET_SIZE=2048.
See config.toml for every key and its default.`;

/** Prints a plain line in text format, a log record in JSON format (so every line parses). */
function notice(config: Config, text: string): void {
  if (config.general.log_format === "json") log.info(text);
  else console.error(text);
}

async function serve(config: Config): Promise<number> {
  await setupLogging({
    level: config.general.log_level,
    format: config.general.log_format,
    levels: config.general.log_levels,
    rate: config.general.log_rate,
    valueMax: config.general.log_value_max,
  });
  let generated = false;
  try {
    generated = await ensureCertificates(config);
  } catch (e) {
    const problem = permissionProblem(e);
    if (problem === null) exitOnConfigError(e);
    console.error(`mcloudtt: cannot generate development certificates: ${problem}`);
    return 2;
  }
  const broker = await Broker.create(config);
  const ops = new Operations(brokerTarget(broker), { config, version: VERSION });
  // SIGHUP is taken from the start: the broker announces its listeners before start() returns,
  // and a SIGHUP's default action would end the process. One that comes while starting reloads
  // once the broker is up.
  let started = false;
  let reloadWhenStarted = false;
  Deno.addSignalListener("SIGHUP", () => {
    if (started) broker.reload();
    else reloadWhenStarted = true;
  });
  // SIGTERM and SIGINT too: without a listener their default action ended the process at once
  // while it started, with its listeners already up (clients got a reset, not DISCONNECT 0x8B,
  // and the exit status was 143). One that comes while starting stops the broker once it is up;
  // a second one ends the process now.
  let stopWhenStarted: [string, boolean] | null = null;
  let onStopSignal = (signal: string, drain: boolean) => {
    if (stopWhenStarted !== null) {
      log.info("{signal} received again while starting: exiting now", { signal });
      Deno.exit(1);
    }
    // Nothing to drain yet: a start waiting for Redis (redis.start_timeout_ms) ends now.
    if (broker.abortStart()) {
      log.info("{signal} received while waiting for Redis: not starting", { signal });
      return;
    }
    log.info("{signal} received while starting: stopping once started", { signal });
    stopWhenStarted = [signal, drain];
  };
  // SIGTERM is how orchestrators stop a pod: drain. Ctrl-C at a terminal stops at once.
  Deno.addSignalListener("SIGTERM", () => onStopSignal("SIGTERM", true));
  Deno.addSignalListener("SIGINT", () => onStopSignal("SIGINT", false));
  try {
    // The HTTP endpoint first: /healthz answers and /readyz says why while the start waits.
    await ops.startEndpoint();
    await broker.start();
    await ops.start();
  } catch (e) {
    if (e instanceof BrokerStopped) {
      await ops.stop();
      return 0;
    }
    // Unreadable certificates, password file or ACL, or a port in use: the operator must fix it.
    const reason = permissionProblem(e) ?? (e instanceof Error ? e.message : String(e));
    log.error("cannot start: {reason}", { reason });
    await ops.stop();
    await broker.stop();
    // Redis not answering is no mistake in the configuration: an orchestrator may try again.
    return e instanceof RedisUnavailable ? 1 : 2;
  }
  if (generated) {
    const tls = broker.addresses.find((a) => a.kind === "tls");
    notice(config, "mcloudtt: generated development certificates in certs/ (CA, broker, client).");
    if (tls) {
      notice(config, "Try it from another terminal:");
      for (const line of devCertCommands(tls.port)) notice(config, `  ${line}`);
    }
  }
  started = true;
  if (reloadWhenStarted) await broker.reload();
  exitOnUncaughtErrors();
  let stopping = false;
  const stop = async (signal: string, drain: boolean) => {
    if (stopping) {
      // A second signal while draining (Ctrl-C after SIGTERM, or SIGTERM again) means now: it
      // used to be ignored, so the operator waited out the whole drain_delay.
      log.info("{signal} received while draining: stopping now", { signal });
      ops.endDrain();
      return;
    }
    stopping = true;
    log.info("{signal} received, shutting down", { signal });
    // Readiness goes first, so load balancers stop sending clients before they are disconnected.
    if (drain) await ops.drain();
    await broker.stop();
    await ops.stop();
    Deno.exit(0);
  };
  onStopSignal = stop;
  if (stopWhenStarted !== null) stop(...(stopWhenStarted as [string, boolean]));
  return await new Promise<number>(() => {});
}

/** `-h`/`--help` or `-V`/`--version` anywhere before a bare `--`, whatever else is on the line. */
function infoFlag(args: readonly string[]): "help" | "version" | null {
  for (const arg of args) {
    if (arg === "--") break;
    if (arg === "-h" || arg === "--help") return "help";
    if (arg === "-V" || arg === "--version") return "version";
  }
  return null;
}

/** Runs `certs` or `passwd`; a refused permission becomes one line naming it and the fix. */
async function subcommand(name: string, run: () => Promise<number>): Promise<number> {
  try {
    return await run();
  } catch (e) {
    const problem = permissionProblem(e);
    if (problem === null) throw e;
    console.error(`mcloudtt ${name}: ${problem}`);
    return 1;
  }
}

async function main(args: string[]): Promise<number> {
  const command = args[0] && !args[0].startsWith("-") ? args[0] : "serve";
  const rest = command === args[0] ? args.slice(1) : args;
  if (command === "certs") {
    const { runCertsCommand } = await import("./src/cli/certs.ts");
    return await subcommand("certs", () => runCertsCommand(rest));
  }
  if (command === "passwd") {
    const { runPasswdCommand } = await import("./src/cli/passwd.ts");
    return await subcommand("passwd", () => runPasswdCommand(rest));
  }
  if (command !== "serve" && command !== "check-config" && command !== "bq-adapter") {
    console.error(`mcloudtt: unknown command "${command}"; see mcloudtt --help`);
    return 2;
  }
  // Help and version must work even when the configuration does not.
  const info = infoFlag(rest);
  if (info === "help") {
    console.log(HELP);
    return 0;
  }
  if (info === "version") {
    console.log(`mcloudtt ${VERSION}`);
    return 0;
  }
  let loaded;
  try {
    loaded = loadConfig({ args: rest });
  } catch (e) {
    exitOnConfigError(e);
  }
  for (const arg of loaded.rest) {
    console.error(`mcloudtt: unknown argument "${arg}"; see mcloudtt --help`);
    return 2;
  }
  if (command === "check-config") {
    const { checkSecurityFiles } = await import("./src/auth/check.ts");
    const problems = await checkSecurityFiles(loaded.config);
    for (const problem of problems) console.error(`config error: ${problem}`);
    if (problems.length > 0) return 2;
    console.log(
      `# configuration OK (${loaded.file ?? "no file: defaults, environment and flags"})\n` +
        `# every key with its effective value and where it came from; secrets masked\n\n` +
        formatEffective(loaded.config, loaded.sources),
    );
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
