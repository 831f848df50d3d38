// `--pin` (pin.ts): how CPUs are split, and that a pinned bench really runs its servers and its
// workers on different CPUs (checked in a child process, so this test process stays unpinned).

import assert from "node:assert/strict";
import { allowedCpus, defaultPinning, onServerCpus, PinError } from "./pin.ts";

Deno.test("pin: the last half of the CPUs for servers, the rest for clients", () => {
  assert.deepEqual(defaultPinning(2), { servers: "1", clients: "0" });
  assert.deepEqual(defaultPinning(3), { servers: "2", clients: "0-1" });
  assert.deepEqual(defaultPinning(8), { servers: "4-7", clients: "0-3" });
  assert.throws(() => defaultPinning(1), PinError);
});

Deno.test("pin: unpinned, a server starts as it is", () => {
  assert.deepEqual(onServerCpus("mosquitto", ["-c", "x.conf"]), ["mosquitto", ["-c", "x.conf"]]);
});

const haveTaskset = await new Deno.Command("taskset", { args: ["-V"], stdout: "null" }).output()
  .then((r) => r.success, () => false);
const cores = navigator.hardwareConcurrency;
if (!haveTaskset || cores < 2) {
  const why = !haveTaskset ? "taskset (util-linux) is missing" : `only ${cores} CPU`;
  console.warn(`!! skipping the pinned-process test: ${why}`);
  if (Deno.env.get("CI")) throw new Error(`pin_test needs taskset and 2 CPUs on CI: ${why}`);
}

Deno.test({
  name: "pin: a pinned bench runs on the client CPUs and starts servers on the others",
  ignore: !haveTaskset || cores < 2,
  async fn() {
    const pin = new URL("./pin.ts", import.meta.url).href;
    // The child pins itself, then starts `sleep` as a server and reports both CPU lists.
    const script = `
      import { allowedCpus, defaultPinning, onServerCpus, pinBench } from "${pin}";
      const p = defaultPinning(navigator.hardwareConcurrency);
      await pinBench(p);
      const [cmd, args] = onServerCpus("sleep", ["5"]);
      const server = new Deno.Command(cmd, { args }).spawn();
      let comm = "";
      for (let i = 0; i < 100 && !comm.includes("sleep"); i++) {
        await new Promise((r) => setTimeout(r, 20));
        comm = Deno.readTextFileSync("/proc/" + server.pid + "/comm").trim();
      }
      console.log(JSON.stringify({ p, self: allowedCpus(Deno.pid), server: allowedCpus(server.pid) }));
      server.kill();
      await server.status;
    `;
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["eval", "--ext=ts", script],
      stdout: "piped",
      stderr: "inherit",
    }).output();
    assert.ok(out.success, "the pinned child failed");
    const r = JSON.parse(new TextDecoder().decode(out.stdout));
    assert.equal(r.self, r.p.clients);
    assert.equal(r.server, r.p.servers);
    assert.notEqual(r.self, r.server);
    // This process was not touched.
    assert.notEqual(allowedCpus(Deno.pid), r.p.clients);
  },
});
