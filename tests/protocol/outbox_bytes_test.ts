/**
 * The bytes the Outbox writes against mqtt-packet, the independent oracle:
 * acknowledgements (one write per turn, the short form for reason codes without
 * properties), PINGRESP, and PUBLISH forms shared by every receiver with each
 * receiver's packet id written into its copy.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { utf8 } from "../../src/protocol/bytes.ts";
import { type ByteWriter, Outbox } from "../../src/protocol/outbox.ts";
import {
  encodeAck,
  encodePublish,
  PINGRESP,
  publishForm,
  SHARED_PAYLOAD_MIN,
} from "../../src/protocol/publish.ts";
import { filled, gen, messageFor, parse } from "./publish_fixtures.ts";

/** A ByteWriter that records every write; the Outbox's transport side in a test. */
class RecordingSink implements ByteWriter {
  writes: Uint8Array[] = [];
  closed = false;
  private waiting: (() => void) | null = null;

  write(bytes: Uint8Array): Promise<void> {
    this.writes.push(bytes.slice());
    this.waiting?.();
    this.waiting = null;
    return Promise.resolve();
  }

  end(): void {
    this.closed = true;
  }

  close(): void {
    this.closed = true;
  }

  /** Resolves once a write has happened. */
  written(): Promise<void> {
    if (this.writes.length > 0) return Promise.resolve();
    return new Promise((r) => (this.waiting = r));
  }
}

function newOutbox(sink: ByteWriter): Outbox {
  return new Outbox(sink, {
    drained() {},
    writeFailed(e) {
      throw e;
    },
  });
}

/** Each acknowledgement with reason codes the spec allows for it. */
const ACKS = [
  [4, "puback", [0x00, 0x10, 0x80, 0x97]],
  [5, "pubrec", [0x00, 0x10, 0x80, 0x97]],
  [6, "pubrel", [0x00, 0x92]],
  [7, "pubcomp", [0x00, 0x92]],
] as const;
const PIDS = [1, 255, 256, 0x1234, 65535];

Deno.test("acknowledgements queued on the Outbox are the bytes mqtt-packet generates", async () => {
  for (const [type, cmd, codes] of ACKS) {
    for (const version of [4, 5] as const) {
      for (const rc of codes) {
        if (version === 4 && rc !== 0) continue; // 3.1.1 acks carry no reason code
        const sink = new RecordingSink();
        const outbox = newOutbox(sink);
        for (const pid of PIDS) outbox.pushAck(type, pid, rc, version === 5);
        await sink.written();
        assert.equal(sink.writes.length, 1, "acks of one turn go out in one write");
        const got = sink.writes[0];
        const parts: Uint8Array[] = [];
        for (const pid of PIDS) {
          const want = gen({ cmd, messageId: pid, reasonCode: rc }, version);
          if (rc === 0) {
            // Reason 0 without properties: the 2-byte form, identical bytes.
            parts.push(want);
          } else {
            // mqtt-packet writes an explicit empty property length (remaining
            // length 4); we send the shorter form the spec allows (remaining
            // length 3, property length implied 0; MQTT 5 section 3.4.2.2.1).
            // Same packet, different bytes: compare what a parser makes of it.
            const ours = encodeAck(type, pid, rc, true);
            assert.equal(ours.length, 5);
            const a = parse(ours, 5);
            const b = parse(want, 5);
            assert.deepEqual(
              [a.cmd, a.messageId, a.reasonCode, a.qos],
              [b.cmd, b.messageId, b.reasonCode, b.qos],
            );
            parts.push(ours);
          }
        }
        const all = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
        let pos = 0;
        for (const p of parts) {
          all.set(p, pos);
          pos += p.length;
        }
        assert.deepEqual(got, all, `${cmd} v${version} rc 0x${rc.toString(16)}`);
      }
    }
  }
});

Deno.test("encodeAck and Outbox.pushAck write the same bytes", async () => {
  for (const [type] of ACKS) {
    for (const v5 of [false, true]) {
      for (const rc of [0, 0x92]) {
        const sink = new RecordingSink();
        newOutbox(sink).pushAck(type, 0xbeef, rc, v5);
        await sink.written();
        assert.deepEqual(sink.writes[0], encodeAck(type, 0xbeef, rc, v5));
      }
    }
  }
});

Deno.test("PINGRESP is the packet mqtt-packet generates", () => {
  assert.deepEqual(PINGRESP, gen({ cmd: "pingresp" }, 4));
});

Deno.test("the Outbox writes each receiver's packet id into its copy and leaves the shared form alone", async () => {
  const msg = messageFor("t", utf8("p"), {});
  const form = publishForm(msg, true, 1, false, -1);
  const before = form.bytes.slice();
  const sink = new RecordingSink();
  const outbox = newOutbox(sink);
  outbox.pushPublish(form.bytes, form.length, form.pidOffset, 0x1234);
  outbox.pushPublish(form.bytes, form.length, form.pidOffset, 0x0507);
  await sink.written();
  const one = gen({ cmd: "publish", topic: "t", payload: "p", qos: 1, messageId: 0x1234 }, 5);
  const two = gen({ cmd: "publish", topic: "t", payload: "p", qos: 1, messageId: 0x0507 }, 5);
  const want = new Uint8Array(one.length + two.length);
  want.set(one);
  want.set(two, one.length);
  assert.deepEqual(sink.writes[0], want);
  assert.deepEqual(form.bytes, before, "the cached form is shared by all receivers");
});

Deno.test("a large payload is encoded once, header-only, and written after each receiver's header without a copy", async () => {
  const payload = filled(SHARED_PAYLOAD_MIN + 5);
  const msg = messageFor("big/t", payload, { contentType: "x" });
  const form = publishForm(msg, true, 1, false, 30);
  assert.equal(form.payload, msg.payload, "the form refers to the message's payload");
  const sink = new RecordingSink();
  const outbox = newOutbox(sink);
  outbox.pushAck(4, 9, 0, true);
  outbox.pushShared(form.bytes, form.length, form.pidOffset, 0x0102, form.payload!);
  outbox.pushShared(form.bytes, form.length, form.pidOffset, 0x0304, form.payload!);
  outbox.pushAck(4, 10, 0, true);
  assert.equal(outbox.pendingBytes, 8 + 2 * (form.length + payload.length));
  await sink.written();
  await new Promise((r) => setTimeout(r, 0));
  const all = new Uint8Array(sink.writes.reduce((n, w) => n + w.length, 0));
  let off = 0;
  for (const w of sink.writes) {
    all.set(w, off);
    off += w.length;
  }
  const one = {
    cmd: "publish",
    topic: "big/t",
    payload: Buffer.from(payload),
    qos: 1,
    properties: { messageExpiryInterval: 30, contentType: "x" },
  };
  const want = [
    // PUBACK with reason 0 and no properties: the short form [MQTT-3.4.2.1].
    new Uint8Array([0x40, 2, 0, 9]),
    gen({ ...one, messageId: 0x0102 }, 5),
    gen({ ...one, messageId: 0x0304 }, 5),
    new Uint8Array([0x40, 2, 0, 10]),
  ];
  const wantAll = new Uint8Array(want.reduce((n, w) => n + w.length, 0));
  off = 0;
  for (const w of want) {
    wantAll.set(w, off);
    off += w.length;
  }
  assert.deepEqual(all, wantAll);
  assert.equal(outbox.pendingBytes, 0);
  // The same through encodePublish (Subscription Identifiers, resends).
  const e = encodePublish(msg, true, 1, false, true, 7, -1, [5]);
  assert.equal(e.payload, msg.payload);
  const joined = new Uint8Array(e.length + payload.length);
  joined.set(e.bytes.subarray(0, e.length));
  joined.set(payload, e.length);
  assert.deepEqual(
    joined,
    gen({
      ...one,
      dup: true,
      messageId: 7,
      properties: { subscriptionIdentifier: 5, contentType: "x" },
    }, 5),
  );
  // The cache lets go of the payload once the current turn is over (it was checked above,
  // after awaits, only through the written bytes).
  const again = publishForm(msg, true, 1, false, 30);
  assert.equal(again.payload, msg.payload);
  await Promise.resolve();
  assert.equal(again.payload, null, "the cached form no longer holds the payload");
});
