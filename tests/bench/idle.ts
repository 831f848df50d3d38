/**
 * Opens and holds many idle MQTT connections.
 *
 * Deno.connect cannot bind a local address, but node:net's `localAddress` works under Deno,
 * so this one role uses node:net to spread connections over 127.0.0.2..n (the opening is
 * tests/helpers/idle_clients.ts). Each source address has its own ephemeral port range, so
 * the count is not capped at ~28k per address and TIME_WAIT from earlier rounds does not
 * starve later ones. Over TLS, node:tls runs on such a socket.
 */

import type net from "node:net";
import { openMany } from "../helpers/idle_clients.ts";
import type { ConnectSummary, IdlePlan, Snapshot } from "./messages.ts";
import { processCpuMicros } from "./load.ts";
import { PINGREQ } from "./wire.ts";

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
    const p = this.#plan;
    const opened = await openMany({ port: p.port, tls: p.tls !== undefined }, p.count, {
      level: p.version,
      concurrency: p.concurrency,
      prefix: p.clientIdPrefix,
      keepAliveSeconds: p.keepAliveSeconds,
      sourceAddresses: p.sourceAddresses,
      host: p.host,
      ca: p.tls?.ca,
      onClose: () => this.#closedByBroker++,
    });
    this.#sockets.push(...opened.sockets);
    this.#summary = {
      connected: opened.sockets.length,
      failed: opened.failed,
      elapsedMs: opened.elapsedMs,
      firstError: opened.firstError,
    };
    // Keep alive is 60 s; a ping every 30 s keeps the connections valid however long they are held.
    this.#pinger = setInterval(() => {
      for (const socket of this.#sockets) socket.write(PINGREQ);
    }, 30_000);
    return this.snapshot();
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
