/**
 * One line of a run's outputs file (`$OUTPUTS_FILE`): a forge write the agent asks the
 * server for. Parsed here, at the edge, with size caps, so nothing past this point sees
 * an unchecked request. Whether the formula allows it is output-policy.ts's question.
 */
import { z } from "zod";
import { OUTPUT_TYPES } from "../../db/schema/index.js";

/** Longest body (comment, pull request, issue), in UTF-8 bytes. */
export const MAX_BODY_BYTES = 60 * 1024;
/** Longest title, in characters. */
export const MAX_TITLE_CHARS = 256;
/** Most labels one `label` output may add plus remove. */
export const MAX_LABELS = 20;
/** Longest label name. */
const MAX_LABEL_CHARS = 100;
/** Longest `type` kept on a refused line's record. */
const MAX_TYPE_CHARS = 64;

const body = z
  .string()
  .refine((text) => text.trim() !== "", { error: "must not be empty" })
  .refine((text) => Buffer.byteLength(text, "utf8") <= MAX_BODY_BYTES, {
    error: `is longer than ${MAX_BODY_BYTES / 1024} KiB`,
  });

const title = z
  .string()
  .refine((text) => text.trim() !== "", { error: "must not be empty" })
  .refine((text) => !/[\r\n]/.test(text), { error: "must be one line" })
  .max(MAX_TITLE_CHARS, { error: `is longer than ${MAX_TITLE_CHARS} characters` });

const labelName = z
  .string()
  .min(1, { error: "must not be empty" })
  .max(MAX_LABEL_CHARS, { error: `is longer than ${MAX_LABEL_CHARS} characters` });

const commentOutput = z.object({ type: z.literal("comment"), body }).strict();

const labelOutput = z
  .object({
    type: z.literal("label"),
    add: z.array(labelName).default([]),
    remove: z.array(labelName).default([]),
  })
  .strict()
  .refine((o) => o.add.length + o.remove.length > 0, { error: "names no label to add or remove" })
  .refine((o) => o.add.length + o.remove.length <= MAX_LABELS, { error: `names more than ${MAX_LABELS} labels` })
  .refine((o) => !o.add.some((name) => o.remove.includes(name)), { error: "adds and removes the same label" });

const pullRequestOutput = z.object({ type: z.literal("pull_request"), title, body }).strict();

const issueOutput = z.object({ type: z.literal("issue"), title, body }).strict();

/** One output request, any type. */
export const outputSchema = z.discriminatedUnion("type", [commentOutput, labelOutput, pullRequestOutput, issueOutput]);

/** A validated output request. */
export type OutputRequest = z.output<typeof outputSchema>;

/** What a line is: a request to decide on, or why it cannot be one (with the type it named, for the record). */
export type ParsedLine = { ok: true; output: OutputRequest } | { ok: false; type: string; reason: string };

/** Parses one line of the outputs file (or one object of the API's body). */
export function parseOutput(value: unknown): ParsedLine {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    return { ok: false, type: "(none)", reason: "not a JSON object" };
  }
  const rawType = (value as { type?: unknown }).type;
  if (typeof rawType !== "string" || rawType === "") {
    return { ok: false, type: "(none)", reason: `no "type"; one of ${OUTPUT_TYPES.join(", ")}` };
  }
  const type = rawType.slice(0, MAX_TYPE_CHARS);
  if (!(OUTPUT_TYPES as readonly string[]).includes(rawType)) {
    return { ok: false, type, reason: `unknown type ${JSON.stringify(type)}; one of ${OUTPUT_TYPES.join(", ")}` };
  }
  const parsed = outputSchema.safeParse(value);
  if (parsed.success) return { ok: true, output: parsed.data };
  const reason = parsed.error.issues
    .map((issue) => {
      const where = issue.path.length > 0 ? `${issue.path.join(".")}: ` : "";
      const message =
        issue.code === "unrecognized_keys" ? `unknown key(s) ${issue.keys.join(", ")}` : issue.message.toLowerCase();
      return `${where}${message}`;
    })
    .join("; ");
  return { ok: false, type, reason: `invalid ${type}: ${reason}` };
}

/** Parses one text line: JSON first, then {@link parseOutput}. */
export function parseOutputLine(line: string): ParsedLine {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    // JSON.parse's message quotes the line; the line may hold a secret, so it is not repeated.
    return { ok: false, type: "(none)", reason: "not valid JSON" };
  }
  return parseOutput(value);
}
