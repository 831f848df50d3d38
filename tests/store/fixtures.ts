/**
 * Builders of stored state for the Store contract: hand-written fixtures, a
 * normal form for comparing what two stores load, and fast-check generators
 * of random journals (batches of ops over a few sessions, topics and shared
 * message objects).
 */
import fc from "fast-check";
import type {
  RetainedPageSize,
  SessionState,
  Store,
  StoredDelivery,
  StoredInflight,
  StoredMessage,
  StoredSubscription,
  StoreOp,
} from "../../src/store/types.ts";

/** Every byte value, so a store that treats payloads as text fails. */
export const ALL_BYTES = Uint8Array.from({ length: 256 }, (_, i) => i);

export function message(over: Partial<StoredMessage> = {}): StoredMessage {
  return {
    topic: "t/1",
    payload: new TextEncoder().encode("hello"),
    qos: 1,
    retain: false,
    props: null,
    expiresAt: 0,
    origin: "publisher",
    ...over,
  };
}

export function subscription(over: Partial<StoredSubscription> = {}): StoredSubscription {
  return {
    key: "t/#",
    qos: 1,
    noLocal: false,
    retainAsPublished: false,
    retainHandling: 0,
    subscriptionId: 0,
    ...over,
  };
}

export function delivery(msg: StoredMessage, over: Partial<StoredDelivery> = {}): StoredDelivery {
  return { msg, qos: 1, retain: false, subIds: null, ...over };
}

export function inflight(
  packetId: number,
  msg: StoredMessage,
  over: Partial<StoredInflight> = {},
): StoredInflight {
  return { msg, qos: 1, retain: false, subIds: null, packetId, released: false, ...over };
}

/** An empty detached session. */
export function session(clientId: string, over: Partial<SessionState> = {}): SessionState {
  return {
    clientId,
    owner: null,
    expiryInterval: 3600,
    expiresAt: 1_900_000_000_000,
    will: null,
    willAt: 0,
    subscriptions: [],
    queue: [],
    inflight: [],
    incomingQos2: [],
    ...over,
  };
}

/** A session using every field: subscriptions with options and ids, queue, inflight, will. */
export function fullSession(clientId: string): SessionState {
  const m1 = message({ topic: "a/b", payload: ALL_BYTES, props: Uint8Array.of(1, 0, 0x26, 0) });
  const m2 = message({ topic: "a/c", qos: 2, retain: true, expiresAt: 1_800_000_000_123 });
  return session(clientId, {
    owner: "alice",
    expiryInterval: 0xFFFFFFFF,
    expiresAt: Infinity,
    will: {
      msg: message({ topic: "will/" + clientId, qos: 2, retain: true, origin: clientId }),
      delay: 30,
      expiry: 120,
    },
    willAt: 1_800_000_000_999,
    subscriptions: [
      subscription({ key: "a/#", qos: 2, subscriptionId: 7 }),
      subscription({ key: "$share/g/a/+", noLocal: true, retainAsPublished: true }),
      subscription({ key: "x/y", qos: 0, retainHandling: 2, subscriptionId: 268435455 }),
    ],
    queue: [
      { ...delivery(m1, { subIds: [7] }), seq: 10 },
      { ...delivery(m2, { qos: 2, retain: true, subIds: [] }), seq: 11 },
    ],
    inflight: [
      inflight(1, m1, { qos: 2, released: true }),
      inflight(65535, m2, { subIds: [1, 268435455] }),
    ],
    incomingQos2: [5, 1, 65535],
  });
}

/** Copies a byte array into a plain Uint8Array (a Buffer or a view compares equal). */
function bytes(b: Uint8Array): Uint8Array {
  return new Uint8Array(b);
}

function normalMessage(m: StoredMessage): StoredMessage {
  return { ...m, payload: bytes(m.payload), props: m.props === null ? null : bytes(m.props) };
}

function normalDelivery<T extends StoredDelivery>(d: T): T {
  return { ...d, msg: normalMessage(d.msg), subIds: d.subIds === null ? null : [...d.subIds] };
}

/**
 * What must be equal between two stores: order matters for subscriptions,
 * queue and inflight (delivery and resend order), not for sessions, retained
 * messages or the set of incoming QoS 2 ids.
 */
export function normalSession(s: SessionState): SessionState {
  return {
    ...s,
    will: s.will === null ? null : { ...s.will, msg: normalMessage(s.will.msg) },
    subscriptions: s.subscriptions.map((x) => ({ ...x })),
    queue: s.queue.map(normalDelivery),
    inflight: s.inflight.map(normalDelivery),
    incomingQos2: [...s.incomingQos2].sort((a, b) => a - b),
  };
}

export function normalSessions(list: readonly SessionState[]): SessionState[] {
  return list.map(normalSession).sort((a, b) => a.clientId < b.clientId ? -1 : 1);
}

/**
 * Every retained message of `store` in topic order, read a few at a time (`size`) so that
 * every test that looks at them goes through paging.
 */
export async function loadRetained(
  store: Store,
  size: RetainedPageSize = { messages: 3, bytes: 1 << 20 },
): Promise<StoredMessage[]> {
  const all: StoredMessage[] = [];
  for await (const page of store.retainedPages(size)) all.push(...page);
  return all;
}

export function normalRetained(list: readonly StoredMessage[]): StoredMessage[] {
  return list.map(normalMessage).sort((a, b) => a.topic < b.topic ? -1 : 1);
}

// ---------------------------------------------------------------------------------------------
// Random journals. Ops refer to a small pool of client ids, topics, packet ids and message
// objects, so replacements, deletions of existing rows and shared messages happen often.

const CLIENTS = ["c1", "c2", "c3", "ü-客户"];
/**
 * With topics whose UTF-8 (code point) order is not their UTF-16 order: U+FF01 sorts after
 * U+1F600 in JavaScript, before it in UTF-8 (see src/store/sqlite_order.ts).
 */
const TOPICS = ["a", "a/b", "sensors/温度", "$SYS/x", "a\uFF01", "a\u{1F600}", "B"];

const text = fc.string({ unit: "grapheme", maxLength: 8 });
const packetId = fc.constantFrom(1, 2, 3, 65535);
const subIds = fc.option(fc.array(fc.integer({ min: 1, max: 268435455 }), { maxLength: 3 }), {
  nil: null,
});
const expiresAt = fc.constantFrom(0, 1_700_000_000_000, 1_700_000_000_001.5, Infinity);

const messageArb: fc.Arbitrary<StoredMessage> = fc.record({
  topic: fc.constantFrom(...TOPICS),
  payload: fc.uint8Array({ maxLength: 40 }),
  qos: fc.constantFrom(0, 1, 2),
  retain: fc.boolean(),
  props: fc.option(fc.uint8Array({ maxLength: 12 }), { nil: null }),
  expiresAt: fc.constantFrom(0, 1_700_000_000_000, 4_102_444_800_000),
  origin: text,
});

/** An op before it is bound to the run's message pool and sequence counter. */
type OpSpec =
  | { kind: "session"; clientId: string; state: StateSpec }
  | { kind: "session-delete"; clientId: string }
  | { kind: "enqueue"; clientId: string; msg: number; qos: 1 | 2; retain: boolean; ids: Ids }
  | { kind: "dequeue"; clientId: string; pick: number }
  | {
    kind: "inflight";
    clientId: string;
    msg: number;
    packetId: number;
    qos: 1 | 2;
    released: boolean;
    ids: Ids;
  }
  | { kind: "inflight-delete"; clientId: string; packetId: number }
  | { kind: "qos2-add"; clientId: string; packetId: number }
  | { kind: "qos2-delete"; clientId: string; packetId: number }
  | { kind: "subscribe"; clientId: string; sub: StoredSubscription }
  | { kind: "unsubscribe"; clientId: string; key: string }
  | { kind: "retain"; msg: number; topic: string }
  | { kind: "retain-delete"; topic: string }
  | { kind: "retain-delete-range"; after: string | null; before: string | null };

type Ids = number[] | null;

interface StateSpec {
  owner: string | null;
  expiryInterval: number;
  expiresAt: number;
  will: { msg: number; delay: number; expiry: number } | null;
  willAt: number;
  subscriptions: StoredSubscription[];
  queue: { msg: number; qos: 1 | 2; retain: boolean; ids: Ids }[];
  inflight: { msg: number; packetId: number; qos: 1 | 2; released: boolean; ids: Ids }[];
  incomingQos2: number[];
}

const client = fc.constantFrom(...CLIENTS);
const msgRef = fc.nat(15);
const qos12 = fc.constantFrom<1 | 2>(1, 2);

const SUB_KEYS = ["a/#", "+/b", "$share/g/a", "#", "温度/+"];

const subscriptionArb: fc.Arbitrary<StoredSubscription> = fc.record({
  key: fc.constantFrom(...SUB_KEYS),
  qos: fc.constantFrom(0, 1, 2),
  noLocal: fc.boolean(),
  retainAsPublished: fc.boolean(),
  retainHandling: fc.constantFrom(0, 1, 2),
  subscriptionId: fc.constantFrom(0, 1, 268435455),
});

const stateSpec: fc.Arbitrary<StateSpec> = fc.record({
  owner: fc.option(text, { nil: null }),
  expiryInterval: fc.constantFrom(0, 60, 0xFFFFFFFF),
  expiresAt,
  will: fc.option(
    fc.record({
      msg: msgRef,
      delay: fc.constantFrom(0, 5, 0xFFFFFFFF),
      expiry: fc.constantFrom(-1, 0, 300),
    }),
    { nil: null },
  ),
  willAt: expiresAt,
  // A session holds one subscription per key (the router's), as the core writes it.
  subscriptions: fc.uniqueArray(subscriptionArb, { maxLength: 3, selector: (s) => s.key }),
  queue: fc.array(
    fc.record({ msg: msgRef, qos: qos12, retain: fc.boolean(), ids: subIds }),
    { maxLength: 4 },
  ),
  inflight: fc.uniqueArray(
    fc.record({
      msg: msgRef,
      packetId,
      qos: qos12,
      released: fc.boolean(),
      ids: subIds,
    }),
    { maxLength: 3, selector: (f) => f.packetId },
  ),
  incomingQos2: fc.uniqueArray(packetId, { maxLength: 3 }),
});

const opSpec: fc.Arbitrary<OpSpec> = fc.oneof<fc.MaybeWeightedArbitrary<OpSpec>[]>(
  {
    arbitrary: fc.record({ kind: fc.constant("session"), clientId: client, state: stateSpec }),
    weight: 1,
  },
  { arbitrary: fc.record({ kind: fc.constant("session-delete"), clientId: client }), weight: 1 },
  {
    arbitrary: fc.record({
      kind: fc.constant("enqueue"),
      clientId: client,
      msg: msgRef,
      qos: qos12,
      retain: fc.boolean(),
      ids: subIds,
    }),
    weight: 4,
  },
  {
    arbitrary: fc.record({ kind: fc.constant("dequeue"), clientId: client, pick: fc.nat(50) }),
    weight: 2,
  },
  {
    arbitrary: fc.record({
      kind: fc.constant("inflight"),
      clientId: client,
      msg: msgRef,
      packetId,
      qos: qos12,
      released: fc.boolean(),
      ids: subIds,
    }),
    weight: 3,
  },
  {
    arbitrary: fc.record({ kind: fc.constant("inflight-delete"), clientId: client, packetId }),
    weight: 2,
  },
  {
    arbitrary: fc.record({ kind: fc.constant("qos2-add"), clientId: client, packetId }),
    weight: 1,
  },
  {
    arbitrary: fc.record({ kind: fc.constant("qos2-delete"), clientId: client, packetId }),
    weight: 1,
  },
  {
    arbitrary: fc.record({
      kind: fc.constant("subscribe"),
      clientId: client,
      sub: subscriptionArb,
    }),
    weight: 3,
  },
  {
    arbitrary: fc.record({
      kind: fc.constant("unsubscribe"),
      clientId: client,
      key: fc.constantFrom(...SUB_KEYS),
    }),
    weight: 2,
  },
  {
    arbitrary: fc.record({
      kind: fc.constant("retain"),
      msg: msgRef,
      topic: fc.constantFrom(...TOPICS),
    }),
    weight: 1,
  },
  {
    arbitrary: fc.record({ kind: fc.constant("retain-delete"), topic: fc.constantFrom(...TOPICS) }),
    weight: 1,
  },
  {
    arbitrary: fc.record({
      kind: fc.constant("retain-delete-range"),
      after: fc.option(fc.constantFrom(...TOPICS), { nil: null }),
      before: fc.option(fc.constantFrom(...TOPICS), { nil: null }),
    }),
    weight: 1,
  },
);

/**
 * Random journals: batches of ops. Message objects are shared between ops (the
 * same object enqueued to several sessions, moved from queue to inflight, in
 * one batch or across batches), sequence numbers grow like the core's.
 */
export const journalArb: fc.Arbitrary<StoreOp[][]> = fc.record({
  pool: fc.array(messageArb, { minLength: 16, maxLength: 16 }),
  batches: fc.array(fc.array(opSpec, { maxLength: 12 }), { minLength: 1, maxLength: 8 }),
}).map(({ pool, batches }) => {
  let seq = 0;
  const issued: { clientId: string; seq: number }[] = [];
  const enq = (clientId: string, item: { msg: number; qos: 1 | 2; retain: boolean; ids: Ids }) => {
    seq++;
    issued.push({ clientId, seq });
    return {
      seq,
      item: { msg: pool[item.msg], qos: item.qos, retain: item.retain, subIds: item.ids },
    };
  };
  const bind = (o: OpSpec): StoreOp => {
    switch (o.kind) {
      case "session": {
        const s = o.state;
        return {
          type: "session",
          state: {
            clientId: o.clientId,
            owner: s.owner,
            expiryInterval: s.expiryInterval,
            expiresAt: s.expiresAt,
            will: s.will === null
              ? null
              : { msg: pool[s.will.msg], delay: s.will.delay, expiry: s.will.expiry },
            willAt: s.willAt,
            subscriptions: s.subscriptions,
            queue: s.queue.map((q) => {
              const { seq, item } = enq(o.clientId, q);
              return { ...item, seq };
            }),
            inflight: s.inflight.map((f) => ({
              msg: pool[f.msg],
              qos: f.qos,
              retain: false,
              subIds: f.ids,
              packetId: f.packetId,
              released: f.released,
            })),
            incomingQos2: s.incomingQos2,
          },
        };
      }
      case "session-delete":
        return { type: "session-delete", clientId: o.clientId };
      case "enqueue": {
        const { seq, item } = enq(o.clientId, o);
        return { type: "enqueue", clientId: o.clientId, seq, item };
      }
      case "dequeue": {
        // Mostly a sequence number issued before (maybe to another client), sometimes unknown.
        const hit = issued[o.pick];
        return hit
          ? { type: "dequeue", clientId: hit.clientId, seq: hit.seq }
          : { type: "dequeue", clientId: o.clientId, seq: 1_000_000 + o.pick };
      }
      case "inflight":
        return {
          type: "inflight",
          clientId: o.clientId,
          item: {
            msg: pool[o.msg],
            qos: o.qos,
            retain: false,
            subIds: o.ids,
            packetId: o.packetId,
            released: o.released,
          },
        };
      case "inflight-delete":
      case "qos2-add":
      case "qos2-delete":
        return { type: o.kind, clientId: o.clientId, packetId: o.packetId };
      case "subscribe":
        return { type: "subscribe", clientId: o.clientId, sub: o.sub };
      case "unsubscribe":
        return { type: "unsubscribe", clientId: o.clientId, key: o.key };
      case "retain":
        return { type: "retain", msg: { ...pool[o.msg], topic: o.topic, retain: true } };
      case "retain-delete":
        return { type: "retain-delete", topic: o.topic };
      case "retain-delete-range":
        return { type: "retain-delete-range", after: o.after, before: o.before };
    }
  };
  return batches.map((b) => b.map(bind));
});
