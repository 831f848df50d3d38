/**
 * Every container of the mcloudtt image in infra/k8s gets a configuration the program accepts:
 * its config.toml from the ConfigMap, the image's ENV, and the container's MCLOUDTT_* variables
 * (values from ConfigMaps and placeholder Secrets) go through the project's own loadConfig, so a
 * misspelt key or variable fails here as it would fail the pod.
 */
import assert from "node:assert/strict";
import { parse as parseToml, stringify as stringifyToml } from "smol-toml";
import { posix } from "node:path";
import { type Config, ConfigError, KEYS, loadConfig } from "../../src/config/mod.ts";
import { spillDir } from "../../src/sinks/mod.ts";
import {
  type Build,
  dockerfileFinalStage,
  gkeBuild,
  type K8sObject,
  podSpec,
  ROOT,
  rootBuild,
} from "../helpers/infra.ts";

/**
 * Keys that other branches are adding while this one is written: while the marker key (the
 * first of its group to land) is absent from src/config/schema.ts, the group is left out of the
 * check (with a warning); once the marker exists, every key of its group must exist too.
 */
const PENDING: Record<string, string[]> = {
  "http.port": ["http.enabled", "http.bind", "http.port", "general.log_format"],
};

/** Secrets that are made by hand (infra/README.md), not by cert-manager or kustomize. */
const HAND_MADE_SECRETS: Record<string, string[]> = {
  "mcloudtt-redis": ["password"],
  "mcloudtt-bigquery-key": ["key.json"],
};

const known = new Set(KEYS.map((k) => k.path));

/** Dotted key paths to leave out because their branch has not landed yet. */
function pendingPaths(): Set<string> {
  const out = new Set<string>();
  for (const [marker, paths] of Object.entries(PENDING)) {
    if (known.has(marker)) continue;
    for (const p of paths) if (!known.has(p)) out.add(p);
  }
  return out;
}

/** Env name of a dotted key path (inverse of envNameFor, for pending keys too). */
const envOf = (path: string) => `MCLOUDTT_${path.replaceAll(".", "_").toUpperCase()}`;

interface ContainerConfig {
  where: string;
  env: Record<string, string>;
  toml: string;
}

/** Everything the program in `container` of workload `w` would read at start. */
async function containerConfig(build: Build, w: K8sObject): Promise<ContainerConfig[]> {
  const image = await dockerfileFinalStage();
  const spec = podSpec(w);
  const configMaps = new Map(
    build.objects.filter((o) => o.kind === "ConfigMap").map((o) => [o.metadata.name, o.data]),
  );
  const out: ContainerConfig[] = [];
  for (const c of spec.containers) {
    const where = `${w.kind}/${w.metadata.name} container ${c.name}`;
    const env: Record<string, string> = {};
    for (const [k, v] of Object.entries(image.env)) if (k.startsWith("MCLOUDTT_")) env[k] = v;
    for (const e of c.env ?? []) {
      if (e.value !== undefined) env[e.name] = e.value;
      else if (e.valueFrom?.fieldRef) {
        // The downward API: a StatefulSet's first pod, as the kubelet would fill it in.
        const path = e.valueFrom.fieldRef.fieldPath;
        assert.equal(path, "metadata.name", `${where}: ${e.name} reads ${path}`);
        assert.equal(w.kind, "StatefulSet", `${where}: ${e.name}: a Deployment's pod names change`);
        env[e.name] = `${w.metadata.name}-0`;
      } else if (e.valueFrom?.configMapKeyRef) {
        const { name, key } = e.valueFrom.configMapKeyRef;
        const data = configMaps.get(name);
        assert.ok(data, `${where}: ${e.name} reads ConfigMap ${name}, which is not in the build`);
        assert.ok(key in data, `${where}: ${e.name} reads key ${key}, not in ConfigMap ${name}`);
        env[e.name] = data[key];
      } else if (e.valueFrom?.secretKeyRef) {
        const { name, key } = e.valueFrom.secretKeyRef;
        assert.ok(HAND_MADE_SECRETS[name]?.includes(key), `${where}: secret ${name}/${key}`);
        env[e.name] = `placeholder-${name}-${key}`;
      } else assert.fail(`${where}: ${e.name} has no value`);
    }
    assert.deepEqual(c.envFrom ?? [], [], `${where}: name every variable (no envFrom)`);
    const configPath = env.MCLOUDTT_CONFIG;
    assert.ok(configPath, `${where}: MCLOUDTT_CONFIG`);
    const mount = c.volumeMounts.find((m: { mountPath: string }) =>
      configPath.startsWith(`${m.mountPath}/`)
    );
    assert.ok(mount, `${where}: no volume mounted at ${configPath}`);
    const volume = spec.volumes.find((v: { name: string }) => v.name === mount.name);
    const data = configMaps.get(volume?.configMap?.name);
    const file = configPath.slice(mount.mountPath.length + 1);
    assert.ok(data?.[file], `${where}: ${configPath} is not in a ConfigMap of the build`);
    out.push({ where, env, toml: data[file] });
  }
  return out;
}

/** Runs loadConfig on what a container would read, minus keys still pending. */
async function load(cc: ContainerConfig, leaveOut: Set<string>) {
  const toml = parseToml(cc.toml) as Record<string, Record<string, unknown>>;
  const env = { ...cc.env };
  for (const path of leaveOut) {
    const [section, key] = path.split(".");
    if (toml[section]) delete toml[section][key];
    if (toml[section] && Object.keys(toml[section]).length === 0) delete toml[section];
    delete env[envOf(path)];
  }
  const dir = await Deno.makeTempDir({ prefix: "mcloudtt-k8s-config-" });
  try {
    await Deno.writeTextFile(`${dir}/config.toml`, stringifyToml(toml));
    return loadConfig({
      args: [],
      env: { ...env, MCLOUDTT_CONFIG: `${dir}/config.toml` },
      cwd: dir,
    })
      .config;
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const mcloudttWorkloads = (build: Build) =>
  build.objects.filter((o) =>
    (o.kind === "Deployment" || o.kind === "StatefulSet") &&
    o.metadata.labels?.["app.kubernetes.io/name"] === "mcloudtt"
  );

const builds = [["infra/k8s", rootBuild], ["infra/k8s/gke", gkeBuild]] as const;

for (const [name, build] of builds) {
  Deno.test(`${name}: every MCLOUDTT_* variable is a config key and the config loads`, async () => {
    const b = await build();
    const leaveOut = pendingPaths();
    if (leaveOut.size > 0) {
      console.warn(
        `WARNING: config keys not in src/config/schema.ts yet, left out: ${[...leaveOut]}`,
      );
    }
    const workloads = mcloudttWorkloads(b);
    assert.ok(workloads.length >= 1);
    for (const w of workloads) {
      for (const cc of await containerConfig(b, w)) {
        for (const envName of Object.keys(cc.env)) {
          if (envName === "MCLOUDTT_CONFIG") continue;
          const isKey = KEYS.some((k) => k.envName === envName) ||
            [...leaveOut].some((p) => envOf(p) === envName);
          assert.ok(isKey, `${cc.where}: ${envName} is no config key`);
        }
        let config;
        try {
          config = await load(cc, leaveOut);
        } catch (e) {
          assert.fail(`${cc.where}: ${e instanceof ConfigError ? e.message : e}`);
        }
        assert.equal(config.tls.generate_dev_certs, false, `${cc.where}: no development CA`);
        assert.equal(config.general.secure, true, `${cc.where}: TLS`);
        if (w.metadata.name === "mcloudtt") {
          assert.equal(config.redis.enabled, true, "the brokers share state in Redis");
          assert.equal(config.redis.host, cc.env.MCLOUDTT_REDIS_HOST);
          assert.equal(config.bigquery.enabled, false, "the adapter writes the topic log");
        } else {
          assert.equal(w.metadata.name, "mcloudtt-bq-adapter");
          checkAdapter(b, w, cc, config);
        }
      }
    }
  });
}

/**
 * What `mcloudtt bq-adapter` reads in its pod: its own pod name as client id, the brokers'
 * in-cluster address over TLS with the adapter's client certificate, the BigQuery table from
 * the site values, and a spill directory on the replica's own volume that the binary may write.
 */
function checkAdapter(b: Build, w: K8sObject, cc: ContainerConfig, config: Config) {
  const at = cc.where;
  const spec = podSpec(w);
  const [c] = spec.containers;
  assert.equal(config.adapter.client_id, `${w.metadata.name}-0`, `${at}: client id = pod name`);
  // The sink's check of the table needs these (the adapter exits 2 without project and dataset).
  const site = b.objects.find((o) => o.kind === "ConfigMap" && o.metadata.name === "mcloudtt-site")!
    .data;
  assert.equal(config.bigquery.project_id, site.bigquery_project_id, `${at}: project`);
  assert.ok(config.bigquery.project_id && config.bigquery.dataset_id, `${at}: project, dataset`);
  assert.equal(config.bigquery.table_id, site.bigquery_table_id, `${at}: table`);
  // "" on GKE (Workload Identity, terraform_test.ts), or the mounted key file.
  assert.equal(config.bigquery.credentials_path, site.bigquery_credentials_path, `${at}: key`);
  assert.ok(config.adapter.receive_maximum <= config.bigquery.max_queue, `${at}: max_queue`);

  // The brokers' Service, on the port of their TLS listener, by a name in their certificate.
  const url = new URL(config.adapter.url);
  assert.equal(url.protocol, "mqtts:", `${at}: TLS to the brokers`);
  const broker = b.objects.find((o) => o.kind === "Deployment" && o.metadata.name === "mcloudtt")!;
  const mqtts = podSpec(broker).containers[0].ports.find((p: { name: string }) =>
    p.name === "mqtts"
  );
  assert.equal(Number(url.port), mqtts.containerPort, `${at}: the brokers' MQTT/TLS port`);
  const brokerCert = b.objects.find((o) =>
    o.kind === "Certificate" && o.metadata.name === "mcloudtt-broker"
  )!;
  assert.ok(brokerCert.spec.dnsNames.includes(url.hostname), `${at}: ${url.hostname} in cert`);
  const [service] = url.hostname.split(".");
  assert.ok(
    b.objects.some((o) => o.kind === "Service" && o.metadata.name === service),
    `${at}: Service ${service}`,
  );

  // The client certificate cert-manager issues for the adapter, mounted where [adapter] points.
  const clientCert = b.objects.find((o) =>
    o.kind === "Certificate" && o.spec.usages?.includes("client auth") &&
    spec.volumes.some((v: { secret?: { secretName: string } }) =>
      v.secret?.secretName === o.spec.secretName
    )
  );
  assert.ok(clientCert, `${at}: a client Certificate's secret is a volume of the pod`);
  const volume = spec.volumes.find((v: { secret?: { secretName: string } }) =>
    v.secret?.secretName === clientCert.spec.secretName
  );
  const mount = c.volumeMounts.find((m: { name: string }) => m.name === volume.name);
  assert.deepEqual(
    [config.adapter.certfile, config.adapter.keyfile, config.adapter.cafile],
    ["tls.crt", "tls.key", "ca.crt"].map((f) => `${mount.mountPath}/${f}`),
    `${at}: [adapter] certfile, keyfile, cafile`,
  );

  // Spilled rows: on the replica's claim (volumeClaimTemplates), below data/ of the working
  // directory /data, the only place besides certs/ the compiled binary may write.
  assert.equal(config.bigquery.overflow, "spill", `${at}: rows wait on disk, not dropped`);
  const dir = posix.resolve("/data", spillDir(config));
  assert.ok(dir.startsWith("/data/data/"), `${at}: ${dir} is below /data/data`);
  const claims = (w.spec.volumeClaimTemplates ?? []).map((t: K8sObject) => t.metadata.name);
  const on = c.volumeMounts
    .filter((m: { mountPath: string }) => dir.startsWith(`${m.mountPath}/`))
    .sort((x: { mountPath: string }, y: { mountPath: string }) =>
      y.mountPath.length - x.mountPath.length
    )[0];
  assert.ok(on && claims.includes(on.name), `${at}: ${dir} is on the replica's own volume`);
}

Deno.test("the check fails on a misspelt variable or key", async () => {
  const b = await rootBuild();
  const [broker] = mcloudttWorkloads(b);
  const [cc] = await containerConfig(b, broker);
  const leaveOut = pendingPaths();
  await assert.rejects(
    load({ ...cc, env: { ...cc.env, MCLOUDTT_REDIS_HSOT: "x" } }, leaveOut),
    /MCLOUDTT_REDIS_HSOT.*did you mean MCLOUDTT_REDIS_HOST/,
  );
  await assert.rejects(
    load({ ...cc, toml: cc.toml.replace("[limits]", "[limits]\nmax_conections = 5") }, leaveOut),
    ConfigError,
  );
  // A guessed name for the adapter's broker address is refused, as the adapter would refuse it.
  const g = await gkeBuild();
  const adapter = mcloudttWorkloads(g).find((w) => w.metadata.name === "mcloudtt-bq-adapter")!;
  const [acc] = await containerConfig(g, adapter);
  await assert.rejects(
    load({ ...acc, env: { ...acc.env, MCLOUDTT_BQ_ADAPTER_URL: "mqtts://x:1883" } }, leaveOut),
    /MCLOUDTT_BQ_ADAPTER_URL/,
  );
});

Deno.test("the container image's own environment names config keys", async () => {
  const { env } = await dockerfileFinalStage();
  assert.equal(env.MCLOUDTT_TLS_GENERATE_DEV_CERTS, "false");
  for (const name of Object.keys(env).filter((n) => n.startsWith("MCLOUDTT_"))) {
    assert.ok(KEYS.some((k) => k.envName === name), `${name} is no config key`);
  }
  const readme = await Deno.readTextFile(`${ROOT}infra/README.md`);
  for (const secret of Object.keys(HAND_MADE_SECRETS)) {
    assert.match(
      readme,
      new RegExp(`create secret generic ${secret}\\b`),
      `README makes ${secret}`,
    );
  }
});
