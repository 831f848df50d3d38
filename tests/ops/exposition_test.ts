/**
 * /metrics is written by our own exposition code (src/ops/exposition.ts, no client library):
 * Prometheus's own checker, `promtool check metrics`, must accept what a broker with traffic
 * serves, and label values are escaped as the text format requires.
 */
import assert from "node:assert/strict";
import { escapeLabel, render } from "../../src/ops/exposition.ts";
import { haveBinary } from "../helpers/certs.ts";
import { connectClient, endClient, startBroker, subscriber } from "../helpers/broker.ts";
import { startOps } from "../helpers/ops.ts";
import { promtool } from "../helpers/promtool.ts";

Deno.test("promtool accepts the /metrics of a broker that carried traffic", async () => {
  if (!await haveBinary("promtool", "--version")) return;
  await using b = await startBroker();
  await using o = await startOps(b.broker);
  const sub = await subscriber(b.port, "x/#", 1, { clientId: "expo-sub" });
  const pub = await connectClient(b.port, { clientId: "expo-pub" });
  await pub.publishAsync("x/1", "one", { qos: 1 });
  await sub.inbox.next();
  await endClient(pub);
  await endClient(sub);
  const text = await (await fetch(`${o.url}/metrics`)).text();
  // The families a scrape must have, with samples, labelled and not.
  assert.match(text, /^mcloudtt_messages_received_total\{qos="1"\} 1$/m);
  assert.match(text, /^mcloudtt_disconnects_total\{reason="[^"]+"\} \d+$/m);
  assert.match(text, /^mcloudtt_publish_latency_seconds_bucket\{le="\+Inf"\} \d+$/m);
  const r = await promtool(text);
  assert.ok(r.ok, `promtool check metrics refused /metrics:\n${r.said}`);
});

Deno.test("label values with quotes, backslashes and newlines are escaped; promtool reads them", async () => {
  assert.equal(escapeLabel('a"b\\c\nd'), 'a\\"b\\\\c\\nd');
  const text = render([{
    name: "t_total",
    help: "help with a \\ and a\nnewline",
    type: "counter",
    samples: () => [["", `{why="${escapeLabel('say "hi"\\\n')}"}`, 1]],
  }]);
  assert.equal(
    text,
    "# HELP t_total help with a \\\\ and a\\nnewline\n# TYPE t_total counter\n" +
      't_total{why="say \\"hi\\"\\\\\\n"} 1\n',
  );
  if (!await haveBinary("promtool", "--version")) return;
  const r = await promtool(text);
  assert.ok(r.ok, `promtool check metrics refused:\n${r.said}`);
});
