import { createHmac, timingSafeEqual } from "node:crypto";
import type { Forge, ProjectConfig } from "../config.js";
import type { ErrorCode } from "../errors.js";

/** What POST /webhooks needs from the headers before it reads the body. */
export interface WebhookHeaders {
  forge: Forge;
  /** The forge's event name (`issues`, `push`, ...). */
  event: string;
  deliveryId: string;
  /** The HMAC-SHA256 hex digest as sent, with GitHub's `sha256=` prefix stripped. */
  signature: string;
}

/** A request that cannot be a forge delivery; `code` maps to `status` through errors.ts. */
export interface WebhookHeaderProblem {
  ok: false;
  status: 400 | 401;
  code: ErrorCode;
  message: string;
}

const DELIVERY_ID = /^[A-Za-z0-9._:-]{1,128}$/;
const SHA256_HEX = /^[0-9a-fA-F]{64}$/;
const GITHUB_PREFIX = "sha256=";

/**
 * The headers each forge sends, most specific first. Forgejo also sends every X-Gitea-*
 * header, and both Gitea and Forgejo send X-GitHub-Event/-Delivery and
 * X-Hub-Signature-256 for compatibility, so the order decides.
 */
const FORGE_HEADERS: readonly { forge: Forge; event: string; delivery: string; signature: string }[] = [
  { forge: "forgejo", event: "x-forgejo-event", delivery: "x-forgejo-delivery", signature: "x-forgejo-signature" },
  { forge: "gitea", event: "x-gitea-event", delivery: "x-gitea-delivery", signature: "x-gitea-signature" },
  { forge: "github", event: "x-github-event", delivery: "x-github-delivery", signature: "x-hub-signature-256" },
];

/**
 * Which forge sent the request and what it claims, from the headers alone (`get` takes a
 * lower-case name, like Hono's `c.req.header`). A request that is not a well-formed
 * delivery comes back as a problem value: 400 for a missing event or delivery id, 401 for
 * a missing or malformed signature.
 */
export function readWebhookHeaders(
  get: (name: string) => string | undefined,
): { ok: true; headers: WebhookHeaders } | WebhookHeaderProblem {
  const header = (name: string) => {
    const value = get(name)?.trim();
    return value === undefined || value === "" ? undefined : value;
  };
  const names = FORGE_HEADERS.find((h) => header(h.event) !== undefined);
  if (names === undefined) {
    return problem(
      400,
      "bad_request",
      "not a forge webhook: no X-GitHub-Event, X-Gitea-Event or X-Forgejo-Event header",
    );
  }
  const event = header(names.event) as string;
  const deliveryId = header(names.delivery);
  if (deliveryId === undefined) {
    return problem(400, "bad_request", `missing ${canonical(names.delivery)} header`);
  }
  if (!DELIVERY_ID.test(deliveryId)) {
    return problem(
      400,
      "bad_request",
      `${canonical(names.delivery)} must be 1-128 letters, digits, '.', '_', ':' or '-'`,
    );
  }
  let signature = header(names.signature);
  if (signature === undefined) {
    const hint = "(set a webhook secret on the forge)";
    return problem(401, "invalid_signature", `missing ${canonical(names.signature)} header ${hint}`);
  }
  if (names.forge === "github") {
    if (!signature.toLowerCase().startsWith(GITHUB_PREFIX)) {
      return problem(401, "invalid_signature", "X-Hub-Signature-256 must be sha256=<hex digest>");
    }
    signature = signature.slice(GITHUB_PREFIX.length);
  }
  return { ok: true, headers: { forge: names.forge, event, deliveryId, signature } };
}

/**
 * Whether `signatureHex` is the HMAC-SHA256 of `body` under `secret`, compared in constant
 * time. Either hex case is accepted; anything that is not 64 hex digits is simply false,
 * as is an empty secret (a project without a secret refuses webhooks).
 */
export function verifySignature(body: Uint8Array, secret: string, signatureHex: string): boolean {
  if (secret === "" || !SHA256_HEX.test(signatureHex)) return false;
  const expected = createHmac("sha256", secret).update(body).digest();
  const given = Buffer.from(signatureHex, "hex");
  return given.length === expected.length && timingSafeEqual(given, expected);
}

/** The signature header a forge would send for `body`: `sha256=<hex>` for GitHub, bare hex for Gitea/Forgejo. */
export function signatureHeader(
  forge: Forge,
  body: Uint8Array | string,
  secret: string,
): { name: string; value: string } {
  const hex = createHmac("sha256", secret).update(body).digest("hex");
  switch (forge) {
    case "github":
      return { name: "X-Hub-Signature-256", value: `${GITHUB_PREFIX}${hex}` };
    case "gitea":
      return { name: "X-Gitea-Signature", value: hex };
    case "forgejo":
      return { name: "X-Forgejo-Signature", value: hex };
  }
}

/**
 * The projects whose webhook secret signed `body`. Only projects of the request's forge
 * family are candidates: GitHub alone, or Gitea and Forgejo together since they share the
 * format (an older Forgejo sends only X-Gitea-* headers). When a project of the exact
 * forge matches, only exact matches are returned. Every candidate's secret is checked,
 * each in constant time. Several projects may share a secret; the caller then picks by
 * the payload's repository.
 */
export function projectsSigning(
  body: Uint8Array,
  headers: WebhookHeaders,
  projects: readonly ProjectConfig[],
): ProjectConfig[] {
  const family = forgeFamily(headers.forge);
  const signed = projects.filter(
    (p) =>
      forgeFamily(p.forge) === family &&
      p.webhookSecret !== undefined &&
      verifySignature(body, p.webhookSecret.reveal(), headers.signature),
  );
  const exact = signed.filter((p) => p.forge === headers.forge);
  return exact.length > 0 ? exact : signed;
}

function forgeFamily(forge: Forge): "github" | "gitea" {
  return forge === "github" ? "github" : "gitea";
}

function problem(status: 400 | 401, code: ErrorCode, message: string): WebhookHeaderProblem {
  return { ok: false, status, code, message };
}

/** `x-hub-signature-256` -> `X-Hub-Signature-256`, for messages. */
function canonical(name: string): string {
  return name
    .split("-")
    .map((part) => (part === "github" ? "GitHub" : part.charAt(0).toUpperCase() + part.slice(1)))
    .join("-");
}
