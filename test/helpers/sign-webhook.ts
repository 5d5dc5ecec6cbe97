import { createHmac, randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import type { Forge } from "../../src/config.js";
import { signatureHeader } from "../../src/forge/webhook-request.js";

const FIXTURES = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../fixtures/webhooks");

/**
 * A committed payload from test/fixtures/webhooks (e.g. "github/issues.labeled.json"), a
 * fresh copy each call. Typed `any` so tests can edit fields before signing.
 */
export function loadFixture(file: string): any {
  return JSON.parse(readFileSync(path.join(FIXTURES, file), "utf8"));
}

export interface SignedWebhookOptions {
  forge: Forge;
  /** The event header value: `issues`, `issue_comment`, `pull_request`, `push`, `ping`, ... */
  event: string;
  /** A value to serialise, or a string sent as the body byte for byte. */
  payload: unknown;
  secret: string;
  /** A random UUID by default, like every forge sends. */
  deliveryId?: string;
  /** `form`: GitHub's default content type, `payload=<url-encoded JSON>`. JSON by default. */
  contentType?: "json" | "form";
}

/**
 * A delivery as the forge would send it: the exact body and every header the forge sets,
 * signed with the real HMAC. Gitea adds X-Gogs-* and GitHub-compatible headers; Forgejo
 * adds X-Gitea-* on top. GitHub sends compact JSON, Gitea and Forgejo indent it.
 */
export function signedWebhook(opts: SignedWebhookOptions): { headers: Record<string, string>; body: string } {
  const deliveryId = opts.deliveryId ?? randomUUID();
  const json =
    typeof opts.payload === "string"
      ? opts.payload
      : opts.forge === "github"
        ? JSON.stringify(opts.payload)
        : JSON.stringify(opts.payload, null, 2);
  const form = opts.contentType === "form";
  // A form body is signed as sent, like the forge does: the encoded bytes, not the JSON.
  const body = form ? new URLSearchParams({ payload: json }).toString() : json;
  const contentType = form ? "application/x-www-form-urlencoded" : "application/json";
  const hex = createHmac("sha256", opts.secret).update(body).digest("hex");
  const sha1 = createHmac("sha1", opts.secret).update(body).digest("hex");
  const signature = signatureHeader(opts.forge, body, opts.secret);

  if (opts.forge === "github") {
    return {
      body,
      headers: {
        "Content-Type": contentType,
        "User-Agent": "GitHub-Hookshot/7a2b5c1",
        "X-GitHub-Event": opts.event,
        "X-GitHub-Delivery": deliveryId,
        "X-GitHub-Hook-ID": "109948940",
        "X-Hub-Signature": `sha1=${sha1}`,
        [signature.name]: signature.value,
      },
    };
  }

  const eventType = giteaEventType(opts.event, opts.payload);
  const headers: Record<string, string> = {
    "Content-Type": contentType,
    "User-Agent": "Go-http-client/1.1",
  };
  const family = opts.forge === "forgejo" ? ["Forgejo", "Gitea", "Gogs"] : ["Gitea", "Gogs"];
  for (const name of family) {
    headers[`X-${name}-Delivery`] = deliveryId;
    headers[`X-${name}-Event`] = opts.event;
    headers[`X-${name}-Event-Type`] = eventType;
    headers[`X-${name}-Signature`] = hex;
  }
  headers["X-Hub-Signature"] = `sha1=${sha1}`;
  headers["X-Hub-Signature-256"] = `sha256=${hex}`;
  headers["X-GitHub-Delivery"] = deliveryId;
  headers["X-GitHub-Event"] = opts.event;
  headers["X-GitHub-Event-Type"] = eventType;
  return { body, headers };
}

/**
 * Gitea's finer X-Gitea-Event-Type (its internal hook event), which differs from
 * X-Gitea-Event for label, sync and pull-request-comment deliveries.
 */
function giteaEventType(event: string, payload: unknown): string {
  const p = typeof payload === "object" && payload !== null ? (payload as Record<string, unknown>) : {};
  const labels = p.action === "label_updated" || p.action === "label_cleared";
  if (event === "issues" && labels) return "issue_label";
  if (event === "pull_request" && labels) return "pull_request_label";
  if (event === "pull_request" && p.action === "synchronized") return "pull_request_sync";
  if (event === "issue_comment" && p.is_pull === true) return "pull_request_comment";
  return event;
}
