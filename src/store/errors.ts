/** Why a store refused to open, with the file it is about and what the operator should do. */

/**
 * - `corrupt`: the file is damaged or is not a database at all.
 * - `foreign`: a valid database that another program made.
 * - `newer`: made by a newer mcloudtt (schema version above what this build knows).
 * - `locked`: another process (a second broker) has it open.
 * - `access`: the directory or file cannot be created, read or written.
 */
export type StoreOpenErrorKind = "corrupt" | "foreign" | "newer" | "locked" | "access";

/**
 * Thrown by `Store.open()`. The message is one line naming the path, the problem and the fix;
 * nothing in the data directory has been changed or discarded when it is thrown.
 */
export class StoreOpenError extends Error {
  override readonly name = "StoreOpenError";

  constructor(
    readonly kind: StoreOpenErrorKind,
    /** The database file (or the data directory when the file was never reached). */
    readonly path: string,
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

/**
 * Thrown by `Store.write()` of a shared store (Redis) for sessions whose ops change part of
 * them while the store holds nothing of them: it lost them (Redis restarted without its data).
 * Nothing of those sessions was written, everything else in the batch was; the journal has the
 * core write them whole again (`session` ops from memory) instead of acknowledging what would
 * otherwise be applied to nothing.
 */
export class MissingSessionError extends Error {
  override readonly name = "MissingSessionError";

  constructor(readonly clientIds: readonly string[]) {
    super(`sessions missing from the store: ${clientIds.join(", ")}`);
  }
}
