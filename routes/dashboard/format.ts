import { stripVTControlCharacters } from "node:util";
import type { ProjectConfig } from "../../src/config.js";

/** Terminal colours and cursor codes out of agent output: the page shows plain text. */
export function stripAnsi(text: string): string {
  return stripVTControlCharacters(text);
}

/** `1h 2m`, `3m 4s`, `5.2s`, `120 ms`; "" for null. */
export function formatDuration(ms: number | null | undefined): string {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return "";
  const abs = Math.abs(ms);
  if (abs < 1000) return `${Math.round(ms)} ms`;
  if (abs < 60_000) return `${(ms / 1000).toFixed(1)}s`;
  const s = Math.round(abs / 1000);
  const sign = ms < 0 ? "-" : "";
  const [d, h, m, sec] = [Math.floor(s / 86400), Math.floor((s % 86400) / 3600), Math.floor((s % 3600) / 60), s % 60];
  if (d > 0) return `${sign}${d}d ${h}h`;
  if (h > 0) return `${sign}${h}h ${m}m`;
  return `${sign}${m}m ${sec}s`;
}

/** `1.5 MiB`; "" for null. */
export function formatBytes(bytes: number | null | undefined): string {
  if (bytes === null || bytes === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${units[unit]}`;
}

/** `2026-12-02 11:32:12Z` from an ISO time; "" for null. */
export function formatTime(iso: string | Date | null | undefined): string {
  if (iso === null || iso === undefined) return "";
  const text = typeof iso === "string" ? iso : iso.toISOString();
  return text.replace("T", " ").replace(/\.\d+Z$/, "Z");
}

export function formatCost(usd: number | null | undefined): string {
  return usd === null || usd === undefined ? "" : `$${usd.toFixed(usd < 1 ? 4 : 2)}`;
}

/**
 * The forge's web address of an issue: the API base minus its API path
 * (`https://api.github.com` -> `https://github.com`, `https://host/api/v1` -> `https://host`).
 */
export function issueUrl(project: ProjectConfig | undefined, issue: number | null): string | undefined {
  if (!project || issue === null) return undefined;
  let base: URL;
  try {
    base = new URL(project.forgeUrl);
  } catch {
    return undefined;
  }
  if (base.hostname === "api.github.com") base.hostname = "github.com";
  const root = base.pathname.replace(/\/api(\/v\d+)?\/?$/, "").replace(/\/+$/, "");
  return `${base.protocol}//${base.host}${root}/${project.repo}/issues/${issue}`;
}

/** A `next` parameter that stays on this site: a path, never `//host` or a full URL. */
export function safeNext(next: string | undefined): string {
  if (!next?.startsWith("/") || next.startsWith("//") || next.startsWith("/\\")) return "/";
  return next;
}
