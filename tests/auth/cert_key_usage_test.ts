/**
 * Client certificates from the trusted CA whose key usage does not allow TLS client
 * authentication (RFC 5280 4.2.1.3, 4.2.1.12). Deno's node:tls verifier refuses a wrong
 * extendedKeyUsage in the handshake but reads no keyUsage: the broker refuses those certificates
 * at CONNECT, over mqtts and wss, on listeners that require or only accept certificates.
 */
import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import type { IClientOptions } from "mqtt";
import { certificateExtensions } from "../../src/auth/cert_der.ts";
import {
  clientUseRefusal,
  EXTENDED_KEY_USAGE_REFUSAL,
  KEY_USAGE_REFUSAL,
} from "../../src/auth/cert_usage.ts";
import type { CertFiles } from "../../src/auth/certs.ts";
import type { Authenticator } from "../../src/auth/types.ts";
import { setupLogging } from "../../src/ops/log.ts";
import { connackOf, delay, type SecureTestBroker, startSecureBroker } from "../helpers/broker.ts";
import {
  clientTls,
  haveBinary,
  makeTestPki,
  opensslClient,
  type OpensslClientOptions,
} from "../helpers/certs.ts";
import { mosquittoPub, skipWithout } from "../helpers/mosquitto.ts";

// Each test module runs in its own isolate: configuring logtape here affects this file only.
const lines: Record<string, unknown>[] = [];
await setupLogging({ level: "info", format: "json", write: (l) => lines.push(JSON.parse(l)) });

const dir = await Deno.makeTempDir({ prefix: "mcloudtt-cert-usage-" });
const pki = await makeTestPki(dir);
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));

const LEAF = "basicConstraints = critical, CA:FALSE";
/** The certificates of the tests, by what their extensions allow. */
const SHAPES = {
  keyEncipherment: { key: "rsa", extensions: [LEAF, "keyUsage = critical, keyEncipherment"] },
  certSign: { extensions: [LEAF, "keyUsage = critical, keyCertSign, cRLSign"] },
  keyAgreement: { extensions: [LEAF, "keyUsage = critical, keyAgreement"] },
  serverAuth: { extensions: [LEAF, "extendedKeyUsage = serverAuth"] },
  codeSigning: { extensions: [LEAF, "extendedKeyUsage = codeSigning"] },
  anyUsage: { extensions: [LEAF, "extendedKeyUsage = anyExtendedKeyUsage"] },
  unrestricted: { extensions: [LEAF] },
  clientAuth: {
    extensions: [LEAF, "keyUsage = critical, digitalSignature", "extendedKeyUsage = clientAuth"],
  },
  clientAndServer: {
    extensions: [
      LEAF,
      "keyUsage = critical, digitalSignature, keyEncipherment",
      "extendedKeyUsage = serverAuth, clientAuth",
    ],
  },
} satisfies Record<string, Omit<OpensslClientOptions, "name">>;
type Shape = keyof typeof SHAPES;

const HAVE_OPENSSL = await haveBinary("openssl");
const certs = HAVE_OPENSSL
  ? Object.fromEntries(
    await Promise.all(
      Object.entries(SHAPES).map(async ([name, shape]) =>
        [name, await opensslClient(dir, pki.ca, { name, ...shape })] as const
      ),
    ),
  ) as Record<Shape, CertFiles>
  : undefined;

/** keyUsage present without digitalSignature. */
const NO_SIGNATURE: Shape[] = ["keyEncipherment", "certSign", "keyAgreement"];
/** extendedKeyUsage present without clientAuth (or, for Deno's verifier, with only "any"). */
const NO_CLIENT_AUTH: Shape[] = ["serverAuth", "codeSigning", "anyUsage"];
const GOOD: Shape[] = ["unrestricted", "clientAuth", "clientAndServer"];

function mqtt(transport: "mqtts" | "wss", shape: Shape): IClientOptions {
  return {
    protocol: transport,
    ...(transport === "wss" ? { path: "/mqtt" } : {}),
    clientId: `${shape}-${transport}`,
    ...clientTls(pki, certs![shape]),
  };
}

function start(clientCertificate: "required" | "optional"): Promise<SecureTestBroker> {
  return startSecureBroker(pki, {
    listeners: {
      tcp: { client_certificate: clientCertificate },
      ws: { client_certificate: clientCertificate },
    },
    // Without a certificate check, anonymous access would let every client below in.
    auth: { allow_anonymous: true },
  });
}

/** The refusal lines logged for `clientIds`, by client id. */
function refusals(clientIds: string[]): Map<string, unknown> {
  return new Map(
    lines.filter((l) =>
      String(l.message).startsWith("refused") && clientIds.includes(String(l.client_id))
    ).map((l) => [String(l.client_id), l.reason]),
  );
}

for (const mode of ["required", "optional"] as const) {
  Deno.test({
    name: `where certificates are ${mode}, one whose keyUsage lacks digitalSignature gets ` +
      `CONNACK 0x87 over mqtts and wss, counted and logged; others from the CA connect`,
    ignore: !HAVE_OPENSSL,
    async fn() {
      await using b = await start(mode);
      const refused: string[] = [];
      for (const transport of ["mqtts", "wss"] as const) {
        const port = transport === "wss" ? b.wssPort : b.tlsPort;
        for (const shape of NO_SIGNATURE) {
          assert.equal(await connackOf(port, mqtt(transport, shape)), 0x87, shape);
          refused.push(`${shape}-${transport}`);
        }
        for (const shape of GOOD) {
          assert.equal(await connackOf(port, mqtt(transport, shape)), 0, shape);
        }
      }
      assert.equal(b.broker.metrics.authFailures, refused.length);
      const logged = refusals(refused);
      assert.deepEqual([...logged.keys()].sort(), [...refused].sort());
      for (const reason of logged.values()) assert.equal(reason, KEY_USAGE_REFUSAL);
    },
  });
}

Deno.test({
  name: "an embedder's authenticator that lets every certificate in is not asked about one whose " +
    "keyUsage lacks digitalSignature: CONNACK 0x87, counted",
  ignore: !HAVE_OPENSSL,
  async fn() {
    const asked: string[] = [];
    // Trusts the verified identity alone, as an authenticator written before the usage check would.
    const authenticator: Authenticator = {
      authenticate(req) {
        asked.push(req.clientId);
        return { ok: true, username: req.certificateIdentity };
      },
    };
    await using b = await startSecureBroker(pki, {
      listeners: {
        tcp: { client_certificate: "required" },
        ws: { client_certificate: "required" },
      },
    }, { authenticator });
    for (const transport of ["mqtts", "wss"] as const) {
      const port = transport === "wss" ? b.wssPort : b.tlsPort;
      for (const shape of NO_SIGNATURE) {
        assert.equal(await connackOf(port, mqtt(transport, shape)), 0x87, shape);
      }
      assert.equal(await connackOf(port, mqtt(transport, "clientAuth")), 0);
    }
    assert.deepEqual(asked, ["clientAuth-mqtts", "clientAuth-wss"]);
    assert.equal(b.broker.metrics.authFailures, 2 * NO_SIGNATURE.length);
  },
});

Deno.test({
  name: "mosquitto_pub with a keyEncipherment-only certificate is told it is not authorized",
  ignore: !HAVE_OPENSSL || skipWithout("mosquitto_pub"),
  async fn() {
    await using b = await start("required");
    const pub = (shape: Shape) => {
      const c = certs![shape];
      return mosquittoPub([
        ...["-h", "localhost", "-p", `${b.tlsPort}`, "-V", "5", "-i", shape, "-t", "t", "-m", "x"],
        ...["--cafile", pki.ca.cert, "--cert", c.cert, "--key", c.key],
      ]);
    };
    const refused = await pub("keyEncipherment");
    assert.notEqual(refused.code, 0);
    assert.match(refused.stderr, /not authori[sz]ed/i);
    const accepted = await pub("clientAuth");
    assert.equal(accepted.code, 0, accepted.stderr);
  },
});

Deno.test({
  name: "a certificate whose extendedKeyUsage lacks clientAuth: no CONNACK where certificates " +
    "are required; as no certificate where they are optional",
  ignore: !HAVE_OPENSSL,
  async fn() {
    // Deno's verifier refuses these in the handshake (anyExtendedKeyUsage alone too, which
    // RFC 5280 would allow) and, on an optional listener, reports them unverified: the broker
    // never sees them as certificates, so its own check (below, on the DER) is a second line.
    await using required = await start("required");
    await using optional = await start("optional");
    for (const transport of ["mqtts", "wss"] as const) {
      for (const shape of NO_CLIENT_AUTH) {
        const port = transport === "wss" ? required.wssPort : required.tlsPort;
        const r = await connackOf(port, mqtt(transport, shape));
        assert.ok(r instanceof Error, `${shape} over ${transport} got CONNACK ${r}`);
        const lax = transport === "wss" ? optional.wssPort : optional.tlsPort;
        assert.equal(await connackOf(lax, mqtt(transport, shape)), 0, shape);
      }
    }
    // The broker may see a failed handshake after the client does.
    for (
      let i = 0;
      i < 100 && required.broker.metrics.tlsHandshakeFailures < 2 * NO_CLIENT_AUTH.length;
      i++
    ) {
      await delay(20);
    }
    assert.equal(required.broker.metrics.tlsHandshakeFailures, 2 * NO_CLIENT_AUTH.length);
  },
});

Deno.test({
  name: "the usage rule on the certificates' DER: keyUsage, then extendedKeyUsage",
  ignore: !HAVE_OPENSSL,
  async fn() {
    const refusalOf = async (shape: Shape) => {
      const der = new X509Certificate(await Deno.readTextFile(certs![shape].cert)).raw;
      const extensions = certificateExtensions(new Uint8Array(der));
      assert.ok(extensions !== undefined, shape);
      return clientUseRefusal(extensions);
    };
    for (const shape of NO_SIGNATURE) assert.equal(await refusalOf(shape), KEY_USAGE_REFUSAL);
    for (const shape of ["serverAuth", "codeSigning"] as const) {
      assert.equal(await refusalOf(shape), EXTENDED_KEY_USAGE_REFUSAL);
    }
    for (const shape of [...GOOD, "anyUsage"] as const) {
      assert.equal(await refusalOf(shape), undefined, shape);
    }
    // A v1 certificate has no extensions to forbid anything (the TLS verifier refuses it).
    const v1 = new X509Certificate(await Deno.readTextFile(pki.v1!.cert)).raw;
    assert.deepEqual(certificateExtensions(new Uint8Array(v1))?.size, 0);
  },
});

Deno.test("the DER walk refuses what is not a whole certificate", () => {
  const der = new Uint8Array(
    new X509Certificate(Deno.readTextFileSync(pki.bob.cert)).raw,
  );
  assert.ok(certificateExtensions(der)!.has("2.5.29.17"));
  for (let cut = 0; cut < der.length; cut += 7) {
    assert.equal(certificateExtensions(der.subarray(0, cut)), undefined, `cut at ${cut}`);
  }
  const trailing = new Uint8Array(der.length + 1);
  trailing.set(der);
  assert.equal(certificateExtensions(trailing), undefined);
});
