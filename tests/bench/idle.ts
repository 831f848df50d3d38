/**
 * Opens and holds many idle MQTT connections.
 *
 * Deno.connect cannot bind a local address, but node:net's `localAddress` works under Deno,
 * so this one role uses node:net to spread connections over 127.0.0.2..n. Each source
 * address has its own ephemeral port range, so the count is not capped at ~28k per address
 * and TIME_WAIT from earlier rounds does not starve later ones. Over TLS, node:tls runs on
 * such a socket.
 */

import net from "node:net";
import tls from "node:tls";
import type { ConnectSummary, IdlePlan, Snapshot } from "./messages.ts";
import { processCpuMicros } from "./load.ts";
import { encodeConnect, PINGREQ } from "./wire.ts";

/** Holds the idle connections of one worker. */
export class IdleWorker {
  readonly #plan: IdlePlan;
  readonly #sockets: net.Socket[] = [];
  #summary: ConnectSummary | undefined;
  #pinger: ReturnType<typeof setInterval> | undefined;
  #closedByBroker = 0;

  constructor(plan: IdlePlan) {
    this.#plan = plan;
  }

  /** Opens all connections (`concurrency` at a time) and resolves when each has a CONNACK or failed. */
  async connectAll(): Promise<Snapshot> {
    const { count, concurrency } = this.#plan;
    const start = performance.now();
    let next = 0, connected = 0, failed = 0;
    let firstError: string | undefined;
    const lane = async () => {
      while (next < count) {
        const i = next++;
        try {
          this.#sockets.push(await this.#open(i));
          connected++;
        } catch (e) {
          failed++;
          firstError ??= e instanceof Error ? e.message : String(e);
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(concurrency, count) }, lane));
    this.#summary = { connected, failed, elapsedMs: performance.now() - start, firstError };
    // Keep alive is 60 s; a ping every 30 s keeps the connections valid however long they are held.
    this.#pinger = setInterval(() => {
      for (const socket of this.#sockets) socket.write(PINGREQ);
    }, 30_000);
    return this.snapshot();
  }

  #open(i: number): Promise<net.Socket> {
    const { host, port, version, sourceAddresses, keepAliveSeconds, clientIdPrefix } = this.#plan;
    const localAddress = sourceAddresses[i % sourceAddresses.length];
    const ca = this.#plan.tls?.ca;
    return new Promise((resolve, reject) => {
      const socket = ca === undefined
        ? net.connect({ host, port, localAddress })
        : tls.connect({ socket: net.connect({ host, port, localAddress }), host, ca });
      socket.setNoDelay(true);
      let seen = 0;
      const fail = (e: Error) => {
        socket.destroy();
        reject(e);
      };
      socket.once("error", fail);
      socket.once(ca === undefined ? "connect" : "secureConnect", () => {
        socket.write(encodeConnect(version, `${clientIdPrefix}${i}`, keepAliveSeconds));
      });
      const onData = (chunk: Uint8Array) => {
        // Only the CONNACK's first byte and reason code matter; keep reading past it idle.
        if (seen === 0 && chunk[0] >> 4 !== 2) {
          return fail(new Error(`expected CONNACK, got type ${chunk[0] >> 4}`));
        }
        seen += chunk.length;
        if (seen < 4) return;
        socket.off("data", onData);
        socket.off("error", fail);
        socket.on("data", () => {});
        socket.on("error", () => {});
        socket.on("close", () => this.#closedByBroker++);
        const reason = chunk[3 - (seen - chunk.length)];
        if (reason !== 0) return fail(new Error(`CONNACK reason 0x${reason?.toString(16)}`));
        resolve(socket);
      };
      socket.on("data", onData);
    });
  }

  /** Counters; `received` is the number of connections held open. */
  snapshot(): Snapshot {
    const open = this.#sockets.length - this.#closedByBroker;
    return {
      ok: true,
      at: performance.now(),
      cpuMicros: processCpuMicros(),
      sent: 0,
      acked: 0,
      received: open,
      duplicates: 0,
      inflight: 0,
      errors: this.#summary?.firstError ? [this.#summary.firstError] : [],
      connect: this.#summary,
    };
  }

  /** Closes every connection. */
  close(): Snapshot {
    clearInterval(this.#pinger);
    const snapshot = this.snapshot();
    for (const socket of this.#sockets) socket.destroy();
    return snapshot;
  }
}
