/**
 * What the API answers, as zod schemas: the source of the response part of
 * /openapi.json, and what the tests check every answer against. Objects are open (extra
 * fields pass) so a field added to an answer does not break clients; the listed ones
 * must be there with these types.
 */
import { z } from "@hono/zod-openapi";
import {
  DELIVERY_OUTCOMES,
  ESCALATION_STATES,
  INSTANCE_REQUEST_KINDS,
  INSTANCE_REQUEST_STATES,
  OUTPUT_STATUSES,
  RUN_STATUSES,
  SKIP_REASONS,
  TRIGGER_KINDS,
  WORKTREE_STATES,
} from "../db/schema/index.js";
import { ERROR_STATUS } from "../src/errors.js";

const time = z.string().describe("ISO 8601 time in UTC");
const id = z.number().int().positive();

export const errorEnvelope = z
  .object({
    error: z
      .object({
        code: z.enum(Object.keys(ERROR_STATUS) as [keyof typeof ERROR_STATUS, ...(keyof typeof ERROR_STATUS)[]]),
        message: z.string(),
        request_id: z.string().optional(),
        problems: z
          .array(z.union([z.object({ field: z.string(), message: z.string() }), z.string()]))
          .optional()
          .describe(
            "validation_failed: one entry per invalid field; a formula with errors (409): one line per problem",
          ),
      })
      .loose(),
  })
  .openapi("Error");

export const runSchema = z
  .object({
    id,
    formula: z.string(),
    project: z.string(),
    status: z.enum(RUN_STATUSES),
    skip_reason: z.enum(SKIP_REASONS).nullable(),
    issue: z.number().int().nullable(),
    trigger: z.object({
      kind: z.enum(TRIGGER_KINDS),
      ref: z.string().describe("the delivery id, the schedule slot time, or who dispatched"),
    }),
    attempt: z.number().int(),
    queued_at: time,
    started_at: time.nullable(),
    finished_at: time.nullable(),
    phase: z.string().nullable().describe("the latest phase"),
    detail: z.string().nullable().describe("why it ended as it did"),
    instance_id: z.string().nullable(),
    concurrency_key: z.string().nullable(),
    cancel_requested: z.boolean(),
    sandboxed: z.boolean().nullable().describe("whether the agent ran in the sandbox; null until a session started"),
    sandbox_note: z.string().nullable().describe("why the agent ran unsandboxed, when it did"),
    forge_token: z.boolean().describe("the formula handed the raw forge token to the agent ([sandbox] forge_token)"),
  })
  .loose()
  .openapi("Run");

const worktreeBrief = z.object({
  id,
  path: z.string(),
  state: z.enum(WORKTREE_STATES),
  reason: z.string().nullable(),
  created_at: time,
  preserved_at: time.nullable(),
  expires_at: time.nullable(),
  removed_at: time.nullable(),
  removed_by: z.string().nullable(),
});

export const runDetailSchema = runSchema
  .extend({
    num_turns: z.number().int().nullable(),
    cost_usd: z.number().nullable(),
    phases: z.array(
      z.object({ phase: z.string(), detail: z.string().nullable(), at: time, session: z.number().int().nullable() }),
    ),
    sessions: z.array(
      z
        .object({
          id,
          seq: z.number().int(),
          kind: z.enum(["initial", "recovery", "resume"]),
          pid: z.number().int().nullable(),
          started_at: time,
          ended_at: time.nullable(),
          exit_code: z.number().int().nullable(),
          signal: z.string().nullable(),
          outcome: z.string().nullable(),
          detail: z.string().nullable(),
          duration_ms: z.number().nullable(),
          agent_session_id: z.string().nullable().describe("Claude Code's session id"),
          num_turns: z.number().int().nullable(),
          tool_calls: z.number().int().nullable(),
          cost_usd: z.number().nullable(),
          result: z.unknown().describe("the agent's final result object, shortened"),
          output_tail: z.string().nullable(),
        })
        .loose(),
    ),
    worktree: worktreeBrief.loose().nullable(),
    escalations: z.array(
      z
        .object({
          id,
          state: z.enum(ESCALATION_STATES),
          question: z.string().nullable(),
          issue: z.number().int().nullable(),
          asked_at: time,
          deadline_at: time,
          reply_author: z.string().nullable(),
          reply_body: z.string().nullable(),
          claimed_at: time.nullable(),
        })
        .loose(),
    ),
    outputs: z
      .array(
        z
          .object({
            seq: z.number().int().describe("line of the run's outputs file"),
            type: z.string(),
            status: z.enum(["refused", "queued", "sent", "failed"]),
            reason: z.string().nullable(),
          })
          .loose(),
      )
      .describe("forge writes the agent asked for, and what became of each"),
  })
  .openapi("RunDetail");

const outputDecision = z.object({
  seq: z.number().int(),
  type: z.string(),
  status: z.enum(OUTPUT_STATUSES),
  reason: z.string().nullable(),
});

/** GET /api/runs/:id: the run's detail plus its safe outputs. */
export const runWithOutputsSchema = runDetailSchema
  .extend({ outputs: z.array(outputDecision.extend({ created_at: time })) })
  .openapi("RunWithOutputs");

export const outputsAcceptedSchema = z.object({ run_id: id, outputs: z.array(outputDecision) });

export const runListSchema = z.object({ runs: z.array(runSchema), next_cursor: z.string().nullable() });

export const replyAcceptedSchema = z.object({
  run_id: id,
  escalation_id: id,
  state: z.enum(ESCALATION_STATES),
  resuming: z.boolean(),
});

export const worktreeSchema = worktreeBrief
  .extend({
    run_id: z.number().int().nullable(),
    project: z.string(),
    formula: z.string(),
    instance_id: z.string().nullable(),
    size_bytes: z.number().int().nullable().describe("measured when it was preserved"),
  })
  .loose()
  .openapi("Worktree");

/** A request for another instance's resource (cancel a run it runs, delete a worktree on its disk). */
export const instanceRequestSchema = z
  .object({
    id,
    kind: z.enum(INSTANCE_REQUEST_KINDS),
    instance_id: z
      .string()
      .describe("the instance that carries it out: the owner, or the one that took the owner over"),
    run_id: z.number().int().nullable(),
    worktree_id: z.number().int().nullable(),
    requested_by: z.string(),
    state: z.enum(INSTANCE_REQUEST_STATES),
    result: z.string().nullable().describe("what happened, once done or failed"),
    created_at: time,
    finished_at: time.nullable(),
  })
  .loose()
  .openapi("InstanceRequest");

/** How to follow a request made to another instance. */
const requested = {
  request_id: id,
  follow: z.string().describe("GET this to see the resource change; GET /api/requests/{request_id} for the request"),
};

export const runCancelRequestedSchema = runSchema.extend({
  request_id: id.optional(),
  follow: requested.follow.optional(),
});

export const worktreeDeleteRequestedSchema = z.object({ ...requested, worktree: worktreeSchema });

export const worktreeListSchema = z.object({ worktrees: z.array(worktreeSchema), next_cursor: z.string().nullable() });

const purgeEntry = z
  .object({
    id,
    run_id: z.number().int().nullable(),
    project: z.string(),
    formula: z.string(),
    path: z.string(),
    reason: z.string(),
    preserved_at: time.nullable(),
    expires_at: time.nullable(),
  })
  .openapi("PurgeEntry");

export const purgeResultSchema = z.object({
  dry_run: z.boolean(),
  purged: z.array(purgeEntry),
  kept: z.array(purgeEntry),
});

const forecast = z.object({ cron: z.string(), timezone: z.string(), next: z.array(time) });

export const formulaSchema = z
  .object({
    name: z.string(),
    description: z.string(),
    version: z.number().int(),
    file: z.string(),
    agent: z.string(),
    model: z.string().nullable(),
    timeout_ms: z.number(),
    max_duration_ms: z.number(),
    report: z.string(),
    triggers: z.object({
      dispatch: z.boolean(),
      schedule: z.array(forecast),
      issues: z.object({ types: z.array(z.string()), labels: z.array(z.string()) }).nullable(),
      issue_comment: z.object({ types: z.array(z.string()), command: z.string().nullable() }).nullable(),
      pull_request: z.object({ types: z.array(z.string()), branches: z.array(z.string()).nullable() }).nullable(),
    }),
    guards: z.object({
      min_memory_mb: z.number().nullable(),
      min_permission: z.string(),
      concurrency: z.string(),
      on_busy: z.string(),
    }),
    steps: z.array(z.object({ id: z.string(), title: z.string(), needs: z.array(z.string()) })),
  })
  .loose()
  .openapi("Formula");

export const formulaListSchema = z.object({
  formulas: z.array(formulaSchema),
  problems: z.array(
    z.object({
      file: z.string(),
      line: z.number().int().optional(),
      field: z.string(),
      message: z.string(),
      severity: z.enum(["error", "warning"]),
      text: z.string(),
    }),
  ),
});

export const deliveryListSchema = z.object({
  deliveries: z.array(
    z
      .object({
        id: z.string(),
        forge: z.string(),
        event: z.string(),
        action: z.string().nullable(),
        project: z.string().nullable(),
        repository: z.string().nullable(),
        sender: z.string().nullable(),
        outcome: z
          .enum(DELIVERY_OUTCOMES)
          .describe(
            "queued: fired runs; answered: answered a run's question; ignored: fired nothing (see reason); pending: the sender's permission could not be checked yet, decided when the forge answers; failed: still undecided when the retries ran out (see reason)",
          ),
        reason: z.string().nullable(),
        received_at: time,
        next_attempt_at: time.nullable().describe("when a pending delivery is tried again"),
        runs: z.array(id),
      })
      .openapi("Delivery"),
  ),
  next_cursor: z.string().nullable(),
});

export const webhookDuplicateSchema = z.object({
  delivery: z.string(),
  duplicate: z.literal(true),
  runs: z.array(id).length(0),
});

export const webhookAcceptedSchema = z.object({
  delivery: z.string(),
  duplicate: z.literal(false),
  project: z.string(),
  runs: z.array(id).describe("the runs it queued"),
  ignored: z.string().optional().describe("why it queued nothing"),
  pending: z
    .string()
    .optional()
    .describe("why nothing is decided yet (the forge did not answer the permission check); retried until it does"),
});

export const healthSchema = z.object({ status: z.literal("ok"), version: z.string(), instance_id: z.string() });
export const readySchema = z.object({
  status: z.literal("ready"),
  database: z.literal("ok"),
  database_kind: z.enum(["pglite", "postgres"]),
});
