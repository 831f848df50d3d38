/**
 * A verified client certificate that lacks the part `[tls] identity` names (no SAN in san mode,
 * no CN in cn mode) must not let the client pick its username in CONNECT.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { connackOf, startSecureBroker } from "../helpers/broker.ts";
import { clientTls, makeTestPki } from "../helpers/certs.ts";

const dir = await Deno.makeTempDir({ prefix: "mcloudtt-cert-noid-" });
const pki = await makeTestPki(dir);
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));

Deno.test("a verified certificate without the configured identity is refused, whatever username CONNECT claims", async () => {
  const acl = join(dir, "acl");
  await Deno.writeTextFile(acl, "user admin\ntopic readwrite admin/#\n");
  // allow_anonymous makes a CONNECT username a label (no password file): only the certificate
  // identity keeps a client from naming itself admin.
  await using b = await startSecureBroker(pki, {
    general: { websocket: false },
    tls: { identity: "san" },
    auth: { allow_anonymous: true, acl_file: acl },
  });
  // bob's SAN email is his identity; the username he sends is ignored.
  assert.equal(
    await connackOf(b.tlsPort, {
      protocol: "mqtts",
      clientId: "bob",
      username: "admin",
      ...clientTls(pki, pki.bob),
    }),
    0,
  );
  // alice's certificate is as valid, but has no SAN: she must not become admin.
  assert.equal(
    await connackOf(b.tlsPort, {
      protocol: "mqtts",
      clientId: "alice",
      username: "admin",
      ...clientTls(pki, pki.alice),
    }),
    0x87,
  );
});

Deno.test("a listener that asks for no certificate, or one given none, still lets clients in without one", async () => {
  // Deno's node:tls calls such a peer `authorized`: that must not read as a verified certificate.
  await using none = await startSecureBroker(pki, {
    listeners: { tcp: { client_certificate: "none" }, ws: { client_certificate: "none" } },
    auth: { allow_anonymous: true },
  });
  const ca = clientTls(pki, undefined);
  assert.equal(await connackOf(none.tlsPort, { protocol: "mqtts", clientId: "n1", ...ca }), 0);
  assert.equal(
    await connackOf(none.wssPort, { protocol: "wss", path: "/mqtt", clientId: "n2", ...ca }),
    0,
  );
  await using optional = await startSecureBroker(pki, {
    general: { websocket: false },
    listeners: { tcp: { client_certificate: "optional" } },
    auth: { allow_anonymous: true },
  });
  assert.equal(await connackOf(optional.tlsPort, { protocol: "mqtts", clientId: "o1", ...ca }), 0);
  assert.equal(
    await connackOf(optional.tlsPort, {
      protocol: "mqtts",
      clientId: "o2",
      ...clientTls(pki, pki.alice),
    }),
    0,
  );
});
