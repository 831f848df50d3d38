/**
 * `bq-adapter`'s own /metrics: its connection to the broker, the messages it received and
 * acknowledged, the topic log it writes (the same `mcloudtt_topic_log_*` families as the
 * broker's, so one dashboard reads both deployments) and the process. Read at scrape time from
 * the consumer's and the sink's counters.
 */
import type { ConsumerStats } from "../adapter/consumer.ts";
import type { SinkStats } from "../sinks/stats.ts";
import {
  counterFamily,
  FamilySet,
  gaugeFamily,
  processFamilies,
  topicLogFamilies,
} from "./exposition.ts";

export interface AdapterSources {
  consumer: ConsumerStats;
  /** Unacknowledged messages of the current connection. */
  unacked(): number;
  sink(): readonly SinkStats[];
}

export class AdapterExposition extends FamilySet {
  constructor(src: AdapterSources) {
    super();
    const c = src.consumer;
    const process = processFamilies(this.lag);
    this.resetPerScrape = process.reset;
    this.families.push(
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
    );
  }
}
