/**
 * `formula-runner output TYPE ...`: for agents. Appends one checked output request to
 * `$OUTPUTS_FILE` (the same as writing the JSON line by hand); the server decides it when
 * the session ends. Needs no server, no token and no network, so it works in the sandbox.
 */
import { constants } from "node:fs";
import { open, readFile } from "node:fs/promises";
import { OUTPUT_TYPES } from "../../db/schema/outputs.js";
import { parseOutput } from "../outputs/output-schema.js";
import type { Output } from "./commands.js";

export interface OutputArgs {
  type: string;
  title?: string | undefined;
  body?: string | undefined;
  /** Read the body from this file; "-" is stdin. */
  bodyFile?: string | undefined;
  add: string[];
  remove: string[];
}

const println = (out: Output, text: string) => out.write(`${text}\n`);

/** Exit 0 when the request was written, 1 when it is invalid, 2 when there is no outputs file to write to. */
export async function outputCommand(
  args: OutputArgs,
  io: { env: Readonly<Record<string, string | undefined>>; readStdin?: () => Promise<string> },
  out: Output,
  err: Output,
): Promise<number> {
  const file = io.env.OUTPUTS_FILE?.trim();
  if (!file) {
    println(err, "formula-runner: OUTPUTS_FILE is not set: this command is for agents inside a run");
    return 2;
  }
  if (!(OUTPUT_TYPES as readonly string[]).includes(args.type)) {
    println(err, `formula-runner: unknown output type "${args.type}"; one of ${OUTPUT_TYPES.join(", ")}`);
    return 1;
  }
  let body = args.body;
  if (args.bodyFile !== undefined) {
    body =
      args.bodyFile === "-" ? await (io.readStdin?.() ?? Promise.resolve("")) : await readFile(args.bodyFile, "utf8");
  }
  const request: Record<string, unknown> = { type: args.type };
  if (args.type === "label") {
    request.add = args.add;
    request.remove = args.remove;
  } else {
    if (args.type !== "comment") request.title = args.title;
    request.body = body;
  }
  const parsed = parseOutput(request);
  if (!parsed.ok) {
    println(err, `formula-runner: ${parsed.reason}`);
    return 1;
  }
  // One write of one whole line: the server never sees half of it.
  const handle = await open(file, constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT, 0o600);
  try {
    await handle.write(`${JSON.stringify(parsed.output)}\n`);
  } finally {
    await handle.close();
  }
  println(out, `${args.type} requested; the server decides it when this session ends (see GET /api/runs/$RUN_ID)`);
  return 0;
}
