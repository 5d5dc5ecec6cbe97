import { createHmac } from "node:crypto";
import { verify as octokitVerify } from "@octokit/webhooks-methods";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import type { Forge, ProjectConfig } from "../../src/config.js";
import {
  projectsSigning,
  readWebhookHeaders,
  signatureHeader,
  verifySignature,
  type WebhookHeaders,
} from "../../src/forge/webhook-request.js";
import { Secret } from "../../src/secrets.js";
import { loadFixture, signedWebhook } from "../helpers/sign-webhook.js";

const SECRET = "It's a Secret to Everybody";
const bytes = (text: string) => new TextEncoder().encode(text);
const hmacHex = (secret: string, body: string | Uint8Array) => createHmac("sha256", secret).update(body).digest("hex");

/** A header getter over a plain map, case-insensitive like a real request. */
function getter(headers: Record<string, string>): (name: string) => string | undefined {
  const h = new Headers(headers);
  return (name) => h.get(name) ?? undefined;
}

function without(headers: Record<string, string>, ...names: string[]): Record<string, string> {
  const drop = new Set(names.map((n) => n.toLowerCase()));
  return Object.fromEntries(Object.entries(headers).filter(([k]) => !drop.has(k.toLowerCase())));
}

function project(name: string, forge: Forge, secret: string | undefined, repo = `acme/${name}`): ProjectConfig {
  return {
    name,
    repoPath: `/srv/${name}`,
    primaryBranch: "main",
    forge,
    forgeUrl: forge === "github" ? "https://api.github.com" : "https://git.example.com/api/v1",
    repo,
    tokenEnv: undefined,
    token: undefined,
    webhookSecretEnv: secret === undefined ? undefined : `${name.toUpperCase()}_SECRET`,
    webhookSecret: secret === undefined ? undefined : new Secret(secret),
    botLogin: undefined,
    escalationIssue: undefined,
  };
}

describe("readWebhookHeaders", () => {
  const payload = { zen: "Keep it logically awesome." };

  it("reads a GitHub delivery and strips the sha256= prefix", () => {
    const { headers, body } = signedWebhook({
      forge: "github",
      event: "ping",
      payload,
      secret: SECRET,
      deliveryId: "d-1",
    });
    const read = readWebhookHeaders(getter(headers));
    expect(read).toEqual({
      ok: true,
      headers: { forge: "github", event: "ping", deliveryId: "d-1", signature: hmacHex(SECRET, body) },
    });
  });

  it("reads a Gitea delivery, not the GitHub compatibility headers it also sends", () => {
    const { headers, body } = signedWebhook({
      forge: "gitea",
      event: "issues",
      payload,
      secret: SECRET,
      deliveryId: "g-1",
    });
    expect(headers["X-GitHub-Event"]).toBe("issues");
    expect(headers["X-Hub-Signature-256"]).toBe(`sha256=${hmacHex(SECRET, body)}`);
    const read = readWebhookHeaders(getter(headers));
    expect(read).toEqual({
      ok: true,
      headers: { forge: "gitea", event: "issues", deliveryId: "g-1", signature: hmacHex(SECRET, body) },
    });
  });

  it("reads a Forgejo delivery, not the Gitea and GitHub headers it also sends", () => {
    const { headers, body } = signedWebhook({
      forge: "forgejo",
      event: "push",
      payload,
      secret: SECRET,
      deliveryId: "f-1",
    });
    expect(headers["X-Gitea-Event"]).toBe("push");
    expect(headers["X-GitHub-Event"]).toBe("push");
    const read = readWebhookHeaders(getter(headers));
    expect(read).toEqual({
      ok: true,
      headers: { forge: "forgejo", event: "push", deliveryId: "f-1", signature: hmacHex(SECRET, body) },
    });
  });

  it("takes a request with X-Gitea-* and X-GitHub-* but no X-Forgejo-* for Gitea", () => {
    const { headers } = signedWebhook({ forge: "forgejo", event: "push", payload, secret: SECRET });
    const read = readWebhookHeaders(
      getter(without(headers, "X-Forgejo-Event", "X-Forgejo-Delivery", "X-Forgejo-Signature")),
    );
    expect(read.ok && read.headers.forge).toBe("gitea");
  });

  it("finds the headers whatever their case", () => {
    const read = readWebhookHeaders(
      getter({
        "x-github-event": "push",
        "X-GITHUB-DELIVERY": "abc",
        "x-hub-signature-256": `sha256=${"a".repeat(64)}`,
      }),
    );
    expect(read).toMatchObject({
      ok: true,
      headers: { forge: "github", deliveryId: "abc", signature: "a".repeat(64) },
    });
  });

  it("answers 400 when no forge's event header is present", () => {
    expect(readWebhookHeaders(getter({}))).toMatchObject({ ok: false, status: 400, code: "bad_request" });
    expect(readWebhookHeaders(getter({ "X-GitHub-Event": "  ", "X-GitHub-Delivery": "x" }))).toMatchObject({
      ok: false,
      status: 400,
    });
  });

  const cases: { forge: Forge; delivery: string; signature: string }[] = [
    { forge: "github", delivery: "X-GitHub-Delivery", signature: "X-Hub-Signature-256" },
    { forge: "gitea", delivery: "X-Gitea-Delivery", signature: "X-Gitea-Signature" },
    { forge: "forgejo", delivery: "X-Forgejo-Delivery", signature: "X-Forgejo-Signature" },
  ];

  for (const { forge, delivery, signature } of cases) {
    describe(forge, () => {
      const signed = () => signedWebhook({ forge, event: "issues", payload, secret: SECRET }).headers;

      it(`answers 400 without ${delivery}, even when compatibility headers carry one`, () => {
        const read = readWebhookHeaders(getter(without(signed(), delivery)));
        expect(read).toMatchObject({ ok: false, status: 400, code: "bad_request" });
        expect(!read.ok && read.message).toContain(delivery);
      });

      it(`answers 401 without ${signature}, or with an empty one (no secret set on the forge)`, () => {
        const missing = readWebhookHeaders(getter(without(signed(), signature)));
        expect(missing).toMatchObject({ ok: false, status: 401, code: "invalid_signature" });
        expect(!missing.ok && missing.message).toContain(signature);
        const empty = readWebhookHeaders(getter({ ...signed(), [signature]: "" }));
        expect(empty).toMatchObject({ ok: false, status: 401, code: "invalid_signature" });
      });

      it("answers 400 for a delivery id outside [A-Za-z0-9._:-]{1,128}", () => {
        for (const bad of ["../../etc/passwd", "a b", "x".repeat(129), "id;drop", "ünï"]) {
          const read = readWebhookHeaders(getter({ ...signed(), [delivery]: bad }));
          expect(read, bad).toMatchObject({ ok: false, status: 400, code: "bad_request" });
        }
        const longest = readWebhookHeaders(getter({ ...signed(), [delivery]: "A-z0.9_:".padEnd(128, "x") }));
        expect(longest.ok).toBe(true);
      });
    });
  }

  it("answers 401 for a GitHub signature without the sha256= prefix", () => {
    const { headers, body } = signedWebhook({ forge: "github", event: "ping", payload, secret: SECRET });
    const read = readWebhookHeaders(getter({ ...headers, "X-Hub-Signature-256": hmacHex(SECRET, body) }));
    expect(read).toMatchObject({ ok: false, status: 401, code: "invalid_signature" });
  });

  it("never throws, whatever the headers hold", () => {
    const name = fc.constantFrom(
      "x-github-event",
      "x-github-delivery",
      "x-hub-signature-256",
      "x-gitea-event",
      "x-gitea-delivery",
      "x-gitea-signature",
      "x-forgejo-event",
      "x-forgejo-delivery",
      "x-forgejo-signature",
    );
    fc.assert(
      fc.property(fc.dictionary(name, fc.string({ unit: "binary" })), (headers) => {
        const read = readWebhookHeaders((n) => headers[n]);
        if (read.ok) expect(read.headers.deliveryId).toMatch(/^[A-Za-z0-9._:-]{1,128}$/);
        else expect([400, 401]).toContain(read.status);
      }),
    );
  });
});

describe("verifySignature", () => {
  const body = JSON.stringify(loadFixture("github/issues.opened.json"));
  const good = hmacHex(SECRET, body);

  it("accepts the HMAC-SHA256 of the body under the secret", () => {
    expect(verifySignature(bytes(body), SECRET, good)).toBe(true);
  });

  it("accepts upper-case hex too", () => {
    expect(verifySignature(bytes(body), SECRET, good.toUpperCase())).toBe(true);
  });

  it("refuses a changed body, another secret, a changed digit", () => {
    expect(verifySignature(bytes(`${body} `), SECRET, good)).toBe(false);
    expect(verifySignature(bytes(body), `${SECRET}!`, good)).toBe(false);
    const flipped = (good[0] === "0" ? "1" : "0") + good.slice(1);
    expect(verifySignature(bytes(body), SECRET, flipped)).toBe(false);
  });

  it("refuses malformed signatures without throwing", () => {
    // Buffer.from(hex, "hex") stops at the first non-hex digit and drops an odd last digit,
    // so `${good}z` and `${good}0` would decode to the right bytes: they must still fail.
    const malformed = [
      good.slice(0, 63),
      good.slice(0, 62),
      `${good}00`,
      `${good}0`,
      `${good}z`,
      `${good.slice(0, 62)}zz`,
    ];
    for (const bad of [...malformed, "", `sha256=${good}`, " ".repeat(64), ` ${good}`]) {
      expect(verifySignature(bytes(body), SECRET, bad), bad).toBe(false);
    }
    const sha1 = createHmac("sha1", SECRET).update(body).digest("hex");
    expect(verifySignature(bytes(body), SECRET, sha1)).toBe(false);
  });

  it("refuses everything when the secret is empty", () => {
    expect(verifySignature(bytes(body), "", hmacHex("", body))).toBe(false);
  });

  it("agrees with @octokit/webhooks-methods verify on GitHub's format", async () => {
    for (const file of ["github/push.json", "github/pull_request.opened.json", "github/ping.json"]) {
      const { headers, body: raw } = signedWebhook({
        forge: "github",
        event: "push",
        payload: loadFixture(file),
        secret: SECRET,
      });
      const header = headers["X-Hub-Signature-256"] as string;
      expect(await octokitVerify(SECRET, raw, header)).toBe(true);
      const read = readWebhookHeaders(getter(headers));
      expect(read.ok && verifySignature(bytes(raw), SECRET, read.headers.signature)).toBe(true);
      expect(await octokitVerify("other secret", raw, header)).toBe(false);
      expect(verifySignature(bytes(raw), "other secret", header.slice("sha256=".length))).toBe(false);
    }
    await fc.assert(
      fc.asyncProperty(
        fc.string({ minLength: 1, unit: "binary" }),
        fc.string({ minLength: 1, unit: "binary" }),
        fc.string({ minLength: 1 }),
        fc.boolean(),
        async (payload, secret, signingSecret, useOwnSecret) => {
          const header = signatureHeader("github", payload, useOwnSecret ? secret : signingSecret).value;
          const ours = verifySignature(bytes(payload), secret, header.slice("sha256=".length));
          expect(ours).toBe(await octokitVerify(secret, payload, header));
        },
      ),
    );
  });
});

describe("signatureHeader", () => {
  it("is what each forge sends", () => {
    const hex = hmacHex(SECRET, "{}");
    expect(signatureHeader("github", "{}", SECRET)).toEqual({ name: "X-Hub-Signature-256", value: `sha256=${hex}` });
    expect(signatureHeader("gitea", bytes("{}"), SECRET)).toEqual({ name: "X-Gitea-Signature", value: hex });
    expect(signatureHeader("forgejo", "{}", SECRET)).toEqual({ name: "X-Forgejo-Signature", value: hex });
  });
});

describe("signature properties", () => {
  // Printable secrets: HMAC pads short keys with NUL bytes, so "k" and "k\0" are the same
  // key by design; environment variables cannot hold NUL anyway.
  const secret = fc.string({ minLength: 1, maxLength: 80 });

  it("a signature made with a different secret or over a different body never verifies", () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ maxLength: 512 }),
        fc.uint8Array({ maxLength: 512 }),
        secret,
        secret,
        (body, other, s1, s2) => {
          const sig = hmacHex(s1, body);
          expect(verifySignature(body, s1, sig)).toBe(true);
          if (s1 !== s2) expect(verifySignature(body, s2, sig)).toBe(false);
          if (Buffer.compare(Buffer.from(body), Buffer.from(other)) !== 0) {
            expect(verifySignature(other, s1, sig)).toBe(false);
          }
        },
      ),
    );
  });

  it("verifySignature never throws, whatever the strings", () => {
    fc.assert(
      fc.property(fc.uint8Array(), fc.string({ unit: "binary" }), fc.string({ unit: "binary" }), (body, s, sig) => {
        expect(typeof verifySignature(body, s, sig)).toBe("boolean");
      }),
    );
    fc.assert(
      fc.property(fc.uint8Array(), fc.string(), fc.stringMatching(/^[0-9a-fA-F]{0,130}$/), (body, s, sig) => {
        expect(typeof verifySignature(body, s, sig)).toBe("boolean");
      }),
    );
  });
});

describe("projectsSigning", () => {
  const body = bytes(JSON.stringify(loadFixture("github/issues.labeled.json")));
  const headersFor = (forge: Forge, secret: string): WebhookHeaders => ({
    forge,
    event: "issues",
    deliveryId: "d",
    signature: hmacHex(secret, body),
  });
  const names = (ps: ProjectConfig[]) => ps.map((p) => p.name);

  const projects = [
    project("alpha", "github", "secret-alpha"),
    project("beta", "github", "secret-beta"),
    project("gamma", "github", undefined),
    project("tea", "gitea", "secret-tea"),
    project("jo", "forgejo", "secret-jo"),
  ];

  it("picks the project whose secret signed the body", () => {
    expect(names(projectsSigning(body, headersFor("github", "secret-beta"), projects))).toEqual(["beta"]);
    expect(names(projectsSigning(body, headersFor("github", "secret-alpha"), projects))).toEqual(["alpha"]);
    expect(names(projectsSigning(body, headersFor("gitea", "secret-tea"), projects))).toEqual(["tea"]);
    expect(names(projectsSigning(body, headersFor("forgejo", "secret-jo"), projects))).toEqual(["jo"]);
  });

  it("finds none when no secret matches, and never a project without a secret", () => {
    expect(projectsSigning(body, headersFor("github", "guess"), projects)).toEqual([]);
    expect(projectsSigning(body, headersFor("github", ""), projects)).toEqual([]);
    expect(projectsSigning(body, { ...headersFor("github", "secret-alpha"), signature: "zz" }, projects)).toEqual([]);
    expect(
      projectsSigning(body, headersFor("github", "secret-alpha"), [project("gamma", "github", undefined)]),
    ).toEqual([]);
  });

  it("keeps GitHub apart from Gitea and Forgejo even with the same secret", () => {
    expect(projectsSigning(body, headersFor("gitea", "secret-alpha"), projects)).toEqual([]);
    expect(projectsSigning(body, headersFor("github", "secret-tea"), projects)).toEqual([]);
  });

  it("treats Gitea and Forgejo as one family, preferring the exact forge", () => {
    // An older Forgejo sends only X-Gitea-* headers: its project still matches.
    expect(names(projectsSigning(body, headersFor("gitea", "secret-jo"), projects))).toEqual(["jo"]);
    expect(names(projectsSigning(body, headersFor("forgejo", "secret-tea"), projects))).toEqual(["tea"]);
    const shared = [project("tea", "gitea", "same"), project("jo", "forgejo", "same")];
    expect(names(projectsSigning(body, headersFor("forgejo", "same"), shared))).toEqual(["jo"]);
    expect(names(projectsSigning(body, headersFor("gitea", "same"), shared))).toEqual(["tea"]);
  });

  it("returns every project that shares the secret", () => {
    const shared = [
      project("one", "github", "org-secret"),
      project("two", "github", "org-secret"),
      project("three", "github", "x"),
    ];
    expect(names(projectsSigning(body, headersFor("github", "org-secret"), shared))).toEqual(["one", "two"]);
  });
});
