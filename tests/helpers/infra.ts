/**
 * Offline readers for the deployment files in infra/: a small stand-in for `kustomize build`
 * (only the features infra/k8s uses; any other kustomization field is an error, so the stand-in
 * cannot silently diverge from the real tool) and a reader of the Terraform files through
 * `@cdktf/hcl2json` (HashiCorp's HCL parser compiled to WebAssembly).
 */
// @ts-types="./hcl2json.d.ts"
import { parse as parseHcl } from "@cdktf/hcl2json";
import { DockerfileParser } from "dockerfile-ast";
import { basename, join, relative } from "node:path";
import { parseAllDocuments } from "yaml";

export { parseHcl };

/** Repository root, with a trailing slash. */
export const ROOT = new URL("../../", import.meta.url).pathname;

/** A Kubernetes object as written in a manifest. */
export interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: {
    name: string;
    namespace?: string;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
  };
  // Every other field is checked by the schema validators, not by this type.
  // deno-lint-ignore no-explicit-any
  [field: string]: any;
}

/** What a build produced and which files it read. */
export interface Build {
  objects: K8sObject[];
  /** Absolute paths of every file the build read (kustomizations, manifests, generator inputs). */
  files: Set<string>;
}

const KUSTOMIZATION_FIELDS = new Set([
  "apiVersion",
  "kind",
  "resources",
  "namespace",
  "labels",
  "configMapGenerator",
  "images",
  "replacements",
]);

/** Parses every YAML document of `text`; a syntax error throws, naming the file. */
export function parseYamlDocuments(text: string, file: string): unknown[] {
  return parseAllDocuments(text).flatMap((doc) => {
    if (doc.errors.length > 0) throw new Error(`${file}: ${doc.errors[0].message}`);
    const value = doc.toJS();
    return value === null || value === undefined ? [] : [value];
  });
}

/**
 * Renders the kustomization in `dir` like `kustomize build` (without name-hash suffixes).
 * `virtualFiles` stands in for files that are generated, not committed (absolute path -> text).
 */
export async function kustomizeBuild(
  dir: string,
  virtualFiles: Record<string, string> = {},
): Promise<Build> {
  const files = new Set<string>();
  const read = async (path: string) => {
    files.add(path);
    return virtualFiles[path] ?? await Deno.readTextFile(path);
  };
  const objects = await buildDir(dir, read);
  return { objects, files };
}

type Reader = (path: string) => Promise<string>;

async function buildDir(dir: string, read: Reader): Promise<K8sObject[]> {
  const file = join(dir, "kustomization.yaml");
  const [k] = parseYamlDocuments(await read(file), file) as Record<string, unknown>[];
  for (const field of Object.keys(k)) {
    if (!KUSTOMIZATION_FIELDS.has(field)) {
      throw new Error(`${file}: field ${field} is not supported by tests/helpers/infra.ts`);
    }
  }
  const objects: K8sObject[] = [];
  for (const entry of (k.resources ?? []) as string[]) {
    const path = join(dir, entry);
    if ((await Deno.stat(path)).isDirectory) {
      objects.push(...await buildDir(path, read));
    } else {
      objects.push(...parseYamlDocuments(await read(path), path) as K8sObject[]);
    }
  }
  const namespace = k.namespace as string | undefined;
  for (const gen of (k.configMapGenerator ?? []) as ConfigMapGenerator[]) {
    await generateConfigMap(gen, dir, namespace, objects, read);
  }
  if (namespace) {
    for (const o of objects) if (o.kind !== "Namespace") o.metadata.namespace = namespace;
  }
  for (const { pairs } of (k.labels ?? []) as { pairs: Record<string, string> }[]) {
    for (const o of objects) o.metadata.labels = { ...o.metadata.labels, ...pairs };
  }
  for (const image of (k.images ?? []) as ImageRule[]) setImages(objects, image);
  for (const r of (k.replacements ?? []) as Replacement[]) replace(objects, r);
  return objects;
}

interface ConfigMapGenerator {
  name: string;
  namespace?: string;
  behavior?: "create" | "merge" | "replace";
  files?: string[];
  envs?: string[];
}

/** `KEY=VALUE` lines, as kustomize reads an env file (blank lines and # comments skipped). */
export function parseEnvFile(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split("\n")) {
    const t = line.trim();
    if (t === "" || t.startsWith("#")) continue;
    const eq = t.indexOf("=");
    if (eq <= 0) throw new Error(`env file line without KEY=: ${line}`);
    out[t.slice(0, eq)] = t.slice(eq + 1);
  }
  return out;
}

async function generateConfigMap(
  gen: ConfigMapGenerator,
  dir: string,
  namespace: string | undefined,
  objects: K8sObject[],
  read: Reader,
): Promise<void> {
  const data: Record<string, string> = {};
  for (const f of gen.files ?? []) data[basename(f)] = await read(join(dir, f));
  for (const f of gen.envs ?? []) Object.assign(data, parseEnvFile(await read(join(dir, f))));
  const behavior = gen.behavior ?? "create";
  if (behavior === "create") {
    objects.push({
      apiVersion: "v1",
      kind: "ConfigMap",
      metadata: { name: gen.name, ...(namespace ? { namespace } : {}) },
      data,
    });
    return;
  }
  const ns = gen.namespace ?? namespace;
  const existing = objects.find((o) =>
    o.kind === "ConfigMap" && o.metadata.name === gen.name && (!ns || o.metadata.namespace === ns)
  );
  if (!existing) throw new Error(`configMapGenerator ${behavior}: no ConfigMap ${gen.name}`);
  existing.data = behavior === "merge" ? { ...existing.data, ...data } : data;
}

/** The pod spec of a workload, if it has one. */
// deno-lint-ignore no-explicit-any
export function podSpec(o: K8sObject): any | undefined {
  return o.spec?.template?.spec;
}

interface ImageRule {
  name: string;
  newName?: string;
  newTag?: string;
}

function setImages(objects: K8sObject[], rule: ImageRule): void {
  for (const o of objects) {
    const spec = podSpec(o);
    for (const c of [...(spec?.containers ?? []), ...(spec?.initContainers ?? [])]) {
      const [name] = (c.image as string).split(/[:@]/);
      if (name !== rule.name) continue;
      c.image = `${rule.newName ?? name}:${rule.newTag ?? "latest"}`;
    }
  }
}

interface Replacement {
  source: { kind: string; name: string; fieldPath: string };
  targets: {
    select: { kind: string; name: string };
    fieldPaths: string[];
    options?: { create?: boolean };
  }[];
}

/** Splits `a.b.[name=x].[key.with.dots]` into its segments. */
function pathSegments(path: string): string[] {
  return path.match(/\[[^\]]*\]|[^.[\]]+/g) ?? [];
}

// deno-lint-ignore no-explicit-any
function step(node: any, segment: string, create: boolean): any {
  if (node === undefined) return undefined;
  const bracket = segment.match(/^\[(.*)\]$/);
  const inner = bracket ? bracket[1] : segment;
  const eq = bracket ? inner.indexOf("=") : -1;
  if (eq > 0) {
    const [field, value] = [inner.slice(0, eq), inner.slice(eq + 1)];
    return (node as Record<string, unknown>[]).find((e) => e[field] === value);
  }
  if (node[inner] === undefined && create) node[inner] = {};
  return node[inner];
}

/** Reads the value at a kustomize field path. */
export function getPath(o: unknown, path: string): unknown {
  let node = o;
  for (const s of pathSegments(path)) node = step(node, s, false);
  return node;
}

function replace(objects: K8sObject[], r: Replacement): void {
  const source = objects.find((o) => o.kind === r.source.kind && o.metadata.name === r.source.name);
  if (!source) throw new Error(`replacement source ${r.source.kind}/${r.source.name} not found`);
  const value = getPath(source, r.source.fieldPath);
  if (value === undefined) throw new Error(`replacement source has no ${r.source.fieldPath}`);
  for (const t of r.targets) {
    const target = objects.find((o) =>
      o.kind === t.select.kind && o.metadata.name === t.select.name
    );
    if (!target) throw new Error(`replacement target ${t.select.kind}/${t.select.name} not found`);
    for (const path of t.fieldPaths) {
      const segs = pathSegments(path);
      let node: unknown = target;
      for (const s of segs.slice(0, -1)) node = step(node, s, t.options?.create ?? false);
      if (node === undefined) throw new Error(`replacement target path ${path} not found`);
      const last = segs.at(-1)!.replace(/^\[(.*)\]$/, "$1");
      const parent = node as Record<string, unknown>;
      if (parent[last] === undefined && !t.options?.create) {
        throw new Error(`replacement target field ${path} does not exist`);
      }
      parent[last] = value;
    }
  }
}

/** Every file below `dir` (absolute paths) whose name ends with one of `suffixes`. */
export async function listFiles(dir: string, suffixes: string[]): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    const path = join(dir, e.name);
    if (e.isDirectory) out.push(...await listFiles(path, suffixes));
    else if (suffixes.some((s) => e.name.endsWith(s))) out.push(path);
  }
  return out.sort();
}

/** Path relative to the repository root, for messages. */
export function rel(path: string): string {
  return relative(ROOT, path);
}

/** Terraform's top-level blocks merged over every *.tf file of a directory, as hcl2json gives them. */
export interface Terraform {
  // deno-lint-ignore no-explicit-any
  resource: Record<string, Record<string, any[]>>;
  // deno-lint-ignore no-explicit-any
  variable: Record<string, any[]>;
  // deno-lint-ignore no-explicit-any
  output: Record<string, any[]>;
  // deno-lint-ignore no-explicit-any
  locals: Record<string, any>[];
  // deno-lint-ignore no-explicit-any
  terraform: any[];
  // deno-lint-ignore no-explicit-any
  provider: Record<string, any[]>;
}

/** Parses every .tf file in `dir` (a syntax error throws, naming the file) and merges them. */
export async function loadTerraform(dir: string): Promise<Terraform> {
  const merged: Terraform = {
    resource: {},
    variable: {},
    output: {},
    locals: [],
    terraform: [],
    provider: {},
  };
  for (const file of await listFiles(dir, [".tf"])) {
    const json = await parseHcl(basename(file), await Deno.readTextFile(file));
    for (const [block, body] of Object.entries(json)) {
      if (block === "resource") {
        for (const [type, byName] of Object.entries(body as Record<string, object>)) {
          merged.resource[type] = { ...merged.resource[type], ...byName };
        }
      } else if (block === "locals" || block === "terraform") {
        merged[block].push(...body as never[]);
      } else if (block === "variable" || block === "output" || block === "provider") {
        Object.assign(merged[block], body);
      } else {
        throw new Error(`${file}: unexpected top-level block ${block}`);
      }
    }
  }
  return merged;
}

/** The `${...}` expressions of an HCL string value. */
export function interpolations(text: string): string[] {
  return [...text.matchAll(/\$\{([^}]*)\}/g)].map((m) => m[1].trim());
}

/** infra/k8s and infra/terraform. */
export const K8S = `${ROOT}infra/k8s`;
export const TERRAFORM = `${ROOT}infra/terraform`;

/** Stand-ins for what Terraform knows only after `apply` (attributes of created resources). */
const APPLY_RESULTS: Record<string, string> = {
  "var.project_id": "example-project",
  "google_redis_instance.mcloudtt.host": "10.0.0.3",
  "google_redis_instance.mcloudtt.port": "6379",
  "google_service_account.topic_log.email":
    "mcloudtt-topic-log@example-project.iam.gserviceaccount.com",
  "google_artifact_registry_repository.images.repository_id": "mcloudtt",
};

/**
 * Evaluates a Terraform string template the way `terraform output` would after an apply:
 * variables take their defaults, locals and resource arguments are followed, and attributes
 * only known after apply come from APPLY_RESULTS. An expression it cannot resolve throws.
 */
export function renderTerraformString(tf: Terraform, template: string): string {
  return template.replace(/\$\{([^}]*)\}/g, (_, raw: string) => {
    const expr = raw.trim();
    if (expr in APPLY_RESULTS) return APPLY_RESULTS[expr];
    const parts = expr.split(".");
    if (parts[0] === "var" && parts.length === 2) {
      const v = tf.variable[parts[1]]?.[0];
      if (v && "default" in v) return String(v.default);
    } else if (parts[0] === "local" && parts.length === 2) {
      const l = tf.locals.find((b) => parts[1] in b);
      if (l) return renderTerraformString(tf, String(l[parts[1]]));
    } else if (parts.length === 3) {
      const arg = tf.resource[parts[0]]?.[parts[1]]?.[0]?.[parts[2]];
      if (typeof arg === "string" || typeof arg === "number") {
        return renderTerraformString(tf, String(arg));
      }
    }
    throw new Error(`cannot evaluate \${${expr}} offline; add it to APPLY_RESULTS`);
  });
}

/** What `terraform output -raw kustomize_env` prints after an apply (see APPLY_RESULTS). */
export async function terraformKustomizeEnv(): Promise<string> {
  const tf = await loadTerraform(TERRAFORM);
  const output = tf.output.kustomize_env?.[0];
  if (!output) throw new Error("infra/terraform has no output kustomize_env");
  return renderTerraformString(tf, output.value);
}

function memo(build: () => Promise<Build>): () => Promise<Build> {
  let cached: Promise<Build> | undefined;
  // Each caller gets its own copy, so a test that changes objects cannot affect another.
  return async () => structuredClone(await (cached ??= build()));
}

/** `kustomize build infra/k8s`: the brokers with the self-hosted Redis. */
export const rootBuild: () => Promise<Build> = memo(() => kustomizeBuild(K8S));

/** `kustomize build infra/k8s/gke` with the terraform.env that `terraform output` writes. */
export const gkeBuild: () => Promise<Build> = memo(async () =>
  kustomizeBuild(`${K8S}/gke`, { [`${K8S}/gke/terraform.env`]: await terraformKustomizeEnv() })
);

/** The Dockerfile's final stage: its instructions and the environment it sets. */
export async function dockerfileFinalStage(): Promise<{
  instructions: { keyword: string; args: string; flags: string[] }[];
  env: Record<string, string>;
}> {
  const df = DockerfileParser.parse(await Deno.readTextFile(`${ROOT}Dockerfile`));
  const all = df.getInstructions();
  const lastFrom = all.findLastIndex((i) => i.getKeyword() === "FROM");
  const instructions = all.slice(lastFrom).map((i) => ({
    keyword: i.getKeyword(),
    args: i.getArguments().map((a) => a.getValue()).join(" "),
    flags: "getFlags" in i
      ? (i as unknown as { getFlags(): Flag[] }).getFlags().map((f) =>
        `--${f.getName()}${f.getValue() === null ? "" : `=${f.getValue()}`}`
      )
      : [],
  }));
  const env: Record<string, string> = {};
  for (const i of all.slice(lastFrom)) {
    if (i.getKeyword() !== "ENV") continue;
    for (const p of (i as unknown as { getProperties(): Property[] }).getProperties()) {
      env[p.getName()] = p.getValue() ?? "";
    }
  }
  return { instructions, env };
}

interface Flag {
  getName(): string;
  getValue(): string | null;
}

interface Property {
  getName(): string;
  getValue(): string | null;
}
