/**
 * Whether a formula lets its agent send one output: the `[outputs]` table, the run's issue,
 * and how many outputs the run has sent already. Pure, so every refusal reason is tested
 * without a database.
 */
import type { FormulaOutputs } from "../formulas/schema.js";
import type { OutputRequest } from "./output-schema.js";

export interface PolicyContext {
  outputs: FormulaOutputs;
  /** The run's issue, when it has one. */
  issue: number | null;
  /** Outputs of the run already queued or sent (refused ones do not count). */
  accepted: number;
}

/** Why the output is refused, or undefined when it is allowed. */
export function refusalOf(output: OutputRequest, context: PolicyContext): string | undefined {
  const { outputs, issue } = context;
  const reason = typeRefusal(output, outputs, issue);
  if (reason !== undefined) return reason;
  if (context.accepted >= outputs.max) {
    return `over the limit: the formula allows ${outputs.max} output(s) per run ([outputs] max)`;
  }
  return undefined;
}

function typeRefusal(output: OutputRequest, outputs: FormulaOutputs, issue: number | null): string | undefined {
  switch (output.type) {
    case "comment":
      if (!outputs.comment) return "the formula does not allow comments ([outputs] comment = false)";
      if (issue === null) return "the run has no issue to comment on";
      return undefined;
    case "label": {
      if (issue === null) return "the run has no issue to label";
      const names = [...output.add, ...output.remove];
      const denied = names.filter((name) => !outputs.labels.includes(name));
      if (denied.length === 0) return undefined;
      const allowed = outputs.labels.length > 0 ? `allowed: ${outputs.labels.join(", ")}` : "none are allowed";
      return `label(s) not allowed by the formula: ${denied.join(", ")} (${allowed}; [outputs] labels)`;
    }
    case "pull_request":
      return outputs.pullRequest === false
        ? "the formula does not allow pull requests ([outputs] pull_request)"
        : undefined;
    case "issue":
      return outputs.issues ? undefined : "the formula does not allow opening issues ([outputs] issues = false)";
  }
}
