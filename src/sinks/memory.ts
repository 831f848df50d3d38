/** Sinks that keep nothing outside the process: the default (none) and a bounded in-memory log. */
import type { Message } from "../protocol/message.ts";
import type { PublishInfo, Sink } from "./types.ts";

/** The default: no topic log. */
export const noSink: Sink = {
  name: "none",
  start: () => Promise.resolve(),
  offer: () => {},
  stop: () => Promise.resolve(),
};

/** One logged message. */
export interface MemoryRecord {
  readonly msg: Message;
  readonly info: PublishInfo;
}

/**
 * Keeps the last `capacity` offered messages in memory (older ones are
 * dropped and counted). For embedders and tests that want to see the log.
 */
export class MemorySink implements Sink {
  readonly name = "memory";
  readonly records: MemoryRecord[] = [];
  dropped = 0;

  constructor(readonly capacity = 10_000) {}

  start(): Promise<void> {
    return Promise.resolve();
  }

  offer(msg: Message, info: PublishInfo): void {
    if (this.records.length >= this.capacity) {
      this.records.shift();
      this.dropped++;
    }
    this.records.push({ msg: msg.own(), info });
  }

  stop(_deadlineMs: number): Promise<void> {
    return Promise.resolve();
  }
}
