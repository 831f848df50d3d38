/**
 * What a broker killed with SIGKILL remembers when it starts again on the
 * same data directory: expiry deadlines (sessions and messages) continue
 * from where they were instead of starting over; a session that its client
 * had resumed with Session Expiry 0 is gone (it ended with the connection);
 * the will of a client that was connected at the crash is sent. Start-up reads
 * each stored message once, and skips (naming it) a session whose row is
 * damaged. And a data directory the broker cannot use stops start-up with exit
 * code 2 and a message naming it, leaving it untouched.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { DatabaseSync } from "node:sqlite";
import {
  collect,
  connectClient,
  delay,
  endClient,
  freePort,
  type Inbox,
  RawClient,
} from "../helpers/broker.ts";
import { startMain } from "../helpers/main_process.ts";
import { kill9, startDurable, tempProject } from "../helpers/durable.ts";
import { SqliteStore } from "../../src/store/sqlite.ts";
import { mib, peakRssOf, rssOf } from "../helpers/broker_process.ts";

Deno.test("after kill -9, session and message expiry continue from their absolute deadlines", async () => {
  await using p = await tempProject();
  const port = freePort();
  let broker = await startDurable(p.dir, port);
  try {
    const short = await connectClient(port, {
      clientId: "short",
      clean: false,
      properties: { sessionExpiryInterval: 2 },
    });
    await short.subscribeAsync("x", { qos: 1 });
    const long = await connectClient(port, {
      clientId: "long",
      clean: false,
      properties: { sessionExpiryInterval: 3600 },
    });
    await long.subscribeAsync("exp/#", { qos: 1 });
    await endClient(short);
    await endClient(long);
    const t0 = Date.now();
    const pub = await connectClient(port, { clientId: "pub" });
    await pub.publishAsync("exp/soon", "soon", {
      qos: 1,
      properties: { messageExpiryInterval: 2 },
    });
    await pub.publishAsync("exp/later", "later", {
      qos: 1,
      properties: { messageExpiryInterval: 120 },
    });
    await kill9(broker);
    await endClient(pub, true);
    // Down for longer than both short intervals, but restarted before they would pass again
    // if they were counted from the restart.
    await delay(Math.max(0, t0 + 2500 - Date.now()));
    broker = await startDurable(p.dir, port);
    const restarted = Date.now();

    const s = await RawClient.connect(port);
    const ack = await s.handshake("short", 5, {
      clean: false,
      properties: { sessionExpiryInterval: 2 },
    });
    assert.equal(ack.sessionPresent, false, "the 2 s session outlived its deadline");
    s.close();

    const l = await RawClient.connect(port);
    const lack = await l.handshake("long", 5, {
      clean: false,
      properties: { sessionExpiryInterval: 3600 },
    });
    assert.equal(lack.sessionPresent, true);
    const m = await l.expect("publish");
    assert.equal(m.topic, "exp/later", "the message whose 2 s expiry passed was delivered");
    // The expiry interval left counts the time the broker was down.
    const left = (m.properties as { messageExpiryInterval: number }).messageExpiryInterval;
    const elapsed = (Date.now() - t0) / 1000;
    assert.ok(left <= Math.ceil(120 - elapsed + 1), `expiry interval left ${left} s`);
    assert.ok(left >= 120 - elapsed - 5, `expiry interval left ${left} s`);
    await l.sendPacket({ cmd: "puback", messageId: m.messageId });
    await assert.rejects(l.next(300), /timed out/);
    l.close();
    console.log(
      `[figures] restart took ${((restarted - t0) / 1000).toFixed(1)} s after the ` +
        `disconnects; message expiry left ${left} of 120 s`,
    );
  } finally {
    await broker.stop();
  }
});

Deno.test("a stored session resumed with Session Expiry 0 does not come back after kill -9", async () => {
  await using p = await tempProject();
  const port = freePort();
  let broker = await startDurable(p.dir, port);
  try {
    const first = await connectClient(port, {
      clientId: "zero",
      clean: false,
      properties: { sessionExpiryInterval: 3600 },
    });
    await first.subscribeAsync("z", { qos: 2 });
    await endClient(first);
    const pub = await connectClient(port, { clientId: "pub" });
    await pub.publishAsync("z", "1", { qos: 2 });
    await pub.publishAsync("z", "2", { qos: 2 });
    await endClient(pub);
    // Resumed with expiry 0: the session now ends with this connection. It receives both.
    let inbox!: Inbox;
    const again = await connectClient(port, {
      clientId: "zero",
      clean: false,
      properties: { sessionExpiryInterval: 0 },
    }, (c) => {
      inbox = collect(c);
    });
    assert.deepEqual([(await inbox.next()).payload, (await inbox.next()).payload], ["1", "2"]);
    await delay(100); // PUBCOMPs reach the broker
    await kill9(broker);
    await endClient(again, true);

    broker = await startDurable(p.dir, port);
    const c = await RawClient.connect(port);
    const ack = await c.handshake("zero", 5, {
      clean: false,
      properties: { sessionExpiryInterval: 3600 },
    });
    // A stale stored copy would be present and send "1" and "2" a second time.
    assert.equal(ack.sessionPresent, false);
    const got = await c.next(300).catch(() => null);
    assert.equal(got, null, `got ${JSON.stringify(got)}`);
    c.close();
  } finally {
    await broker.stop();
  }
});

Deno.test("the will of a client connected at kill -9 is sent after the restart, after its delay", async () => {
  await using p = await tempProject();
  const port = freePort();
  let broker = await startDurable(p.dir, port);
  try {
    const watcher = await connectClient(port, {
      clientId: "watcher",
      clean: false,
      properties: { sessionExpiryInterval: 3600 },
    });
    await watcher.subscribeAsync("wills/#", { qos: 1 });
    await endClient(watcher);
    const dying = await connectClient(port, {
      clientId: "dying",
      clean: false,
      properties: { sessionExpiryInterval: 3600 },
      will: {
        topic: "wills/dying",
        payload: "gone",
        qos: 1,
        retain: false,
        properties: { willDelayInterval: 1 },
      },
    });
    // CONNACK does not wait for the session's write (README, Durability): a kill -9 right after
    // it, under load, lost the session and its will. A SUBACK waits for every write before it.
    await dying.subscribeAsync("dying/inbox", { qos: 1 });
    await kill9(broker);
    await endClient(dying, true);
    // The delay runs from the new process's start, which comes after this; measured from when
    // the restart was seen to finish instead, a slow start-up under load (the port answering
    // late) made the will look early.
    const restarting = Date.now();
    broker = await startDurable(p.dir, port);
    // Listening from before CONNACK: under load the restart may take past the delay, and the
    // will, queued for the watcher's session, then arrives with the CONNACK.
    let inbox!: Inbox;
    const w = await connectClient(port, {
      clientId: "watcher",
      clean: false,
      properties: { sessionExpiryInterval: 3600 },
    }, (c) => {
      inbox = collect(c);
    });
    const m = await inbox.next(5000);
    assert.deepEqual([m.topic, m.payload], ["wills/dying", "gone"]);
    const after = Date.now() - restarting;
    assert.ok(after >= 950, `the will came ${after} ms after the restart began: its delay is 1 s`);
    await endClient(w);
  } finally {
    await broker.stop();
  }
});

Deno.test("a restart loads a message queued to many offline sessions once: start-up memory stays near what the broker held", async () => {
  await using p = await tempProject();
  const port = freePort();
  let broker = await startDurable(p.dir, port);
  const SESSIONS = 60;
  const MESSAGES = 5;
  const SIZE = 1_000_000;
  try {
    for (let i = 0; i < SESSIONS; i++) {
      const c = await connectClient(port, {
        clientId: `fan-${i}`,
        clean: false,
        properties: { sessionExpiryInterval: 3600 },
      });
      await c.subscribeAsync("fan/#", { qos: 1 });
      await endClient(c);
    }
    const pub = await connectClient(port, { clientId: "pub" });
    for (let j = 0; j < MESSAGES; j++) {
      await pub.publishAsync("fan/x", Buffer.alloc(SIZE, j), { qos: 1 });
    }
    await endClient(pub);
    const held = rssOf(broker.child.pid);
    await kill9(broker);

    broker = await startDurable(p.dir, port);
    const peak = peakRssOf(broker.child.pid);
    // Each message is held once in memory (every session's queue refers to it), and loaded once:
    // reading it again for each of its 60 queue rows took 300 MB more (1 GB for 100 sessions of
    // 10 such messages) to start a broker that ran in 80 MB.
    console.log(`[figures] RSS before the kill ${mib(held)}, peak at the restart ${mib(peak)}`);
    assert.ok(
      peak < held + 64 * 1024 * 1024,
      `start-up peaked at ${mib(peak)}, the broker held ${mib(held)} before`,
    );
    // And every session has its messages.
    for (const id of ["fan-0", `fan-${SESSIONS - 1}`]) {
      let inbox!: Inbox;
      const c = await connectClient(port, {
        clientId: id,
        clean: false,
        properties: { sessionExpiryInterval: 3600 },
      }, (c) => inbox = collect(c));
      for (let j = 0; j < MESSAGES; j++) {
        const m = await inbox.next();
        assert.equal(m.packet.payload.length, SIZE);
        assert.equal(m.packet.payload[0], j, `${id}: message ${j}`);
      }
      await endClient(c);
    }
  } finally {
    await broker.stop();
  }
});

Deno.test("a stored session whose row is damaged is skipped with an error naming it: the broker starts, the others resume", async () => {
  await using p = await tempProject();
  const port = freePort();
  let broker = await startDurable(p.dir, port);
  try {
    for (const id of ["good", "damaged"]) {
      const c = await connectClient(port, {
        clientId: id,
        clean: false,
        properties: { sessionExpiryInterval: 3600 },
      });
      await c.subscribeAsync("d/#", { qos: 1 });
      await endClient(c);
    }
    const pub = await connectClient(port, { clientId: "pub" });
    await pub.publishAsync("d/x", "kept", { qos: 1 });
    await endClient(pub);
    await kill9(broker);
    // Valid SQLite, not what the broker wrote (a flipped bit inside a value passes the page
    // checks): before, start-up stopped at it, exit 2, with a JSON parser's message.
    const db = new DatabaseSync(`${p.dir}/data/mcloudtt.db`);
    db.prepare("UPDATE sessions SET subscriptions = ? WHERE client_id = 'damaged'")
      .run('[["d/#",1,0,0,0');
    db.close();

    broker = await startDurable(p.dir, port);
    assert.match(broker.output(), /skipped the stored session damaged in .*mcloudtt\.db/);
    let inbox!: Inbox;
    const good = await connectClient(port, {
      clientId: "good",
      clean: false,
      properties: { sessionExpiryInterval: 3600 },
    }, (c) => inbox = collect(c));
    assert.equal((await inbox.next()).payload, "kept");
    await endClient(good);
    const c = await RawClient.connect(port);
    const ack = await c.handshake("damaged", 5, {
      clean: false,
      properties: { sessionExpiryInterval: 3600 },
    });
    assert.equal(ack.sessionPresent, false);
    c.close();
  } finally {
    await broker.stop();
  }
});

function writable(file: string): boolean {
  try {
    Deno.openSync(file, { write: true }).close();
    return true;
  } catch {
    return false;
  }
}

/** Starts main.ts on `data` and expects exit code 2 with a message naming the file. */
async function expectRefusal(cwd: string, words: RegExp): Promise<string> {
  const file = `${cwd}/data/mcloudtt.db`;
  const before = await Deno.readFile(file);
  const port = freePort();
  await using broker = startMain(cwd, [
    "--general.secure=false",
    "--general.websocket=false",
    "--http.enabled=false",
    `--ports.tcp=${port}`,
    "--storage.enabled=true",
  ]);
  const status = await broker.status;
  const err = broker.stderr();
  assert.equal(status.code, 2, broker.output());
  assert.match(err, /cannot start: storage: data\/mcloudtt\.db: /);
  assert.match(err, words);
  assert.doesNotMatch(broker.output(), /listening/);
  assert.deepEqual(await Deno.readFile(file), before, "the refused file was changed");
  return err.trim();
}

Deno.test("a data directory that is corrupt, foreign, not writable or from a newer version stops start-up (exit 2)", async (t) => {
  await using p = await tempProject();
  const data = `${p.dir}/data`;
  const reset = async () => {
    await Deno.remove(data, { recursive: true }).catch(() => {});
    await Deno.mkdir(data);
  };
  await t.step("not a database", async () => {
    await reset();
    await Deno.writeTextFile(
      `${data}/mcloudtt.db`,
      "these are not the bytes you are looking for\n".repeat(100),
    );
    console.log(await expectRefusal(p.dir, /backup|move the directory away/));
  });
  await t.step("another program's database", async () => {
    await reset();
    const db = new DatabaseSync(`${data}/mcloudtt.db`);
    db.exec("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)");
    db.close();
    console.log(await expectRefusal(p.dir, /another program.*\[storage\] dir/));
  });
  await t.step("a file the broker cannot write", async () => {
    await reset();
    const store = new SqliteStore({ dir: data });
    await store.open();
    await store.close();
    const file = `${data}/mcloudtt.db`;
    await Deno.chmod(file, 0o444);
    // root writes a file whatever its mode: make it immutable instead, where that is possible.
    const immutable = writable(file) &&
      (await new Deno.Command("chattr", { args: ["+i", file] }).output().catch(() => null))
          ?.success === true;
    try {
      if (writable(file)) return console.log("skipped: cannot make a file read-only here");
      // SQLite opened it read-only without a word, and start-up failed with "disk I/O error".
      console.log(await expectRefusal(p.dir, /cannot be opened for writing.*writable/));
    } finally {
      if (immutable) await new Deno.Command("chattr", { args: ["-i", file] }).output();
      await Deno.chmod(file, 0o644);
    }
  });
  await t.step("written by a newer mcloudtt", async () => {
    await reset();
    const store = new SqliteStore({ dir: data });
    await store.open();
    await store.close();
    const db = new DatabaseSync(`${data}/mcloudtt.db`);
    db.exec("UPDATE meta SET value = 99 WHERE key = 'schema_version'");
    db.close();
    console.log(await expectRefusal(p.dir, /newer mcloudtt \(schema version 99/));
  });
});

for (const policy of ["newest", "oldest"] as const) {
  Deno.test(`a queue stored under a higher max_queued_messages is cut to the new one at restart (policy ${policy})`, async () => {
    await using p = await tempProject();
    const port = freePort();
    const limits = (n: number) => [
      `--limits.max_queued_messages=${n}`,
      `--limits.queue_drop_policy=${policy}`,
    ];
    let broker = await startDurable(p.dir, port, limits(100));
    try {
      const away = await connectClient(port, {
        clientId: "away",
        clean: false,
        properties: { sessionExpiryInterval: 3600 },
      });
      await away.subscribeAsync("q", { qos: 1 });
      await endClient(away);
      const pub = await connectClient(port, { clientId: "pub" });
      for (let i = 0; i < 30; i++) await pub.publishAsync("q", `${i}`, { qos: 1 });
      await endClient(pub);
      await broker.stop();
      // Restarted with a lower bound: the session's queue holds 10, as a live one would.
      broker = await startDurable(p.dir, port, limits(10));
      let inbox!: Inbox;
      const back = await connectClient(port, {
        clientId: "away",
        clean: false,
        properties: { sessionExpiryInterval: 3600 },
      }, (c) => {
        inbox = collect(c);
      });
      await delay(500);
      const kept = policy === "newest" ? 0 : 20;
      assert.deepEqual(
        inbox.messages.map((m) => m.payload),
        Array.from({ length: 10 }, (_, i) => `${kept + i}`),
      );
      await endClient(back);
      // What was cut is gone from the store too: a second restart brings none of it back.
      await broker.stop();
      broker = await startDurable(p.dir, port, limits(100));
      let none!: Inbox;
      const again = await connectClient(port, {
        clientId: "away",
        clean: false,
        properties: { sessionExpiryInterval: 3600 },
      }, (c) => {
        none = collect(c);
      });
      await none.none(500);
      await endClient(again);
    } finally {
      await broker.stop();
    }
  });
}
