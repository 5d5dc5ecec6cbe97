/**
 * The boundary around every agent process: `@anthropic-ai/sandbox-runtime` (bubblewrap, a
 * seccomp filter and a filtering HTTP/SOCKS proxy on Linux), the sandbox Claude Code uses.
 *
 * The library keeps one proxy per process (`SandboxManager` is a module singleton), so
 * every server in the process shares it: it is initialised on first use, counted, and
 * reset when the last user stops. Each session gets its own wrap: its own filesystem
 * policy (`customConfig.filesystem`) and its own network allow list, registered under an
 * unguessable command id that only that session's proxy credentials carry.
 *
 * The wrapped command is a constant: a launcher that reads the real argv, NUL-separated,
 * from a file the server wrote. Nothing the formula or the agent wrote becomes shell text.
 */
import { randomBytes } from "node:crypto";
import { constants } from "node:fs";
import { access, stat, writeFile } from "node:fs/promises";
import path from "node:path";
import { SandboxManager } from "@anthropic-ai/sandbox-runtime";
import { execa } from "execa";
import { errorMessage } from "../errors.js";

/** Reads the argv the server wrote and execs it; TMPDIR is reset to the run's own temp dir. */
const LAUNCHER =
  // biome-ignore lint/suspicious/noTemplateCurlyInString: bash expands it, not JavaScript
  'export TMPDIR="$FORMULA_RUNNER_TMPDIR"; mapfile -d "" -t argv < "$FORMULA_RUNNER_ARGV" && exec "${argv[@]}"';

export type { SandboxMode } from "../formulas/schema.js";

/** What one session may touch. Paths are absolute; hosts are names or IP addresses. */
export interface SandboxPolicy {
  /** The only writable places (plus the library's own: /dev/null, a private /tmp/claude). */
  allowWrite: readonly string[];
  /** Read-only even inside allowWrite (the worktree's `.git` link). */
  denyWrite: readonly string[];
  /** Invisible (mounted over with an empty tmpfs, or /dev/null for a file). */
  denyRead: readonly string[];
  /** Visible again inside a denied directory (the run's own agent dir inside DATA_DIR). */
  allowRead: readonly string[];
  /** Hosts the proxy lets through; everything else is refused. */
  hosts: readonly string[];
}

export interface SandboxPrograms {
  bwrap: string;
  socat: string;
  ripgrep: string;
}

export type SandboxProbe = { ok: true } | { ok: false; reason: string };

/** A wrapped session: the argv to spawn, and `close()` to drop its network list once it ended. */
export interface SandboxWrap {
  argv: string[];
  /** Variables the launcher needs (merged into the agent's own environment). */
  env: Record<string, string>;
  close(): void;
}

/** Wraps tried when the library's `which` lookups time out on a busy host. */
const WRAP_ATTEMPTS = 4;

let users = 0;
let initializing: Promise<void> | undefined;

/** The host side of the sandbox for one server: probe, start, wrap sessions, stop. */
export class SandboxHost {
  readonly #programs: SandboxPrograms;
  readonly #env: Readonly<Record<string, string | undefined>>;
  #probe: Promise<SandboxProbe> | undefined;
  /** The programs by absolute path, once the probe found them: the library then runs no `which`. */
  #resolved: SandboxPrograms | undefined;
  #started = false;

  constructor(programs: SandboxPrograms, env: Readonly<Record<string, string | undefined>>) {
    this.#programs = programs;
    this.#env = env;
  }

  /** Whether agents can be sandboxed here, and if not why (asked once, then remembered). */
  probe(): Promise<SandboxProbe> {
    this.#probe ??= this.#check();
    return this.#probe;
  }

  async #check(): Promise<SandboxProbe> {
    if (process.platform !== "linux")
      return { ok: false, reason: `sandboxing needs Linux (this is ${process.platform})` };
    const missing: string[] = [];
    const found: Partial<SandboxPrograms> = {};
    for (const [name, program] of Object.entries(this.#programs) as [keyof SandboxPrograms, string][]) {
      const where = await findProgram(program, this.#env.PATH);
      if (where.ok) found[name] = path.resolve(where.file);
      else missing.push(`${name} (${program})`);
    }
    if (missing.length > 0 || !found.bwrap || !found.socat || !found.ripgrep) {
      return {
        ok: false,
        reason: `not found: ${missing.join(", ")}; install the Debian packages bubblewrap, socat and ripgrep`,
      };
    }
    this.#resolved = { bwrap: found.bwrap, socat: found.socat, ripgrep: found.ripgrep };
    // bubblewrap present is not bubblewrap usable (user namespaces can be disabled).
    const tried = await execa(
      found.bwrap,
      ["--ro-bind", "/", "/", "--unshare-user", "--unshare-pid", "--proc", "/proc", "--dev", "/dev", "true"],
      { reject: false, env: pathEnv(this.#env), extendEnv: false },
    );
    if (tried.failed) {
      return {
        ok: false,
        reason: `bubblewrap cannot start a sandbox here: ${tried.stderr.trim() || tried.shortMessage}`,
      };
    }
    return { ok: true };
  }

  /** Starts the shared proxy (first user) and counts this server in. */
  async start(): Promise<void> {
    if (this.#started) return;
    await this.probe();
    this.#started = true;
    users += 1;
    if (users === 1) {
      const programs = this.#resolved ?? this.#programs;
      initializing = SandboxManager.initialize({
        network: { allowedDomains: [], deniedDomains: [] },
        filesystem: { denyRead: [], allowWrite: [], denyWrite: [] },
        ripgrep: { command: programs.ripgrep },
        ...(this.#resolved ? { bwrapPath: this.#resolved.bwrap, socatPath: this.#resolved.socat } : {}),
      });
    }
    await initializing;
  }

  /** Counts this server out; the last one resets the library (proxy closed, lists dropped). */
  async stop(): Promise<void> {
    if (!this.#started) return;
    this.#started = false;
    users -= 1;
    if (users === 0) {
      initializing = undefined;
      await SandboxManager.reset();
    }
  }

  /**
   * The argv that runs `command` in `cwd` under `policy`. The real argv goes to
   * `argvFile` (NUL-separated); `tmpDir` becomes the agent's TMPDIR.
   */
  async wrap(
    command: readonly string[],
    options: { cwd: string; policy: SandboxPolicy; argvFile: string; tmpDir: string },
  ): Promise<SandboxWrap> {
    await this.start();
    await writeFile(options.argvFile, `${command.join("\0")}\0`, { mode: 0o600 });
    const commandId = randomBytes(16).toString("base64url");
    const { policy } = options;
    SandboxManager.registerCommandNetworkLists(commandId, { allowedDomains: [...policy.hosts] });
    try {
      const wrap = () =>
        SandboxManager.wrapWithSandboxArgv(
          LAUNCHER,
          "bash",
          {
            filesystem: {
              allowWrite: [...policy.allowWrite],
              denyWrite: [...policy.denyWrite],
              denyRead: [...policy.denyRead],
              allowRead: [...policy.allowRead],
            },
          },
          undefined,
          options.cwd,
          { commandId },
        );
      // The library finds bash and bwrap with `which`, given 1 s: on a saturated host that
      // times out and reads as "not found". Such a miss is tried again, a few times.
      let wrapped: Awaited<ReturnType<typeof wrap>> | undefined;
      for (let attempt = 1; wrapped === undefined; attempt += 1) {
        try {
          wrapped = await wrap();
        } catch (error) {
          if (attempt >= WRAP_ATTEMPTS || !/not found in PATH|not found/i.test(errorMessage(error))) throw error;
          await new Promise((resolve) => setTimeout(resolve, 200 * attempt));
        }
      }
      // `wrapped.env` is this server's whole environment: never handed on. The proxy
      // settings travel inside the argv (bwrap --setenv).
      return {
        argv: wrapped.argv,
        env: { FORMULA_RUNNER_ARGV: options.argvFile, FORMULA_RUNNER_TMPDIR: options.tmpDir },
        close: () => SandboxManager.unregisterCommandNetworkLists(commandId),
      };
    } catch (error) {
      SandboxManager.unregisterCommandNetworkLists(commandId);
      throw new Error(`could not prepare the sandbox: ${errorMessage(error)}`, { cause: error });
    }
  }
}

function pathEnv(env: Readonly<Record<string, string | undefined>>): Record<string, string> {
  return env.PATH === undefined ? {} : { PATH: env.PATH };
}

/** The host of a URL (`https://api.anthropic.com/v1` -> `api.anthropic.com`), or undefined. */
export function hostOfUrl(url: string | undefined): string | undefined {
  if (url === undefined || url.trim() === "") return undefined;
  try {
    const host = new URL(url).hostname;
    return host.startsWith("[") ? host.slice(1, -1) : host || undefined;
  } catch {
    return undefined;
  }
}

/**
 * Where `program` is, as `pathVar` finds it; a reason when it cannot be run. Used for the
 * agent's program before wrapping (inside the sandbox a missing program is only a shell's
 * exit 127) and for the sandbox's own programs, which the library is then given by path.
 */
export async function findProgram(
  program: string,
  pathVar: string | undefined,
): Promise<{ ok: true; file: string } | { ok: false; reason: string }> {
  const prefix = `cannot start ${JSON.stringify(program)}`;
  const candidates = program.includes("/")
    ? [program]
    : (pathVar ?? "")
        .split(":")
        .filter((dir) => dir !== "")
        .map((dir) => path.join(dir, program));
  for (const file of candidates) {
    try {
      await access(file, constants.X_OK);
      if ((await stat(file)).isFile()) return { ok: true, file };
    } catch {}
  }
  return {
    ok: false,
    reason: program.includes("/") ? `${prefix}: no such executable file` : `${prefix}: program not found on the PATH`,
  };
}
