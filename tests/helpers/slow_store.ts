/**
 * A real SQLite store whose writes take `delayMs` longer to complete, as a
 * store on a slow disk or across a network (Redis) does. It makes "what does
 * an acknowledgement wait for" observable: while a batch is delayed, the
 * database does not hold it yet, so a test can compare what the client was
 * told with what a crash at that moment would leave behind.
 */
import { SqliteStore } from "../../src/store/sqlite.ts";
import type {
  RetainedCount,
  RetainedPageSize,
  SessionState,
  Store,
  StoredMessage,
  StoreOp,
} from "../../src/store/types.ts";
import { delay } from "./broker.ts";

export class SlowStore implements Store {
  readonly name = "slow-sqlite";
  readonly durable = true;
  readonly shared = false;
  readonly inner: SqliteStore;
  /** Batches whose write has started and not yet reached the database. */
  pending = 0;

  constructor(dir: string, readonly delayMs: number) {
    this.inner = new SqliteStore({ dir });
  }

  open(): Promise<void> {
    return this.inner.open();
  }

  async close(): Promise<void> {
    while (this.pending > 0) await delay(5);
    await this.inner.close();
  }

  async write(ops: readonly StoreOp[]): Promise<void> {
    this.pending++;
    try {
      await delay(this.delayMs);
      await this.inner.write(ops);
    } finally {
      this.pending--;
    }
  }

  loadSessions(): Promise<SessionState[]> {
    return this.inner.loadSessions();
  }

  loadSession(clientId: string): Promise<SessionState | null> {
    return this.inner.loadSession(clientId);
  }

  retainedPages(size: RetainedPageSize, after?: string): AsyncIterable<StoredMessage[]> {
    return this.inner.retainedPages(size, after);
  }

  secret(name: string): Promise<Uint8Array> {
    return this.inner.secret(name);
  }

  countRetained(after: string | null, now: number): Promise<RetainedCount> {
    return this.inner.countRetained(after, now);
  }
}
