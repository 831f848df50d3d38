/**
 * Talking to a redis-server from a test without a client library: one command over a fresh
 * connection, its RESP reply parsed (`redisQuery`) or as text (`redisCommand`), and the INFO
 * fields tests read. For inspecting a server, never for load; apart from redis.ts, which starts
 * and stops servers, because tests and the bench inspect servers they did not start too.
 */
import type { RedisServer } from "./redis.ts";

/**
 * Sends one command to the redis-server on `port` over a fresh connection and
 * returns its reply as text (an integer as digits, nil as ""): for inspecting
 * a server from a test or the bench, not for load (`redisQuery` keeps arrays).
 */
export async function redisCommand(port: number, ...args: string[]): Promise<string> {
  return text(await redisQuery(port, ...args));
}

/** A reply as text; an array's items one per line (ROLE, for a regular expression). */
function text(reply: RespValue): string {
  if (Array.isArray(reply)) return reply.map(text).join("\n");
  return reply === null ? "" : String(reply);
}

/** `cmdstat_<name>` call counts from INFO commandstats. */
export async function commandStats(server: RedisServer | number): Promise<Map<string, number>> {
  const port = typeof server === "number" ? server : server.port;
  const info = await redisCommand(port, "INFO", "commandstats");
  const out = new Map<string, number>();
  for (const m of info.matchAll(/^cmdstat_([a-z|_-]+):calls=(\d+)/gm)) out.set(m[1], Number(m[2]));
  return out;
}

/** A parsed RESP reply: simple/bulk strings, integers, nil, arrays (errors throw). */
export type RespValue = string | number | null | RespValue[];

/**
 * Sends one command to the server on `port` over a fresh connection and
 * returns the whole parsed reply (arrays included): for test inspection.
 */
export async function redisQuery(port: number, ...args: string[]): Promise<RespValue> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    const enc = new TextEncoder();
    let req = `*${args.length}\r\n`;
    for (const a of args) req += `$${enc.encode(a).length}\r\n${a}\r\n`;
    await conn.write(enc.encode(req));
    let data = new Uint8Array(0);
    const buf = new Uint8Array(64 * 1024);
    for (;;) {
      const n = await conn.read(buf);
      if (n === null) throw new Error(`redis on ${port} closed the connection mid-reply`);
      const more = new Uint8Array(data.length + n);
      more.set(data);
      more.set(buf.subarray(0, n), data.length);
      data = more;
      const parsed = parseResp(data, 0);
      if (parsed !== null) return parsed[0];
    }
  } finally {
    conn.close();
  }
}

/** [value, next offset], or null when `data` does not hold a whole reply yet. */
function parseResp(data: Uint8Array, at: number): [RespValue, number] | null {
  const nl = data.indexOf(0x0a, at);
  if (nl < 0) return null;
  const head = new TextDecoder().decode(data.subarray(at + 1, nl - 1));
  switch (String.fromCharCode(data[at])) {
    case "+":
      return [head, nl + 1];
    case ":":
      return [Number(head), nl + 1];
    case "-":
      throw new Error(`redis: ${head}`);
    case "$": {
      const len = Number(head);
      if (len < 0) return [null, nl + 1];
      if (data.length < nl + 1 + len + 2) return null;
      return [new TextDecoder().decode(data.subarray(nl + 1, nl + 1 + len)), nl + 1 + len + 2];
    }
    case "*": {
      const len = Number(head);
      if (len < 0) return [null, nl + 1];
      const out: RespValue[] = [];
      let pos = nl + 1;
      for (let i = 0; i < len; i++) {
        const item = parseResp(data, pos);
        if (item === null) return null;
        out.push(item[0]);
        pos = item[1];
      }
      return [out, pos];
    }
    default:
      throw new Error(`unexpected RESP reply ${head}`);
  }
}

/** One `field:value` line of an INFO reply ("" when absent). */
export function infoField(info: string, field: string): string {
  return info.match(new RegExp(`^${field}:(.*?)\\r?$`, "m"))?.[1] ?? "";
}
