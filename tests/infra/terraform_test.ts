/**
 * infra/terraform parses (HashiCorp's HCL parser, compiled to WebAssembly, from npm) and declares
 * what `terraform apply` must create: GKE Autopilot, Memorystore, the BigQuery dataset and table
 * of the topic log, a service account bound through Workload Identity, and the outputs the
 * README's steps use. No terraform binary or Google access is needed.
 */
import assert from "node:assert/strict";
import {
  gkeBuild,
  interpolations,
  loadTerraform,
  parseEnvFile,
  parseHcl,
  podSpec,
  TERRAFORM,
  type Terraform,
  terraformKustomizeEnv,
} from "../helpers/infra.ts";
import { schemaProblems } from "../../src/sinks/bigquery.ts";
import { type ColumnSchema, ROW_SCHEMA } from "../../src/sinks/row.ts";

const one = (tf: Terraform, type: string) => {
  const byName = tf.resource[type];
  assert.ok(byName, `no ${type}`);
  const names = Object.keys(byName);
  assert.equal(names.length, 1, `one ${type}`);
  return { name: names[0], body: byName[names[0]][0] };
};

Deno.test("the HCL parser refuses broken Terraform, so parsing is a real check", async () => {
  await assert.rejects(parseHcl("x.tf", 'resource "a" "b" { x = \n'), /x\.tf/);
});

Deno.test("providers and Terraform itself are pinned", async () => {
  const tf = await loadTerraform(TERRAFORM);
  const [block] = tf.terraform;
  assert.match(block.required_version, /^>= 1\.\d+/);
  const google = block.required_providers[0].google;
  assert.equal(google.source, "hashicorp/google");
  assert.match(google.version, /^\d+\.\d+\.\d+$/, "an exact provider version");
  assert.deepEqual(Object.keys(tf.provider), ["google"]);
  assert.equal(tf.provider.google[0].project, "${var.project_id}");
});

Deno.test("GKE Autopilot, Memorystore, BigQuery and the topic-log identity are declared", async () => {
  const tf = await loadTerraform(TERRAFORM);
  const cluster = one(tf, "google_container_cluster").body;
  assert.equal(cluster.enable_autopilot, true);
  assert.equal(cluster.location, "${var.region}", "regional: nodes in several zones");

  const redis = one(tf, "google_redis_instance");
  assert.equal(redis.body.auth_enabled, true);
  assert.equal(redis.body.redis_configs["maxmemory-policy"], "noeviction");
  const network = one(tf, "google_compute_network").name;
  assert.equal(redis.body.authorized_network, `\${google_compute_network.${network}.id}`);
  assert.equal(cluster.network, `\${google_compute_network.${network}.id}`, "same VPC");

  const dataset = one(tf, "google_bigquery_dataset");
  const table = one(tf, "google_bigquery_table").body;
  assert.equal(table.dataset_id, `\${google_bigquery_dataset.${dataset.name}.dataset_id}`);
  assert.equal(table.time_partitioning[0].field, "publish_time");
  assert.equal(table.schema, '${file("${path.module}/topic_log_schema.json")}');
  const schema = await terraformTableSchema();
  const columns = Object.fromEntries(schema.map((c) => [c.name, c.type]));
  assert.equal(columns.publish_time, "TIMESTAMP", "the partitioning column exists");
  for (const c of table.clustering) assert.ok(c in columns, `clustering column ${c}`);

  const sa = one(tf, "google_service_account");
  const writer = one(tf, "google_bigquery_dataset_iam_member").body;
  assert.equal(writer.role, "roles/bigquery.dataEditor", "write rows, nothing project-wide");
  assert.equal(writer.member, `serviceAccount:\${google_service_account.${sa.name}.email}`);
  const wi = one(tf, "google_service_account_iam_member").body;
  assert.equal(wi.role, "roles/iam.workloadIdentityUser");
  assert.match(wi.member, /\.svc\.id\.goog\[\$\{var\.namespace\}\/\$\{each\.value\}\]$/);
  // The Kubernetes service accounts it binds are the ones the adapter (and broker) pods use.
  const { objects } = await gkeBuild();
  const bound = wi.for_each.replace(/^\$\{toset\(\[(.*)\]\)\}$/, "$1").split(",").map((s: string) =>
    s.trim().replaceAll('"', "")
  );
  for (const d of objects.filter((o) => o.kind === "Deployment" || o.kind === "StatefulSet")) {
    assert.ok(bound.includes(podSpec(d).serviceAccountName), `${d.metadata.name}'s account`);
  }
  assert.equal(
    tf.variable.namespace[0].default,
    objects.find((o) => o.kind === "Namespace")!
      .metadata.name,
  );
});

/** The columns of the table Terraform creates (topic_log_schema.json). */
async function terraformTableSchema(): Promise<ColumnSchema[]> {
  return JSON.parse(await Deno.readTextFile(`${TERRAFORM}/topic_log_schema.json`));
}

/** Names, types, modes and nested fields: what BigQuery checks; descriptions may differ. */
function shape(columns: readonly ColumnSchema[]): unknown[] {
  return columns.map((c) => ({
    name: c.name,
    type: c.type,
    mode: c.mode ?? "NULLABLE",
    ...(c.fields ? { fields: shape(c.fields) } : {}),
  }));
}

Deno.test("the table Terraform creates has exactly the columns the BigQuery sink writes", async () => {
  const schema = await terraformTableSchema();
  // The sink checks the table at start and refuses to run on a mismatch (src/sinks/bigquery.ts):
  // a table made by `terraform apply` must pass that check, column for column, in the same order
  // as the table create_table would make.
  assert.deepEqual(schemaProblems(schema), []);
  assert.deepEqual(shape(schema), shape(ROW_SCHEMA));
  // The comparison can fail: a renamed or retyped column is named.
  const renamed = schema.map((c) => c.name === "payload_encoding" ? { ...c, name: "enc" } : c);
  assert.match(schemaProblems(renamed).join("\n"), /column payload_encoding \(STRING\) is missing/);
  assert.notDeepEqual(shape(renamed), shape(ROW_SCHEMA));
});

Deno.test("every reference in the Terraform names something declared", async () => {
  const tf = await loadTerraform(TERRAFORM);
  const locals = new Set(tf.locals.flatMap((l) => Object.keys(l)));
  const refs = new Set<string>();
  const walk = (v: unknown): void => {
    if (typeof v === "string") { for (const e of interpolations(v)) refs.add(e); }
    else if (Array.isArray(v)) v.forEach(walk);
    else if (v && typeof v === "object") Object.values(v).forEach(walk);
  };
  walk([tf.resource, tf.output, tf.locals, tf.provider]);
  for (const expr of refs) {
    for (
      const [, kind, a, b] of expr.matchAll(
        /\b(var|local|google_[a-z_]+)\.([a-z_]+)(?:\.([a-z_]+))?/g,
      )
    ) {
      if (kind === "var") assert.ok(tf.variable[a], `\${${expr}}: variable ${a}`);
      else if (kind === "local") assert.ok(locals.has(a), `\${${expr}}: local ${a}`);
      else assert.ok(tf.resource[kind]?.[a], `\${${expr}}: resource ${kind}.${a} (${b})`);
    }
  }
  for (const [name, [v]] of Object.entries(tf.variable)) {
    assert.ok(v.description, `variable ${name} has a description`);
  }
  assert.ok(!("default" in tf.variable.project_id[0]), "project_id must be given");
});

Deno.test("the outputs the README uses exist, and kustomize_env fills the GKE overlay", async () => {
  const tf = await loadTerraform(TERRAFORM);
  for (
    const name of [
      "get_credentials",
      "redis_host",
      "redis_auth_string",
      "image_repository",
      "image",
      "kustomize_env",
      "bigquery_table",
      "topic_log_service_account",
    ]
  ) {
    assert.ok(tf.output[name], `output ${name}`);
  }
  assert.equal(tf.output.redis_auth_string[0].sensitive, true);
  const env = parseEnvFile(await terraformKustomizeEnv());
  assert.equal(env.redis_host, "10.0.0.3");
  assert.equal(env.bigquery_project_id, "example-project");
  assert.equal(env.bigquery_table_id, tf.variable.bigquery_table_id[0].default);
  assert.equal(env.bigquery_credentials_path, "", "Workload Identity: no key file");
  assert.equal(env.image, "europe-west3-docker.pkg.dev/example-project/mcloudtt/mcloudtt:0.1.0");
  const readme = await Deno.readTextFile(new URL("../../infra/README.md", import.meta.url));
  for (const m of readme.matchAll(/terraform output -raw ([a-z_]+)/g)) {
    assert.ok(tf.output[m[1]], `README uses output ${m[1]}`);
  }
});
