import type { IncomingMessage } from "node:http";
import type { Context } from "hono";
import { Hono } from "hono";
import type { AppEnv } from "../src/app.js";
import { AppError } from "../src/errors.js";
import { normalizeEvent } from "../src/forge/normalize.js";
import { projectsSigning, readWebhookHeaders } from "../src/forge/webhook-request.js";
import { formPayload, isFormEncoded, parsePayload } from "../src/forge/webhook-service.js";
import type { Services } from "../src/services.js";

/** Forges send at most a few hundred KiB; anything over this is refused unread. */
export const WEBHOOK_BODY_LIMIT = 1024 * 1024;

/**
 * POST /webhooks: one URL for GitHub, Gitea and Forgejo. The raw body is read (1 MiB cap)
 * and its HMAC checked against the configured webhook secrets BEFORE anything is parsed;
 * then the project is found from `repository.full_name`, and the delivery is recorded
 * with the runs it fires in one transaction. Answers fast: the only forge call is the
 * cached permission check.
 */
export function webhookRoutes(services: Services): Hono<AppEnv> {
  const app = new Hono<AppEnv>();

  app.post("/webhooks", async (c) => {
    if (!services.intake.accepting) {
      c.header("Retry-After", "30");
      throw new AppError({ code: "unavailable", message: "shutting down; deliver again later" });
    }
    const read = readWebhookHeaders((name) => c.req.header(name));
    if (!read.ok) throw new AppError({ code: read.code, message: read.message });
    const { headers } = read;
    const body = await readBody(c);

    const signers = projectsSigning(body, headers, services.config.projects);
    if (signers.length === 0) {
      throw new AppError({
        code: "invalid_signature",
        message: "the signature does not match the webhook secret of any project",
      });
    }
    let payload: unknown;
    // GitHub's default content type is a form with the JSON in `payload`; the signature
    // above covered the body as sent, so decoding comes only now.
    const form = isFormEncoded(c.req.header("content-type"));
    let json = body;
    if (form) {
      try {
        json = formPayload(body);
      } catch (error) {
        throw new AppError({ code: "bad_request", message: (error as Error).message });
      }
    }
    try {
      payload = parsePayload(json);
    } catch (error) {
      const what = form ? "the payload field is not valid JSON" : "the body is not valid JSON";
      throw new AppError({ code: "invalid_json", message: `${what}: ${(error as Error).message}` });
    }
    const event = normalizeEvent(headers.forge, headers.event, headers.deliveryId, payload);
    if (!event.repository) {
      throw new AppError({ code: "bad_request", message: "the payload names no repository (repository.full_name)" });
    }
    const repo = event.repository.toLowerCase();
    const project = signers.find((p) => p.repo.toLowerCase() === repo);
    if (!project) {
      const known = services.config.projects.some((p) => p.repo.toLowerCase() === repo);
      if (known)
        throw new AppError({
          code: "invalid_signature",
          message: `the signature does not match the webhook secret of ${event.repository}`,
        });
      throw new AppError({ code: "not_found", message: `no project is configured for ${event.repository}` });
    }

    const outcome = await services.webhooks.accept(event, project, payload);
    if (outcome.duplicate) return c.json({ delivery: event.deliveryId, duplicate: true, runs: [] }, 200);
    return c.json(
      {
        delivery: event.deliveryId,
        duplicate: false,
        project: project.name,
        runs: outcome.runIds,
        ...(outcome.ignored !== undefined && { ignored: outcome.ignored }),
        ...(outcome.answered !== undefined && { answered: outcome.answered }),
        ...(outcome.pending !== undefined && { pending: outcome.pending }),
      },
      202,
    );
  });

  return app;
}

const tooLarge = () =>
  new AppError({ code: "payload_too_large", message: `webhook body over ${WEBHOOK_BODY_LIMIT} bytes` });

/**
 * The raw body, at most WEBHOOK_BODY_LIMIT bytes whatever Content-Length says. Under
 * @hono/node-server it is read straight from the Node request: building a WHATWG Request
 * for it cost about a tenth of the CPU of a delivery.
 */
async function readBody(c: Context<AppEnv>): Promise<Uint8Array> {
  const declared = Number(c.req.header("content-length") ?? 0);
  if (declared > WEBHOOK_BODY_LIMIT) throw tooLarge();
  const incoming = (c.env as { incoming?: IncomingMessage } | undefined)?.incoming;
  if (!incoming || incoming.readableEnded) {
    const body = new Uint8Array(await c.req.arrayBuffer());
    if (body.byteLength > WEBHOOK_BODY_LIMIT) throw tooLarge();
    return body;
  }
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of incoming as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > WEBHOOK_BODY_LIMIT) {
      incoming.resume();
      throw tooLarge();
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks, size);
}
