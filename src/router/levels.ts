/**
 * The children of a trie node (subscription index and retained store), keyed
 * by topic level. Deep filters and topics are chains where each level has one
 * child: that child is held inline, and a Map is made only when a second one
 * arrives, so a level of a chain costs one small object, not an object and a
 * Map. Two fields serve both cases, since every field of a node is paid for
 * at every level (measured, 128-level filters: 236 bytes of heap per level
 * with a Map per node, 61 with this).
 */
export class Levels<T> {
  /** The level name of the only child; null when there are none or several. */
  private key: string | null = null;
  /** The only child (when `key` is set), a Map of several (when it is not), or null. */
  private next: T | Map<string, T> | null = null;

  get hasChildren(): boolean {
    return this.next !== null;
  }

  child(level: string): T | undefined {
    const next = this.next;
    if (next === null) return undefined;
    if (this.key === null) return (next as Map<string, T>).get(level);
    return this.key === level ? next as T : undefined;
  }

  setChild(level: string, node: T): void {
    const next = this.next;
    if (next === null || this.key === level) {
      this.key = level;
      this.next = node;
    } else if (this.key === null) {
      (next as Map<string, T>).set(level, node);
    } else {
      this.next = new Map([[this.key, next as T], [level, node]]);
      this.key = null;
    }
  }

  deleteChild(level: string): void {
    const next = this.next;
    if (next === null) return;
    if (this.key !== null) {
      if (this.key === level) {
        this.key = null;
        this.next = null;
      }
      return;
    }
    const map = next as Map<string, T>;
    map.delete(level);
    if (map.size === 0) this.next = null;
  }

  /** Every child with its level name. */
  *children(): IterableIterator<[string, T]> {
    const next = this.next;
    if (next === null) return;
    if (this.key !== null) yield [this.key, next as T];
    else yield* next as Map<string, T>;
  }
}
