/**
 * `tls.cafile` holding several client CAs: all of them are trusted, on TLS and WSS; and removing a
 * CA from it, how a client CA is withdrawn (there is no CRL), closes the connections it alone
 * vouched for.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import type { CertFiles } from "../../src/auth/certs.ts";
import { connectClient, delay, startSecureBroker } from "../helpers/broker.ts";
import { makeTestPki, readPair } from "../helpers/certs.ts";

const dir = await Deno.makeTempDir({ prefix: "mcloudtt-ca-swap-" });
const pki = await makeTestPki(dir);
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));

const read = (path: string) => Deno.readTextFileSync(path);

/** The broker certificate followed by its issuer, so that cafile may hold only client CAs. */
async function fullchain(): Promise<string> {
  const path = join(dir, "fullchain.crt");
  await Deno.writeTextFile(path, read(pki.broker.cert) + read(pki.ca.cert));
  return path;
}

/** MQTT.js options for `client` over mqtts or wss, trusting the broker's CA. */
async function opts(client: CertFiles, clientId: string, wss: boolean) {
  return {
    protocol: wss ? "wss" as const : "mqtts" as const,
    path: "/mqtt",
    clientId,
    ca: read(pki.ca.cert),
    ...(await readPair(client)),
  };
}

Deno.test("every CA of a cafile holding several is trusted, on TLS and WSS", async () => {
  // Deno's node:tls reads only the first certificate of a PEM string given as `ca`: with the
  // second CA of a rotation (old + new) in cafile, the clients of the second were refused.
  for (const order of [[pki.ca, pki.otherCa], [pki.otherCa, pki.ca]]) {
    const cafile = join(dir, "two-cas.crt");
    await Deno.writeTextFile(cafile, order.map((c) => read(c.cert)).join(""));
    await using b = await startSecureBroker({
      ca: { cert: cafile },
      broker: { cert: await fullchain(), key: pki.broker.key },
    });
    for (const [port, wss] of [[b.tlsPort, false], [b.wssPort, true]] as const) {
      for (const [client, id] of [[pki.alice, "alice"], [pki.otherCaClient, "mallory"]] as const) {
        const c = await connectClient(port, await opts(client, id, wss));
        await c.endAsync();
      }
    }
  }
});

Deno.test("a CA dropped from cafile by a reload closes the connections it alone vouched for; others stay", async () => {
  const cafile = join(dir, "clients-ca.crt");
  await Deno.writeTextFile(cafile, read(pki.ca.cert) + read(pki.otherCa.cert));
  await using b = await startSecureBroker({
    ca: { cert: cafile },
    broker: { cert: await fullchain(), key: pki.broker.key },
  }, { general: { cert_reload_interval: 3600 } });
  const clients = {
    aliceTls: await connectClient(b.tlsPort, await opts(pki.alice, "alice-tls", false)),
    aliceWss: await connectClient(b.wssPort, await opts(pki.alice, "alice-wss", true)),
    malloryTls: await connectClient(b.tlsPort, await opts(pki.otherCaClient, "mal-tls", false)),
    malloryWss: await connectClient(b.wssPort, await opts(pki.otherCaClient, "mal-wss", true)),
  };
  try {
    await Deno.writeTextFile(cafile, read(pki.otherCa.cert));
    await b.broker.reload();
    await delay(500);
    assert.deepEqual(
      Object.fromEntries(Object.entries(clients).map(([k, c]) => [k, c.connected])),
      { aliceTls: false, aliceWss: false, malloryTls: true, malloryWss: true },
    );
  } finally {
    for (const c of Object.values(clients)) c.end(true);
  }
});
