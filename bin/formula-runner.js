#!/usr/bin/env node
// The `formula-runner` command. `--version` answers from package.json without loading
// anything else. Every other command runs the compiled build (`npm run build`, also run
// by `npm pack`) when there is one at least as new as the sources, else the TypeScript
// sources through tsx (development: an edit takes effect without a build).
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";

const root = new URL("../", import.meta.url);
const args = process.argv.slice(2);

if (args.length === 1 && (args[0] === "--version" || args[0] === "-V")) {
  const pkg = JSON.parse(readFileSync(new URL("package.json", root), "utf8"));
  process.stdout.write(`${pkg.version}\n`);
} else {
  const built = new URL("dist/src/main.js", root);
  if (existsSync(built) && !sourcesNewerThan(statSync(built).mtimeMs)) {
    await import(built.href);
  } else {
    const { register } = await import("tsx/esm/api");
    register();
    await import(new URL("src/main.ts", root).href);
  }
}

/** Whether any TypeScript file the build compiles changed after it (a stale build is never run). */
function sourcesNewerThan(builtAt) {
  const stack = ["src", "routes", "db"].map((dir) => new URL(`${dir}/`, root));
  while (stack.length > 0) {
    const dir = stack.pop();
    if (!existsSync(dir)) continue;
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      if (entry.isDirectory()) stack.push(new URL(`${entry.name}/`, dir));
      else if (entry.name.endsWith(".ts") && statSync(new URL(entry.name, dir)).mtimeMs > builtAt) return true;
    }
  }
  return false;
}
