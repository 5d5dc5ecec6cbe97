import { Hono } from "hono";
import { bodyLimit } from "hono/body-limit";
import type { AppEnv } from "../src/app.js";
import { AppError } from "../src/errors.js";
import { normalizeEvent } from "../src/forge/normalize.js";
import { projectsSigning, readWebhookHeaders } from "../src/forge/webhook-request.js";
import { storable } from "../src/forge/webhook-service.js";
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

  app.post(
    "/webhooks",
    bodyLimit({
      maxSize: WEBHOOK_BODY_LIMIT,
      onError: () => {
        throw new AppError({ code: "payload_too_large", message: `webhook body over ${WEBHOOK_BODY_LIMIT} bytes` });
      },
    }),
    async (c) => {
      if (!services.intake.accepting) {
        c.header("Retry-After", "30");
        throw new AppError({ code: "unavailable", message: "shutting down; deliver again later" });
      }
      const read = readWebhookHeaders((name) => c.req.header(name));
      if (!read.ok) throw new AppError({ code: read.code, message: read.message });
      const { headers } = read;
      const body = new Uint8Array(await c.req.arrayBuffer());

      const signers = projectsSigning(body, headers, services.config.projects);
      if (signers.length === 0) {
        throw new AppError({ code: "invalid_signature", message: "the signature does not match the webhook secret of any project" });
      }
      let payload: unknown;
      try {
        payload = storable(JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(body)));
      } catch (error) {
        throw new AppError({ code: "invalid_json", message: `the body is not valid JSON: ${(error as Error).message}` });
      }
      const event = normalizeEvent(headers.forge, headers.event, headers.deliveryId, payload);
      if (!event.repository) {
        throw new AppError({ code: "bad_request", message: "the payload names no repository (repository.full_name)" });
      }
      const repo = event.repository.toLowerCase();
      const project = signers.find((p) => p.repo.toLowerCase() === repo);
      if (!project) {
        const known = services.config.projects.some((p) => p.repo.toLowerCase() === repo);
        if (known) throw new AppError({ code: "invalid_signature", message: `the signature does not match the webhook secret of ${event.repository}` });
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
        },
        202,
      );
    },
  );

  return app;
}
