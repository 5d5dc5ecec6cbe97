import { mkdir, readFile } from "node:fs/promises";
import { createRequire } from "node:module";
import path from "node:path";
import { type Browser, type BrowserContext, chromium, type Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestServer, TEST_TOKEN, type TestServer, testFormula } from "../helpers/test-server.js";

/** Debian's Chromium (`.ci/run` installs the package when it is missing). */
const CHROMIUM = "/usr/bin/chromium";
const SHOTS = path.resolve("test-results");
const require = createRequire(import.meta.url);

/**
 * The escalating agent for the browser: asks, and once answered works for a few seconds
 * (printing as it goes) before it finishes, so the page can be seen following it live.
 */
const ASK_AGENT = [
  "bash",
  "-c",
  [
    "cat >/dev/null",
    'if [ -n "${ESCALATION_REPLY:-}" ]; then',
    '  echo "resumed with the answer: $ESCALATION_REPLY"',
    "  for i in 1 2 3 4 5 6; do printf '\\033[32mstep %s\\033[0m\\n' \"$i\"; sleep 0.5; done",
    "  printf 'PHASE:done\\n' > \"$PHASE_FILE\"; exit 0",
    "fi",
    'echo "need a human"',
    "printf 'PHASE:escalate\\nShip the release today?\\n' > \"$PHASE_FILE\"",
  ].join("\n"),
];

describe("the dashboard in a real browser", () => {
  let t: TestServer;
  let browser: Browser;
  let context: BrowserContext;
  let page: Page;
  let axeSource: string;
  const problems: string[] = [];

  beforeAll(async () => {
    await mkdir(SHOTS, { recursive: true });
    axeSource = await readFile(require.resolve("axe-core/axe.min.js"), "utf8");
    t = await startTestServer({
      backend: "pglite",
      formulas: {
        crash: testFormula("crash", { agent: "crash" }),
        ask: testFormula("ask", { agent: "ask", escalation_timeout: "1h" }),
        hold: testFormula("hold", { agent: "hang", timeout: "60s" }),
      },
      agents: { crash: "crash-always", ask: ASK_AGENT, hang: "hang" },
    });
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
    });
    context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    page = await context.newPage();
    // Anything the CSP blocks (an inline script, a foreign host) shows up here.
    page.on("console", (message) => {
      if (message.type() === "error") problems.push(message.text());
    });
    page.on("pageerror", (error) => problems.push(error.message));
  });
  afterAll(async () => {
    await context?.close();
    await browser?.close();
    await t?.stop();
  });

  /** axe-core in the page: no serious or critical accessibility violation. */
  const accessible = async (name: string) => {
    await page.evaluate(axeSource);
    const violations = await page.evaluate(async () => {
      const axe = (globalThis as unknown as { axe: { run(): Promise<{ violations: any[] }> } }).axe;
      const result = await axe.run();
      return result.violations
        .filter((v) => v.impact === "serious" || v.impact === "critical")
        .map((v) => `${v.id}: ${v.help} (${v.nodes.map((n: { target: string[] }) => n.target.join(" ")).join(", ")})`);
    });
    expect(violations, name).toEqual([]);
  };
  const shot = (name: string) => page.screenshot({ path: path.join(SHOTS, `dashboard-${name}.png`), fullPage: true });

  it("signs in with the API token through the form", async () => {
    await page.goto(`${t.url}/formulas`);
    expect(new URL(page.url()).pathname).toBe("/login");
    await accessible("login");
    await shot("login");
    await page.fill('input[name="token"]', TEST_TOKEN);
    await page.click('button[type="submit"]');
    await page.waitForURL(`${t.url}/formulas`);
    await expect(page.locator("h1").textContent()).resolves.toBe("Formulas");
    await accessible("formulas");
    await shot("formulas");
    const cookies = await context.cookies();
    const session = cookies.find((c) => c.name === "fr_session");
    expect(session).toMatchObject({ httpOnly: true, sameSite: "Strict" });
    expect(await page.content()).not.toContain(TEST_TOKEN);
  });

  it("shows a crashed run's timeline and preserved worktree, then purges it after a dry-run preview", async () => {
    const { body } = await t.api("POST", "/api/runs", { formula: "crash" });
    const run = await t.waitForRun(body.id);
    expect(run.status).toBe("crashed");

    await page.goto(`${t.url}/`);
    await expect(page.locator(`a[href="/runs/${run.id}"]`).count()).resolves.toBe(1);
    await accessible("runs");
    await shot("runs");

    await page.goto(`${t.url}/runs/${run.id}`);
    await expect(page.locator("figure.timeline svg rect.seg").count()).resolves.toBeGreaterThan(0);
    await expect(page.locator("ol.phases li").first().textContent()).resolves.toContain("working");
    await expect(page.locator("#run").textContent()).resolves.toContain(run.worktree.path);
    await accessible("run-crashed");
    await shot("run-crashed");

    await page.goto(`${t.url}/worktrees`);
    await expect(page.locator("main").textContent()).resolves.toContain(run.worktree.path);
    await accessible("worktrees");
    await shot("worktrees");
    await page.fill('input[name="older_than_hours"]', "0");
    await page.click("text=Preview purge");
    await page.locator("section.preview").waitFor();
    await expect(page.locator("section.preview").textContent()).resolves.toContain(run.worktree.path);
    expect((await t.api("GET", `/api/runs/${run.id}`)).body.worktree.state).toBe("preserved");
    await accessible("purge-preview");
    await shot("purge-preview");
    await page.click("section.preview button.danger");
    await page.locator("#purged").waitFor();
    await shot("purged");
    expect((await t.api("GET", `/api/runs/${run.id}`)).body.worktree.state).toBe("removed");
  }, 90_000);

  it("answers an escalation from the page and follows the run to its end without reloading", async () => {
    const { body } = await t.api("POST", "/api/runs", { formula: "ask" });
    await t.waitForRun(body.id, ["escalated"]);
    await page.goto(`${t.url}/runs/${body.id}`);
    await expect(page.locator("pre.question").textContent()).resolves.toContain("Ship the release today?");
    await accessible("run-escalated");
    await shot("run-escalated");
    await page.fill("#reply-body", "Yes, ship it.");
    await page.click("text=Send answer");
    await page.waitForURL(new RegExp(`/runs/${body.id}\\?notice=`));

    // From here on the page must not load again: the script follows the log and redraws.
    let loads = 0;
    page.on("framenavigated", (frame) => {
      if (frame === page.mainFrame()) loads++;
    });
    await page.locator('#run[data-status="done"]').waitFor({ timeout: 20_000 });
    await expect(page.locator("#log").textContent()).resolves.toContain("step 6");
    expect(await page.locator("#log").textContent()).not.toContain("\u001b");
    await expect(page.locator("#run").textContent()).resolves.toContain("Answered by dashboard");
    expect(loads).toBe(0);
    await shot("run-answered-done");
  });

  it("cancels a running run from its page", async () => {
    const { body } = await t.api("POST", "/api/runs", { formula: "hold" });
    await t.waitForRun(body.id, ["running"]);
    await page.goto(`${t.url}/runs/${body.id}`);
    await page.click("text=Cancel run");
    await page.locator('#run[data-status="cancelled"]').waitFor();
    await shot("run-cancelled");
    expect((await t.api("GET", `/api/runs/${body.id}`)).body.status).toBe("cancelled");
  });

  it("shows a new run on the runs page, and its end, without reloading", async () => {
    await page.goto(`${t.url}/`);
    await page.locator("#runs-live", { hasText: "following run changes live" }).waitFor();
    let loads = 0;
    page.on("framenavigated", (frame) => {
      if (frame === page.mainFrame()) loads++;
    });
    const { body } = await t.api("POST", "/api/runs", { formula: "hold" });
    const row = page.locator(`tr[data-run="${body.id}"]`);
    await row.locator("td", { hasText: "running" }).waitFor();
    await shot("runs-live");
    expect((await t.api("POST", `/api/runs/${body.id}/cancel`)).status).toBe(200);
    await row.locator("td", { hasText: "cancelled" }).waitFor();
    expect(loads).toBe(0);
  });

  it("renders the API reference at /docs from this server alone", async () => {
    const foreign: string[] = [];
    const onRequest = (request: { url(): string }) => {
      if (!request.url().startsWith(t.url) && !request.url().startsWith("data:")) foreign.push(request.url());
    };
    page.on("request", onRequest);
    await page.goto(`${t.url}/docs`);
    await page.locator(".opblock-summary-path", { hasText: "/api/runs/{id}/reply" }).first().waitFor();
    await expect(page.locator(".opblock").count()).resolves.toBeGreaterThanOrEqual(17);
    await shot("docs");
    page.off("request", onRequest);
    expect(foreign).toEqual([]);
  });

  it("shows deliveries, and no page broke its content security policy", async () => {
    await page.goto(`${t.url}/deliveries`);
    await accessible("deliveries");
    await shot("deliveries");
    expect(problems).toEqual([]);
  });
});
