/**
 * A client certificate that was valid at the TLS handshake but has expired by the time the
 * client's CONNECT is decided: the broker must refuse the CONNECT (0x87 / 3.1.1 return code 5)
 * rather than accept it and leave it to the next keep-alive sweep. Accepted, such a client takes
 * over the session of its client id (disconnecting the live client with a valid certificate),
 * and may publish until the sweep.
 */
import assert from "node:assert/strict";
import type { Buffer } from "node:buffer";
import { join } from "node:path";
import tls from "node:tls";
import mqttPacket from "mqtt-packet";
import { type CertFiles, issueLeafCertificate } from "../../src/auth/certs.ts";
import { delay, startSecureBroker } from "../helpers/broker.ts";
import { clientTls, makeTestPki } from "../helpers/certs.ts";

const dir = await Deno.makeTempDir({ prefix: "mcloudtt-cert-connect-" });
const pki = await makeTestPki(dir);
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));

async function expiringAt(name: string, notAfter: Date): Promise<CertFiles> {
  const pair = await issueLeafCertificate({
    certPem: await Deno.readTextFile(pki.ca.cert),
    keyPem: await Deno.readTextFile(pki.ca.key),
  }, { kind: "client", commonName: name, notAfter });
  const files = { cert: join(dir, `${name}.crt`), key: join(dir, `${name}.key`) };
  await Deno.writeTextFile(files.cert, pair.certPem);
  await Deno.writeTextFile(files.key, pair.keyPem);
  return files;
}

/** The first packet the broker sends after `connect` is written, or "closed". */
function answerTo(sock: tls.TLSSocket, connect: Buffer, version: 4 | 5): Promise<unknown> {
  return new Promise((resolve) => {
    const parser = mqttPacket.parser({ protocolVersion: version });
    parser.on("packet", (p) => resolve(p));
    sock.on("data", (d: Buffer) => parser.parse(d));
    sock.on("close", () => resolve("closed"));
    sock.on("error", () => resolve("closed"));
    sock.write(connect);
  });
}

for (const version of [5, 4] as const) {
  Deno.test(`a certificate that expired between the handshake and CONNECT is refused at CONNECT (MQTT ${version})`, async () => {
    // The sweep (which ends connections whose certificate expired) does not run meanwhile.
    await using b = await startSecureBroker(pki, {
      limits: { sweep_interval_ms: 60_000, connect_timeout: 60 },
    });
    // X.509 keeps whole seconds: the handshake below needs a moment of validity.
    const notAfter = new Date(Math.ceil((Date.now() + 3000) / 1000) * 1000);
    const files = await expiringAt(`late-${version}`, notAfter);
    const sock = tls.connect({
      host: "localhost",
      port: b.tlsPort,
      servername: "localhost",
      ...clientTls(pki, files),
    });
    await new Promise<void>((resolve, reject) => {
      sock.once("secureConnect", () => resolve());
      sock.once("error", reject);
    });
    try {
      // Not a timed assertion: the CONNECT is sent once the certificate has expired.
      while (Date.now() < notAfter.getTime() + 1000) await delay(200);
      const connect = mqttPacket.generate({
        cmd: "connect",
        protocolId: "MQTT",
        protocolVersion: version,
        clientId: `late-${version}`,
        clean: true,
        keepalive: 0,
      } as mqttPacket.IConnectPacket, { protocolVersion: version });
      const answer = await answerTo(sock, connect, version) as {
        cmd?: string;
        reasonCode?: number;
        returnCode?: number;
      };
      assert.notEqual(answer, "closed", "closed without a CONNACK");
      assert.equal(answer.cmd, "connack");
      if (version === 5) assert.equal(answer.reasonCode, 0x87);
      else assert.equal(answer.returnCode, 5);
    } finally {
      sock.destroy();
    }
  });
}
