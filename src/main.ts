import { runCli } from "./cli.js";
import { installProcessGuard } from "./process-guard.js";

/**
 * Process entry point: wires the CLI to the real process (argv, env, signals). The first
 * SIGTERM/SIGINT asks for a graceful stop; a second one while stopping forces the exit.
 */
function untilSignal(): Promise<string> {
  return new Promise((resolve) => {
    let signalled = false;
    const onSignal = (signal: NodeJS.Signals) => {
      if (signalled) {
        process.stderr.write(`formula-runner: second ${signal} while stopping, exiting now\n`);
        process.exit(130);
      }
      signalled = true;
      resolve(signal);
    };
    process.on("SIGTERM", onSignal);
    process.on("SIGINT", onSignal);
  });
}

process.exitCode = await runCli(process.argv.slice(2), {
  env: process.env,
  cwd: process.cwd(),
  stdout: process.stdout,
  stderr: process.stderr,
  untilSignal,
  guardProcess: (log) =>
    installProcessGuard(process, log, (code) => {
      process.exit(code);
    }),
  readStdin: async () => {
    if (process.stdin.isTTY) return "";
    const chunks: Buffer[] = [];
    for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
    return Buffer.concat(chunks).toString("utf8");
  },
  onHangup: (reload) => {
    process.on("SIGHUP", reload);
    return () => process.off("SIGHUP", reload);
  },
});
