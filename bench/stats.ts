/** Small helpers shared by the benchmarks: percentiles and a readable table. */

export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[index] as number;
}

export function summarize(samples: readonly number[]): { n: number; median: number; p99: number; mean: number } {
  const sorted = [...samples].sort((a, b) => a - b);
  const mean = sorted.reduce((a, b) => a + b, 0) / Math.max(1, sorted.length);
  return { n: sorted.length, median: percentile(sorted, 50), p99: percentile(sorted, 99), mean };
}

export function printTable(title: string, rows: Record<string, string | number>[]): void {
  process.stdout.write(`\n## ${title}\n\n`);
  if (rows.length === 0) return;
  const headers = Object.keys(rows[0] as object);
  const cell = (v: string | number | undefined) =>
    typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toFixed(2)) : (v ?? "");
  process.stdout.write(`| ${headers.join(" | ")} |\n| ${headers.map(() => "---").join(" | ")} |\n`);
  for (const row of rows) process.stdout.write(`| ${headers.map((h) => cell(row[h])).join(" | ")} |\n`);
}
