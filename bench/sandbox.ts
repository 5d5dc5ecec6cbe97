/**
 * Sandbox overhead (issue 9's target: under 150 ms added per session start): the same
 * tiny agent (`bash -c 'echo ok'`) started plainly and inside the sandbox, median of 20
 * each, from spawn to exit; the wrap alone (policy to argv); and one "tool call" inside an
 * already running sandbox (a command the agent runs, which pays no new sandbox).
 */
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { execa } from "execa";
import { SandboxHost } from "../src/sessions/sandbox.js";
import { printTable, recordFigure, summarize } from "./stats.js";

const RUNS = 20;

export async function benchSandbox(): Promise<void> {
  const host = new SandboxHost({ bwrap: "bwrap", socat: "socat", ripgrep: "rg" }, process.env);
  const probe = await host.probe();
  if (!probe.ok) {
    process.stdout.write(`\n## Sandbox\n\nskipped: ${probe.reason}\n`);
    return;
  }
  const root = await mkdtemp(path.join(os.tmpdir(), "fr-bench-sandbox-"));
  const worktree = path.join(root, "worktree");
  const agentDir = path.join(root, "agent");
  await mkdir(worktree, { recursive: true });
  await mkdir(path.join(agentDir, "tmp"), { recursive: true });
  const policy = {
    allowWrite: [worktree, agentDir],
    denyWrite: [],
    denyRead: [path.join(root, "data"), path.join(os.homedir(), ".ssh")],
    allowRead: [worktree, agentDir],
    hosts: ["api.anthropic.com"],
  };
  const env = { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: os.homedir() };
  const command = ["bash", "-c", "echo ok"];
  const toolCalls = [
    "bash",
    "-c",
    "for i in $(seq 20); do s=$(date +%s%N); true; e=$(date +%s%N); echo $(( (e - s) / 1000 )); done",
  ];
  try {
    await host.start();
    const plain: number[] = [];
    const boxed: number[] = [];
    const wraps: number[] = [];
    for (let i = 0; i < RUNS; i += 1) {
      let t = performance.now();
      await execa(command[0] as string, command.slice(1), { cwd: worktree, env, extendEnv: false });
      plain.push(performance.now() - t);
      t = performance.now();
      const wrap = await host.wrap(command, {
        cwd: worktree,
        policy,
        argvFile: path.join(agentDir, "argv"),
        tmpDir: path.join(agentDir, "tmp"),
      });
      wraps.push(performance.now() - t);
      const [program, ...args] = wrap.argv;
      await execa(program as string, args, { cwd: worktree, env: { ...env, ...wrap.env }, extendEnv: false });
      boxed.push(performance.now() - t);
      wrap.close();
    }
    const wrap = await host.wrap(toolCalls, {
      cwd: worktree,
      policy,
      argvFile: path.join(agentDir, "argv"),
      tmpDir: path.join(agentDir, "tmp"),
    });
    const [program, ...args] = wrap.argv;
    const inside = await execa(program as string, args, {
      cwd: worktree,
      env: { ...env, ...wrap.env },
      extendEnv: false,
    });
    wrap.close();
    const toolUs = inside.stdout.split("\n").map(Number).filter(Number.isFinite);
    const p = summarize(plain);
    const b = summarize(boxed);
    const w = summarize(wraps);
    recordFigure({
      bench: "sandbox",
      figure: "session start, sandboxed, median",
      value: b.median,
      unit: "ms",
      baseline: { name: "unsandboxed", value: p.median },
      target: "< 150 ms added",
    });
    printTable(`Sandbox overhead per session start (median of ${RUNS}; load ${os.loadavg()[0]?.toFixed(1)})`, [
      { figure: "session start, unsandboxed (ms)", median: p.median, p99: p.p99, target: "" },
      { figure: "session start, sandboxed (ms)", median: b.median, p99: b.p99, target: "" },
      { figure: "added by the sandbox (ms)", median: b.median - p.median, p99: b.p99 - p.p99, target: "< 150" },
      { figure: "of which the wrap (policy to argv) (ms)", median: w.median, p99: w.p99, target: "" },
      {
        figure: "a command inside a running sandbox (µs)",
        median: summarize(toolUs).median,
        p99: summarize(toolUs).p99,
        target: "no new sandbox per tool call",
      },
    ]);
  } finally {
    await host.stop();
    await rm(root, { recursive: true, force: true });
  }
}
