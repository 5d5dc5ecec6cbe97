import type { Child, FC } from "hono/jsx";
import type { HtmlEscapedString } from "hono/utils/html";
import { CSRF_FIELD } from "./session.js";

/** What every signed-in page needs to draw its frame and forms. */
export interface PageContext {
  csrf: string;
  /** The section the page belongs to, highlighted in the navigation. */
  section: "runs" | "worktrees" | "formulas" | "deliveries" | "docs";
  version: string;
}

const NAV: { section: PageContext["section"]; href: string; label: string }[] = [
  { section: "runs", href: "/", label: "Runs" },
  { section: "worktrees", href: "/worktrees", label: "Worktrees" },
  { section: "formulas", href: "/formulas", label: "Formulas" },
  { section: "deliveries", href: "/deliveries", label: "Deliveries" },
];

/** The document around every page: no inline script or style (the CSP forbids both). */
export const Document: FC<{ title: string; children?: Child }> = ({ title, children }) => (
  <html lang="en">
    <head>
      <meta charset="utf-8" />
      <meta name="viewport" content="width=device-width, initial-scale=1" />
      <title>{`${title} · formula-runner`}</title>
      <link rel="icon" href="data:," />
      <link rel="stylesheet" href="/assets/dashboard.css" />
      <script src="/assets/dashboard.js" defer />
    </head>
    <body>{children}</body>
  </html>
);

export const Layout: FC<{ page: PageContext; title: string; children?: Child }> = ({ page, title, children }) => (
  <Document title={title}>
    <header class="top">
      <nav aria-label="Sections">
        <span class="brand">formula-runner</span>
        {NAV.map((item) => (
          <a href={item.href} aria-current={item.section === page.section ? "page" : undefined}>
            {item.label}
          </a>
        ))}
        <a href="/docs">API docs</a>
      </nav>
      <form method="post" action="/logout" class="inline">
        <CsrfField token={page.csrf} />
        <button type="submit" class="link">
          Sign out
        </button>
      </form>
    </header>
    <main id="main">
      <h1>{title}</h1>
      {children}
    </main>
    <footer>formula-runner {page.version}</footer>
  </Document>
);

export const CsrfField: FC<{ token: string }> = ({ token }) => <input type="hidden" name={CSRF_FIELD} value={token} />;

/** A status as a coloured label; the word is always there (colour is not the only cue). */
export const Status: FC<{ status: string }> = ({ status }) => <span class={`status status-${status}`}>{status}</span>;

/** A message after a form was handled (`?notice=`), or an error. */
export const Notice: FC<{ text: string | undefined; kind?: "ok" | "error" }> = ({ text, kind = "ok" }) =>
  text ? (
    <p class={`notice notice-${kind}`} role={kind === "error" ? "alert" : "status"}>
      {text}
    </p>
  ) : null;

/** Renders a page to an HTML document string. */
export async function renderPage(node: HtmlEscapedString | Promise<HtmlEscapedString>): Promise<string> {
  return `<!DOCTYPE html>${await node}`;
}
