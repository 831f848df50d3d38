/**
 * The rules infra/k8s must keep (issue 9's deployment bullet): replicas, probes on the broker's
 * HTTP port, the "restricted" Pod Security Standard, a PodDisruptionBudget and Services that
 * select the broker pods, spreading, resources sized from the measured memory per connection,
 * graceful termination, and the cert-manager chain whose secret lands where [tls] points; and the
 * BigQuery adapter as a StatefulSet (pod name = MQTT client id, a spill volume per replica).
 */
import assert from "node:assert/strict";
import { dirname } from "node:path";
import { parse as parseToml } from "smol-toml";
import { gkeBuild, type K8sObject, podSpec, rootBuild } from "../helpers/infra.ts";

type Objects = K8sObject[];

const find = (objects: Objects, kind: string, name: string): K8sObject => {
  const o = objects.find((o) => o.kind === kind && o.metadata.name === name);
  assert.ok(o, `${kind}/${name} is missing`);
  return o;
};

const workloads = (objects: Objects) =>
  objects.filter((o) => o.kind === "Deployment" || o.kind === "StatefulSet");

/** True when every matchLabels pair is among `labels`. */
const selects = (selector: { matchLabels?: Record<string, string> }, labels = {}) =>
  Object.entries(selector.matchLabels ?? {}).length > 0 &&
  Object.entries(selector.matchLabels ?? {}).every(([k, v]) =>
    (labels as Record<string, string>)[k] === v
  );

/** The broker's config.toml as rendered into its ConfigMap. */
function brokerToml(objects: Objects) {
  const cm = find(objects, "ConfigMap", "mcloudtt-config");
  return parseToml(cm.data["config.toml"]) as Record<string, Record<string, unknown>>;
}

/** Port number of a container port given by number or by name. */
// deno-lint-ignore no-explicit-any
function containerPort(container: any, port: number | string): number | undefined {
  if (typeof port === "number") return port;
  return container.ports?.find((p: { name: string }) => p.name === port)?.containerPort;
}

const builds = [["infra/k8s", rootBuild], ["infra/k8s/gke", gkeBuild]] as const;

for (const [name, build] of builds) {
  Deno.test(`${name}: at least 3 brokers, probed at /readyz and /healthz on the [http] port`, async () => {
    const { objects } = await build();
    const broker = find(objects, "Deployment", "mcloudtt");
    assert.ok(broker.spec.replicas >= 3, `replicas = ${broker.spec.replicas}`);
    const toml = brokerToml(objects);
    const httpPort = (toml.http?.port as number | undefined) ?? 8888;
    assert.equal(httpPort, 8888, "the documented default of [http] port");
    assert.notEqual(toml.http?.enabled, false, "[http] enabled");
    assert.equal(toml.http?.bind, "0.0.0.0", "the kubelet probes the pod IP, not loopback");
    const [c] = podSpec(broker).containers;
    for (const [probe, path] of [["readinessProbe", "/readyz"], ["livenessProbe", "/healthz"]]) {
      const get = c[probe]?.httpGet;
      assert.ok(get, `${probe} is an HTTP GET`);
      assert.equal(get.path, path, probe);
      assert.equal(containerPort(c, get.port), httpPort, `${probe} port`);
    }
    const ports = Object.fromEntries(
      c.ports.map((p: { name: string; containerPort: number }) => [p.name, p.containerPort]),
    );
    const tomlPorts = toml.ports as { tcp: number; ws: number };
    assert.deepEqual(ports, { mqtts: tomlPorts.tcp, wss: tomlPorts.ws, http: httpPort });
  });

  Deno.test(`${name}: every pod meets the "restricted" Pod Security Standard`, async () => {
    const { objects } = await build();
    const ns = find(objects, "Namespace", "mcloudtt");
    assert.equal(ns.metadata.labels?.["pod-security.kubernetes.io/enforce"], "restricted");
    for (const w of workloads(objects)) {
      const spec = podSpec(w);
      const where = `${w.kind}/${w.metadata.name}`;
      for (const field of ["hostNetwork", "hostPID", "hostIPC"]) {
        assert.notEqual(spec[field], true, `${where}: ${field}`);
      }
      const allowedVolumes = ["configMap", "secret", "emptyDir", "persistentVolumeClaim"];
      for (const v of spec.volumes ?? []) {
        const type = Object.keys(v).find((k) => k !== "name");
        assert.ok(allowedVolumes.includes(type!), `${where}: volume type ${type}`);
      }
      for (const c of [...spec.containers, ...(spec.initContainers ?? [])]) {
        const sc = c.securityContext ?? {};
        const at = `${where} container ${c.name}`;
        assert.equal(
          sc.runAsNonRoot ?? spec.securityContext?.runAsNonRoot,
          true,
          `${at}: runAsNonRoot`,
        );
        const uid = sc.runAsUser ?? spec.securityContext?.runAsUser;
        assert.ok(typeof uid === "number" && uid > 0, `${at}: a non-zero runAsUser`);
        if (w.metadata.labels?.["app.kubernetes.io/name"] === "mcloudtt") {
          assert.equal(uid, 65532, `${at}: the image's user`);
        }
        assert.equal(sc.allowPrivilegeEscalation, false, `${at}: allowPrivilegeEscalation`);
        assert.notEqual(sc.privileged, true, `${at}: privileged`);
        assert.equal(sc.readOnlyRootFilesystem, true, `${at}: readOnlyRootFilesystem`);
        assert.deepEqual(sc.capabilities?.drop, ["ALL"], `${at}: drop ALL capabilities`);
        assert.equal(sc.capabilities?.add, undefined, `${at}: no added capabilities`);
        const seccomp = sc.seccompProfile?.type ?? spec.securityContext?.seccompProfile?.type;
        assert.equal(seccomp, "RuntimeDefault", `${at}: seccomp`);
        for (const port of c.ports ?? []) {
          assert.ok(port.containerPort >= 1024, `${at}: port ${port.containerPort} needs no root`);
        }
      }
    }
  });

  Deno.test(`${name}: the disruption budget and the Services select exactly the broker pods`, async () => {
    const { objects } = await build();
    const broker = find(objects, "Deployment", "mcloudtt");
    const labels = broker.spec.template.metadata.labels;
    assert.ok(selects(broker.spec.selector, labels), "Deployment selector matches its pods");
    const others = workloads(objects).filter((w) => w !== broker);
    const check = (what: string, selector: { matchLabels?: Record<string, string> }) => {
      assert.ok(selects(selector, labels), `${what} selects the broker pods`);
      for (const o of others) {
        assert.ok(
          !selects(selector, o.spec.template.metadata.labels),
          `${what} must not select ${o.kind}/${o.metadata.name}'s pods`,
        );
      }
    };
    const pdb = find(objects, "PodDisruptionBudget", "mcloudtt");
    check("PodDisruptionBudget", pdb.spec.selector);
    const budget = pdb.spec.maxUnavailable ?? broker.spec.replicas - pdb.spec.minAvailable;
    assert.ok(budget >= 1 && budget < broker.spec.replicas, "lets one pod go, never all");

    const [c] = podSpec(broker).containers;
    const lb = find(objects, "Service", "mcloudtt");
    assert.equal(lb.spec.type, "LoadBalancer");
    check("Service mcloudtt", { matchLabels: lb.spec.selector });
    const lbPorts = lb.spec.ports.map((p: { port: number; targetPort: number | string }) => [
      p.port,
      containerPort(c, p.targetPort),
    ]);
    assert.deepEqual(lbPorts, [[1883, 1883], [8080, 8080]], "MQTT/TLS and WSS");

    const metrics = find(objects, "Service", "mcloudtt-metrics");
    assert.equal(metrics.spec.type ?? "ClusterIP", "ClusterIP");
    check("Service mcloudtt-metrics", { matchLabels: metrics.spec.selector });
    const [mp] = metrics.spec.ports;
    assert.equal(containerPort(c, mp.targetPort), 8888, "metrics on the HTTP port");
  });

  Deno.test(`${name}: brokers spread over nodes and zones`, async () => {
    const { objects } = await build();
    const broker = find(objects, "Deployment", "mcloudtt");
    const spec = podSpec(broker);
    const labels = broker.spec.template.metadata.labels;
    const spread = (spec.topologySpreadConstraints ?? []) as {
      topologyKey: string;
      whenUnsatisfiable: string;
      maxSkew: number;
      labelSelector: { matchLabels: Record<string, string> };
    }[];
    const byKey = Object.fromEntries(spread.map((s) => [s.topologyKey, s]));
    const host = byKey["kubernetes.io/hostname"];
    assert.ok(host, "spread over nodes");
    assert.equal(host.whenUnsatisfiable, "DoNotSchedule", "never two brokers too many on one node");
    assert.ok(byKey["topology.kubernetes.io/zone"], "spread over zones");
    for (const s of spread) {
      assert.equal(s.maxSkew, 1);
      assert.ok(selects(s.labelSelector, labels), `${s.topologyKey} counts the broker pods`);
    }
  });

  Deno.test(`${name}: resources fit the measured memory per connection and [limits]`, async () => {
    const { objects } = await build();
    for (const w of workloads(objects)) {
      for (const c of podSpec(w).containers) {
        const r = c.resources ?? {};
        for (const k of ["cpu", "memory"]) {
          assert.ok(r.requests?.[k], `${w.metadata.name}: requests.${k}`);
          assert.ok(r.limits?.[k], `${w.metadata.name}: limits.${k}`);
        }
      }
    }
    const broker = find(objects, "Deployment", "mcloudtt");
    const limit = mebibytes(podSpec(broker).containers[0].resources.limits.memory);
    const limits = brokerToml(objects).limits as Record<string, number>;
    const conns = limits.max_connections;
    const outbox = limits.max_outgoing_bytes ?? 1048576;
    assert.ok(conns > 0 && conns <= 100_000, "max_connections is set for the pod size");
    const queued = limits.max_queued_bytes_total;
    const retained = limits.max_retained_bytes;
    assert.ok(queued > 0 && retained > 0, "queues and retained messages are bounded for the pod");
    // What a replica holds for each other replica while Redis takes it: bounded, and counted
    // for every other pod of a rolling update (the replicas and one surged pod).
    const forward = (brokerToml(objects).cluster as Record<string, number> | undefined)
      ?.max_forward_bytes;
    assert.ok(forward !== undefined && forward > 0, "cluster.max_forward_bytes is set");
    const others = broker.spec.replicas;
    // ~100 MiB baseline, ~32 KiB per idle TLS connection (the bench: 31.2), a full outbox for
    // 256 busy ones, and what queues (with in-flight messages), retained messages and forwards
    // may hold.
    const needed = 100 + conns * 32 / 1024 +
      (256 * outbox + queued + retained + others * forward) / 1048576;
    assert.ok(needed <= limit, `needs ${needed.toFixed(0)} MiB, limit is ${limit} MiB`);
    assert.ok(limit <= needed * 1.5, `limit ${limit} MiB is far above the ${needed} MiB needed`);
  });

  Deno.test(`${name}: termination waits for the broker's drain`, async () => {
    const { objects } = await build();
    const broker = find(objects, "Deployment", "mcloudtt");
    const spec = podSpec(broker);
    const readiness = spec.containers[0].readinessProbe;
    // Until readiness fails, new clients may still arrive; then clients are disconnected and
    // their sessions handed over. The kubelet's SIGKILL must come well after both.
    const unready = (readiness.periodSeconds ?? 10) * (readiness.failureThreshold ?? 3);
    assert.ok(spec.terminationGracePeriodSeconds >= unready + 30, "grace period");
    assert.equal(broker.spec.strategy.rollingUpdate.maxUnavailable, 0, "surge before drain");
  });

  Deno.test(`${name}: cert-manager issues the broker certificate where [tls] points`, async () => {
    const { objects } = await build();
    const issuers = new Map(
      objects.filter((o) => o.kind === "Issuer").map((o) => [o.metadata.name, o]),
    );
    const certs = objects.filter((o) => o.kind === "Certificate");
    for (const c of certs) {
      const ref = c.spec.issuerRef;
      assert.equal(ref.kind ?? "Issuer", "Issuer", `${c.metadata.name}: a namespaced Issuer`);
      assert.ok(issuers.has(ref.name), `${c.metadata.name}: Issuer ${ref.name} exists`);
    }
    // selfSigned Issuer -> CA Certificate -> CA Issuer -> broker Certificate.
    const caIssuer = issuers.get(
      find(objects, "Certificate", "mcloudtt-broker").spec.issuerRef.name,
    )!;
    assert.ok(caIssuer.spec.ca?.secretName, "the broker's issuer is a CA Issuer");
    const caCert = certs.find((c) => c.spec.secretName === caIssuer.spec.ca.secretName);
    assert.ok(caCert?.spec.isCA, "its CA secret comes from an isCA Certificate");
    assert.ok(issuers.get(caCert.spec.issuerRef.name)?.spec.selfSigned, "bootstrapped self-signed");

    const brokerCert = find(objects, "Certificate", "mcloudtt-broker");
    assert.ok(brokerCert.spec.usages.includes("server auth"));
    assert.ok(brokerCert.spec.dnsNames.includes("mcloudtt.mcloudtt.svc"));
    const tls = brokerToml(objects).tls as Record<string, string>;
    const spec = podSpec(find(objects, "Deployment", "mcloudtt"));
    const volume = spec.volumes.find((v: { secret?: { secretName: string } }) =>
      v.secret?.secretName === brokerCert.spec.secretName
    );
    assert.ok(volume, "the certificate's secret is a volume of the broker pod");
    const mount = spec.containers[0].volumeMounts.find((m: { name: string }) =>
      m.name === volume.name
    );
    // cert-manager writes tls.crt, tls.key and ca.crt into the secret.
    assert.deepEqual(
      [tls.certfile, tls.keyfile, tls.cafile],
      ["tls.crt", "tls.key", "ca.crt"].map((f) => `${mount.mountPath}/${f}`),
    );
    assert.equal(dirname(tls.certfile), mount.mountPath);
    assert.equal(tls.generate_dev_certs, false);
  });
}

Deno.test("the BigQuery adapter is a StatefulSet: pod name as client id, a spill volume each", async () => {
  const { objects } = await gkeBuild();
  assert.equal(
    objects.find((o) => o.kind === "Deployment" && o.metadata.name === "mcloudtt-bq-adapter"),
    undefined,
    "random pod names would orphan a crashed replica's session",
  );
  const adapter = find(objects, "StatefulSet", "mcloudtt-bq-adapter");
  const labels = adapter.spec.template.metadata.labels;
  assert.ok(selects(adapter.spec.selector, labels), "selector matches its pods");
  assert.equal(adapter.spec.replicas, 2, "two adapter replicas share the subscription");
  const spec = podSpec(adapter);
  const [c] = spec.containers;
  assert.deepEqual(c.args, ["bq-adapter"]);

  // The client id is the pod name, which a StatefulSet keeps across restarts.
  const clientId = c.env.find((e: { name: string }) => e.name === "MCLOUDTT_ADAPTER_CLIENT_ID");
  assert.equal(clientId?.valueFrom?.fieldRef?.fieldPath, "metadata.name", "client id = pod name");

  // A claim per replica, mounted in the container, kept when scaled down.
  const claims = adapter.spec.volumeClaimTemplates ?? [];
  assert.equal(claims.length, 1, "one volume claim per replica");
  assert.ok(
    c.volumeMounts.some((m: { name: string }) => m.name === claims[0].metadata.name),
    "the claim is mounted",
  );
  assert.equal(adapter.spec.persistentVolumeClaimRetentionPolicy?.whenScaled, "Retain");

  // The governing Service is headless and selects only the adapter's pods.
  const svc = find(objects, "Service", adapter.spec.serviceName);
  assert.equal(svc.spec.clusterIP, "None");
  assert.ok(selects({ matchLabels: svc.spec.selector }, labels));
  const broker = find(objects, "Deployment", "mcloudtt");
  assert.ok(!selects({ matchLabels: svc.spec.selector }, broker.spec.template.metadata.labels));

  const pdb = find(objects, "PodDisruptionBudget", "mcloudtt-bq-adapter");
  assert.ok(selects(pdb.spec.selector, labels), "the adapter's disruption budget");
  assert.ok(!selects(pdb.spec.selector, broker.spec.template.metadata.labels));
  assert.equal(pdb.spec.maxUnavailable, 1);

  // SIGTERM: the adapter flushes for general.shutdown_timeout, then disconnects; SIGKILL later.
  const cm = find(
    objects,
    "ConfigMap",
    spec.volumes.find((v: { name: string }) => v.name === "config").configMap.name,
  );
  const toml = parseToml(cm.data["config.toml"]) as Record<string, Record<string, number>>;
  const flush = toml.general?.shutdown_timeout ?? 10;
  assert.ok(spec.terminationGracePeriodSeconds >= flush + 10, "grace period over the flush");

  // Workload Identity: its own Kubernetes service account, and no key Secret required.
  assert.equal(spec.serviceAccountName, "mcloudtt-bq-adapter");
  find(objects, "ServiceAccount", "mcloudtt-bq-adapter");
  for (const v of spec.volumes) {
    if (v.secret?.secretName === "mcloudtt-bigquery-key") assert.equal(v.secret.optional, true);
  }
  // The client certificate it presents to the brokers.
  const cert = find(objects, "Certificate", "mcloudtt-bq-adapter");
  assert.ok(cert.spec.usages.includes("client auth"));
  assert.ok(
    spec.volumes.some((v: { secret?: { secretName: string } }) =>
      v.secret?.secretName === cert.spec.secretName
    ),
  );
});

Deno.test("the GKE overlay uses Memorystore and Workload Identity instead of the self-hosted parts", async () => {
  const { objects } = await gkeBuild();
  assert.equal(
    objects.find((o) => o.metadata.name === "mcloudtt-redis"),
    undefined,
    "no self-hosted Redis",
  );
  const site = find(objects, "ConfigMap", "mcloudtt-site").data;
  assert.equal(site.redis_host, "10.0.0.3", "Memorystore's address from terraform output");
  const sa = find(objects, "ServiceAccount", "mcloudtt-bq-adapter");
  assert.match(
    sa.metadata.annotations?.["iam.gke.io/gcp-service-account"] ?? "",
    /@.*iam\.gserviceaccount\.com$/,
  );
  for (const w of workloads(objects)) {
    assert.match(
      podSpec(w).containers[0].image,
      /-docker\.pkg\.dev\/example-project\/mcloudtt\/mcloudtt:/,
    );
  }
  const root = await rootBuild();
  const redis = find(root.objects, "StatefulSet", "mcloudtt-redis");
  const svc = find(root.objects, "Service", "mcloudtt-redis");
  assert.ok(selects({ matchLabels: svc.spec.selector }, redis.spec.template.metadata.labels));
  assert.equal(find(root.objects, "ConfigMap", "mcloudtt-site").data.redis_host, svc.metadata.name);
});

/** A Kubernetes memory quantity in MiB. */
function mebibytes(q: string): number {
  const m = q.match(/^(\d+)(Mi|Gi)$/);
  assert.ok(m, `memory quantity ${q}`);
  return Number(m[1]) * (m[2] === "Gi" ? 1024 : 1);
}
