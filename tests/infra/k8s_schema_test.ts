/**
 * infra/k8s is well-formed: every manifest parses, belongs to a kustomization, and every object
 * of both builds (self-hosted Redis, and the GKE overlay) validates against the Kubernetes and
 * cert-manager schemas; a field the API does not know (a typo such as `readinesProbe`) fails too.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { Certificate } from "@kubernetes-models/cert-manager/cert-manager.io/v1/Certificate";
import { Issuer } from "@kubernetes-models/cert-manager/cert-manager.io/v1/Issuer";
import { Deployment } from "kubernetes-models/apps/v1/Deployment";
import { StatefulSet } from "kubernetes-models/apps/v1/StatefulSet";
import { PodDisruptionBudget } from "kubernetes-models/policy/v1/PodDisruptionBudget";
import { ConfigMap } from "kubernetes-models/v1/ConfigMap";
import { Namespace } from "kubernetes-models/v1/Namespace";
import { Service } from "kubernetes-models/v1/Service";
import { ServiceAccount } from "kubernetes-models/v1/ServiceAccount";
import { type K8sObject, listFiles, rel, ROOT } from "../helpers/infra.ts";
import { gkeBuild, K8S, rootBuild } from "../helpers/infra.ts";

/** Every kind infra/k8s may use: its schema validator and its TypeScript interface. */
const KINDS: Record<string, { model: new (o: never) => { validate(): void }; types: string }> = {
  "v1/Namespace": { model: Namespace, types: "kubernetes-models/v1/Namespace#INamespace" },
  "v1/ConfigMap": { model: ConfigMap, types: "kubernetes-models/v1/ConfigMap#IConfigMap" },
  "v1/Service": { model: Service, types: "kubernetes-models/v1/Service#IService" },
  "v1/ServiceAccount": {
    model: ServiceAccount,
    types: "kubernetes-models/v1/ServiceAccount#IServiceAccount",
  },
  "apps/v1/Deployment": {
    model: Deployment,
    types: "kubernetes-models/apps/v1/Deployment#IDeployment",
  },
  "apps/v1/StatefulSet": {
    model: StatefulSet,
    types: "kubernetes-models/apps/v1/StatefulSet#IStatefulSet",
  },
  "policy/v1/PodDisruptionBudget": {
    model: PodDisruptionBudget,
    types: "kubernetes-models/policy/v1/PodDisruptionBudget#IPodDisruptionBudget",
  },
  "cert-manager.io/v1/Certificate": {
    model: Certificate,
    types: "@kubernetes-models/cert-manager/cert-manager.io/v1/Certificate#ICertificate",
  },
  "cert-manager.io/v1/Issuer": {
    model: Issuer,
    types: "@kubernetes-models/cert-manager/cert-manager.io/v1/Issuer#IIssuer",
  },
};

const kindOf = (o: K8sObject) => `${o.apiVersion}/${o.kind}`;
const label = (o: K8sObject) => `${o.kind}/${o.metadata?.name}`;

Deno.test("every manifest under infra/k8s is part of a kustomization build", async () => {
  const used = new Set([...(await rootBuild()).files, ...(await gkeBuild()).files]);
  const onDisk = await listFiles(K8S, [".yaml", ".yml", ".env", ".toml"]);
  const unused = onDisk.filter((f) => !used.has(f)).map(rel);
  assert.deepEqual(unused, [], "files that no kustomization includes");
});

for (const [name, build] of [["infra/k8s", rootBuild], ["infra/k8s/gke", gkeBuild]] as const) {
  Deno.test(`${name}: every object validates against its Kubernetes or cert-manager schema`, async () => {
    const { objects } = await build();
    assert.ok(objects.length > 5, "the build produced objects");
    for (const o of objects) {
      const kind = KINDS[kindOf(o)];
      assert.ok(kind, `${label(o)}: no schema for ${kindOf(o)}; add it to KINDS`);
      assert.ok(o.metadata?.name, `${label(o)}: metadata.name`);
      try {
        new kind.model(o as never).validate();
      } catch (e) {
        assert.fail(`${label(o)} is invalid: ${e instanceof Error ? e.message : e}`);
      }
    }
    const ids = objects.map((o) => `${kindOf(o)}/${o.metadata.namespace}/${o.metadata.name}`);
    assert.deepEqual(ids.filter((id, i) => ids.indexOf(id) !== i), [], "duplicate objects");
  });
}

Deno.test("a field the API does not know is refused (TypeScript excess-property check)", async () => {
  // The schema validators accept unknown fields, as `kubectl apply --validate=false` would; the
  // generated interfaces do not. Type-check every object as an object literal of its interface.
  const objects = [...(await rootBuild()).objects, ...(await gkeBuild()).objects];
  const dir = await Deno.makeTempDir({ prefix: "mcloudtt-k8s-types-" });
  try {
    const imports = new Map<string, string>();
    const lines: string[] = [];
    objects.forEach((o, i) => {
      const [module, iface] = KINDS[kindOf(o)].types.split("#");
      imports.set(iface, module);
      lines.push(`// ${label(o)}\nexport const o${i}: ${iface} = ${JSON.stringify(o, null, 1)};`);
    });
    // The check must be able to fail: a misspelt field, which must be an error (a check that
    // passes is cached by deno, so later runs are fast).
    imports.set("IDeployment", "kubernetes-models/apps/v1/Deployment");
    lines.push(
      "// @ts-expect-error: readinesProbe is not a field of Container\n" +
        `export const misspelt: IDeployment = { apiVersion: "apps/v1", kind: "Deployment", ` +
        `metadata: { name: "x" }, spec: { selector: {}, template: { spec: { containers: ` +
        `[{ name: "c", readinesProbe: {} }] } } } };`,
    );
    const header = [...imports].map(([i, m]) => `import type { ${i} } from "${m}";`);
    const file = join(dir, "manifests.ts");
    await Deno.writeTextFile(file, [...header, ...lines].join("\n") + "\n");
    const { code, stderr } = await checkTypes(file);
    assert.equal(code, 0, stderr);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

async function checkTypes(file: string) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["check", "--quiet", "--config", `${ROOT}deno.json`, file],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  return { code: out.code, stderr: new TextDecoder().decode(out.stderr) };
}
