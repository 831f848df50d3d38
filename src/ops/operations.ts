/**
 * Everything an operator looks at, assembled for one broker: the HTTP endpoint (health,
 * readiness, metrics), `$SYS` and the drain on shutdown. `mcloudtt serve` starts it beside the
 * broker; embedders may too.
 */
import type { Config } from "../config/mod.ts";
import type { Message } from "../protocol/message.ts";
import { Exposition } from "./exposition.ts";
import { type HttpEndpoint, startHttp } from "./http.ts";
import type { BrokerStats } from "./stats.ts";
import { SysPublisher } from "./sys.ts";

/** The broker as the operations side needs it. */
export interface OpsTarget extends BrokerStats {
  /** Why the broker cannot take clients (listeners down, cluster not joined); empty when ready. */
  problems(): readonly string[];
  /** The broker's publish entry point, for `$SYS` messages. */
  publish(msg: Message): void;
}

export interface OpsOptions {
  config: Config;
  version: string;
}

export class Operations {
  private http: HttpEndpoint | null = null;
  private sys: SysPublisher | null = null;
  readonly exposition: Exposition;
  private draining = false;

  constructor(private readonly target: OpsTarget, private readonly opts: OpsOptions) {
    this.exposition = new Exposition(target);
  }

  /**
   * Starts the HTTP endpoint alone, as configured: before the broker starts, so /healthz answers
   * while a start waits (for Redis: `[redis] start_timeout_ms`) and /readyz says why it is not
   * ready yet.
   */
  async startEndpoint(): Promise<void> {
    const c = this.opts.config;
    if (c.http.enabled && this.http === null) {
      this.http = await startHttp({
        hostname: c.http.bind,
        port: c.http.port,
        maxConnections: c.http.max_connections,
        requestDeadlineMs: c.http.request_timeout * 1000,
        problems: () => this.problems(),
        metrics: async () => ({
          body: await this.exposition.metrics(),
          contentType: this.exposition.contentType,
        }),
      });
    }
  }

  /** Starts the HTTP endpoint (unless started already) and `$SYS`, as configured. */
  async start(): Promise<void> {
    const c = this.opts.config;
    await this.startEndpoint();
    if (c.general.sys_interval > 0 && this.sys === null) {
      this.sys = new SysPublisher(this.target, {
        intervalSeconds: c.general.sys_interval,
        version: this.opts.version,
        publish: (m) => this.target.publish(m),
      });
      this.sys.start();
    }
  }

  /** Readiness problems: the broker's own, and "draining" once shutdown began. */
  problems(): readonly string[] {
    const p = this.target.problems();
    return this.draining ? ["draining: the broker is shutting down", ...p] : p;
  }

  /** Where the HTTP endpoint listens, or null when disabled. */
  get httpAddress(): { hostname: string; port: number } | null {
    return this.http === null ? null : { hostname: this.http.hostname, port: this.http.port };
  }

  /**
   * First step of a graceful stop: /readyz answers 503 from now on, and the promise resolves
   * after `[general] drain_delay` seconds (at once without an HTTP endpoint: nobody would see it).
   */
  async drain(): Promise<void> {
    this.draining = true;
    const seconds = this.http === null ? 0 : this.opts.config.general.drain_delay;
    if (seconds <= 0) return;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, seconds * 1000);
      this.endDrainNow = () => {
        clearTimeout(timer);
        resolve();
      };
    });
    this.endDrainNow = () => {};
  }

  /** Ends a drain() under way at once (/readyz stays 503): the operator asked to stop now. */
  endDrain(): void {
    this.endDrainNow();
  }

  private endDrainNow: () => void = () => {};

  /** Stops `$SYS` and the HTTP endpoint. */
  async stop(): Promise<void> {
    this.sys?.stop();
    this.sys = null;
    this.exposition.close();
    const http = this.http;
    this.http = null;
    await http?.close();
  }
}
