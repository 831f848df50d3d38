/**
 * `bq-adapter`'s own /metrics: its connection to the broker, the messages it received and
 * acknowledged, the topic log it writes (the same `mcloudtt_topic_log_*` families as the
 * broker's, so one dashboard reads both deployments) and the process. Read at scrape time from
 * the consumer's and the sink's counters.
 */
import type { ConsumerStats } from "../adapter/consumer.ts";
import type { SinkStats } from "../sinks/stats.ts";
import {
  CONTENT_TYPE,
  type Family,
  gaugeFamily,
  processFamilies,
  render,
  topicLogFamilies,
} from "./exposition.ts";
import { EventLoopLag } from "./lag.ts";

export interface AdapterSources {
  consumer: ConsumerStats;
  /** Unacknowledged messages of the current connection. */
  unacked(): number;
  sink(): readonly SinkStats[];
}

function counterFamily(name: string, help: string, read: () => number): Family {
  return { name, help, type: "counter", samples: () => [["", "", read()] as const] };
}

export class AdapterExposition {
  private readonly lag = new EventLoopLag();
  private readonly families: Family[];
  private readonly resetProcess: () => void;

  constructor(src: AdapterSources) {
    const c = src.consumer;
    const process = processFamilies(this.lag);
    this.resetProcess = process.reset;
    this.families = [
      gaugeFamily(
        "mcloudtt_adapter_connected",
        "1 while subscribed to the broker, else 0",
        () => c.connected ? 1 : 0,
      ),
      counterFamily(
        "mcloudtt_adapter_sessions_total",
        "Connections to the broker that reached a session (new or resumed)",
        () => c.sessions,
      ),
      counterFamily(
        "mcloudtt_adapter_connections_lost_total",
        "Connections to the broker that failed or were lost",
        () => c.lost,
      ),
      counterFamily(
        "mcloudtt_adapter_messages_received_total",
        "Messages received and handed to the topic log",
        () => c.received,
      ),
      counterFamily(
        "mcloudtt_adapter_messages_duplicate_total",
        "Messages the broker sent again while their first copy was still being written",
        () => c.duplicates,
      ),
      counterFamily(
        "mcloudtt_adapter_messages_acknowledged_total",
        "PUBACKs sent: messages whose row was written, refused for good or spilled",
        () => c.acknowledged,
      ),
      gaugeFamily(
        "mcloudtt_adapter_unacknowledged_messages",
        "Messages of the current connection not acknowledged yet",
        () => src.unacked(),
      ),
      ...topicLogFamilies(src.sink),
      ...process.families,
    ];
  }

  /** Content type of `metrics()`. */
  get contentType(): string {
    return CONTENT_TYPE;
  }

  /** The text exposition, as of now. */
  metrics(): Promise<string> {
    this.resetProcess();
    try {
      return Promise.resolve(render(this.families));
    } finally {
      this.resetProcess();
    }
  }

  /** Stops the event-loop lag timer. */
  close(): void {
    this.lag.stop();
  }
}
