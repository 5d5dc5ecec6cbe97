import { execFile } from "node:child_process";
import { access, writeFile } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";
import type { Output } from "./commands.js";

const println = (out: Output, text = "") => out.write(`${text}\n`);

export interface InitArgs {
  /** Where the file goes (FORMULA_RUNNER_CONFIG or ./formula-runner.toml). */
  file: string;
  name?: string;
  repoPath?: string;
  repo?: string;
  forge?: string;
  forgeUrl?: string;
  branch?: string;
  formulas?: string[];
  force: boolean;
}

/** `owner/name` from a remote URL (https, ssh or scp-like), or undefined. */
export function repoFromRemote(url: string): string | undefined {
  const match = /[/:]([\w.-]+)\/([\w.-]+?)(?:\.git)?\/?$/.exec(url.trim());
  return match ? `${match[1]}/${match[2]}` : undefined;
}

async function originOf(repoPath: string): Promise<string | undefined> {
  try {
    const { stdout } = await promisify(execFile)("git", ["-C", repoPath, "remote", "get-url", "origin"]);
    return stdout.trim() || undefined;
  } catch {
    return undefined;
  }
}

/** The commented config file for one project. Every value is JSON-quoted, so it is valid TOML. */
export function configText(p: {
  name: string;
  repoPath: string;
  repo: string;
  forge: string;
  forgeUrl: string | undefined;
  branch: string;
  formulas: readonly string[];
}): string {
  const q = (value: string) => JSON.stringify(value);
  const envPrefix = p.name.toUpperCase().replace(/[^A-Z0-9]/g, "_");
  return `# formula-runner configuration, written by \`formula-runner init\`.
# Every key: docs/configuration.md. Check it with \`formula-runner doctor\` or by starting the server.

[[projects]]
name = ${q(p.name)}                         # used in URLs, run records and worktree names
repo_path = ${q(p.repoPath)}   # the local clone runs start from (git fetch, then a worktree)
primary_branch = ${q(p.branch)}
forge = ${q(p.forge)}                       # github | gitea | forgejo
${p.forgeUrl ? `forge_url = ${q(p.forgeUrl)}` : '# forge_url = "https://git.example.com/api/v1"   # required for gitea/forgejo'}
repo = ${q(p.repo)}                         # owner/name on the forge
token_env = ${q(`${envPrefix}_FORGE_TOKEN`)}           # NAME of the variable holding the forge token (never the token itself)
webhook_secret_env = ${q(`${envPrefix}_WEBHOOK_SECRET`)} # NAME of the variable holding the webhook secret
# bot_login = "my-runner-bot"              # events by this login never fire formulas
# escalation_issue = 1                     # where runs without an issue ask their questions

# Formulas are opt-in: only the ones listed here fire on this project's schedules and
# webhooks (["*"] = every formula in formulas/). Nothing is listed by default, so nothing
# starts on its own; \`formula-runner run NAME\` works for any formula with dispatch = true.
formulas = [${p.formulas.map(q).join(", ")}]

# The built-in agent is Claude Code (agent = "claude" in a formula). Another CLI:
# [agents.script]
# command = ["bash", "agent.sh"]
`;
}

/** `init`: writes a commented formula-runner.toml for one project; never overwrites without --force. */
export async function initCommand(args: InitArgs, cwd: string, out: Output, err: Output): Promise<number> {
  const exists = await access(args.file).then(
    () => true,
    () => false,
  );
  if (exists && !args.force) {
    println(err, `formula-runner: ${args.file} already exists; pass --force to overwrite it`);
    return 1;
  }
  const repoPath = path.resolve(cwd, args.repoPath ?? ".");
  const origin = await originOf(repoPath);
  const repo = args.repo ?? (origin ? repoFromRemote(origin) : undefined);
  if (!repo) {
    println(
      err,
      `formula-runner: cannot tell the repository: ${repoPath} has no origin remote; pass --repo owner/name (and --repo-path)`,
    );
    return 1;
  }
  const forge = args.forge ?? "github";
  const name = (args.name ?? repo.split("/")[1] ?? "project").toLowerCase().replace(/[^a-z0-9_-]/g, "-");
  const text = configText({
    name,
    repoPath,
    repo,
    forge,
    forgeUrl: args.forgeUrl,
    branch: args.branch ?? "main",
    formulas: args.formulas ?? [],
  });
  // The file must load: checked with the server's own parser before it is written.
  const { parseConfigFile } = await import("../config.js");
  const { problems } = parseConfigFile(args.file, text, {});
  if (problems.length > 0) {
    for (const problem of problems) println(err, `formula-runner: ${problem}`);
    return 1;
  }
  await writeFile(args.file, text, { flag: args.force ? "w" : "wx" });
  println(out, `wrote ${args.file} for project ${name} (${forge} ${repo}, clone ${repoPath})`);
  println(
    out,
    "next: export the token and secret variables it names, run `formula-runner doctor`, then `formula-runner serve`",
  );
  return 0;
}
