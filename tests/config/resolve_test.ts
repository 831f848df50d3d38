import assert from "node:assert/strict";
import {
  allowAnonymous,
  anyListenerTls,
  listenerBind,
  listenerClientCert,
  listenerEnabled,
  listenerPort,
  listenerTls,
  mayGenerateDevCerts,
  resolveConfig,
  tcpEnabled,
  wsEnabled,
} from "../../src/config/mod.ts";

Deno.test("secure defaults: TLS with required client certificates everywhere, no anonymous", () => {
  const config = resolveConfig();
  for (const name of ["tcp", "ws"] as const) {
    assert.equal(listenerEnabled(config, name), true);
    assert.equal(listenerTls(config, name), true);
    assert.equal(listenerClientCert(config, name), "required");
    assert.equal(listenerBind(config, name), "0.0.0.0");
  }
  assert.equal(listenerPort(config, "tcp"), 1883);
  assert.equal(listenerPort(config, "ws"), 8080);
  assert.equal(allowAnonymous(config), false);
  assert.equal(anyListenerTls(config), true);
});

Deno.test("general.secure = false turns every 'auto' to plain and anonymous", () => {
  const config = resolveConfig({ general: { secure: false } });
  for (const name of ["tcp", "ws"] as const) {
    assert.equal(listenerTls(config, name), false);
    assert.equal(listenerClientCert(config, name), "none");
  }
  assert.equal(allowAnonymous(config), true);
  assert.equal(anyListenerTls(config), false);
});

Deno.test("explicit listener settings win over the general switches", () => {
  const config = resolveConfig({
    general: { secure: true, bind: "::1" },
    listeners: {
      tcp: { client_certificate: "optional", bind: "127.0.0.1" },
      ws: { tls: false },
    },
    auth: { allow_anonymous: true },
  });
  assert.equal(listenerTls(config, "tcp"), true);
  assert.equal(listenerClientCert(config, "tcp"), "optional");
  assert.equal(listenerBind(config, "tcp"), "127.0.0.1");
  assert.equal(listenerTls(config, "ws"), false);
  assert.equal(listenerClientCert(config, "ws"), "none");
  assert.equal(listenerBind(config, "ws"), "::1");
  assert.equal(allowAnonymous(config), true);

  const plain = resolveConfig({ general: { secure: false }, listeners: { ws: { tls: true } } });
  assert.equal(listenerTls(plain, "ws"), true);
  assert.equal(listenerClientCert(plain, "ws"), "required");
  assert.equal(anyListenerTls(plain), true);
  assert.equal(allowAnonymous(resolveConfig({ auth: { allow_anonymous: false } })), false);
});

Deno.test("the WebSocket listener follows general.websocket unless set", () => {
  assert.equal(wsEnabled(resolveConfig({ general: { websocket: false } })), false);
  assert.equal(
    wsEnabled(
      resolveConfig({ general: { websocket: false }, listeners: { ws: { enabled: true } } }),
    ),
    true,
  );
  assert.equal(wsEnabled(resolveConfig({ listeners: { ws: { enabled: false } } })), false);
  assert.equal(tcpEnabled(resolveConfig({ listeners: { tcp: { enabled: false } } })), false);
  // A disabled TLS listener does not count as needing certificates.
  const onlyPlainTcp = resolveConfig({
    general: { websocket: false },
    listeners: { tcp: { tls: false }, ws: { tls: true } },
  });
  assert.equal(anyListenerTls(onlyPlainTcp), false);
});

Deno.test("dev certs may be generated only at the default paths and when allowed", () => {
  assert.equal(mayGenerateDevCerts(resolveConfig()), true);
  assert.equal(mayGenerateDevCerts(resolveConfig({ tls: { generate_dev_certs: false } })), false);
  assert.equal(mayGenerateDevCerts(resolveConfig({ tls: { certfile: "/etc/b.crt" } })), false);
  assert.equal(mayGenerateDevCerts(resolveConfig({ tls: { cafile: "ca.pem" } })), false);
});
