/** Redis key names of one prefix, and the Lua script runner the store's scripts use. */
import type { Buffer } from "node:buffer";
import { createHash } from "node:crypto";
import type { Cluster, Redis } from "ioredis";

type RedisClient = Redis | Cluster;

/** The redis key names of one prefix. */
export class RedisKeys {
  constructor(readonly prefix: string) {
    if (/[{}]/.test(prefix)) throw new Error(`redis key_prefix must not contain { or }: ${prefix}`);
  }

  /** meta, subs, q, inflight, qos2, rc, subk: the KEYS of every session script. */
  session(clientId: string): [string, string, string, string, string, string, string] {
    const t = `${this.prefix}:{s:${clientId}}:`;
    return [
      t + "meta",
      t + "subs",
      t + "q",
      t + "inflight",
      t + "qos2",
      t + "rc",
      t + "subk",
    ];
  }

  nodeSessions(nodeId: string): string {
    return `${this.prefix}:{n:${nodeId}}:sessions`;
  }

  get retainedIndex(): string {
    return `${this.prefix}:{ret}:index`;
  }

  retained(topic: string): string {
    return `${this.prefix}:{ret}:t:${topic}`;
  }

  /** The version of a topic's retained message, or of its deletion (retain_version.ts). */
  retainedVersion(topic: string): string {
    return `${this.prefix}:{ret}:v:${topic}`;
  }

  /** A secret kept for the cluster (RedisStore.secret). */
  secret(name: string): string {
    return `${this.prefix}:secret:${name}`;
  }

  /** SCAN pattern of every session's meta key. */
  get metaPattern(): string {
    return `${this.prefix.replace(/[*?[\]\\]/g, "\\$&")}:{s:*}:meta`;
  }

  /** The client id of a meta key found by SCAN. */
  clientIdOfMeta(key: string): string | null {
    const head = `${this.prefix}:{s:`;
    if (!key.startsWith(head) || !key.endsWith("}:meta")) return null;
    return key.slice(head.length, key.length - "}:meta".length);
  }
}

/** What each KEYS index of a session script names, for log lines. */
export const KEY_NAMES = [
  "meta",
  "subs",
  "q",
  "inflight",
  "qos2",
  "recent ids",
  "subscription index",
];

/** The Redis type of each KEYS index of a session script (1-based, as the scripts number them). */
export function keyType(k: number): "hash" | "list" {
  return k === 1 || k === 7 ? "hash" : "list";
}

/** A Lua script run by EVALSHA, loaded again after NOSCRIPT (a restarted Redis). */
export class Script {
  private readonly sha: string;

  constructor(private readonly src: string) {
    this.sha = createHash("sha1").update(src).digest("hex");
  }

  async run(
    client: RedisClient,
    keys: readonly string[],
    args: readonly (string | Buffer)[],
  ): Promise<unknown> {
    try {
      return await client.callBuffer("EVALSHA", this.sha, keys.length, ...keys, ...args);
    } catch (e) {
      if (!(e instanceof Error) || !e.message.startsWith("NOSCRIPT")) throw e;
      return await client.callBuffer("EVAL", this.src, keys.length, ...keys, ...args);
    }
  }
}
