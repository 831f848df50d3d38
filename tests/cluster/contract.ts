/**
 * The contract every Bus implementation passes (memory hub, Redis): routes,
 * forwarding, shared groups, session ownership and node death, observed
 * through the BusHost callbacks as the broker core would see them. Modelled
 * on Hono's router tests: a factory for N connected buses, and a skip list
 * with a reason for each case an implementation cannot pass.
 */
import assert from "node:assert/strict";
import { Message } from "../../src/protocol/message.ts";
import { type Bus, type BusHost, ForeignSessionError } from "../../src/cluster/types.ts";
import { delay } from "../helpers/broker.ts";

/** N buses of one cluster, not yet started. */
export interface ClusterUnderTest {
  buses: Bus[];
  /** Stops bus `i` without leaving, as kill -9 would. */
  kill(i: number): Promise<void>;
  /** Stops everything still running and frees resources. */
  close(): Promise<void>;
}

export interface BusContractOptions {
  name: string;
  newCluster(n: number): Promise<ClusterUnderTest>;
  /** Case name (or "*" for all) -> why this implementation skips it. */
  skip?: Record<string, string>;
  /** How long node death may take to be noticed (default 5 s). */
  deathTimeoutMs?: number;
}

/** What the bus told one node. */
export class RecordingHost implements BusHost {
  delivered: { msg: Message; groups: readonly string[]; version: string }[] = [];
  takenOver: string[] = [];
  /** The claim number each kick carried, in order. */
  kickEpochs: number[] = [];
  down: string[] = [];
  /** Runs inside sessionTakenOver, before it resolves (a test can observe ordering). */
  onTakeover: (clientId: string) => Promise<void> = () => Promise.resolve();

  deliverRemote(msg: Message, groups: readonly string[], version = ""): void {
    this.delivered.push({ msg, groups: [...groups], version });
  }
  /** Share-group messages other nodes handed on (`redeliverShared`), apart from `delivered`. */
  redelivered: { msg: Message; groups: readonly string[] }[] = [];
  redeliverShared(msg: Message, groups: readonly string[]): void {
    this.redelivered.push({ msg, groups: [...groups] });
  }
  deliveredWritten(): Promise<void> | null {
    return null;
  }
  readonly storeFull = false;
  async sessionTakenOver(clientId: string, epoch: number): Promise<void> {
    this.kickEpochs.push(epoch);
    await this.onTakeover(clientId);
    this.takenOver.push(clientId);
  }
  nodeDown(nodeId: string): Promise<void> {
    this.down.push(nodeId);
    return Promise.resolve();
  }
  expelled(): void {
    this.expulsions++;
  }
  expulsions = 0;
  topics(): string[] {
    return this.delivered.map((d) => d.msg.topic);
  }
}

const utf8 = new TextEncoder();

/** A message as the core hands it to forward(): a view into a reused buffer. */
export function message(
  topic: string,
  opts: { qos?: 0 | 1 | 2; payload?: string; origin?: string } = {},
): Message {
  const payload = utf8.encode(opts.payload ?? topic);
  return new Message(
    topic,
    utf8.encode(topic),
    payload,
    opts.qos ?? 0,
    false,
    null,
    0,
    opts.origin ?? "pub",
    false,
  );
}

/** Polls `cond` until it holds or `ms` pass. */
export async function until(cond: () => boolean, ms = 3000, what = "condition"): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await delay(5);
  }
}

/** Waits for the written promise of every forward (as a PUBACK would). */
async function forwardAll(bus: Bus, msgs: Message[]): Promise<void> {
  const written = msgs.map((m) => bus.forward(m).written);
  await Promise.all(written);
}

interface Ctx {
  buses: Bus[];
  hosts: RecordingHost[];
  cluster: ClusterUnderTest;
}

type Case = (ctx: Ctx, opts: BusContractOptions) => Promise<void>;

/** Settling time for "nothing more arrives" checks. */
const QUIET_MS = 150;

const cases: Record<string, [number, Case]> = {
  "a route on B makes A forward matching messages to B only, not to itself": [
    2,
    async ({ buses: [a, b], hosts: [ha, hb] }) => {
      await b.addRoute("sensors/+/temp");
      const r = a.forward(message("sensors/1/temp", { qos: 1 }));
      assert.notEqual(r.written, null, "a QoS 1 forward must be waited on");
      await r.written;
      assert.equal(a.forward(message("sensors/1/humidity")).written, null);
      assert.equal(a.forward(message("other")).written, null);
      await until(() => hb.delivered.length === 1, 3000, "delivery on B");
      await delay(QUIET_MS);
      assert.deepEqual(hb.topics(), ["sensors/1/temp"]);
      assert.deepEqual(hb.delivered[0].groups, []);
      assert.equal(hb.delivered[0].msg.qos, 1);
      assert.deepEqual(ha.delivered, [], "A must not deliver its own publish back to itself");
    },
  ],
  "a message arrives intact: payload, QoS, retain, properties, expiry, origin": [
    2,
    async ({ buses: [a, b], hosts: [, hb] }) => {
      await b.addRoute("x");
      const props = new Uint8Array([0x03, 0x00, 0x01, 0x74]); // content type "t"
      const msg = new Message(
        "x",
        utf8.encode("x"),
        new Uint8Array([0, 1, 2, 255]),
        2,
        true,
        props,
        1_900_000_000_000,
        "client-7",
        false,
      );
      await a.forward(msg).written;
      // The publisher's buffer is reused right after forward(): the copy must not change.
      msg.payload.fill(9);
      await until(() => hb.delivered.length === 1);
      const got = hb.delivered[0].msg;
      assert.deepEqual([...got.payload], [0, 1, 2, 255]);
      assert.deepEqual([...got.props!], [...props]);
      assert.equal(got.qos, 2);
      assert.equal(got.retain, true);
      assert.equal(got.expiresAt, 1_900_000_000_000);
      assert.equal(got.origin, "client-7");
      assert.equal(got.topic, "x");
    },
  ],
  "removeRoute stops forwarding": [
    2,
    async ({ buses: [a, b], hosts: [, hb] }) => {
      await b.addRoute("t");
      await a.forward(message("t", { payload: "1" })).written;
      await until(() => hb.delivered.length === 1);
      b.removeRoute("t");
      await until(() => !routes(a, "t"), 3000, "the route to go away");
      await delay(QUIET_MS);
      hb.delivered.length = 0;
      assert.equal(a.forward(message("t", { qos: 1 })).written, null);
      await delay(QUIET_MS);
      assert.deepEqual(hb.delivered, []);
    },
  ],
  "wildcards: + and # match per level, # matches its parent, $ topics need an explicit first level":
    [
      2,
      async ({ buses: [a, b], hosts: [, hb] }) => {
        await b.addRoute("a/+/c");
        await b.addRoute("d/#");
        await b.addRoute("#");
        await b.addRoute("$SYS/+");
        for (const t of ["a/b/c", "d", "d/e/f", "zzz", "$SYS/x", "$other/y"]) {
          a.forward(message(t));
        }
        await until(() => hb.delivered.length >= 5);
        await delay(QUIET_MS);
        // Each topic arrives once however many of B's filters match it.
        assert.deepEqual(hb.topics().sort(), ["$SYS/x", "a/b/c", "d", "d/e/f", "zzz"]);
      },
    ],
  "a message goes once to each node with a match, in publish order": [
    3,
    async ({ buses: [a, b, c], hosts: [, hb, hc] }) => {
      await b.addRoute("o/#");
      await b.addRoute("o/+");
      await c.addRoute("o/1");
      const msgs = Array.from({ length: 200 }, (_, i) => message("o/1", { payload: `${i}` }));
      await forwardAll(a, msgs);
      await until(() => hb.delivered.length === 200 && hc.delivered.length === 200);
      await delay(QUIET_MS);
      const order = (h: RecordingHost) =>
        h.delivered.map((d) => Number(new TextDecoder().decode(d.msg.payload)));
      const expected = Array.from({ length: 200 }, (_, i) => i);
      assert.deepEqual(order(hb), expected);
      assert.deepEqual(order(hc), expected);
    },
  ],
  "a QoS 1/2 message carries one cluster-wide id to every node; QoS 0 and local ones none": [
    3,
    async ({ buses: [a, b, c], hosts: [, hb, hc] }) => {
      await b.addRoute("id/#");
      await c.addRoute("id/#");
      const msgs = [
        message("id/1", { qos: 1 }),
        message("id/2", { qos: 2 }),
        message("id/3", { qos: 0 }),
        message("id/4", { qos: 2 }),
      ];
      await forwardAll(a, msgs);
      const local = message("elsewhere", { qos: 1 });
      a.forward(local);
      await until(() => hb.delivered.length === 4 && hc.delivered.length === 4);
      // The publishing node's own copy has it too: its local sessions compare against it.
      const ids = msgs.map((m) => m.id);
      assert.deepEqual(hb.delivered.map((d) => d.msg.id), ids);
      assert.deepEqual(hc.delivered.map((d) => d.msg.id), ids);
      assert.equal(ids[2], "", "QoS 0 has no id");
      assert.equal(local.id, "", "a message that stays on its node has no id");
      const given = [ids[0], ids[1], ids[3]];
      assert.ok(given.every((id) => id !== "" && !id.includes(" ")), `ids ${given}`);
      assert.equal(new Set(given).size, 3, "each message its own id");
      // Another node draws from another range.
      await a.addRoute("back/#");
      const back = message("back/1", { qos: 1 });
      await forwardAll(b, [back]);
      assert.ok(back.id !== "" && !given.includes(back.id));
    },
  ],
  "shared group: each message is served by exactly one node holding the group": [
    3,
    async ({ buses: [a, b, c], hosts: [ha, hb, hc] }) => {
      await b.addRoute("$share/g/jobs/#");
      await c.addRoute("$share/g/jobs/#");
      await c.addRoute("jobs/plain");
      const n = 20;
      for (let i = 0; i < n; i++) {
        const r = a.forward(message("jobs/plain", { payload: `${i}` }));
        assert.equal(r.localGroups, null, "A holds no group, so it serves none");
      }
      await until(() => hb.delivered.length + countGroup(hc, "$share/g/jobs/#") >= n);
      await delay(QUIET_MS);
      assert.deepEqual(ha.delivered, []);
      // C gets every message for its plain route; the group marks which it serves.
      assert.equal(hc.delivered.length, n);
      const servedByB = hb.delivered.filter((d) => d.groups.includes("$share/g/jobs/#"));
      assert.equal(servedByB.length, hb.delivered.length, "B only receives what it serves");
      assert.equal(servedByB.length + countGroup(hc, "$share/g/jobs/#"), n);
      assert.ok(servedByB.length > 0 && servedByB.length < n, "rotated over both nodes");
    },
  ],
  "a share group's leftover goes to another node holding the group, for that group only": [
    3,
    async ({ buses: [a, b, c], hosts: [ha, hb, hc] }) => {
      await a.addRoute("$share/g/jobs/#");
      await c.addRoute("jobs/#");
      const msg = message("jobs/1", { qos: 1, payload: "left" });
      // A served the group itself, to a member that is gone now; B joined the group meanwhile.
      await forwardAll(a, [msg]);
      await until(() => hc.delivered.length === 1, 3000, "C's plain copy");
      a.removeRoute("$share/g/jobs/#");
      await b.addRoute("$share/g/jobs/#");
      assert.equal(a.forwardShared(msg, "$share/g/jobs/#"), true);
      assert.equal(a.forwardShared(msg, "$share/other/jobs/#"), false, "no node holds it");
      await until(() => hb.redelivered.length === 1, 3000, "the leftover on B");
      await delay(QUIET_MS);
      assert.deepEqual(hb.redelivered[0].groups, ["$share/g/jobs/#"]);
      assert.equal(new TextDecoder().decode(hb.redelivered[0].msg.payload), "left");
      assert.equal(hb.redelivered[0].msg.qos, 1);
      // Not a new publish: plain subscribers (C) and A itself get nothing more.
      assert.equal(hc.delivered.length, 1);
      assert.deepEqual(hc.redelivered, []);
      assert.deepEqual(ha.redelivered, []);
      assert.deepEqual(hb.delivered, []);
    },
  ],
  "shared group held locally is served locally: nothing forwarded for it": [
    2,
    async ({ buses: [a, b], hosts: [, hb] }) => {
      await b.addRoute("$share/g/s");
      await a.addRoute("$share/g/s");
      for (let i = 0; i < 5; i++) {
        const r = a.forward(message("s"));
        assert.equal(r.localGroups, null);
        assert.equal(r.written, null);
      }
      await delay(QUIET_MS);
      assert.deepEqual(hb.delivered, []);
    },
  ],
  "a node that joins later learns the existing routes": [
    2,
    async ({ buses: [a, b], hosts: [, hb] }) => {
      // Only B is started by the harness for this case; A joins afterwards.
      await b.addRoute("late/#");
      const ha = new RecordingHost();
      await a.start(ha);
      await a.forward(message("late/1", { qos: 1 })).written;
      await until(() => hb.delivered.length === 1);
    },
  ],
  "claimSession on B takes the client from A: A is told first, then B's claim resolves": [
    3,
    async ({ buses: [a, b, c], hosts: [ha, hb] }) => {
      const first = await a.claimSession("c1");
      assert.deepEqual(ha.takenOver, []);
      let aDone = false;
      ha.onTakeover = async () => {
        await delay(50);
        aDone = true;
      };
      const second = await b.claimSession("c1");
      assert.equal(aDone, true, "B's claim must wait for A to let go");
      assert.deepEqual(ha.takenOver, ["c1"]);
      // Claim numbers grow, and the kick carries the claim that sent it: a node still attaching
      // under an older claim knows it lost the race.
      assert.ok(first !== null && second !== null && second > first, `${first} < ${second}`);
      assert.deepEqual(ha.kickEpochs, [second]);
      // A releasing late must not clear B's ownership: C's claim kicks B, not A.
      a.releaseSession("c1");
      const third = await c.claimSession("c1");
      await until(() => hb.takenOver.length === 1);
      assert.deepEqual(hb.kickEpochs, [third]);
      assert.deepEqual(hb.takenOver, ["c1"]);
      assert.deepEqual(ha.takenOver, ["c1"]);
      // A released session is claimed without kicking anyone.
      c.releaseSession("c1");
      await delay(QUIET_MS);
      await b.claimSession("c1");
      await delay(QUIET_MS);
      assert.deepEqual(hb.takenOver, ["c1"]);
    },
  ],
  "a retained update's version reaches every node with it; other messages carry none": [
    2,
    async ({ buses: [a, b], hosts: [, hb] }) => {
      await b.addRoute("v/#");
      const retained = message("v/1", { qos: 1 });
      const kept = new Message(
        retained.topic,
        retained.topicBytes,
        retained.payload,
        1,
        true,
        null,
        0,
        "",
      );
      a.forward(message("v/0", { qos: 1 }));
      a.forward(kept, "1700000000000abcd");
      a.forward(message("v/2"));
      await until(() => hb.delivered.length === 3);
      assert.deepEqual(
        hb.delivered.map((d) => `${d.msg.topic}:${d.version}`),
        ["v/0:", "v/1:1700000000000abcd", "v/2:"],
      );
    },
  ],
  "a claim for another user's session held on another live node is refused, and nobody is kicked": [
    3,
    async ({ buses: [a, b, c], hosts: [ha, hb] }) => {
      await a.claimSession("own", undefined, undefined, "alice");
      await assert.rejects(
        b.claimSession("own", undefined, undefined, "bob")!,
        (e) => e instanceof ForeignSessionError && e.owner === "alice",
      );
      await assert.rejects(
        b.claimSession("own", undefined, undefined, null)!,
        (e) => e instanceof ForeignSessionError && e.owner === "alice",
        "an anonymous client is another user too",
      );
      await delay(QUIET_MS);
      assert.deepEqual(ha.takenOver, [], "the owner's node was not told to let go");
      // Its owner takes it over from another node as before.
      await b.claimSession("own", undefined, undefined, "alice");
      await until(() => ha.takenOver.length === 1);
      // Released: anyone may have the id.
      b.releaseSession("own");
      await c.claimSession("own", undefined, undefined, "bob");
      await delay(QUIET_MS);
      assert.deepEqual(hb.takenOver, []);
      // Anonymous sessions: any anonymous client may take over, a named user may not.
      await a.claimSession("anon", undefined, undefined, null);
      await assert.rejects(
        b.claimSession("anon", undefined, undefined, "bob")!,
        (e) => e instanceof ForeignSessionError && e.owner === null,
      );
      await b.claimSession("anon", undefined, undefined, null);
      // A claim that does not say whose it is (a node adopting, an older node) is not checked.
      await c.claimSession("anon");
    },
  ],
  "a node that dies without leaving is noticed: nodeDown once, on one survivor, routes gone": [
    3,
    async ({ buses: [a, b, c], hosts: [, hb, hc], cluster }, opts) => {
      await c.addRoute("dead/#");
      await a.forward(message("dead/1", { qos: 1 })).written;
      await until(() => hc.delivered.length === 1);
      const id = c.nodeId;
      await cluster.kill(2);
      const ms = opts.deathTimeoutMs ?? 5000;
      await until(() => downCount(a, b, id) === 1, ms, "nodeDown");
      await delay(QUIET_MS * 2);
      const calls = [hostOf(a), hb].flatMap((h) => h.down);
      assert.deepEqual(calls, [id], "exactly one survivor handles the dead node, once");
      assert.equal(hc.down.length, 0);
      await until(() => a.forward(message("dead/2", { qos: 1 })).written === null, ms, "routes");
    },
  ],
};

function countGroup(h: RecordingHost, key: string): number {
  return h.delivered.filter((d) => d.groups.includes(key)).length;
}

/** Whether `bus` still forwards `topic` somewhere: a QoS 1 forward has something to wait for. */
function routes(bus: Bus, topic: string): boolean {
  return bus.forward(message(topic, { qos: 1, payload: "probe" })).written !== null;
}

const hostsByBus = new WeakMap<Bus, RecordingHost>();
function hostOf(bus: Bus): RecordingHost {
  return hostsByBus.get(bus)!;
}
function downCount(a: Bus, b: Bus, id: string): number {
  return [hostOf(a), hostOf(b)].flatMap((h) => h.down).filter((d) => d === id).length;
}

/** Registers one Deno test per contract case. */
export function runBusContract(opts: BusContractOptions): void {
  for (const [title, [n, body]] of Object.entries(cases)) {
    const reason = opts.skip?.[title] ?? opts.skip?.["*"];
    Deno.test({
      name: `${opts.name}: ${title}${reason ? ` (skipped: ${reason})` : ""}`,
      ignore: reason !== undefined,
      sanitizeOps: false,
      sanitizeResources: false,
      async fn() {
        const cluster = await opts.newCluster(n);
        const hosts = cluster.buses.map(() => new RecordingHost());
        cluster.buses.forEach((bus, i) => hostsByBus.set(bus, hosts[i]));
        try {
          const lateJoiner = title.startsWith("a node that joins later");
          for (let i = lateJoiner ? 1 : 0; i < n; i++) await cluster.buses[i].start(hosts[i]);
          await body({ buses: cluster.buses, hosts, cluster }, opts);
        } finally {
          await cluster.close();
        }
      },
    });
  }
}
