/**
 * Resolves the topic of each incoming PUBLISH: Topic Aliases the client set
 * up, the previous packet's topic recognised by its bytes (publishers repeat
 * topics), validation of new names. Keeps its answer in fields instead of
 * returning an object, so the hot path allocates nothing for a known topic.
 */
import type { IncomingPublish, KnownTopic } from "../protocol/publish.ts";
import { MalformedPacketError, ProtocolError, ReasonCode } from "../protocol/reason_codes.ts";
import { topicNameProblem } from "../protocol/topic.ts";
import type { CoreLimits } from "./limits.ts";

interface Alias {
  topic: string;
  bytes: Uint8Array;
}

export class InboundTopics {
  /** The topic of the previous PUBLISH (see decodePublish). */
  last: KnownTopic | null = null;
  private aliases: Map<number, Alias> | null = null;
  /** The resolved topic of the packet passed to `resolve`. */
  topic = "";
  topicBytes: Uint8Array = new Uint8Array(0);

  constructor(private readonly limits: CoreLimits, private readonly v5: boolean) {}

  /** Sets `topic`/`topicBytes` for `p` (decoded from `buf`); throws the spec's error. */
  resolve(p: IncomingPublish, buf: Uint8Array): void {
    let topic = p.topic;
    let topicBytes: Uint8Array | null = p.known ? this.last!.bytes : null;
    let validated = p.known;
    if (p.topicAlias !== 0) {
      if (p.topicAlias > this.limits.topicAliasMaximum) {
        throw new ProtocolError(ReasonCode.TopicAliasInvalid, "Topic Alias above the maximum");
      }
      const aliases = this.aliases ??= new Map();
      if (topic.length === 0) {
        const a = aliases.get(p.topicAlias);
        if (a === undefined) {
          throw new ProtocolError(ReasonCode.ProtocolError, "Topic Alias not yet defined");
        }
        topic = a.topic;
        topicBytes = a.bytes;
        validated = true;
      } else {
        topicBytes ??= buf.slice(p.topicStart, p.topicEnd);
        aliases.set(p.topicAlias, { topic, bytes: topicBytes });
      }
    } else if (topic.length === 0) {
      if (this.v5) {
        throw new ProtocolError(ReasonCode.ProtocolError, "PUBLISH without topic or Topic Alias");
      }
      throw new MalformedPacketError("PUBLISH with an empty topic");
    }
    if (!validated) {
      const problem = topicNameProblem(topic, this.limits);
      if (problem !== null) {
        throw new ProtocolError(
          ReasonCode.TopicNameInvalid,
          problem === "invalid" ? "invalid topic name" : "topic name exceeds limits",
        );
      }
      topicBytes ??= buf.slice(p.topicStart, p.topicEnd);
      this.last = { topic, bytes: topicBytes };
    }
    this.topic = topic;
    // Set above: the known topic, the alias, or the fresh copy.
    this.topicBytes = topicBytes!;
  }
}
