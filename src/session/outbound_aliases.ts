/**
 * Server-to-client Topic Aliases of one connection [MQTT-3.3.2.3.4]: which
 * alias stands for which topic, for at most the Topic Alias Maximum the client
 * allowed (capped by limits.max_outgoing_topic_aliases). When every alias is
 * taken, a new topic replaces one not used since the clock hand last passed
 * it (second chance, close to least-recently-used at the cost of one store
 * per hit rather than a reordering).
 */
export class OutboundAliases {
  private readonly byTopic = new Map<string, number>();
  /** The topic of each alias (index 0 unused). */
  private readonly topics: (string | undefined)[];
  /** 1 when the alias was used since the clock hand last passed it. */
  private readonly used: Uint8Array;
  private hand = 1;
  private count = 0;

  constructor(readonly max: number) {
    this.topics = new Array(max + 1);
    this.used = new Uint8Array(max + 1);
  }

  /** The alias standing for `topic` (now marked as used), or 0. */
  find(topic: string): number {
    const a = this.byTopic.get(topic);
    if (a === undefined) return 0;
    this.used[a] = 1;
    return a;
  }

  /** The alias a new topic would get: a free one, else the first the clock hand finds unused. */
  next(): number {
    if (this.count < this.max) return this.count + 1;
    const used = this.used;
    for (;;) {
      const a = this.hand;
      if (used[a] === 0) return a;
      used[a] = 0;
      this.hand = a === this.max ? 1 : a + 1;
    }
  }

  /** `alias` (from `next`) now stands for `topic`: the PUBLISH that says so was queued. */
  bind(topic: string, alias: number): void {
    const old = this.topics[alias];
    if (old === undefined) this.count++;
    else {
      this.byTopic.delete(old);
      if (alias === this.hand) this.hand = alias === this.max ? 1 : alias + 1;
    }
    this.topics[alias] = topic;
    this.byTopic.set(topic, alias);
    this.used[alias] = 1;
  }
}
