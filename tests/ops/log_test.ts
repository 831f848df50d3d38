/**
 * Logs as an operator reads them: every line on stderr, JSON lines that parse one by one and
 * carry the connect/disconnect fields, UTC ISO-8601 timestamps, per-module levels, and never a
 * password or a payload.
 */
import assert from "node:assert/strict";
import { hashPassword } from "../../src/auth/passwords.ts";
import { connectClient, endClient, freePort, RawClient } from "../helpers/broker.ts";
import { copyProject, type MainProcess, startMain } from "../helpers/main_process.ts";

const ISO_UTC = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;

async function withBroker(
  /** Flags, or what makes them from the broker's directory (where it may read files). */
  flags: string[] | ((dir: string) => Promise<string[]>),
  fn: (broker: MainProcess, port: number) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "mcloudtt-log-" });
  try {
    await copyProject(dir);
    const args = typeof flags === "function" ? await flags(dir) : flags;
    const port = freePort();
    await using broker = startMain(dir, [
      "--general.secure=false",
      "--general.websocket=false",
      "--general.bind=127.0.0.1",
      `--ports.tcp=${port}`,
      ...args,
    ]);
    // Printed (at warning level) once the listeners are up, since secure = false.
    await broker.waitFor(/SECURITY WARNING/);
    await fn(broker, port);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

type Line = Record<string, unknown>;

function jsonLines(text: string): Line[] {
  return text.split("\n").filter((l) => l !== "").map((l, i) => {
    try {
      return JSON.parse(l) as Line;
    } catch {
      throw new Error(`stderr line ${i + 1} is not JSON: ${l}`);
    }
  });
}

Deno.test("JSON logs: one object per stderr line with the connect and disconnect fields", async () => {
  await withBroker(["--general.log_format=json"], async (broker, port) => {
    const polite = await connectClient(port, {
      clientId: "log-polite",
      username: "logger",
      password: "s3cret-pw",
      keepalive: 30,
    });
    await polite.publishAsync("log/topic", "secret-payload", { qos: 1 });
    await endClient(polite);
    await broker.waitFor(/"client_id":"log-polite","username":"logger".*"reason_code":"0x00"/);

    const lost = await connectClient(port, {
      clientId: "log-lost",
      protocolVersion: 4,
      clean: true,
      will: { topic: "log/will", payload: "gone", qos: 0, retain: false },
    });
    lost.stream.destroy();
    await broker.waitFor(/"client_id":"log-lost".*"reason_code":"connection_lost"/);
    await endClient(lost, true);

    const staying = await connectClient(port, { clientId: "log-staying" });
    const status = await broker.stop();
    assert.equal(status.code, 0);
    await endClient(staying, true);

    assert.equal(broker.output(), broker.stderr(), "something was written to stdout");
    const lines = jsonLines(broker.stderr());
    for (const l of lines) {
      assert.match(String(l.time), ISO_UTC);
      assert.ok(["debug", "info", "warning", "error", "fatal"].includes(String(l.level)));
      assert.equal(typeof l.module, "string");
      assert.equal(typeof l.message, "string");
    }
    const connected = lines.find((l) => l.client_id === "log-polite" && "session_present" in l);
    assert.ok(connected, "no connect line for log-polite");
    assert.equal(connected.level, "info");
    assert.equal(connected.module, "connection");
    assert.equal(connected.username, "logger");
    assert.match(String(connected.remote_address), /^127\.0\.0\.1:\d+$/);
    assert.equal(connected.listener, "tcp");
    assert.equal(connected.protocol_version, "5");
    assert.equal(connected.keep_alive, 30);
    assert.equal(connected.clean_start, true);
    assert.equal(connected.session_present, false);

    const gone = (id: string) => lines.find((l) => l.client_id === id && "closed_by" in l);
    const polite1 = gone("log-polite")!;
    assert.equal(polite1.reason_code, "0x00");
    assert.equal(polite1.closed_by, "client");
    assert.equal(typeof polite1.duration_s, "number");
    assert.equal(polite1.will, "none");
    const lost1 = gone("log-lost")!;
    assert.equal(lost1.reason_code, "connection_lost");
    assert.equal(lost1.closed_by, "network");
    assert.equal(lost1.will, "sent");
    const v311 = lines.find((l) => l.client_id === "log-lost" && "session_present" in l)!;
    assert.equal(v311.protocol_version, "3.1.1");
    const staying1 = gone("log-staying")!;
    assert.equal(staying1.reason_code, "0x8B");
    assert.equal(staying1.closed_by, "server");

    assert.doesNotMatch(broker.stderr(), /s3cret-pw/);
    assert.doesNotMatch(broker.stderr(), /secret-payload/);
  });
});

Deno.test("text logs: per-module levels, UTC timestamps with date, reason codes as 0x8E", async () => {
  await withBroker(
    ["--general.log_level=warning", "--general.log_levels=connection=info"],
    async (broker, port) => {
      const c = await connectClient(port, { clientId: "text-client" });
      await broker.waitFor(/client text-client connected/);
      c.stream.destroy();
      await broker.waitFor(/client text-client disconnected/);
      await endClient(c, true);
      await broker.stop();
      const text = broker.stderr();
      const line = text.split("\n").find((l) => l.includes("client text-client connected"))!;
      assert.match(
        line,
        /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO {2}connection: client text-client connected from 127\.0\.0\.1:\d+ over tcp: MQTT 5, user -, keep alive \d+ s, clean start true, session present false$/,
      );
      assert.match(text, /disconnected: reason connection_lost, closed by network after [\d.]+ s/);
      // The broker module stays at warning: its info line "listening ..." is not shown.
      assert.doesNotMatch(text, /listening for MQTT/);
      // The security warning (warning level) is.
      assert.match(text, /WARN {2}broker: SECURITY WARNING/);
    },
  );
});

Deno.test('a protocol error is logged with the reason code as 0x82, not 0x"82"', async () => {
  await withBroker([], async (broker, port) => {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    // CONNECT (MQTT 5, clean start) then a second CONNECT: a protocol error.
    const connect = [0x10, 13, 0, 4, 77, 81, 84, 84, 5, 2, 0, 30, 0, 0, 1, 0x61];
    connect[1] = connect.length - 2;
    await conn.write(new Uint8Array([...connect, ...connect]));
    await broker.waitFor(/closing a .*\(0x82\)/);
    conn.close();
    assert.doesNotMatch(broker.stderr(), /0x"/);
  });
});

Deno.test("a client id with line breaks and terminal escapes cannot forge a text log line; JSON keeps it intact", async () => {
  const forged =
    "x\n2026-11-30T00:00:00.000Z INFO  connection: client admin connected\x1b[2K\u2028";
  for (const format of ["text", "json"]) {
    await withBroker([`--general.log_format=${format}`], async (broker, port) => {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      const id = new TextEncoder().encode(forged);
      // MQTT 5 CONNECT with that client id and an Authentication Method: refused (0x8C), logged.
      const body = [
        0,
        4,
        77,
        81,
        84,
        84,
        5,
        2,
        0,
        30,
        4,
        0x15,
        0,
        1,
        0x58,
        id.length >> 8,
        id.length & 0xff,
      ];
      await conn.write(new Uint8Array([0x10, body.length + id.length, ...body, ...id]));
      await broker.waitFor(format === "json" ? /"client_id"/ : /closing|refused/);
      conn.close();
      await broker.stop();
      const text = broker.stderr();
      if (format === "text") {
        for (const line of text.split("\n")) {
          assert.doesNotMatch(line, /^2026-11-30T00:00:00/, "a forged line reached the log");
        }
        assert.ok(!text.includes("\x1b") && !text.includes("\u2028"), "a raw control character");
        assert.match(
          text,
          /x\\n2026-11-30T00:00:00\.000Z INFO {2}connection: client admin connected\\x1b\[2K\\u2028/,
        );
      } else {
        const lines = jsonLines(text);
        assert.ok(lines.some((l) => l.client_id === forged), "the client id was not logged intact");
      }
    });
  }
});

Deno.test("a property named like a JSON log key does not replace it: the protocol error's message stays", async () => {
  await withBroker(["--general.log_format=json"], async (broker, port) => {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    const connect = [0x10, 13, 0, 4, 77, 81, 84, 84, 5, 2, 0, 30, 0, 0, 1, 0x61];
    connect[1] = connect.length - 2;
    await conn.write(new Uint8Array([...connect, ...connect]));
    await broker.waitFor(/closing a/);
    conn.close();
    await broker.stop();
    const line = jsonLines(broker.stderr()).find((l) => /^closing a /.test(String(l.message)))!;
    assert.match(String(line.message), /^closing a \(127\.0\.0\.1:\d+\): .*\(0x82\)$/);
    assert.equal(typeof line.problem, "string");
  });
});

/**
 * Opens `n` connections, in rounds of 50, that each send an MQTT 5 CONNECT with client id `id`
 * and an Authentication Method: every one is refused (0x8C) and logged.
 */
async function refusedConnects(port: number, n: number, id: string): Promise<void> {
  for (let done = 0; done < n; done += 50) {
    const clients = await Promise.all(
      Array.from({ length: Math.min(50, n - done) }, () => RawClient.connect(port, 5)),
    );
    await Promise.all(clients.map((c) =>
      c.sendPacket({
        cmd: "connect",
        protocolId: "MQTT",
        protocolVersion: 5,
        clientId: id,
        clean: true,
        keepalive: 60,
        properties: { authenticationMethod: "none" },
      })
    ));
    await Promise.all(clients.map((c) => c.expect("connack", 3000)));
    for (const c of clients) c.close();
  }
}

Deno.test("a client-chosen value is cut to general.log_value_max in a line: a flood of 64 KB client ids stays small", async () => {
  await withBroker(["--general.log_format=json"], async (broker, port) => {
    const id = "i".repeat(65_000);
    await refusedConnects(port, 200, id);
    await broker.waitFor(/"client_id"/);
    await broker.stop();
    const text = broker.stderr();
    const refused = jsonLines(text).filter((l) => /^refused/.test(String(l.message)));
    assert.ok(refused.length > 0, "no refusal was logged");
    for (const line of refused) {
      assert.equal(line.client_id, `${"i".repeat(256)}...[${65_000 - 256} more]`);
      assert.ok(String(line.message).length < 600, `a ${String(line.message).length}-char message`);
    }
    // Uncut, 200 attempts wrote 26 MB (two copies of the id per line).
    assert.ok(text.length < 400_000, `${text.length} bytes of log for 200 attempts`);
  });
});

Deno.test("info lines over general.log_rate per second are dropped and counted in one warning", async () => {
  await withBroker(["--general.log_format=json", "--general.log_rate=40"], async (broker, port) => {
    const started = Date.now();
    await refusedConnects(port, 300, "flood");
    const seconds = Math.ceil((Date.now() - started) / 1000);
    await broker.waitFor(/"dropped"/, 3000);
    await broker.stop();
    const lines = jsonLines(broker.stderr());
    const refused = lines.filter((l) => /^refused/.test(String(l.message))).length;
    const reports = lines.filter((l) => l.level === "warning" && typeof l.dropped === "number");
    const dropped = reports.reduce((sum, l) => sum + (l.dropped as number), 0);
    // One window more than the flood took: it may straddle a window's start.
    assert.ok(refused <= 40 * (seconds + 1), `${refused} refusals logged in ${seconds} s`);
    // Every refusal is either logged or counted (the count may include a few other info lines).
    assert.ok(
      refused + dropped >= 300 && refused + dropped < 320,
      `${refused} logged and ${dropped} reported dropped`,
    );
  });
});

Deno.test("refused logins keep their lines under general.log_rate: a flood of other info lines does not hide them", async () => {
  const flags = async (dir: string) => {
    const file = `${dir}/passwd`;
    await Deno.writeTextFile(file, `alice:${await hashPassword("alice-pw", 1000)}\n`);
    return ["--general.log_format=json", "--general.log_rate=40", `--auth.password_file=${file}`];
  };
  await withBroker(flags, async (broker, port) => {
    // 200 sockets that are not MQTT: an info line each, far over 40 a second.
    const junk = await Promise.all(Array.from({ length: 200 }, () => RawClient.connect(port, 5)));
    await Promise.all(junk.map((c) => c.send([0])));
    await Promise.all(junk.map((c) => c.expectClosed()));
    // Then, in the same second, a few guesses at alice's password.
    for (let i = 0; i < 5; i++) {
      await using c = await RawClient.connect(port, 5);
      await c.sendPacket({
        cmd: "connect",
        protocolId: "MQTT",
        protocolVersion: 5,
        clientId: `guess-${i}`,
        clean: true,
        keepalive: 60,
        username: "alice",
        password: `guess-${i}`,
      });
      assert.equal((await c.expect("connack", 3000)).reasonCode, 0x86);
    }
    await broker.waitFor(/"dropped"/, 3000);
    await broker.stop();
    const lines = jsonLines(broker.stderr());
    const guesses = lines.filter((l) => /^refused guess-/.test(String(l.message)));
    // Before: none of the five was written, only counted among the dropped info lines.
    assert.equal(guesses.length, 5, `${guesses.length} of 5 refused logins logged`);
  });
});
