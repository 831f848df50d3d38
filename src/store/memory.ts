/**
 * The in-memory store: the default of an embedded broker. The core keeps
 * sessions and retained messages in its own objects, so there is nothing to
 * write; what it "loads" is empty. Also usable as a journal recorder: with
 * `durable: true` it applies the ops to plain objects, which is what the
 * store contract test runs against.
 */
import {
  compareTopics,
  type RetainedCount,
  type RetainedPageSize,
  SECRET_BYTES,
  type SessionState,
  type Store,
  type StoredMessage,
  type StoreOp,
} from "./types.ts";
import { applyOp } from "./apply.ts";

export class MemoryStore implements Store {
  readonly name = "memory";
  readonly shared = false;
  private readonly sessions = new Map<string, SessionState>();
  private readonly retained = new Map<string, StoredMessage>();
  private readonly secrets = new Map<string, Uint8Array>();

  /** `durable` true makes the core journal into this store (tests, contract). */
  constructor(readonly durable = false) {}

  open(): Promise<void> {
    return Promise.resolve();
  }

  close(): Promise<void> {
    return Promise.resolve();
  }

  write(ops: readonly StoreOp[]): Promise<void> {
    for (const op of ops) applyOp(this.sessions, this.retained, op);
    return Promise.resolve();
  }

  loadSessions(): Promise<SessionState[]> {
    return Promise.resolve([...this.sessions.values()]);
  }

  loadSession(clientId: string): Promise<SessionState | null> {
    return Promise.resolve(this.sessions.get(clientId) ?? null);
  }

  /** The messages are in memory already: the pages are slices of them, sorted once. */
  async *retainedPages(size: RetainedPageSize, after?: string): AsyncIterable<StoredMessage[]> {
    const topics = [...this.retained.keys()].filter((t) => after === undefined || t > after)
      .sort(compareTopics);
    let page: StoredMessage[] = [];
    let bytes = 0;
    for (const topic of topics) {
      const m = this.retained.get(topic);
      if (m === undefined) continue;
      page.push(m);
      bytes += m.payload.length + (m.props?.length ?? 0);
      if (page.length >= size.messages || bytes >= size.bytes) {
        yield page;
        page = [];
        bytes = 0;
      }
    }
    if (page.length > 0) yield page;
  }

  /** Kept as long as this object: the in-memory store outlives nothing. */
  secret(name: string): Promise<Uint8Array> {
    let s = this.secrets.get(name);
    if (s === undefined) {
      s = crypto.getRandomValues(new Uint8Array(SECRET_BYTES));
      this.secrets.set(name, s);
    }
    return Promise.resolve(s);
  }

  countRetained(after: string | null, now: number): Promise<RetainedCount> {
    let count = 0;
    let expired = 0;
    for (const m of this.retained.values()) {
      if (after !== null && m.topic <= after) continue;
      count++;
      if (m.expiresAt !== 0 && now >= m.expiresAt) expired++;
    }
    return Promise.resolve({ count, expired });
  }
}
