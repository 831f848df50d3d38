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
      const core = broker.core;
      const online = Math.min(core.connectionCount, core.sessionCount);
      return {
        subscriptions: broker.router.subscriptionCount,
        retained: broker.router.retained.size,
        sessionsOnline: online,
        sessionsOffline: Math.max(0, core.sessionCount - online),
        queued: 0,
      };
    },
    problems(): readonly string[] {
      const up = new Set(broker.addresses.map((a) => a.kind as string));
      const problems: string[] = [];
      for (const name of LISTENERS) {
        if (!listenerEnabled(broker.config, name)) continue;
        const kind = kindOf(broker, name);
        if (!up.has(kind)) problems.push(`listener ${name} (${kind}) is not listening`);
      }
      return problems;
    },
    publish(msg: Message): void {
      broker.core.publish(msg);
    },
  };
}
