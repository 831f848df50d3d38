/**
 * A certificate rotation to a set that cannot work (garbage, a key that does not match, an
 * unreadable CA file) is refused and counted; TLS clients keep connecting with the old
 * certificate until a good set arrives.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { issueLeafCertificate } from "../../src/auth/certs.ts";
import { connectClient, delay, startSecureBroker } from "../helpers/broker.ts";
import { fingerprintOf, makeTestPki, servedFingerprint } from "../helpers/certs.ts";

const read = (path: string) => Deno.readTextFileSync(path);

Deno.test("rotation to a bad set keeps the old certificate serving; a good set then takes over", async () => {
  const dir = await Deno.makeTempDir({ prefix: "mcloudtt-bad-rotation-" });
  try {
    const pki = await makeTestPki(join(dir, "pki"));
    const live = {
      cert: join(dir, "broker.crt"),
      key: join(dir, "broker.key"),
      ca: join(dir, "ca.crt"),
    };
    await Deno.copyFile(pki.broker.cert, live.cert);
    await Deno.copyFile(pki.broker.key, live.key);
    await Deno.copyFile(pki.ca.cert, live.ca);
    await using b = await startSecureBroker({ ca: { cert: live.ca }, broker: live }, {
      general: { cert_reload_interval: 1, websocket: false },
    });
    const metrics = b.broker.metrics;
    const ca = read(pki.ca.cert);
    const alice = { cert: read(pki.alice.cert), key: read(pki.alice.key) };
    const oldFingerprint = fingerprintOf(read(live.cert));
    const next = await issueLeafCertificate({ certPem: ca, keyPem: read(pki.ca.key) }, {
      kind: "server",
      commonName: "localhost",
      sans: ["localhost", "127.0.0.1"],
      days: 2,
    });

    /** Waits until the poll has refused `n` sets in all; the broker polls every second. */
    const refused = async (n: number) => {
      const deadline = Date.now() + 8000;
      while (metrics.tlsReloadFailures < n && Date.now() < deadline) await delay(100);
      assert.equal(metrics.tlsReloadFailures, n);
    };
    /** A new TLS client still gets the old certificate and can use it. */
    const stillOld = async (clientId: string) => {
      assert.equal(await servedFingerprint(b.tlsPort, ca, alice), oldFingerprint);
      await using c = await connectClient(b.tlsPort, { protocol: "mqtts", ca, ...alice, clientId });
      assert.ok(c.connected);
    };

    await Deno.writeTextFile(live.cert, "garbage\n");
    await refused(1);
    await stillOld("after-garbage");

    // The new certificate arrives before its key: they do not match.
    await Deno.writeTextFile(live.cert, next.certPem);
    await refused(2);
    await stillOld("after-mismatch");

    // The key arrives, but the CA file is broken meanwhile.
    await Deno.writeTextFile(live.key, next.keyPem);
    await Deno.writeTextFile(live.ca, "not a CA\n");
    await refused(3);
    await stillOld("after-bad-ca");

    await Deno.copyFile(pki.ca.cert, live.ca);
    const newFingerprint = fingerprintOf(next.certPem);
    const deadline = Date.now() + 8000;
    let served = oldFingerprint;
    while (served !== newFingerprint && Date.now() < deadline) {
      await delay(200);
      served = await servedFingerprint(b.tlsPort, ca, alice);
    }
    assert.equal(served, newFingerprint, "the good set should be served once complete");
    assert.equal(metrics.tlsReloadFailures, 3);

    // SIGHUP (reload) with a bad set is refused and counted the same way.
    await Deno.writeTextFile(live.key, read(pki.alice.key));
    assert.equal(await b.broker.reload().then(() => metrics.tlsReloadFailures), 4);
    assert.equal(await servedFingerprint(b.tlsPort, ca, alice), newFingerprint);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
