/**
 * The formula file format: a zod schema of the raw TOML document (snake_case keys, every
 * table strict, every default here) and the typed, frozen {@link Formula} it becomes.
 *
 * Checks that need only one value (cron syntax, time zones, placeholders, paths, env
 * names) sit on that value, so zod reports all of them in one pass with exact paths.
 * The one check across values (`needs` naming earlier steps) runs on the steps array
 * even when other parts of the file are broken, so a file's problems come all at once.
 */
import path from "node:path";
import { Cron } from "croner";
import { z } from "zod";
import { closestMatch, schemaKeysAt } from "../validation.js";
import { DURATION_PATTERN, durationProblem, parseDuration } from "./duration.js";
import {
  COMMAND_PLACEHOLDERS,
  CONCURRENCY_PLACEHOLDERS,
  checkPlaceholders,
  placeholderPattern,
} from "./placeholders.js";

// ---------------------------------------------------------------------------------------
// Vocabulary

/** Run outcomes whose worktree may be preserved (`preserve_on`). */
export const PRESERVE_OUTCOMES = ["crashed", "failed", "timed_out"] as const;
/** A run outcome whose worktree may be preserved. */
export type PreserveOutcome = (typeof PRESERVE_OUTCOMES)[number];

/** Where status comments go (`report`). */
export const REPORT_MODES = ["issue", "always", "never"] as const;
/** `issue`: only runs with an issue; `always`: else on the project's escalation issue; `never`. */
export type ReportMode = (typeof REPORT_MODES)[number];

/** Issue event actions a formula can fire on (`[on.issues] types`). */
export const ISSUE_EVENT_TYPES = ["opened", "labeled", "unlabeled", "closed", "reopened", "edited"] as const;
/** An issue event action. */
export type IssueEventType = (typeof ISSUE_EVENT_TYPES)[number];

/** Issue comment actions (`[on.issue_comment] types`). */
export const ISSUE_COMMENT_EVENT_TYPES = ["created", "edited", "deleted"] as const;
/** An issue comment action. */
export type IssueCommentEventType = (typeof ISSUE_COMMENT_EVENT_TYPES)[number];

/** Pull request actions (`[on.pull_request] types`); Gitea's `synchronized` is normalised to `synchronize` by the forge layer. */
export const PULL_REQUEST_EVENT_TYPES = [
  "opened",
  "synchronize",
  "closed",
  "reopened",
  "edited",
  "labeled",
  "unlabeled",
  "ready_for_review",
  "converted_to_draft",
  "review_requested",
] as const;
/** A pull request action. */
export type PullRequestEventType = (typeof PULL_REQUEST_EVENT_TYPES)[number];

/** Repository permission levels, lowest first, as the forges name them. */
export const PERMISSIONS = ["read", "triage", "write", "maintain", "admin"] as const;
/** A repository permission level. */
export type Permission = (typeof PERMISSIONS)[number];

/** What happens when a run's concurrency key is already held (`on_busy`). */
export const ON_BUSY_POLICIES = ["skip", "queue", "cancel-running"] as const;
/** A policy for a busy concurrency key. */
export type OnBusyPolicy = (typeof ON_BUSY_POLICIES)[number];

/** Environment variables the server sets for every agent; `[env]` may not override them. */
export const RESERVED_ENV_NAMES = [
  "PHASE_FILE",
  "SCRATCH_FILE",
  "OUTPUTS_FILE",
  "FORMULA_RUNNER_URL",
  "FORMULA_RUNNER_TOKEN",
  "RUN_ID",
  "FORMULA",
  "PROJECT",
  "PROJECT_REPO_ROOT",
  "WORKTREE",
  "PRIMARY_BRANCH",
  "ISSUE",
  "ESCALATION_REPLY",
  "SCRATCH_FILE",
  "OUTPUTS_FILE",
  "FORMULA_RUNNER_URL",
  "FORMULA_RUNNER_TOKEN",
  "FORMULA_RUNNER_ARGV",
  "FORMULA_RUNNER_TMPDIR",
  "TMPDIR",
  "CLAUDE_CONFIG_DIR",
  "GIT_OBJECT_DIRECTORY",
  "GIT_ALTERNATE_OBJECT_DIRECTORIES",
] as const;

/** `auto` sandboxes when the host can, `required` refuses to run without, `off` never sandboxes. */
export const SANDBOX_MODES = ["auto", "required", "off"] as const;
export type SandboxMode = (typeof SANDBOX_MODES)[number];

/** How a formula treats text strangers wrote (issue bodies, comments, labels, branch names). */
export const UNTRUSTED_TEXT_MODES = ["fence", "omit"] as const;
export type UntrustedTextMode = (typeof UNTRUSTED_TEXT_MODES)[number];

/** A host name or IP address the sandboxed agent may reach (no scheme, port or path). */
export const HOST_PATTERN =
  "^(\\*\\.)?[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$|^[0-9a-fA-F:]+$";

/** Formula names and step ids. */
export const SLUG_PATTERN = "^[a-z0-9][a-z0-9-]*$";
/** A project name in a formula's `projects` list (as config.ts checks names), or `*`. */
const PROJECT_PATTERN = "^(?:\\*|[a-z0-9][a-z0-9_-]*)$";
/** POSIX environment variable names. */
export const ENV_NAME_PATTERN = "^[A-Za-z_][A-Za-z0-9_]*$";

/** Every default of the formula format, in file terms. */
export const FORMULA_DEFAULTS = Object.freeze({
  version: 1,
  agent: "claude",
  timeout: "30m",
  max_duration: "2h",
  preserve_on: Object.freeze(["crashed"] as PreserveOutcome[]),
  retention: "24h",
  escalation_timeout: "24h",
  report: "issue" as ReportMode,
  schedule_timezone: "UTC",
  dispatch: false,
  issues_types: Object.freeze(["opened"] as IssueEventType[]),
  issue_comment_types: Object.freeze(["created"] as IssueCommentEventType[]),
  // The same default GitHub Actions uses for `pull_request`.
  pull_request_types: Object.freeze(["opened", "synchronize", "reopened"] as PullRequestEventType[]),
  min_memory_mb: 0,
  min_permission: "write" as Permission,
  concurrency: "{formula}-{project}",
  on_busy: "skip" as OnBusyPolicy,
  outputs_comment: true,
  outputs_max: 5,
});

// ---------------------------------------------------------------------------------------
// Single-value checks, exported so the CLI, API and tests can reuse them

const CRON_NICKNAMES = ["@yearly", "@annually", "@monthly", "@weekly", "@daily", "@hourly"];

/**
 * Checks a croner expression (5 fields, or 6 with seconds first, or a nickname such as
 * `@daily`). Returns why it is unusable, or `undefined` when it is fine.
 */
export function checkCron(expression: string, timezone = "UTC"): string | undefined {
  const text = expression.trim();
  if (text.startsWith("@")) {
    if (!CRON_NICKNAMES.includes(text.toLowerCase())) {
      return `unknown cron nickname \`${text}\`; use one of ${CRON_NICKNAMES.join(", ")}`;
    }
  } else {
    const fields = text === "" ? 0 : text.split(/\s+/).length;
    // croner also takes a 7th (year) field; the format promises 5 or 6 only.
    if (fields !== 5 && fields !== 6) {
      return (
        `cron \`${expression}\` has ${fields} field${fields === 1 ? "" : "s"}; ` +
        "expected 5 (minute hour day-of-month month day-of-week) or 6 (seconds first)"
      );
    }
  }
  let job: Cron | undefined;
  try {
    job = new Cron(text, { paused: true, timezone });
    if (job.nextRun() === null) return `cron \`${expression}\` never fires`;
    return undefined;
  } catch (error) {
    const reason = error instanceof Error ? error.message.replace(/^Cron\w*:\s*/, "") : String(error);
    return `invalid cron \`${expression}\`: ${reason}`;
  } finally {
    // Stopped whatever happened: depending on the croner version, even a paused job can
    // hold a timer that keeps the process alive.
    job?.stop();
  }
}

/** Checks an IANA time zone name such as `Europe/Berlin`; returns why not, or `undefined`. */
export function checkTimezone(timezone: string): string | undefined {
  try {
    new Intl.DateTimeFormat("en-US", { timeZone: timezone });
    return undefined;
  } catch {
    // Intl's RangeError only repeats the name; ours says what is expected.
    return `unknown time zone \`${timezone}\`; use an IANA name such as "UTC" or "Europe/Berlin"`;
  }
}

/**
 * Checks a path that must stay inside the project's repository: relative, and no `..`
 * that climbs out of it. Returns why not, or `undefined`.
 */
export function checkRelativePath(file: string): string | undefined {
  if (file.trim() === "") return "must not be empty";
  if (file.includes("\0")) return "must not contain a NUL character";
  const slashed = file.replaceAll("\\", "/");
  if (slashed.startsWith("/") || /^[A-Za-z]:\//.test(slashed)) {
    return `\`${file}\` is absolute; give a path relative to the project's repository`;
  }
  const normalised = path.posix.normalize(slashed);
  if (normalised === ".." || normalised.startsWith("../")) {
    return `\`${file}\` leaves the project's repository through \`..\``;
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------
// Building blocks

function quote(value: unknown): string {
  return typeof value === "string" ? JSON.stringify(value) : String(value);
}

const nonEmptyString = (description: string) => z.string().min(1, { error: "must not be empty" }).describe(description);

const slug = (what: string) =>
  z.string().regex(new RegExp(SLUG_PATTERN), {
    error: (issue) =>
      `${quote(issue.input)} is not a valid ${what}: use lowercase letters, digits and "-", ` +
      "starting with a letter or digit",
  });

const duration = (description: string, fallback: string) =>
  z
    .string()
    .regex(new RegExp(DURATION_PATTERN), {
      error: (issue) => durationProblem(String(issue.input)),
    })
    .refine((text) => parseDuration(text) !== 0, { error: "must be longer than zero" })
    .default(fallback)
    .meta({ description, examples: [fallback] });

/** Refuses the same item twice; a repeated value is always a slip, never intended. */
function uniqueItems(items: readonly unknown[], ctx: z.RefinementCtx): void {
  items.forEach((item, index) => {
    const first = items.indexOf(item);
    if (first !== index) {
      ctx.addIssue({ code: "custom", path: [index], message: `${quote(item)} is listed twice` });
    }
  });
}

const eventTypes = <const T extends readonly [string, ...string[]]>(
  values: T,
  fallback: readonly T[number][],
  what: string,
) =>
  z
    .array(z.enum(values))
    .min(1, { error: "must name at least one type; leave the table out to not fire on these events" })
    .superRefine(uniqueItems)
    .meta({ uniqueItems: true })
    .default([...fallback] as T[number][])
    .describe(`${what} actions that fire this formula. Default: ${fallback.join(", ")}.`);

// ---------------------------------------------------------------------------------------
// Tables

const cronExpression = z
  .string()
  .superRefine((expression, ctx) => {
    const problem = checkCron(expression);
    if (problem !== undefined) ctx.addIssue({ code: "custom", message: problem });
  })
  .meta({
    description:
      "croner syntax: 5 fields (minute hour day-of-month month day-of-week), 6 with seconds first, or @daily/@hourly/...; UTC",
    examples: ["*/20 * * * *", "0 6 * * 1-5"],
  });

const timezone = z
  .string()
  .superRefine((name, ctx) => {
    const problem = checkTimezone(name);
    if (problem !== undefined) ctx.addIssue({ code: "custom", message: problem });
  })
  .default(FORMULA_DEFAULTS.schedule_timezone)
  .meta({ description: "IANA time zone the cron expression is read in.", examples: ["Europe/Berlin"] });

const scheduleTable = z
  .object({ cron: cronExpression, timezone })
  .strict()
  .superRefine((entry, ctx) => {
    // Each part alone was checked above; this asks croner about the pair, as the
    // scheduler will build it, and stays quiet when a part was already reported.
    if (checkCron(entry.cron) !== undefined || checkTimezone(entry.timezone) !== undefined) return;
    const problem = checkCron(entry.cron, entry.timezone);
    if (problem !== undefined) ctx.addIssue({ code: "custom", path: ["cron"], message: problem });
  })
  .describe("A cron expression read in a time zone.");

const scheduleEntry = z.union([cronExpression, scheduleTable]);

const issuesTrigger = z
  .object({
    types: eventTypes(ISSUE_EVENT_TYPES, FORMULA_DEFAULTS.issues_types, "Issue"),
    labels: z
      .array(nonEmptyString("A label name."))
      .superRefine(uniqueItems)
      .meta({ uniqueItems: true })
      .default([])
      .describe(
        "Fire only for these labels: for labeled/unlabeled, the label added or removed; " +
          "for other actions, a label the issue carries. Empty: any issue.",
      ),
  })
  .strict()
  .describe("Fire on issue events.");

const issueCommentTrigger = z
  .object({
    types: eventTypes(ISSUE_COMMENT_EVENT_TYPES, FORMULA_DEFAULTS.issue_comment_types, "Issue comment"),
    command: nonEmptyString('The comment body must start with this text, e.g. "/run dev".').optional(),
  })
  .strict()
  .describe("Fire on comments on issues (and pull requests).");

const pullRequestTrigger = z
  .object({
    types: eventTypes(PULL_REQUEST_EVENT_TYPES, FORMULA_DEFAULTS.pull_request_types, "Pull request"),
    branches: z
      .array(nonEmptyString("A base branch name."))
      .min(1, { error: "must name at least one branch; leave it out to match every base branch" })
      .superRefine(uniqueItems)
      .meta({ uniqueItems: true })
      .optional()
      .describe("Fire only for pull requests into one of these base branches (exact names). Default: any."),
  })
  .strict()
  .describe("Fire on pull request events.");

const onTable = z
  .object({
    schedule: z
      .array(scheduleEntry)
      .default([])
      .describe('Cron schedules: "*/20 * * * *" (UTC) or { cron = "0 6 * * *", timezone = "Europe/Berlin" }.'),
    dispatch: z
      .boolean()
      .default(FORMULA_DEFAULTS.dispatch)
      .describe("Whether the formula may be started from the REST API or the CLI."),
    issues: issuesTrigger.optional(),
    issue_comment: issueCommentTrigger.optional(),
    pull_request: pullRequestTrigger.optional(),
  })
  .strict()
  .describe("When the formula runs. A formula with no trigger at all loads with a warning.");

const guardsTable = z
  .object({
    min_memory_mb: z
      .int()
      .min(0, { error: "must be 0 or more" })
      .default(FORMULA_DEFAULTS.min_memory_mb)
      .describe("Skip the run when less memory than this (MiB, MemAvailable) is available. 0: no check."),
    min_permission: z
      .enum(PERMISSIONS)
      .default(FORMULA_DEFAULTS.min_permission)
      .describe("The permission the sender of an event needs on the repository for the event to fire the formula."),
    concurrency: z
      .string()
      .regex(new RegExp(placeholderPattern(CONCURRENCY_PLACEHOLDERS)), {
        error: (issue) =>
          typeof issue.input === "string" ? checkPlaceholders(issue.input, CONCURRENCY_PLACEHOLDERS) : undefined,
      })
      .default(FORMULA_DEFAULTS.concurrency)
      .describe('One running run per key. Placeholders: {formula} {project} {issue}. "" means no limit.'),
    on_busy: z
      .enum(ON_BUSY_POLICIES)
      .default(FORMULA_DEFAULTS.on_busy)
      .describe("When the concurrency key is held: skip the new run, queue it, or cancel the running one."),
  })
  .strict()
  .describe("Conditions checked before a run starts.");

const commandArgument = z.string().regex(new RegExp(placeholderPattern(COMMAND_PLACEHOLDERS)), {
  error: (issue) =>
    typeof issue.input === "string" ? checkPlaceholders(issue.input, COMMAND_PLACEHOLDERS) : undefined,
});

const contextCommand = z
  .array(commandArgument)
  .min(1, { error: "a command needs at least the program to run" })
  .superRefine((argv, ctx) => {
    if (argv[0] === "") ctx.addIssue({ code: "custom", path: [0], message: "the program name must not be empty" });
  })
  .describe("Program and arguments (no shell).");

const contextTable = z
  .object({
    files: z
      .array(
        z.string().superRefine((file, ctx) => {
          const problem = checkRelativePath(file);
          if (problem !== undefined) ctx.addIssue({ code: "custom", message: problem });
        }),
      )
      .superRefine(uniqueItems)
      .meta({ uniqueItems: true })
      .default([])
      .describe("Files read from the project's repository into the prompt (relative paths)."),
    commands: z
      .array(contextCommand)
      .default([])
      .describe(
        "Commands run in the worktree before the session (60 s each); their stdout becomes a prompt section. " +
          "Placeholders: {worktree} {project} {formula} {run_id} {repo_root} {primary_branch}.",
      ),
  })
  .strict()
  .describe("What the agent gets to read before the steps.");

const envName = z
  .string()
  .regex(new RegExp(ENV_NAME_PATTERN), {
    error: (issue) =>
      `${quote(issue.input)} is not an environment variable name: use letters, digits and "_", not starting with a digit`,
  })
  .refine((name) => !(RESERVED_ENV_NAMES as readonly string[]).includes(name), {
    error: (issue) =>
      `${quote(issue.input)} is set by the server for every run and cannot be overridden ` +
      `(reserved: ${RESERVED_ENV_NAMES.join(", ")})`,
  })
  .meta({ not: { enum: [...RESERVED_ENV_NAMES] } });

const envTable = z
  .record(envName, z.string())
  .default({})
  .describe("Extra environment variables for the agent. Never put secrets here; name the variable that holds one.");

const outputsPullRequest = z
  .union([
    z.literal(false),
    z
      .object({
        base: nonEmptyString("Branch the pull request targets. Default: the project's primary branch.").optional(),
        draft: z.boolean().default(false).describe('Open it as a draft (Gitea/Forgejo: a "WIP: " title).'),
      })
      .strict(),
  ])
  .default(false)
  .describe("Whether the agent may ask for a pull request of its commits (false, or { base, draft }).");

const outputsTable = z
  .object({
    comment: z
      .boolean()
      .default(FORMULA_DEFAULTS.outputs_comment)
      .describe("May the agent comment on the run's issue (runs without an issue never can)."),
    labels: z
      .array(nonEmptyString("A label name."))
      .max(100, { error: "at most 100 labels" })
      .superRefine(uniqueItems)
      .meta({ uniqueItems: true })
      .default([])
      .describe("Labels the agent may add to or remove from the run's issue."),
    pull_request: outputsPullRequest,
    issues: z.boolean().default(false).describe("May the agent open new issues."),
    max: z
      .int()
      .min(1, { error: "must be 1 or more" })
      .max(100, { error: "must be 100 or less" })
      .default(FORMULA_DEFAULTS.outputs_max)
      .describe("How many outputs one run may send (refused ones do not count)."),
  })
  .strict()
  .describe("What the agent may ask the server to write to the forge (lines of $OUTPUTS_FILE).");

const stepTable = z
  .object({
    id: slug("step id").describe("Identifies the step; unique in the formula."),
    title: nonEmptyString("A short imperative title."),
    description: nonEmptyString("What the agent must do in this step."),
    needs: z.array(z.string()).default([]).describe("Ids of earlier steps this one builds on."),
  })
  .strict();

/** `needs` may name earlier steps only; ids must be unique. Runs on partly valid input. */
function checkSteps(steps: unknown, ctx: z.RefinementCtx): void {
  if (!Array.isArray(steps)) return;
  const ids = steps.map((step: unknown) =>
    typeof step === "object" && step !== null && typeof (step as { id?: unknown }).id === "string"
      ? (step as { id: string }).id
      : undefined,
  );
  ids.forEach((id, index) => {
    const first = ids.indexOf(id);
    if (id !== undefined && first !== index) {
      ctx.addIssue({
        code: "custom",
        path: [index, "id"],
        message: `duplicate step id \`${id}\` (already used by steps[${first}])`,
      });
    }
  });
  steps.forEach((step: unknown, index) => {
    const needs = typeof step === "object" && step !== null ? (step as { needs?: unknown }).needs : undefined;
    if (!Array.isArray(needs)) return;
    needs.forEach((need: unknown, needIndex) => {
      if (typeof need !== "string") return;
      const at = ids.indexOf(need);
      let message: string | undefined;
      if (at === -1) {
        const known = ids.slice(0, index).filter((id): id is string => id !== undefined);
        const hint = closestMatch(need, known);
        message =
          `no step \`${need}\`` +
          (hint !== undefined
            ? `; did you mean \`${hint}\`?`
            : known.length > 0
              ? `; earlier steps: ${known.join(", ")}`
              : "");
      } else if (at === index) {
        message = `step \`${need}\` cannot need itself`;
      } else if (at > index) {
        message = `step \`${need}\` comes later (steps[${at}]); needs may only name earlier steps`;
      } else if (needs.indexOf(need) !== needIndex) {
        message = `\`${need}\` is listed twice`;
      }
      if (message !== undefined) ctx.addIssue({ code: "custom", path: [index, "needs", needIndex], message });
    });
  });
}

const stepsArray = z
  .array(stepTable)
  .min(1, { error: "a formula needs at least one [[steps]] table" })
  .superRefine(checkSteps, { when: (payload) => Array.isArray(payload.value) })
  .describe("The steps the agent follows, in order.");

const sandboxTable = z
  .object({
    mode: z
      .enum(SANDBOX_MODES)
      .optional()
      .describe(
        "auto: sandbox when the host can, loudly unsandboxed when not; required: refuse to run without; off. " +
          "Unset: the agent profile's, else the server's [sandbox] mode (auto).",
      ),
    allow_hosts: z
      .array(z.string().regex(new RegExp(HOST_PATTERN), "must be a host name or IP address (no scheme, port or path)"))
      .default([])
      .describe("Hosts the sandboxed agent may reach besides its model API."),
    forge_token: z
      .boolean()
      .default(false)
      .describe("Dangerous: hand the project's raw forge token to the agent (shown on the run record)."),
  })
  .strict();

/**
 * The raw formula file as parsed from TOML. Feed it the object smol-toml returns; the
 * output has every default filled in but keeps the file's snake_case keys.
 */
export const formulaFileSchema = z
  .object({
    name: slug("formula name").describe("Must equal the file name without .toml."),
    description: nonEmptyString("One line saying what the formula is for."),
    version: z
      .int()
      .positive({ error: "must be 1 or more" })
      .default(FORMULA_DEFAULTS.version)
      .describe("Bump when the steps change meaningfully; recorded with each run."),
    agent: nonEmptyString("A key of [agents] in the server configuration.").default(FORMULA_DEFAULTS.agent),
    model: nonEmptyString("Model name passed to the agent through its model_args, e.g. sonnet or opus.").optional(),
    timeout: duration(
      "Idle timeout: no phase change and no output for this long ends the session.",
      FORMULA_DEFAULTS.timeout,
    ),
    max_duration: duration("Hard cap for one session, whatever the agent prints.", FORMULA_DEFAULTS.max_duration),
    preserve_on: z
      .array(z.enum(PRESERVE_OUTCOMES))
      .superRefine(uniqueItems)
      .meta({ uniqueItems: true })
      .default([...FORMULA_DEFAULTS.preserve_on])
      .describe("Outcomes whose worktree is kept for inspection."),
    retention: duration(
      "How long a preserved worktree is kept before housekeeping removes it.",
      FORMULA_DEFAULTS.retention,
    ),
    escalation_timeout: duration(
      "How long an escalation waits for a reply before the issue is labelled blocked and the run fails.",
      FORMULA_DEFAULTS.escalation_timeout,
    ),
    report: z
      .enum(REPORT_MODES)
      .default(FORMULA_DEFAULTS.report)
      .describe("Status comments: issue (runs with an issue), always (else on the project's escalation issue), never."),
    sandbox: sandboxTable
      .prefault({})
      .describe("How the agent is contained: sandbox mode, hosts it may reach, the raw forge token (dangerous)."),
    untrusted_text: z
      .enum(UNTRUSTED_TEXT_MODES)
      .default("fence")
      .describe(
        "fence: text strangers wrote enters the prompt inside a random fence marked as data; omit: it is left out.",
      ),
    projects: z
      .array(
        z.string().regex(new RegExp(PROJECT_PATTERN), {
          error: (issue) => `${quote(issue.input)} is not a project name (a slug) or "*"`,
        }),
      )
      .superRefine(uniqueItems)
      .meta({ uniqueItems: true })
      .default([])
      .describe(
        'Projects whose schedules and webhooks fire this formula; "*" means all. A project can also list ' +
          "the formula in its `formulas`. Listed on neither side, the formula fires on no project.",
      ),
    on: onTable.prefault({}),
    guards: guardsTable.prefault({}),
    context: contextTable.prefault({}),
    env: envTable,
    outputs: outputsTable.prefault({}),
    steps: stepsArray,
  })
  .strict()
  .meta({
    title: "formula-runner formula",
    description: "A formula: what an agent must do (steps) and when (on). See docs/formulas.md.",
  });

/** A formula file as written (defaults optional). */
export type FormulaFileInput = z.input<typeof formulaFileSchema>;
/** A formula file after validation, defaults filled in, keys as in the file. */
export type FormulaFile = z.output<typeof formulaFileSchema>;

/**
 * The names of the keys a formula table at `path` may hold, or `undefined` when `path`
 * does not lead to a table of the format. Used for "did you mean" hints on unknown keys.
 */
export function knownKeysAt(path: readonly (string | number)[]): readonly string[] | undefined {
  return schemaKeysAt(formulaFileSchema, path);
}

// ---------------------------------------------------------------------------------------
// The typed value

/** A cron schedule with the time zone it is read in. */
export interface FormulaSchedule {
  /** croner expression (5 or 6 fields, or a nickname such as `@daily`). */
  readonly cron: string;
  /** IANA time zone; `UTC` unless the file names one. */
  readonly timezone: string;
}

/** `[on.issues]`: fire on issue events. */
export interface IssuesTrigger {
  readonly types: readonly IssueEventType[];
  /** Any of these labels; empty means any issue. */
  readonly labels: readonly string[];
}

/** `[on.issue_comment]`: fire on comments. */
export interface IssueCommentTrigger {
  readonly types: readonly IssueCommentEventType[];
  /** The comment body must start with this, when set. */
  readonly command?: string;
}

/** `[on.pull_request]`: fire on pull request events. */
export interface PullRequestTrigger {
  readonly types: readonly PullRequestEventType[];
  /** Base branches (exact names); unset means any. */
  readonly branches?: readonly string[];
}

/** `[on]`: when the formula runs. */
export interface FormulaTriggers {
  readonly schedule: readonly FormulaSchedule[];
  /** May be started from the REST API or the CLI. */
  readonly dispatch: boolean;
  readonly issues?: IssuesTrigger;
  readonly issueComment?: IssueCommentTrigger;
  readonly pullRequest?: PullRequestTrigger;
}

/** `[guards]`: checked before a run starts. */
export interface FormulaGuards {
  /** Skip below this much available memory (MiB); 0 disables the check. */
  readonly minMemoryMb: number;
  /** Permission an event's sender needs on the repository. */
  readonly minPermission: Permission;
  /** Concurrency key template ({formula} {project} {issue}); `""` means no limit. */
  readonly concurrency: string;
  readonly onBusy: OnBusyPolicy;
}

/** `[context]`: what goes into the prompt before the steps. */
export interface FormulaContext {
  /** Paths relative to the project's repository. */
  readonly files: readonly string[];
  /** Argument arrays run in the worktree; placeholders still unexpanded. */
  readonly commands: readonly (readonly string[])[];
}

/** `[outputs]`: the forge writes the agent may ask for. */
export interface FormulaOutputs {
  /** A comment on the run's issue (only runs with an issue). */
  readonly comment: boolean;
  /** Labels it may add or remove on the run's issue. */
  readonly labels: readonly string[];
  /** A pull request of its commits; `base` unset means the project's primary branch. */
  readonly pullRequest: false | { readonly base?: string; readonly draft: boolean };
  /** New issues. */
  readonly issues: boolean;
  /** Outputs sent per run at most. */
  readonly max: number;
}

/** One `[[steps]]` entry. */
export interface FormulaStep {
  readonly id: string;
  readonly title: string;
  readonly description: string;
  /** Ids of earlier steps. */
  readonly needs: readonly string[];
}

/**
 * A validated formula: every default applied, durations in milliseconds, deep-frozen.
 * Only {@link toFormula} (through the loader) makes one.
 */
export interface Formula {
  /** Absolute path of the file it was loaded from. */
  readonly file: string;
  readonly name: string;
  readonly description: string;
  readonly version: number;
  /** A key of the server's `[agents]` table. */
  readonly agent: string;
  readonly model?: string;
  /** Idle timeout. */
  readonly timeoutMs: number;
  /** Hard cap for one session. */
  readonly maxDurationMs: number;
  readonly preserveOn: readonly PreserveOutcome[];
  /** How long a preserved worktree is kept. */
  readonly retentionMs: number;
  /** How long an escalation waits for a reply. */
  readonly escalationTimeoutMs: number;
  readonly report: ReportMode;
  /** Projects this formula fires on from its side (`*`: all); see `firesOn`. */
  readonly projects: readonly string[];
  readonly on: FormulaTriggers;
  readonly guards: FormulaGuards;
  readonly context: FormulaContext;
  readonly env: Readonly<Record<string, string>>;
  readonly outputs: FormulaOutputs;
  readonly steps: readonly FormulaStep[];
  readonly sandbox: FormulaSandbox;
  readonly untrustedText: UntrustedTextMode;
}

/** `[sandbox]`: how the agent is contained. */
export interface FormulaSandbox {
  /** Unset: the agent profile's mode, else the server's. */
  readonly mode?: SandboxMode;
  readonly allowHosts: readonly string[];
  readonly forgeToken: boolean;
}

function milliseconds(text: string): number {
  // The schema only lets parseable durations through.
  return parseDuration(text) ?? 0;
}

/** Freezes `value` and everything reachable from it. */
export function deepFreeze<T>(value: T): T {
  if (typeof value === "object" && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const child of Object.values(value)) deepFreeze(child);
  }
  return value;
}

/** Turns a validated file into the typed, camelCase, deep-frozen {@link Formula}. */
export function toFormula(file: FormulaFile, absolutePath: string): Formula {
  const { on, guards, context } = file;
  const formula: Formula = {
    file: absolutePath,
    name: file.name,
    description: file.description,
    version: file.version,
    agent: file.agent,
    ...(file.model !== undefined && { model: file.model }),
    timeoutMs: milliseconds(file.timeout),
    maxDurationMs: milliseconds(file.max_duration),
    preserveOn: [...file.preserve_on],
    retentionMs: milliseconds(file.retention),
    escalationTimeoutMs: milliseconds(file.escalation_timeout),
    report: file.report,
    projects: [...file.projects],
    on: {
      schedule: on.schedule.map((entry) =>
        typeof entry === "string"
          ? { cron: entry, timezone: FORMULA_DEFAULTS.schedule_timezone }
          : { cron: entry.cron, timezone: entry.timezone },
      ),
      dispatch: on.dispatch,
      ...(on.issues !== undefined && { issues: { types: [...on.issues.types], labels: [...on.issues.labels] } }),
      ...(on.issue_comment !== undefined && {
        issueComment: {
          types: [...on.issue_comment.types],
          ...(on.issue_comment.command !== undefined && { command: on.issue_comment.command }),
        },
      }),
      ...(on.pull_request !== undefined && {
        pullRequest: {
          types: [...on.pull_request.types],
          ...(on.pull_request.branches !== undefined && { branches: [...on.pull_request.branches] }),
        },
      }),
    },
    guards: {
      minMemoryMb: guards.min_memory_mb,
      minPermission: guards.min_permission,
      concurrency: guards.concurrency,
      onBusy: guards.on_busy,
    },
    context: { files: [...context.files], commands: context.commands.map((argv) => [...argv]) },
    env: { ...file.env },
    outputs: {
      comment: file.outputs.comment,
      labels: [...file.outputs.labels],
      pullRequest:
        file.outputs.pull_request === false
          ? false
          : {
              ...(file.outputs.pull_request.base !== undefined && { base: file.outputs.pull_request.base }),
              draft: file.outputs.pull_request.draft,
            },
      issues: file.outputs.issues,
      max: file.outputs.max,
    },
    sandbox: {
      ...(file.sandbox.mode !== undefined && { mode: file.sandbox.mode }),
      allowHosts: [...file.sandbox.allow_hosts],
      forgeToken: file.sandbox.forge_token,
    },
    untrustedText: file.untrusted_text,
    steps: file.steps.map((step) => ({
      id: step.id,
      title: step.title,
      description: step.description,
      needs: [...step.needs],
    })),
  };
  return deepFreeze(formula);
}

/** Whether anything can start the formula: a schedule, dispatch, or an event table. */
export function hasTrigger(formula: Formula): boolean {
  const { on } = formula;
  return (
    on.schedule.length > 0 ||
    on.dispatch ||
    on.issues !== undefined ||
    on.issueComment !== undefined ||
    on.pullRequest !== undefined
  );
}
