/**
 * `$SYS/broker/...`: the broker's figures published as retained messages every
 * `[general] sys_interval` seconds, under the topic names Mosquitto uses, so existing dashboards
 * and `mosquitto_sub -t '$SYS/#'` habits carry over. A value is published only when it changed
 * (uptime always changes). Who may read them is the ACL's business (`$SYS/#`), as for any topic.
 */
import { utf8 } from "../protocol/bytes.ts";
import { Message } from "../protocol/message.ts";
import type { BrokerStats } from "./stats.ts";

/** Time constants of the load averages, in minutes, as in Mosquitto's `load/.../1min` etc. */
const LOAD_MINUTES = [1, 5, 15] as const;

/** The counters that have load averages, with the topic part after `$SYS/broker/load/`. */
const LOADS: readonly { topic: string; read: (s: BrokerStats) => number }[] = [
  { topic: "messages/received", read: (s) => s.metrics.publishReceived },
  { topic: "messages/sent", read: (s) => s.metrics.publishSent },
  { topic: "publish/received", read: (s) => s.metrics.publishReceived },
  { topic: "publish/sent", read: (s) => s.metrics.publishSent },
  { topic: "bytes/received", read: (s) => s.metrics.bytesReceived },
  { topic: "bytes/sent", read: (s) => s.metrics.bytesSent },
  { topic: "connections", read: (s) => s.metrics.connects },
];

export interface SysOptions {
  /** Seconds between updates; > 0. */
  intervalSeconds: number;
  /** Shown in `$SYS/broker/version`. */
  version: string;
  /** The broker's single publish entry point (broker-made messages, not subject to the ACL). */
  publish(msg: Message): void;
}

/** Publishes `$SYS/broker/...` topics on a timer. */
export class SysPublisher {
  private timer: ReturnType<typeof setInterval> | undefined;
  private readonly started = performance.now();
  private readonly last = new Map<string, string>();
  /** Per load counter: previous reading and the 1/5/15-minute averages (per minute). */
  private readonly loads = LOADS.map(() => ({ prev: 0, avg: [0, 0, 0] }));
  private lastTick = performance.now();

  constructor(private readonly stats: BrokerStats, private readonly opts: SysOptions) {
    this.loads.forEach((l, i) => (l.prev = LOADS[i].read(stats)));
  }

  /** Publishes once now, then every interval. */
  start(): void {
    if (this.timer !== undefined) return;
    this.tick();
    const timer = setInterval(() => this.tick(), this.opts.intervalSeconds * 1000);
    Deno.unrefTimer(timer);
    this.timer = timer;
  }

  stop(): void {
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** The current value of every topic, as published. */
  values(now = performance.now()): Map<string, string> {
    const s = this.stats;
    const m = s.metrics;
    const c = s.counts();
    const v = new Map<string, string>();
    const set = (topic: string, value: string | number) =>
      v.set(`$SYS/broker/${topic}`, `${value}`);
    set("version", `mcloudtt version ${this.opts.version}`);
    set("uptime", `${Math.floor((now - this.started) / 1000)} seconds`);
    set("clients/connected", c.sessionsOnline);
    set("clients/disconnected", c.sessionsOffline);
    set("clients/total", c.sessionsOnline + c.sessionsOffline);
    set("clients/expired", m.sessionsExpired);
    set("messages/received", m.publishReceived);
    set("messages/sent", m.publishSent);
    set("publish/messages/received", m.publishReceived);
    set("publish/messages/sent", m.publishSent);
    set(
      "publish/messages/dropped",
      m.droppedQos0 + m.droppedQueueFull + m.droppedQueueTotal + m.droppedTooLarge +
        m.droppedExpired + m.droppedSharedGone,
    );
    set("bytes/received", m.bytesReceived);
    set("bytes/sent", m.bytesSent);
    set("subscriptions/count", c.subscriptions);
    set("retained messages/count", c.retained);
    set("store/messages/count", c.queued);
    set("store/messages/bytes", m.queuedBytes);
    set("heap/current", Deno.memoryUsage().heapUsed);
    this.loads.forEach((l, i) => {
      LOAD_MINUTES.forEach((minutes, j) => {
        set(`load/${LOADS[i].topic}/${minutes}min`, l.avg[j].toFixed(2));
      });
    });
    return v;
  }

  /** Updates the load averages and publishes every changed value. */
  tick(now = performance.now()): void {
    const dt = (now - this.lastTick) / 1000;
    this.lastTick = now;
    if (dt > 0) {
      this.loads.forEach((l, i) => {
        const value = LOADS[i].read(this.stats);
        const perMinute = ((value - l.prev) * 60) / dt;
        l.prev = value;
        LOAD_MINUTES.forEach((minutes, j) => {
          // Exponentially weighted moving average with a time constant of `minutes`.
          const keep = Math.exp(-dt / (60 * minutes));
          l.avg[j] = perMinute + keep * (l.avg[j] - perMinute);
        });
      });
    }
    for (const [topic, value] of this.values(now)) {
      if (this.last.get(topic) === value) continue;
      this.last.set(topic, value);
      this.opts.publish(sysMessage(topic, value));
    }
  }
}

/** A retained QoS 0 message from the broker itself. */
export function sysMessage(topic: string, value: string): Message {
  return new Message(topic, utf8(topic), utf8(value), 0, true, null, 0, "");
}
