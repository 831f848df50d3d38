/**
 * The broker as a real process (main.ts), driven by the real mosquitto_pub and
 * mosquitto_sub: QoS 0/1/2 across MQTT 5 and 3.1.1 in every combination,
 * retained messages, and a clean shutdown on SIGTERM.
 */
import { freePort } from "../helpers/ports.ts";
import assert from "node:assert/strict";
import { delay, RawClient } from "../helpers/broker.ts";
import {
  mosquittoPub,
  mosquittoSub,
  parseSubOutput,
  type Running,
  skipWithout,
  spawn,
} from "../helpers/mosquitto.ts";

const root = new URL("../../", import.meta.url).pathname;
const ignore = skipWithout("mosquitto_pub", "mosquitto_sub");

interface BrokerProcess extends AsyncDisposable {
  port: number;
  proc: Running;
}

/** Starts `deno run main.ts` on a free port and waits until the port accepts connections. */
async function startBrokerProcess(): Promise<BrokerProcess> {
  const port = freePort();
  // A clean environment, so MCLOUDTT_* variables of the host cannot change the config.
  const env: Record<string, string> = { NO_COLOR: "1" };
  for (const name of ["PATH", "HOME", "DENO_DIR", "XDG_CACHE_HOME"]) {
    const value = Deno.env.get(name);
    if (value !== undefined) env[name] = value;
  }
  const proc = spawn(Deno.execPath(), [
    "run",
    "-A",
    "--config",
    `${root}deno.json`,
    `${root}main.ts`,
    "--general.secure=false",
    "--general.websocket=false",
    `--ports.tcp=${port}`,
    "--general.bind=127.0.0.1",
    // In memory: the test must not leave a data directory behind.
    "--storage.enabled=false",
    // The HTTP endpoint on a free port: parallel tests must not fight over 8888.
    "--http.port=0",
  ], { cwd: new URL(".", import.meta.url).pathname, env, clearEnv: true, timeoutMs: 60_000 });
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (proc.exited) {
      const r = await proc.done;
      throw new Error(`broker exited early (${r.code}): ${r.stderr}${r.stdout}`);
    }
    try {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      conn.close();
      break;
    } catch {
      if (Date.now() > deadline) {
        await proc[Symbol.asyncDispose]();
        throw new Error("broker did not start listening within 20 s");
      }
      await delay(50);
    }
  }
  return {
    port,
    proc,
    [Symbol.asyncDispose]: () => proc[Symbol.asyncDispose](),
  };
}

/**
 * Waits until `sub` is subscribed to `probeTopic` (which it filters out of its
 * output with -T): QoS 1 probes are answered 0x10 "No matching subscribers"
 * until the subscription exists.
 */
async function waitSubscribed(port: number, sub: Running, probeTopic: string): Promise<void> {
  await using probe = await RawClient.connect(port);
  await probe.handshake(`probe-${crypto.randomUUID().slice(0, 8)}`);
  const deadline = Date.now() + 10_000;
  for (let messageId = 1;; messageId++) {
    await probe.sendPacket({ cmd: "publish", topic: probeTopic, payload: "", qos: 1, messageId });
    const ack = await probe.expect("puback");
    if ((ack.reasonCode ?? 0) === 0) return;
    if (sub.exited) {
      const r = await sub.done;
      throw new Error(`mosquitto_sub exited (${r.code}) before subscribing: ${r.stderr}`);
    }
    if (Date.now() > deadline) throw new Error("mosquitto_sub did not subscribe within 10 s");
    await delay(50);
  }
}

function hostArgs(port: number, version: "5" | "311"): string[] {
  return ["-h", "127.0.0.1", "-p", String(port), "-V", version];
}

Deno.test({
  name: "mosquitto_sub receives what mosquitto_pub sends at QoS 0, 1 and 2, MQTT 5 and 3.1.1 mixed",
  ignore,
  async fn(t) {
    await using b = await startBrokerProcess();
    const versions = ["5", "311"] as const;
    for (const subV of versions) {
      for (const pubV of versions) {
        await t.step(`mosquitto_sub -V ${subV} <- mosquitto_pub -V ${pubV}`, async () => {
          const prefix = `e2e/${subV}-${pubV}`;
          await using sub = mosquittoSub([
            ...hostArgs(b.port, subV),
            "-q",
            "2",
            "-t",
            `${prefix}/#`,
            "-T",
            `${prefix}/probe`,
            "-C",
            "3",
            "-W",
            "10",
          ]);
          await waitSubscribed(b.port, sub, `${prefix}/probe`);
          for (const qos of [0, 1, 2]) {
            const r = await mosquittoPub([
              ...hostArgs(b.port, pubV),
              "-q",
              String(qos),
              "-t",
              `${prefix}/q${qos}`,
              "-m",
              `hello at qos ${qos}`,
            ]);
            assert.equal(r.code, 0, `mosquitto_pub failed: ${r.stderr}`);
          }
          const out = await sub.done;
          assert.equal(out.code, 0, `mosquitto_sub did not get 3 messages: ${out.stderr}`);
          const got = parseSubOutput(out.stdout).sort((a, b) => a.topic.localeCompare(b.topic));
          assert.deepEqual(
            got.map((m) => [m.topic, m.qos, m.retain, m.payload]),
            [0, 1, 2].map((q) => [`${prefix}/q${q}`, q, false, `hello at qos ${q}`]),
          );
        });
      }
    }
  },
});

Deno.test({
  name: "a message published with mosquitto_pub -r is retained for later subscribers until cleared",
  ignore,
  async fn() {
    await using b = await startBrokerProcess();
    const pub = async (version: "5" | "311", ...args: string[]) => {
      const r = await mosquittoPub([...hostArgs(b.port, version), ...args]);
      assert.equal(r.code, 0, `mosquitto_pub failed: ${r.stderr}`);
    };
    await pub("5", "-r", "-q", "1", "-t", "ret/a", "-m", "kept by v5");
    await pub("311", "-r", "-q", "2", "-t", "ret/b", "-m", "kept by 3.1.1");

    for (const version of ["5", "311"] as const) {
      await using sub = mosquittoSub([
        ...hostArgs(b.port, version),
        "-q",
        "2",
        "-t",
        "ret/#",
        "-C",
        "2",
        "-W",
        "10",
      ]);
      const out = await sub.done;
      assert.equal(out.code, 0, `mosquitto_sub -V ${version}: ${out.stderr}`);
      const got = parseSubOutput(out.stdout).sort((x, y) => x.topic.localeCompare(y.topic));
      // [MQTT-3.3.1-9] retained messages go to a new subscription with the RETAIN flag set.
      assert.deepEqual(got.map((m) => [m.topic, m.qos, m.retain, m.payload]), [
        ["ret/a", 1, true, "kept by v5"],
        ["ret/b", 2, true, "kept by 3.1.1"],
      ]);
    }

    // An empty retained message clears the topic [MQTT-3.3.1-6], so a new subscriber gets only ret/b.
    await pub("5", "-r", "-q", "1", "-t", "ret/a", "-n");
    await using sub = mosquittoSub([
      ...hostArgs(b.port, "311"),
      "-t",
      "ret/#",
      "-C",
      "1",
      "-W",
      "10",
    ]);
    const out = await sub.done;
    assert.equal(out.code, 0, out.stderr);
    assert.deepEqual(parseSubOutput(out.stdout).map((m) => m.topic), ["ret/b"]);
  },
});

Deno.test({
  // Needs no mosquitto binary, so it always runs.
  name: "SIGTERM: v5 clients get DISCONNECT 0x8B, then the broker exits with code 0",
  async fn() {
    await using b = await startBrokerProcess();
    await using v5 = await RawClient.connect(b.port, 5);
    await v5.handshake("term-v5");
    await using v311 = await RawClient.connect(b.port, 4);
    await v311.handshake("term-311", 4);

    b.proc.kill("SIGTERM");
    const d = await v5.expect("disconnect", 10_000);
    assert.equal(d.reasonCode, 0x8b, "DISCONNECT should carry Server shutting down (0x8B)");
    await v5.expectClosed(10_000);
    // 3.1.1 has no server DISCONNECT: the connection is just closed.
    assert.equal(await v311.next(10_000), null);
    const r = await b.proc.done;
    assert.equal(r.signal, null, "the broker was killed instead of exiting");
    assert.equal(r.code, 0, `exit code ${r.code}: ${r.stderr}`);
  },
});
