/**
 * TLS session resumption and the withdrawal of a client CA (taking it out of tls.cafile, the way
 * certificates are withdrawn without a CRL). A resumed session is not verified again by the
 * runtime, which reports the first handshake's certificate as authorized: a client of the
 * withdrawn CA that kept a ticket resumed without presenting any certificate and got CONNACK 0.
 * openssl s_client is the client: it saves and resumes sessions on demand.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import type { CertFiles } from "../../src/auth/certs.ts";
import { startSecureBroker } from "../helpers/broker.ts";
import { haveBinary, makeTestPki } from "../helpers/certs.ts";

const HAVE_OPENSSL = await haveBinary("openssl");
const dir = await Deno.makeTempDir({ prefix: "mcloudtt-tls-resume-" });
const pki = await makeTestPki(dir);
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
const read = (path: string) => Deno.readTextFileSync(path);

/** An MQTT 3.1.1 CONNECT (client id "x", clean session); CONNACK 0 is 20 02 00 00. */
const CONNECT = new Uint8Array([
  0x10,
  0x0d,
  0x00,
  0x04,
  0x4d,
  0x51,
  0x54,
  0x54,
  0x04,
  0x02,
  0x00,
  0x1e,
  0x00,
  0x01,
  0x78,
]);

interface Attempt {
  /** s_client said the session was resumed. */
  reused: boolean;
  /** The broker answered the CONNECT with CONNACK 0. */
  accepted: boolean;
}

/**
 * Connects with openssl s_client: with `client`'s certificate, or none; saving the session to
 * `saveTo` or resuming the one in `resume`; sends CONNECT and reads for a second.
 */
async function attempt(
  port: number,
  opts: { client?: CertFiles; saveTo?: string; resume?: string; tls12: boolean },
): Promise<Attempt> {
  const args = ["s_client", "-connect", `127.0.0.1:${port}`, "-CAfile", pki.ca.cert, "-ign_eof"];
  if (opts.tls12) args.push("-tls1_2");
  if (opts.client) args.push("-cert", opts.client.cert, "-key", opts.client.key);
  if (opts.saveTo) args.push("-sess_out", opts.saveTo);
  if (opts.resume) args.push("-sess_in", opts.resume);
  const child = new Deno.Command("openssl", {
    args,
    stdin: "piped",
    stdout: "piped",
    stderr: "null",
  }).spawn();
  const writer = child.stdin.getWriter();
  // After the handshake (TLS 1.3 tickets come after it): s_client sends stdin as it reads it.
  await new Promise((r) => setTimeout(r, 500));
  await writer.write(CONNECT).catch(() => {});
  // Read until the CONNACK came or the broker closed the connection (s_client ends), 1 s at most.
  const chunks: Uint8Array[] = [];
  let stdout: Uint8Array = new Uint8Array(0);
  const reader = child.stdout.getReader();
  const timer = setTimeout(() => {
    try {
      child.kill("SIGTERM");
    } catch {
      // it ended on its own
    }
  }, 1000);
  for (;;) {
    const { value, done } = await reader.read().catch(() => ({ value: undefined, done: true }));
    if (done || value === undefined) break;
    chunks.push(value);
    stdout = concat(chunks);
    if (connackAccepted(stdout)) break;
  }
  clearTimeout(timer);
  try {
    child.kill("SIGTERM");
  } catch {
    // it ended on its own: the broker closed the connection
  }
  await writer.close().catch(() => {});
  reader.releaseLock();
  await child.stdout.cancel().catch(() => {});
  await child.status;
  const text = new TextDecoder().decode(stdout);
  const accepted = connackAccepted(stdout);
  return { reused: /\bReused,/.test(text), accepted };
}

/** A CONNACK with reason code 0 somewhere in s_client's output. */
function connackAccepted(out: Uint8Array): boolean {
  for (let i = 0; i + 3 < out.length; i++) {
    if (out[i] === 0x20 && out[i + 1] === 0x02 && out[i + 3] === 0x00) return true;
  }
  return false;
}

function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

for (const tls12 of [false, true]) {
  const name = tls12 ? "TLS 1.2" : "TLS 1.3";
  Deno.test({
    name:
      `${name}: a session resumed after its client CA left cafile is refused; one of a CA still there is not`,
    ignore: !HAVE_OPENSSL,
    fn: async () => {
      const cafile = join(dir, `cafile-${tls12 ? 12 : 13}.crt`);
      await Deno.writeTextFile(cafile, read(pki.ca.cert) + read(pki.otherCa.cert));
      const fullchain = join(dir, "fullchain.crt");
      await Deno.writeTextFile(fullchain, read(pki.broker.cert) + read(pki.ca.cert));
      await using b = await startSecureBroker({
        ca: { cert: cafile },
        broker: { cert: fullchain, key: pki.broker.key },
      });
      const port = b.tlsPort;
      const session = (n: string) => join(dir, `${n}-${tls12 ? 12 : 13}.pem`);
      // Mallory's certificate comes from the other CA; two sessions saved while it is trusted.
      for (const n of ["m1", "m2"]) {
        const full = await attempt(port, { client: pki.otherCaClient, saveTo: session(n), tls12 });
        assert.deepEqual(full, { reused: false, accepted: true }, `full handshake ${n}`);
      }
      // Resuming needs no certificate, and is accepted while the CA is trusted.
      assert.deepEqual(
        await attempt(port, { resume: session("m1"), tls12 }),
        { reused: true, accepted: true },
        "resumption before the withdrawal (else this test proves nothing)",
      );
      const alice = await attempt(port, { client: pki.alice, saveTo: session("a"), tls12 });
      assert.deepEqual(alice, { reused: false, accepted: true });

      // The other CA is withdrawn.
      await Deno.writeTextFile(cafile, read(pki.ca.cert));
      await b.broker.reload();
      const refused = await attempt(port, { client: pki.otherCaClient, tls12 });
      assert.equal(refused.accepted, false, "a full handshake with mallory's certificate");
      // Before, this resumed and got CONNACK 0 as "mallory", without any certificate.
      const resumed = await attempt(port, { resume: session("m2"), tls12 });
      assert.equal(
        resumed.accepted,
        false,
        `a resumed session of the withdrawn CA: ${JSON.stringify(resumed)}`,
      );
      // Alice's CA is still there: her session resumes and she connects.
      assert.deepEqual(
        await attempt(port, { resume: session("a"), tls12 }),
        { reused: true, accepted: true },
      );
    },
  });
}
