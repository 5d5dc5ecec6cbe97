import { readFile } from "node:fs/promises";
import path from "node:path";
import { execa } from "execa";
import { StatefulSet } from "kubernetes-models/apps/v1";
import { PodDisruptionBudget } from "kubernetes-models/policy/v1";
import { ConfigMap, type IPodSpec, Secret, Service } from "kubernetes-models/v1";
import { describe, expect, it } from "vitest";
import { parseAllDocuments, parse as parseYaml } from "yaml";
import { loadConfig } from "../../src/config.js";

const ROOT = path.resolve(import.meta.dirname, "../..");
const read = (file: string) => readFile(path.join(ROOT, file), "utf8");

type Doc = { apiVersion: string; kind: string; metadata: { name: string }; [key: string]: unknown };

/** Each kind the manifests use, with its schema-checking model. */
const MODELS: Record<string, new (data: never) => { validate(): void }> = {
  "v1/ConfigMap": ConfigMap,
  "v1/Secret": Secret,
  "v1/Service": Service,
  "apps/v1/StatefulSet": StatefulSet,
  "policy/v1/PodDisruptionBudget": PodDisruptionBudget,
};

async function kubernetesDocs(): Promise<Doc[]> {
  return parseAllDocuments(await read("deploy/kubernetes/formula-runner.yaml")).map((d) => d.toJS() as Doc);
}

function byKind<T>(docs: Doc[], kind: string, name?: string): T {
  const doc = docs.find((d) => d.kind === kind && (name === undefined || d.metadata.name === name));
  if (!doc) throw new Error(`no ${kind} ${name ?? ""} in the manifest`);
  return doc as T;
}

/**
 * The checks of the "restricted" Pod Security Standard (Kubernetes 1.30) on a pod spec:
 * what the admission controller would refuse, one line each.
 */
function restrictedViolations(spec: IPodSpec): string[] {
  const problems: string[] = [];
  if (spec.hostNetwork || spec.hostPID || spec.hostIPC) problems.push("host namespaces");
  const allowedVolumes = [
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
  ];
  for (const volume of spec.volumes ?? []) {
    const type = Object.keys(volume).find((k) => k !== "name");
    if (!type || !allowedVolumes.includes(type)) problems.push(`volume ${volume.name}: ${type}`);
  }
  const podSc = spec.securityContext ?? {};
  for (const c of [...(spec.initContainers ?? []), ...spec.containers]) {
    const sc = c.securityContext ?? {};
    if (sc.privileged) problems.push(`${c.name}: privileged`);
    if (sc.allowPrivilegeEscalation !== false) problems.push(`${c.name}: allowPrivilegeEscalation must be false`);
    if (!(sc.runAsNonRoot ?? podSc.runAsNonRoot)) problems.push(`${c.name}: runAsNonRoot`);
    if ((sc.runAsUser ?? podSc.runAsUser) === 0) problems.push(`${c.name}: runAsUser 0`);
    const seccomp = (sc.seccompProfile ?? podSc.seccompProfile)?.type;
    if (seccomp !== "RuntimeDefault" && seccomp !== "Localhost") problems.push(`${c.name}: seccompProfile`);
    if (!sc.capabilities?.drop?.includes("ALL")) problems.push(`${c.name}: capabilities must drop ALL`);
    for (const cap of sc.capabilities?.add ?? []) {
      if (cap !== "NET_BIND_SERVICE") problems.push(`${c.name}: adds capability ${cap}`);
    }
    for (const port of c.ports ?? []) if (port.hostPort) problems.push(`${c.name}: hostPort`);
  }
  return problems;
}

describe("deploy/kubernetes", () => {
  it("validates every object against the Kubernetes schemas", async () => {
    const docs = await kubernetesDocs();
    expect(docs.map((d) => d.kind).sort()).toEqual([
      "ConfigMap",
      "PodDisruptionBudget",
      "Secret",
      "Service",
      "Service",
      "StatefulSet",
    ]);
    for (const doc of docs) {
      const Model = MODELS[`${doc.apiVersion}/${doc.kind}`];
      expect(Model, `${doc.apiVersion}/${doc.kind}`).toBeDefined();
      expect(() => new (Model as NonNullable<typeof Model>)(doc as never).validate()).not.toThrow();
    }
  });

  it("has a validator that refuses a broken object (the check above can fail)", async () => {
    const set = byKind<Doc & { spec: { replicas: unknown } }>(await kubernetesDocs(), "StatefulSet");
    set.spec.replicas = "two";
    expect(() => new StatefulSet(set as never).validate()).toThrow(/replicas must be integer/);
  });

  it("runs the StatefulSet under a headless governing Service, behind a PDB, meeting the restricted PSS", async () => {
    const docs = await kubernetesDocs();
    const set = byKind<StatefulSet>(docs, "StatefulSet");
    const spec = set.spec;
    if (!spec) throw new Error("no spec");
    const governing = byKind<Service>(docs, "Service", spec.serviceName);
    expect(governing.spec?.clusterIP).toBe("None");
    const labels = spec.template.metadata?.labels ?? {};
    expect(governing.spec?.selector).toEqual(labels);

    const pdb = byKind<PodDisruptionBudget>(docs, "PodDisruptionBudget");
    expect(pdb.spec?.selector?.matchLabels).toEqual(labels);
    expect(pdb.spec?.maxUnavailable ?? pdb.spec?.minAvailable).toBeDefined();

    const pod = spec.template.spec as IPodSpec;
    expect(restrictedViolations(pod)).toEqual([]);
    const container = pod.containers[0];
    expect(container?.securityContext?.readOnlyRootFilesystem).toBe(true);
    expect(container?.image).not.toMatch(/:latest$|^[^:]+$/);
    // A read-only root needs writable HOME (Claude Code's state) and /tmp.
    const mounts = (container?.volumeMounts ?? []).map((m) => m.mountPath);
    expect(mounts).toEqual(expect.arrayContaining(["/var/lib/formula-runner", "/home/runner", "/tmp"]));
  });

  it("the restricted check refuses what the standard refuses", () => {
    const bad: IPodSpec = {
      containers: [{ name: "c", securityContext: { capabilities: { add: ["SYS_ADMIN"] } } }],
      volumes: [{ name: "h", hostPath: { path: "/" } }],
    };
    expect(restrictedViolations(bad)).toEqual([
      "volume h: hostPath",
      "c: allowPrivilegeEscalation must be false",
      "c: runAsNonRoot",
      "c: seccompProfile",
      "c: capabilities must drop ALL",
      "c: adds capability SYS_ADMIN",
    ]);
  });

  it("passes the model credentials from the Secret and starts without a config file", async () => {
    const docs = await kubernetesDocs();
    const secret = byKind<Secret>(docs, "Secret");
    expect(Object.keys(secret.stringData ?? {})).toEqual(
      expect.arrayContaining(["ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN", "DATABASE_URL", "FORGE_TOKEN"]),
    );
    const set = byKind<StatefulSet>(docs, "StatefulSet");
    const container = set.spec?.template.spec?.containers[0];
    const from = container?.envFrom ?? [];
    expect(from.map((f) => f.secretRef?.name ?? f.configMapRef?.name)).toEqual([
      "formula-runner-env",
      secret.metadata?.name,
    ]);
    expect((container?.volumeMounts ?? []).some((m) => m.mountPath.startsWith("/etc/formula-runner"))).toBe(false);

    // The pod's environment, as the container sees it, configures one managed-clone project.
    const configMap = byKind<ConfigMap>(docs, "ConfigMap");
    const env = { ...configMap.data, ...secret.stringData, DATA_DIR: "/var/lib/formula-runner", HOME: "/home/runner" };
    const config = await loadConfig(env, "/app");
    expect(config.configFileFound).toBe(false);
    expect(config.projects.map((p) => [p.name, p.repoPath, p.cloneUrl])).toEqual([
      ["demo", "/var/lib/formula-runner/clones/demo", "https://github.com/acme/demo.git"],
    ]);
    expect(config.projects[0]?.token?.reveal()).toBe("change-me");
  });
});

describe("deploy/docker-compose.yml", () => {
  type Compose = {
    services: Record<
      string,
      { environment?: Record<string, string>; restart?: string; volumes?: string[]; image?: string }
    >;
  };

  /** Compose's `${VAR:-default}` / `${VAR:?message}` / `${VAR}` interpolation, enough for this file. */
  function interpolate(value: string, dotenv: Record<string, string>): string {
    return value.replace(/\$\{(\w+)(?::([-?])([^}]*))?\}/g, (_m, name: string, op?: string, arg?: string) => {
      const set = dotenv[name];
      if (set !== undefined && set !== "") return set;
      if (op === "?") throw new Error(`compose would refuse to start: ${arg}`);
      return op === "-" ? (arg ?? "") : "";
    });
  }

  it("passes the model credentials, restarts, and has no default database password", async () => {
    const compose = parseYaml(await read("deploy/docker-compose.yml")) as Compose;
    const server = compose.services["formula-runner"];
    const postgres = compose.services.postgres;
    expect(Object.keys(server?.environment ?? {})).toEqual(
      expect.arrayContaining(["ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN"]),
    );
    expect(server?.restart).toBe("unless-stopped");
    expect(postgres?.restart).toBe("unless-stopped");
    expect(postgres?.environment?.POSTGRES_PASSWORD).toMatch(/^\$\{POSTGRES_PASSWORD:\?/);
    expect(server?.environment?.DATABASE_URL).toContain("${POSTGRES_PASSWORD:?");
    expect(() => interpolate(postgres?.environment?.POSTGRES_PASSWORD ?? "", {})).toThrow(/POSTGRES_PASSWORD/);
    expect((server?.volumes ?? []).some((v) => v.includes("formula-runner.toml"))).toBe(false);
  });

  it("configures a project from .env alone", async () => {
    const compose = parseYaml(await read("deploy/docker-compose.yml")) as Compose;
    const dotenv = {
      POSTGRES_PASSWORD: "pw",
      API_TOKEN: "t",
      FORGE_TOKEN: "ghp_x",
      WEBHOOK_SECRET: "s",
      ANTHROPIC_API_KEY: "sk-ant-x",
      PROJECT_NAME: "demo",
      PROJECT_REPO: "acme/demo",
      PROJECT_CLONE_URL: "https://github.com/acme/demo.git",
    };
    const env = Object.fromEntries(
      Object.entries(compose.services["formula-runner"]?.environment ?? {}).map(([k, v]) => [
        k,
        interpolate(String(v), dotenv),
      ]),
    );
    const config = await loadConfig({ ...env, DATA_DIR: "/var/lib/formula-runner" }, "/app");
    expect(config.projects.map((p) => [p.name, p.forge, p.primaryBranch, p.repoPath])).toEqual([
      ["demo", "github", "main", "/var/lib/formula-runner/clones/demo"],
    ]);
    expect(config.settings.databaseUrl?.reveal()).toBe("postgres://formula_runner:pw@postgres:5432/formula_runner");
  });
});

describe("deploy/Dockerfile and .dockerignore", () => {
  it("pins Claude Code to the tested version, sets git identity and safe.directory, needs no config file", async () => {
    const dockerfile = await read("deploy/Dockerfile");
    const pkg = JSON.parse(await read("package.json")) as { devDependencies: Record<string, string> };
    expect(dockerfile).toContain(`ARG CLAUDE_CODE_VERSION=${pkg.devDependencies["@anthropic-ai/claude-code"]}`);
    expect(dockerfile).toContain('"@anthropic-ai/claude-code@${CLAUDE_CODE_VERSION}"');
    expect(dockerfile).not.toMatch(/npm install -g @anthropic-ai\/claude-code\s*(&&|$)/m);
    expect(dockerfile).toMatch(/git config --system user\.name /);
    expect(dockerfile).toMatch(/git config --system user\.email /);
    expect(dockerfile).toMatch(/git config --system --add safe\.directory '\*'/);
    for (const tool of ["git", "curl", "jq", "tini"])
      expect(dockerfile).toMatch(new RegExp(`apt-get install .*\\b${tool}\\b`));
    expect(dockerfile).toMatch(/^ARG NODE_IMAGE=node:(2[4-9]|[3-9]\d)-/m);
    expect(dockerfile).toMatch(/^USER 10001/m);
    expect(dockerfile).not.toMatch(/^\s*FORMULA_RUNNER_CONFIG=/m);
  });

  it("keeps node_modules, .git and local state out of the build context", async () => {
    const ignored = (await read(".dockerignore")).split("\n").map((l) => l.trim());
    expect(ignored).toEqual(expect.arrayContaining([".git", "node_modules", "dist", ".formula-runner", ".env"]));
  });
});

describe("deploy/systemd", () => {
  const UNIT = path.join(ROOT, "deploy/systemd/formula-runner.service");

  it("is hardened and reloads on SIGHUP", async () => {
    const lines = (await readFile(UNIT, "utf8")).split("\n").filter((l) => /^\w+=/.test(l));
    const values = (key: string) => lines.filter((l) => l.startsWith(`${key}=`)).map((l) => l.slice(key.length + 1));
    expect(values("ExecReload")).toEqual(["/bin/kill -HUP $MAINPID"]);
    expect(values("ProtectSystem")).toEqual(["strict"]);
    expect(values("ReadWritePaths")[0]).toContain("/var/lib/formula-runner");
    expect(values("CapabilityBoundingSet")).toEqual([""]);
    for (const key of [
      "ProtectKernelTunables",
      "ProtectKernelModules",
      "ProtectKernelLogs",
      "RestrictSUIDSGID",
      "NoNewPrivileges",
      "PrivateTmp",
    ]) {
      expect(values(key), key).toEqual(["true"]);
    }
    // Node's JIT needs W+X memory; the memory guard needs /proc/meminfo.
    expect(values("MemoryDenyWriteExecute")).toEqual([]);
    expect(values("ProcSubset")).toEqual([]);
  });

  it("passes systemd-analyze verify and rates at most 3.5 in systemd-analyze security", async () => {
    const found = await execa("systemd-analyze", ["--version"], { reject: false });
    if (found.exitCode !== 0) {
      // Not a systemd host: the static checks above are all this machine can do.
      expect(found.failed).toBe(true);
      return;
    }
    const verify = await execa("systemd-analyze", ["verify", UNIT], { reject: false });
    expect(verify.exitCode, verify.stderr).toBe(0);
    expect(verify.stderr.trim()).toBe("");
    const security = await execa("systemd-analyze", ["security", "--offline=true", UNIT], { reject: false });
    const score = /Overall exposure level for \S+: ([\d.]+)/.exec(security.stdout);
    expect(score, security.stdout.slice(-500)).not.toBeNull();
    expect(Number(score?.[1])).toBeLessThanOrEqual(3.5);
  });
});
