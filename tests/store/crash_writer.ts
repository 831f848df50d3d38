/**
 * Child process of the kill -9 test: writes batches to a SqliteStore in a
 * loop and prints `ack <n>` once batch n's write has resolved. Batch n
 * enqueues message n to every session (one shared row), moves message n-1 to
 * inflight for session c0, and retains it on topic r/<n % 10>.
 *
 *     deno run --allow-read --allow-write tests/store/crash_writer.ts DIR SYNC
 */
import { SqliteStore } from "../../src/store/sqlite.ts";
import type { StoredMessage, StoreOp } from "../../src/store/types.ts";
import { message, session } from "./fixtures.ts";

export const CRASH_SESSIONS = ["c0", "c1", "c2", "c3"];

/** Message n: its payload says n, so a reader can tell which batch wrote it. */
export function crashMessage(n: number): StoredMessage {
  const payload = new Uint8Array(1024).fill(n & 0xFF);
  new DataView(payload.buffer).setUint32(0, n);
  return message({ topic: `t/${n}`, payload });
}

if (import.meta.main) {
  const [dir, sync] = Deno.args;
  const store = new SqliteStore({ dir, sync: sync === "async" ? "async" : "ack-after-write" });
  await store.open();
  await store.write(CRASH_SESSIONS.map((id) => ({ type: "session", state: session(id) })));
  const out = (s: string) => Deno.stdout.writeSync(new TextEncoder().encode(s));
  out("ready\n");
  let prev: StoredMessage | null = null;
  for (let n = 1;; n++) {
    const m = crashMessage(n);
    const ops: StoreOp[] = CRASH_SESSIONS.map((id) => ({
      type: "enqueue",
      clientId: id,
      seq: n,
      item: { msg: m, qos: 1, retain: false, subIds: null },
    }));
    if (prev) {
      ops.push({ type: "dequeue", clientId: "c0", seq: n - 1 }, {
        type: "inflight",
        clientId: "c0",
        item: {
          msg: prev,
          qos: 1,
          retain: false,
          subIds: null,
          packetId: ((n - 2) % 65535) + 1,
          released: false,
        },
      });
    }
    ops.push({ type: "retain", msg: { ...m, topic: `r/${n % 10}`, retain: true } });
    await store.write(ops);
    out(`ack ${n}\n`);
    prev = m;
  }
}
