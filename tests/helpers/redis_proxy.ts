/**
 * A TCP proxy in front of a real redis-server that tells a broker's Redis connections apart by
 * the name each gives itself (`CLIENT SETNAME mcloudtt:<role>:<node>`), so a test can make one
 * of them slow or stalled while the others go on: a forwarding connection saturated by a flood
 * or a slow pipe, or one that answers nothing. Only what a connection sends to Redis is held
 * back (Redis does not see a renewal held here; a reply held back would be too late, but the
 * renewal would have run); the proxy reads no faster than it passes on, so a slowed connection
 * backs up into the broker's socket as a slow Redis would.
 */
import { freePort } from "./ports.ts";
import { type RedisBackend, RedisServer } from "./redis.ts";

interface Rule {
  match: RegExp;
  /** Bytes per second passed on to Redis; 0: nothing (stalled). */
  rate: number;
}

/** redis-server behind a proxy: brokers are pointed at the proxy (`brokerArgs`). */
export class RedisProxy implements RedisBackend, AsyncDisposable {
  private rules: Rule[] = [];
  private readonly conns = new Set<Deno.Conn>();
  private closed = false;

  private constructor(
    readonly redis: RedisServer,
    private readonly listener: Deno.Listener,
    readonly port: number,
  ) {
    this.accept();
  }

  static async start(): Promise<RedisProxy> {
    const redis = await RedisServer.start();
    const port = freePort();
    const listener = Deno.listen({ hostname: "127.0.0.1", port });
    return new RedisProxy(redis, listener, port);
  }

  get brokerArgs(): string[] {
    return [`--redis.url=redis://127.0.0.1:${this.port}`];
  }

  /**
   * From now on, connections whose name matches `match` pass on at most `rate` bytes per second
   * to Redis (0: none at all), also those made later; null lifts the rule.
   */
  limit(match: RegExp, rate: number | null): void {
    this.rules = this.rules.filter((r) => r.match.source !== match.source);
    if (rate !== null) this.rules.push({ match, rate });
  }

  private async accept(): Promise<void> {
    for (;;) {
      let client: Deno.Conn;
      try {
        client = await this.listener.accept();
      } catch {
        return; // closed
      }
      this.pipe(client).catch(() => {});
    }
  }

  private async pipe(client: Deno.Conn): Promise<void> {
    let server: Deno.Conn;
    try {
      server = await Deno.connect({ hostname: "127.0.0.1", port: this.redis.port });
    } catch {
      client.close();
      return;
    }
    this.conns.add(client);
    this.conns.add(server);
    const end = () => {
      for (const c of [client, server]) {
        this.conns.delete(c);
        try {
          c.close();
        } catch {
          // closed already
        }
      }
    };
    const named = { name: "", seen: "" };
    await Promise.all([
      this.copy(client, server, named, true).catch(() => {}).finally(end),
      this.copy(server, client, named, false).catch(() => {}).finally(end),
    ]);
  }

  private async copy(
    from: Deno.Conn,
    to: Deno.Conn,
    named: { name: string; seen: string },
    toRedis: boolean,
  ): Promise<void> {
    const buf = new Uint8Array(64 * 1024);
    for (;;) {
      const n = await from.read(buf);
      if (n === null) return;
      if (toRedis) {
        if (named.name === "" && named.seen.length < 4096) {
          named.seen += new TextDecoder().decode(buf.subarray(0, n));
          named.name = named.seen.match(/mcloudtt:[^\r\n]+/)?.[0] ?? "";
        }
        await this.pace(named.name, n);
      }
      let off = 0;
      while (off < n) off += await to.write(buf.subarray(off, n));
    }
  }

  /** Waits as long as the rule for `name` says `n` bytes take. */
  private async pace(name: string, n: number): Promise<void> {
    for (;;) {
      if (this.closed || name === "") return;
      const rule = this.rules.find((r) => r.match.test(name));
      if (rule === undefined) return;
      if (rule.rate > 0) {
        await new Promise((r) => setTimeout(r, (n / rule.rate) * 1000));
        return;
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  async stop(): Promise<void> {
    this.closed = true;
    try {
      this.listener.close();
    } catch {
      // closed already
    }
    for (const c of this.conns) {
      try {
        c.close();
      } catch {
        // closed already
      }
    }
    this.conns.clear();
    await this.redis.stop();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.stop();
  }
}
