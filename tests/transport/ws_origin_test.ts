/**
 * `[listeners.ws] allowed_origins`: a web page of an origin not listed cannot open MQTT over
 * WebSocket (cross-site WebSocket hijacking), over ws and over wss with the visitor's client
 * certificate; clients that send no Origin are served, and "*" lets every page in.
 */
import assert from "node:assert/strict";
import WebSocket from "ws";
import { loadConfig } from "../../src/config/mod.ts";
import { normalizeOrigin, originAllowed } from "../../src/transport/ws_origin.ts";
import { startBroker, startSecureBroker } from "../helpers/broker.ts";
import { clientTls, makeTestPki } from "../helpers/certs.ts";
import { RawWsClient } from "../helpers/ws_raw.ts";
import { assertConfigError } from "../config/helpers.ts";

/** The HTTP status the upgrade got: 101 and an MQTT session (CONNACK 0), or the refusal's. */
async function upgrade(
  port: number,
  origin: string | undefined,
  id: string,
  version: 8 | 13 = 13,
): Promise<number> {
  let client: RawWsClient;
  try {
    client = await RawWsClient.open(port, origin === undefined ? { version } : { origin, version });
  } catch (e) {
    const status = /upgrade refused: HTTP\/1\.1 (\d{3})/.exec(String(e));
    if (status === null) throw e;
    return Number(status[1]);
  }
  await using _ = client;
  await client.handshake(id);
  return 101;
}

async function wsBroker(allowed: string[]) {
  const b = await startBroker({
    general: { websocket: true },
    listeners: { ws: { allowed_origins: allowed } },
  });
  const port = b.broker.addresses.find((a) => a.kind === "ws")!.port;
  return Object.assign(b, { wsPort: port });
}

Deno.test("ws: an upgrade from a page of another origin gets 403; the allowed origin, as browsers write it, and clients without an Origin get MQTT", async () => {
  // Written with its default port and upper case: browsers send "https://dash.example".
  await using b = await wsBroker(["https://Dash.Example:443", "http://127.0.0.1:3000"]);
  assert.equal(await upgrade(b.wsPort, "https://dash.example", "page"), 101);
  assert.equal(await upgrade(b.wsPort, "http://127.0.0.1:3000", "local-page"), 101);
  assert.equal(await upgrade(b.wsPort, undefined, "not-a-browser"), 101);
  for (
    const hostile of [
      "https://evil.example",
      "http://dash.example", // another scheme is another origin
      "https://dash.example:8443", // another port too
      "https://dash.example.evil.example",
      "null", // a sandboxed frame or a file:// page
      "",
    ]
  ) {
    assert.equal(await upgrade(b.wsPort, hostile, "x"), 403, hostile);
  }
  // A browser of the hybi-08 draft (which ws still speaks) sent the origin as Sec-WebSocket-Origin.
  assert.equal(await upgrade(b.wsPort, "https://evil.example", "draft", 8), 403);
  assert.equal(await upgrade(b.wsPort, "https://dash.example", "draft-page", 8), 101);
  // The refusals cost the listener nothing: the next page from the allowed origin is served.
  assert.equal(await upgrade(b.wsPort, "https://dash.example", "again"), 101);
});

Deno.test('ws: by default (allowed_origins = []) no web page may connect, clients without an Origin may; ["*"] lets every page in', async () => {
  {
    await using b = await wsBroker([]);
    assert.equal(await upgrade(b.wsPort, "https://anywhere.example", "page"), 403);
    assert.equal(await upgrade(b.wsPort, `http://127.0.0.1:${b.wsPort}`, "own-host"), 403);
    assert.equal(await upgrade(b.wsPort, undefined, "not-a-browser"), 101);
  }
  await using b = await wsBroker(["*"]);
  assert.equal(await upgrade(b.wsPort, "https://anywhere.example", "any"), 101);
  assert.equal(await upgrade(b.wsPort, "null", "sandboxed"), 101);
  assert.equal(await upgrade(b.wsPort, undefined, "none"), 101);
});

const dir = await Deno.makeTempDir({ prefix: "mcloudtt-ws-origin-" });
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
const pki = await makeTestPki(dir);

/** Opens wss as a browser would on a page of `origin`, presenting alice's certificate. */
function browserWss(port: number, origin: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`wss://localhost:${port}/mqtt`, ["mqtt"], {
      ...clientTls(pki, pki.alice),
      origin,
    });
    ws.on("unexpected-response", (_req, res) => {
      resolve(res.statusCode ?? 0);
      ws.terminate();
    });
    ws.on("open", () => {
      resolve(101);
      ws.close();
    });
    ws.on("error", (e) => reject(e));
  });
}

Deno.test("wss: a hostile page cannot use the visitor's client certificate; the dashboard's page can", async () => {
  await using b = await startSecureBroker(pki, {
    listeners: { tcp: { enabled: false }, ws: { allowed_origins: ["https://dash.example"] } },
  });
  assert.equal(await browserWss(b.wssPort, "https://evil.example"), 403);
  assert.equal(await browserWss(b.wssPort, "https://dash.example"), 101);
});

Deno.test("allowed_origins takes origins only: a path, a wildcard or a bare host is refused at load, naming the key", () => {
  for (
    const bad of ["https://dash.example/app", "*.example", "dash.example", "ftp://dash.example"]
  ) {
    assertConfigError(
      () =>
        loadConfig({
          args: [`--listeners.ws.allowed_origins=${bad}`],
          env: {},
          cwd: dir,
        }),
      "listeners.ws.allowed_origins",
      "web origins",
    );
  }
  const { config } = loadConfig({
    args: [],
    env: { MCLOUDTT_LISTENERS_WS_ALLOWED_ORIGINS: "https://a.example, http://b.example:8080" },
    cwd: dir,
  });
  assert.deepEqual(config.listeners.ws.allowed_origins, [
    "https://a.example",
    "http://b.example:8080",
  ]);
});

Deno.test("originAllowed: header forms a browser never sends are refused once a list is set", () => {
  const allowed = [normalizeOrigin("https://dash.example")!];
  assert.equal(originAllowed(allowed, "https://dash.example"), true);
  assert.equal(originAllowed(allowed, " https://DASH.example "), true);
  assert.equal(originAllowed(allowed, ["https://dash.example", "https://evil.example"]), false);
  assert.equal(originAllowed(allowed, "https://dash.example/path"), false);
  assert.equal(originAllowed(allowed, "https://user@dash.example"), false);
  assert.equal(originAllowed([], "https://evil.example"), false);
  assert.equal(originAllowed(["*"], "https://evil.example"), true);
  assert.equal(originAllowed(allowed, undefined), true);
});
