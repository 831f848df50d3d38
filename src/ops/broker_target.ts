/**
 * Adapts a running `Broker` to what the operations side reads (`OpsTarget`).
 */
import type { Broker } from "../broker.ts";
import { listenerEnabled, type ListenerName, LISTENERS, listenerTls } from "../config/mod.ts";
import type { Message } from "../protocol/message.ts";
import type { OpsTarget } from "./operations.ts";
import type { StateCounts } from "./stats.ts";

/** The transport kind a configured listener runs as. */
function kindOf(broker: Broker, name: ListenerName): string {
  const tls = listenerTls(broker.config, name);
  return name === "tcp" ? (tls ? "tls" : "tcp") : (tls ? "wss" : "ws");
}

export function brokerTarget(broker: Broker): OpsTarget {
  return {
    metrics: broker.metrics,
    counts(): StateCounts {
      // Kept as sessions come and go, not counted per scrape: a scrape walking a million
      // sessions cost milliseconds of the event loop, as often as anyone could ask.
      const online = broker.metrics.sessionsOnline;
      const backlog = broker.core.bus.backlogStats;
      return {
        subscriptions: broker.router.subscriptionCount,
        retained: broker.router.retained.size,
        sessionsOnline: online,
        // A session ended while its connection is closing still counts online for a moment.
        sessionsOffline: Math.max(0, broker.core.sessionCount - online),
        queued: broker.metrics.queuedMessages,
        storeUnwritten: broker.core.journal?.unwritten ?? 0,
        storeWriteFailures: broker.core.journal?.stats.failures ?? 0,
        inboxBacklog: backlog?.own ?? 0,
        nodesBehind: backlog?.over ?? 0,
        forwardsHeld: backlog?.held ?? 0,
        forwardsDropped: backlog?.dropped ?? 0,
      };
    },
    problems(): readonly string[] {
      const up = new Set(broker.addresses.map((a) => a.kind as string));
      const problems: string[] = [];
      if (broker.waitingForBackends) {
        problems.push("starting: waiting for the store and the cluster bus (see the log)");
      }
      for (const name of LISTENERS) {
        if (!listenerEnabled(broker.config, name)) continue;
        const kind = kindOf(broker, name);
        if (!up.has(kind)) problems.push(`listener ${name} (${kind}) is not listening`);
      }
      for (const p of broker.core.bus.problems) problems.push(`cluster: ${p}`);
      const failing = broker.core.journal?.failingFor ?? 0;
      if (failing > 0) {
        problems.push(
          `store: writes failing for ${Math.round(failing / 1000)} s, ` +
            `${broker.core.journal!.unwritten} operations unwritten (retrying)`,
        );
      }
      for (const p of broker.core.store.problems ?? []) problems.push(`store: ${p}`);
      return problems;
    },
    publish(msg: Message): void {
      // Broker-made: the router delivers it to `$SYS/#` subscribers the ACL let subscribe.
      broker.core.publish(msg, {
        clientId: "",
        username: undefined,
        receivedAt: Date.now(),
        kind: "sys",
      });
    },
  };
}
