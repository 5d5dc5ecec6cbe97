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

/** A detail table: kept for bench/results.json, printed with `--details`. */
export function printTable(title: string, rows: Record<string, string | number>[]): void {
  tables.push({ title, rows });
  if (!output.details) return;
  process.stdout.write(`\n## ${title}\n\n`);
  if (rows.length === 0) return;
  const headers = Object.keys(rows[0] as object);
  const cell = (v: string | number | undefined) =>
    typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toFixed(2)) : (v ?? "");
  process.stdout.write(`| ${headers.join(" | ")} |\n| ${headers.map(() => "---").join(" | ")} |\n`);
  for (const row of rows) process.stdout.write(`| ${headers.map((h) => cell(row[h])).join(" | ")} |\n`);
}

/**
 * One headline figure of a benchmark for the summary table and bench/results.json:
 * its value, the baseline measured in the same run where the benchmark has one (the
 * ratio is value / baseline), and the target it is read against.
 */
export interface Figure {
  bench: string;
  figure: string;
  value: number;
  unit: string;
  baseline?: { name: string; value: number };
  target?: string;
}

/** Every figure recorded in this process, in order. */
export const figures: Figure[] = [];
/** Every detail table printed (or not) in this process, for bench/results.json. */
export const tables: { title: string; rows: Record<string, string | number>[] }[] = [];
/** Whether printTable writes the detail tables to stdout (`npm run bench -- --details`). */
export const output = { details: false };

export function recordFigure(figure: Figure): void {
  figures.push(figure);
}

/** The summary: one row per figure with its same-run baseline and the ratio to it. */
export function printFigures(list: readonly Figure[]): void {
  const round = (v: number) => (Math.abs(v) >= 100 ? String(Math.round(v)) : v.toFixed(2));
  process.stdout.write(
    "\n| bench | figure | value | baseline (same run) | ratio | target |\n| --- | --- | --- | --- | --- | --- |\n",
  );
  for (const f of list) {
    const baseline = f.baseline ? `${round(f.baseline.value)} ${f.unit} (${f.baseline.name})` : "";
    const ratio = f.baseline && f.baseline.value !== 0 ? `${(f.value / f.baseline.value).toFixed(2)}x` : "";
    process.stdout.write(
      `| ${f.bench} | ${f.figure} | ${round(f.value)} ${f.unit} | ${baseline} | ${ratio} | ${f.target ?? ""} |\n`,
    );
  }
}
