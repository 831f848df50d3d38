/**
 * Running out of file descriptors for a moment must not stop a listener for good. The broker
 * runs in a subprocess whose descriptor limit is lowered (prlimit); idle sockets fill it while
 * more clients knock on every listener (MQTT over TCP, WebSocket, the HTTP endpoint), so each
 * listener meets a failed accept. Once the sockets are gone, every listener serves new clients.
 */
import assert from "node:assert/strict";
import { connectClient, delay, endClient, freePort } from "../helpers/broker.ts";
import { copyProject, startMain } from "../helpers/main_process.ts";

async function hasPrlimit(): Promise<boolean> {
  try {
    const out = await new Deno.Command("prlimit", {
      args: ["--version"],
      stdout: "null",
      stderr: "null",
    })
      .output();
    return out.success;
  } catch {
    return false;
  }
}

/** Retries `attempt` until it resolves or `ms` pass; the last error is rethrown. */
async function within<T>(ms: number, what: string, attempt: () => Promise<T>): Promise<T> {
  const deadline = Date.now() + ms;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      return await attempt();
    } catch (e) {
      last = e;
      await delay(200);
    }
  }
  throw new Error(`${what} did not recover within ${ms} ms: ${last}`);
}

const available = await hasPrlimit();
if (!available) {
  console.warn("SKIPPED fd_exhaustion_test.ts: prlimit (util-linux) is not installed");
  if (Deno.env.get("CI")) throw new Error("prlimit is required when CI is set");
}

Deno.test({
  name:
    "after the process ran out of file descriptors, the TCP, WebSocket and HTTP listeners accept again",
  ignore: !available,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "mcloudtt-fds-" });
    const held: Deno.TcpConn[] = [];
    try {
      await copyProject(dir);
      const tcp = freePort();
      const ws = freePort();
      const http = freePort();
      await using broker = startMain(dir, [
        "--general.secure=false",
        "--general.bind=127.0.0.1",
        `--ports.tcp=${tcp}`,
        `--ports.ws=${ws}`,
        "--http.bind=127.0.0.1",
        `--http.port=${http}`,
        "--general.log_level=warning",
      ]);
      await within(10_000, "start", async () => {
        const r = await fetch(`http://127.0.0.1:${http}/readyz`);
        await r.body?.cancel();
        if (r.status !== 200) throw new Error(`readyz ${r.status}`);
      });
      const limit = await new Deno.Command("prlimit", {
        args: ["--pid", String(broker.child.pid), "--nofile=128:128"],
      }).output();
      assert.ok(limit.success, new TextDecoder().decode(limit.stderr));

      // Fill the table with silent sockets (well inside the connect timeout), then knock on
      // the other listeners while it is full: each of them tries an accept that fails.
      for (let i = 0; i < 160; i++) {
        held.push(await Deno.connect({ hostname: "127.0.0.1", port: tcp }));
      }
      for (const port of [ws, http, tcp]) {
        for (let i = 0; i < 3; i++) {
          // A listener that gave up closes its socket: then the knock is refused.
          const c = await Deno.connect({ hostname: "127.0.0.1", port }).catch(() => null);
          if (c !== null) held.push(c);
        }
      }
      await delay(1_500);
      for (const c of held.splice(0)) c.close();

      const viaTcp = await within(
        8_000,
        "MQTT over TCP",
        () =>
          connectClient(tcp, { clientId: "after-tcp", connectTimeout: 2_000, reconnectPeriod: 0 }),
      );
      await endClient(viaTcp);
      const viaWs = await within(8_000, "MQTT over WebSocket", () =>
        connectClient(ws, {
          clientId: "after-ws",
          protocol: "ws",
          path: "/mqtt",
          connectTimeout: 2_000,
          reconnectPeriod: 0,
        }));
      await endClient(viaWs);
      await within(8_000, "the HTTP endpoint", async () => {
        const r = await fetch(`http://127.0.0.1:${http}/healthz`, {
          signal: AbortSignal.timeout(2_000),
        });
        await r.body?.cancel();
        if (r.status !== 200) throw new Error(`healthz ${r.status}`);
      });
    } finally {
      for (const c of held) c.close();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});
