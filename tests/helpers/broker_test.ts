/**
 * The test helpers' own contract where a hang would stall the suite: connecting to a server
 * that closes the connection before any CONNACK fails at once instead of never settling.
 */
import assert from "node:assert/strict";
import { connectClient } from "./broker.ts";

Deno.test("connectClient rejects when the server closes the connection before CONNACK", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const serving = (async () => {
    for await (const conn of listener) {
      // Read the CONNECT, then hang up without answering, as a node shutting down does.
      await conn.read(new Uint8Array(1024)).catch(() => null);
      conn.close();
    }
  })();
  try {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const never = new Promise<never>((_, reject) => {
      // Far below the CONNACK timeout asked for, which MQTT.js clears on close anyway.
      timer = setTimeout(() => reject(new Error("connectClient never settled")), 10_000);
    });
    const connecting = connectClient(listener.addr.port, {
      clientId: "early-close",
      connectTimeout: 30_000,
    });
    await assert.rejects(Promise.race([connecting, never]), /closed before CONNACK/);
    clearTimeout(timer);
  } finally {
    listener.close();
    await serving.catch(() => {});
  }
});
