/**
 * SIGHUP revokes: a client whose password file entry was removed is disconnected with
 * DISCONNECT 0x87 by the running broker process, and a subscription the reloaded ACL forbids
 * stops receiving.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import type { IDisconnectPacket } from "mqtt";
import { hashPassword } from "../../src/auth/passwords.ts";
import { collect, connectClient, freePort } from "../helpers/broker.ts";
import { copyProject, startMain } from "../helpers/main_process.ts";

Deno.test("SIGHUP with a user removed and an ACL tightened revokes at once", async () => {
  const dir = await Deno.makeTempDir({ prefix: "mcloudtt-revoke-sighup-" });
  try {
    await copyProject(dir);
    const passwd = join(dir, "passwd");
    const acl = join(dir, "acl");
    const alice = `alice:${await hashPassword("a", 1000)}\n`;
    await Deno.writeTextFile(passwd, alice + `bob:${await hashPassword("b", 1000)}\n`);
    await Deno.writeTextFile(acl, "pattern readwrite #\n");
    const port = freePort();
    await using broker = startMain(dir, [
      "--general.secure=false",
      "--general.websocket=false",
      "--general.bind=127.0.0.1",
      `--ports.tcp=${port}`,
      `--auth.password_file=${passwd}`,
      `--auth.acl_file=${acl}`,
    ]);
    await broker.waitFor(/listening for MQTT over tcp/);
    await using a = await connectClient(port, { clientId: "a", username: "alice", password: "a" });
    await using b = await connectClient(port, { clientId: "b", username: "bob", password: "b" });
    const inbox = collect(a);
    await a.subscribeAsync("#", { qos: 1 });
    const bobDisconnect = new Promise<number>((resolve) =>
      b.once("disconnect", (p: IDisconnectPacket) => resolve(p.reasonCode ?? 0))
    );

    await Deno.writeTextFile(passwd, alice);
    await Deno.writeTextFile(acl, "pattern readwrite #\nuser alice\ntopic deny secret/#\n");
    broker.child.kill("SIGHUP");
    await broker.waitFor(/password file and ACL reloaded/);

    assert.equal(await bobDisconnect, 0x87);
    // An anonymous publisher may still write secret/x; alice may no longer read it.
    await using anon = await connectClient(port, { clientId: "anon" });
    await anon.publishAsync("secret/x", "no", { qos: 1 });
    await anon.publishAsync("open/x", "yes", { qos: 1 });
    assert.equal((await inbox.next()).topic, "open/x");
    await inbox.none(200);
    assert.equal(a.connected, true);
    assert.equal((await broker.stop()).code, 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
