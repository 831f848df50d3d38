/**
 * The in-memory store: the default of an embedded broker. The core keeps
 * sessions and retained messages in its own objects, so there is nothing to
 * write; what it "loads" is empty. Also usable as a journal recorder: with
 * `durable: true` it applies the ops to plain objects, which is what the
 * store contract test runs against.
 */
import type { SessionState, Store, StoredMessage, StoreOp } from "./types.ts";
import { applyOp } from "./apply.ts";

export class MemoryStore implements Store {
  readonly name = "memory";
  readonly shared = false;
  private readonly sessions = new Map<string, SessionState>();
  private readonly retained = new Map<string, StoredMessage>();

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

  loadRetained(): Promise<StoredMessage[]> {
    return Promise.resolve([...this.retained.values()]);
  }
}
