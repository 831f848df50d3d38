/**
 * The contract every topic-log Sink keeps, as one suite run against each
 * implementation: a factory makes the sink under test and reads back what it
 * logged; `skip` names cases that do not apply, with the reason.
 */
import assert from "node:assert/strict";
import { utf8 } from "../../src/protocol/bytes.ts";
import { Message } from "../../src/protocol/message.ts";
import { encodePassthrough } from "../../src/protocol/properties.ts";
import type { PublishInfo, Sink } from "../../src/sinks/types.ts";

/** A logged message, the same shape whatever the sink stores. */
export interface LoggedRecord {
  topic: string;
  payload: Uint8Array;
  qos: number;
  retain: boolean;
  clientId: string;
  username: string | null;
  contentType: string | null;
  payloadFormat: number | null;
  userProperties: [string, string][];
  kind: string;
}

export interface SinkUnderTest {
  sink: Sink;
  /** What reached the destination so far. */
  logged(): Promise<LoggedRecord[]>;
  /** Makes the destination stop answering until release() (absent when it cannot stall). */
  stall?(): void;
  release?(): void;
  [Symbol.asyncDispose](): Promise<void>;
}

export interface ContractOptions {
  name: string;
  newSink(): Promise<SinkUnderTest>;
  /** Case title -> why it does not apply to this sink. */
  skip?: Record<string, string>;
}

export interface TestMessageOptions {
  qos?: 0 | 1 | 2;
  retain?: boolean;
  contentType?: string;
  payloadFormatIndicator?: number;
  userProperties?: [string, string][];
  /** Make payload and properties views that the caller may overwrite (like a read buffer). */
  borrowed?: boolean;
}

/** A Message as the broker builds one for a PUBLISH. */
export function testMessage(
  topic: string,
  payload: Uint8Array | string,
  clientId = "publisher",
  opts: TestMessageOptions = {},
): Message {
  const bytes = typeof payload === "string" ? utf8(payload) : payload;
  const props = encodePassthrough({
    contentType: opts.contentType,
    payloadFormatIndicator: opts.payloadFormatIndicator,
    userProperties: opts.userProperties,
  });
  return new Message(
    topic,
    utf8(topic),
    bytes,
    opts.qos ?? 0,
    opts.retain ?? false,
    props,
    0,
    clientId,
    !opts.borrowed,
  );
}

export function info(clientId = "publisher", username?: string): PublishInfo {
  return { clientId, username, receivedAt: Date.now(), kind: "client" };
}

const text = new TextDecoder();

export function runSinkContract(opts: ContractOptions): void {
  const cases: [string, (t: SinkUnderTest) => Promise<void>][] = [
    ["every offered message is logged once, in order, with who published it", async (t) => {
      await t.sink.start();
      for (let i = 0; i < 50; i++) {
        t.sink.offer(
          testMessage(`c/${i}`, `m${i}`, "alice", { qos: (i % 3) as 0 | 1 | 2, retain: i === 7 }),
          info("alice", "al"),
        );
      }
      await t.sink.stop(5000);
      const got = await t.logged();
      assert.deepEqual(got.map((r) => r.topic), Array.from({ length: 50 }, (_, i) => `c/${i}`));
      assert.deepEqual(got.map((r) => text.decode(r.payload)).slice(0, 3), ["m0", "m1", "m2"]);
      assert.deepEqual(got.map((r) => r.qos).slice(0, 4), [0, 1, 2, 0]);
      assert.equal(got[7].retain, true);
      assert.equal(got[8].retain, false);
      assert.equal(got[0].clientId, "alice");
      assert.equal(got[0].username, "al");
      assert.equal(got[0].kind, "client");
    }],
    ["binary payloads and MQTT 5 properties survive", async (t) => {
      await t.sink.start();
      const binary = new Uint8Array([0, 0xff, 0xfe, 0x80, 10, 13]);
      t.sink.offer(
        testMessage("b/1", binary, "p", {
          contentType: "application/octet-stream",
          payloadFormatIndicator: 0,
          userProperties: [["a", "1"], ["a", "2"], ["ü", "✓"]],
        }),
        info("p"),
      );
      t.sink.offer(testMessage("b/2", "", "p"), info("p"));
      await t.sink.stop(5000);
      const [b1, b2] = await t.logged();
      assert.deepEqual([...b1.payload], [...binary]);
      assert.equal(b1.contentType, "application/octet-stream");
      assert.equal(b1.payloadFormat, 0);
      assert.deepEqual(b1.userProperties, [["a", "1"], ["a", "2"], ["ü", "✓"]]);
      assert.equal(b2.payload.length, 0);
      assert.equal(b2.contentType, null);
      assert.deepEqual(b2.userProperties, []);
    }],
    ["offer copies what it keeps: a reused read buffer does not change the log", async (t) => {
      await t.sink.start();
      const buffer = utf8("first");
      t.sink.offer(testMessage("r/1", buffer, "p", { borrowed: true }), info("p"));
      buffer.set(utf8("XXXXX"));
      await t.sink.stop(5000);
      const [r] = await t.logged();
      assert.equal(text.decode(r.payload), "first");
    }],
    ["offer returns at once and never throws, even after stop", async (t) => {
      await t.sink.start();
      const t0 = performance.now();
      for (let i = 0; i < 2000; i++) t.sink.offer(testMessage(`f/${i}`, "x"), info());
      const perOffer = (performance.now() - t0) / 2000;
      assert.ok(perOffer < 0.5, `offer took ${perOffer.toFixed(3)} ms on average`);
      await t.sink.stop(5000);
      t.sink.offer(testMessage("after/stop", "x"), info());
    }],
    ["offer never waits for a stalled destination, and stop keeps its deadline", async (t) => {
      await t.sink.start();
      t.stall!();
      try {
        t.sink.offer(testMessage("s/0", "x"), info());
        await new Promise((r) => setTimeout(r, 100)); // a send is now stuck
        const t0 = performance.now();
        for (let i = 1; i <= 1000; i++) t.sink.offer(testMessage(`s/${i}`, "x"), info());
        const took = performance.now() - t0;
        assert.ok(took < 500, `1000 offers took ${took.toFixed(0)} ms while stalled`);
        const s0 = performance.now();
        await t.sink.stop(300);
        const stopTook = performance.now() - s0;
        assert.ok(stopTook < 2000, `stop(300) took ${stopTook.toFixed(0)} ms`);
      } finally {
        t.release!();
      }
    }],
    ["messages offered before start are logged once it starts", async (t) => {
      t.sink.offer(testMessage("early/1", "x"), info());
      await t.sink.start();
      await t.sink.stop(5000);
      assert.deepEqual((await t.logged()).map((r) => r.topic), ["early/1"]);
    }],
  ];

  for (const [title, fn] of cases) {
    const reason = opts.skip?.[title];
    Deno.test({
      name: `[${opts.name}] ${title}${reason ? ` (skipped: ${reason})` : ""}`,
      ignore: reason !== undefined,
      async fn() {
        await using t = await opts.newSink();
        await fn(t);
      },
    });
  }
}
