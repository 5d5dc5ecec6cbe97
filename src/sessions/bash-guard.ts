/**
 * The static check behind the `claude` profile's PreToolUse guard on Bash (DESIGN,
 * "Behaviour carried over from the bash design"): before Claude Code runs a Bash tool
 * command, refuse a force-push to the primary branch, a checkout of the primary branch,
 * and `rm -rf` of anything that is not inside the run's worktree.
 *
 * The command is read the way bash reads it: split into simple commands on `;`, `&&`,
 * `||`, `|`, `&`, newlines and parentheses, words unquoted with bash's rules, heredoc
 * bodies skipped, `$(...)`, backticks, `bash -c` and `eval` checked as nested command
 * lines, `cd` followed so later relative paths resolve where bash would resolve them.
 * Paths are normalised lexically (no symlinks are read: this is a pure function).
 *
 * It is a seatbelt against an agent's mistakes, not a sandbox. Where a wrong guess would
 * be irreversible (what an `rm -rf` operand or a force-pushed refspec names) anything it
 * cannot resolve statically is refused, with a reason that says how to write the command
 * so it can be checked. What it cannot see at all (git aliases, scripts run from files,
 * commands piped into a shell, a command name held in a variable) it lets through.
 */
import { posix } from "node:path";

/** Where the command runs and what it must not touch. */
export interface BashGuardContext {
  /** The directory the command starts in (the Bash tool's cwd); absolute, or relative to the worktree. */
  cwd: string;
  /** Absolute path of the run's worktree: `rm -rf` must stay strictly below it. */
  worktree: string;
  /** The project's primary branch, e.g. `main`. */
  primaryBranch: string;
  /** The agent's HOME, for `~` and `$HOME`; without it, paths using them cannot be resolved (and are refused for `rm -rf`). */
  home?: string;
}

/** The guard's verdict; a refusal carries a reason written for the agent to read. */
export type BashCheck = { allowed: true } | { allowed: false; reason: string };

/**
 * Checks one Bash tool command line against the guard's three rules (see the module
 * comment). Never throws for any input string: unparseable shell is read as leniently as
 * bash would read it, and whatever stays unknown is handled by the rules' conservative side.
 */
export function checkBashCommand(command: string, context: BashGuardContext): BashCheck {
  const worktree = normalizeAbsolute(context.worktree);
  const cwd = posix.isAbsolute(context.cwd)
    ? normalizeAbsolute(context.cwd)
    : normalizeAbsolute(posix.join(worktree, context.cwd));
  const guard: Guard = { worktree, primary: context.primaryBranch, home: context.home };
  const state: ShellState = { cwds: [cwd], fallback: [], unknownVars: new Set() };
  const reason = checkScript(command, state, guard, 0);
  return reason === undefined ? { allowed: true } : { allowed: false, reason };
}

/** A command or word as a message shows it: on one line, shortened. */
function shown(text: string): string {
  const line = text.replace(/\s+/g, " ").trim();
  return line.length > 160 ? `${line.slice(0, 157)}...` : line;
}

const BLOCKED = "formula-runner's guard blocked this command:";

// ---------------------------------------------------------------------------------------
// Tokens

/** A piece of a word: literal text (quoted or not), a `$NAME`, or something only known at run time. */
type Part =
  | { kind: "text"; text: string; quoted: boolean }
  | { kind: "var"; name: string; quoted: boolean; source: string }
  /** `$(...)`, backticks, `<(...)`, `$1`, `${x:-y}`, `~user`: `script` is shell code that also runs. */
  | { kind: "dynamic"; source: string; script?: string };

interface Word {
  kind: "word";
  parts: Part[];
  start: number;
  end: number;
}

/** Newlines are read as `;`: for what the guard tracks they mean the same. */
type Operator = ";" | "&&" | "||" | "|" | "&" | "(" | ")";

type Token =
  | Word
  | { kind: "operator"; op: Operator; start: number; end: number }
  | { kind: "redirect"; op: string; start: number; end: number };

const BREAK = new Set([" ", "\t", "\n", ";", "&", "|", "(", ")", "<", ">"]);
const REDIRECTS = ["<<<", "<<-", "<<", ">>", "<>", ">|", ">&", "<&", ">", "<"];
const NAME = /^[A-Za-z_][A-Za-z0-9_]*/;

/**
 * Splits a command line into words, operators and redirections with bash's quoting
 * rules. Unterminated quotes run to the end of the input (bash would refuse the line;
 * reading on is the conservative choice for a guard).
 */
function tokenize(source: string): Token[] {
  const tokens: Token[] = [];
  const heredocs: { delimiter: string; stripTabs: boolean }[] = [];
  /** Set right after `<<` / `<<-`: the next word is a heredoc delimiter (the value: strip tabs). */
  let delimiterNext: boolean | undefined;
  let word: Word | undefined;
  let i = 0;
  const n = source.length;

  const current = (): Word => (word ??= { kind: "word", parts: [], start: i, end: i });
  const text = (value: string, quoted: boolean): void => {
    const parts = current().parts;
    const last = parts.at(-1);
    if (last?.kind === "text" && last.quoted === quoted) last.text += value;
    else parts.push({ kind: "text", text: value, quoted });
  };
  const endWord = (): void => {
    if (word === undefined) return;
    word.end = i;
    tokens.push(word);
    if (delimiterNext !== undefined) {
      heredocs.push({
        delimiter: word.parts.map((p) => (p.kind === "text" ? p.text : p.source)).join(""),
        stripTabs: delimiterNext,
      });
      delimiterNext = undefined;
    }
    word = undefined;
  };
  const operator = (op: Operator, length: number): void => {
    endWord();
    tokens.push({ kind: "operator", op, start: i, end: i + length });
    i += length;
  };

  /** `$...` at i (quoted: inside double quotes); returns the index after it. */
  const dollar = (quoted: boolean): number => {
    const next = source[i + 1];
    if (next === "(") {
      const arithmetic = source[i + 2] === "(";
      const close = matchClose(source, i + 2, "(", ")");
      const end = Math.min(close + 1, n);
      // $((...)) is arithmetic, not a command line.
      current().parts.push({
        kind: "dynamic",
        source: source.slice(i, end),
        ...(arithmetic ? {} : { script: source.slice(i + 2, close) }),
      });
      return end;
    }
    if (next === "{") {
      const close = matchClose(source, i + 2, "{", "}");
      const inner = source.slice(i + 2, close);
      const end = Math.min(close + 1, n);
      if (/^[A-Za-z_][A-Za-z0-9_]*$/.test(inner))
        current().parts.push({ kind: "var", name: inner, quoted, source: source.slice(i, end) });
      else current().parts.push({ kind: "dynamic", source: source.slice(i, end) });
      return end;
    }
    if (next === "'" && !quoted) return ansiC(i + 2);
    if (next === '"' && !quoted) return doubleQuoted(i + 2);
    const name = NAME.exec(source.slice(i + 1))?.[0];
    if (name !== undefined) {
      current().parts.push({ kind: "var", name, quoted, source: `$${name}` });
      return i + 1 + name.length;
    }
    if (next !== undefined && "0123456789@*#?$!-".includes(next)) {
      current().parts.push({ kind: "dynamic", source: `$${next}` });
      return i + 2;
    }
    text("$", quoted);
    return i + 1;
  };

  /** A backtick substitution starting at i; returns the index after it. */
  const backtick = (): number => {
    const close = skipBacktick(source, i + 1);
    const script = source.slice(i + 1, close).replace(/\\([`$\\])/g, "$1");
    const end = Math.min(close + 1, n);
    current().parts.push({ kind: "dynamic", source: source.slice(i, end), script });
    return end;
  };

  /** Double-quoted text from `from` (after the opening quote); returns the index after the closing quote. */
  const doubleQuoted = (from: number): number => {
    current();
    i = from;
    while (i < n && source[i] !== '"') {
      const c = source[i] as string;
      if (c === "\\") {
        const next = source[i + 1];
        if (next === "\n") i += 2;
        else if (next !== undefined && '$`"\\'.includes(next)) {
          text(next, true);
          i += 2;
        } else {
          text("\\", true);
          i += 1;
        }
      } else if (c === "$") i = dollar(true);
      else if (c === "`") i = backtick();
      else {
        text(c, true);
        i += 1;
      }
    }
    return Math.min(i + 1, n);
  };

  /** `$'...'` text from `from`, with the escapes bash decodes there; returns the index after the closing quote. */
  const ansiC = (from: number): number => {
    let out = "";
    let j = from;
    const escapes: Record<string, string> = {
      n: "\n",
      t: "\t",
      r: "\r",
      a: "\x07",
      b: "\b",
      e: "\x1b",
      E: "\x1b",
      f: "\f",
      v: "\v",
    };
    while (j < n && source[j] !== "'") {
      const c = source[j] as string;
      if (c === "\\" && j + 1 < n) {
        const e = source[j + 1] as string;
        const hex = e === "x" ? /^[0-9a-fA-F]{1,2}/.exec(source.slice(j + 2))?.[0] : undefined;
        if (hex !== undefined) {
          out += String.fromCharCode(Number.parseInt(hex, 16));
          j += 2 + hex.length;
        } else {
          out += escapes[e] ?? e;
          j += 2;
        }
      } else {
        out += c;
        j += 1;
      }
    }
    text(out, true);
    return Math.min(j + 1, n);
  };

  /** After a newline: skip the bodies of the heredocs opened on the line just ended (they are data, not commands). */
  const skipHeredocs = (): void => {
    for (const heredoc of heredocs.splice(0)) {
      while (i < n) {
        let eol = source.indexOf("\n", i);
        if (eol < 0) eol = n;
        const line = source.slice(i, eol);
        i = Math.min(eol + 1, n);
        if ((heredoc.stripTabs ? line.replace(/^\t+/, "") : line) === heredoc.delimiter) break;
      }
    }
  };

  while (i < n) {
    const c = source[i] as string;
    const next = source[i + 1];
    if (c === "\\") {
      if (next === "\n")
        i += 2; // line continuation
      else {
        text(next ?? "", true);
        i += 2;
      }
    } else if (c === " " || c === "\t") {
      endWord();
      i += 1;
    } else if (c === "\n") {
      operator(";", 1);
      skipHeredocs();
    } else if (c === "#" && word === undefined) {
      const eol = source.indexOf("\n", i);
      i = eol < 0 ? n : eol;
    } else if (c === "'") {
      current();
      const close = source.indexOf("'", i + 1);
      const end = close < 0 ? n : close;
      text(source.slice(i + 1, end), true);
      i = Math.min(end + 1, n);
    } else if (c === '"') {
      i = doubleQuoted(i + 1);
    } else if (c === "$") {
      i = dollar(false);
    } else if (c === "`") {
      i = backtick();
    } else if (c === "~" && word === undefined) {
      // Tilde expansion: only unquoted, at the start of a word, up to the first slash.
      const prefix = /^[^\s/;&|()<>'"`$\\]*/.exec(source.slice(i + 1))?.[0] ?? "";
      const after = source[i + 1 + prefix.length];
      current();
      const end = i + 1 + prefix.length;
      if (after !== undefined && after !== "/" && !BREAK.has(after))
        current().parts.push({ kind: "dynamic", source: source.slice(i, end) });
      else if (prefix === "") current().parts.push({ kind: "var", name: "HOME", quoted: false, source: "~" });
      else if (prefix === "+") current().parts.push({ kind: "var", name: "PWD", quoted: false, source: "~+" });
      else current().parts.push({ kind: "dynamic", source: source.slice(i, end) });
      i = end;
    } else if ((c === "<" || c === ">") && next === "(") {
      // Process substitution: a word whose command line runs too.
      const close = matchClose(source, i + 2, "(", ")");
      const end = Math.min(close + 1, n);
      current().parts.push({ kind: "dynamic", source: source.slice(i, end), script: source.slice(i + 2, close) });
      i = end;
    } else if (c === "<" || c === ">" || (c === "&" && next === ">")) {
      // A word of digits right before the operator is its file descriptor, not an argument.
      if (word?.parts.every((p) => p.kind === "text" && !p.quoted && /^\d+$/.test(p.text))) word = undefined;
      else endWord();
      const op =
        c === "&"
          ? source.startsWith("&>>", i)
            ? "&>>"
            : "&>"
          : (REDIRECTS.find((r) => source.startsWith(r, i)) ?? c);
      tokens.push({ kind: "redirect", op, start: i, end: i + op.length });
      if (op === "<<" || op === "<<-") delimiterNext = op === "<<-";
      i += op.length;
    } else if (c === "&") {
      operator(next === "&" ? "&&" : "&", next === "&" ? 2 : 1);
    } else if (c === "|") {
      operator(next === "|" ? "||" : "|", next === "|" || next === "&" ? 2 : 1);
    } else if (c === ";") {
      // `;;`, `;&` and `;;&` end case branches: for the guard, a plain separator.
      operator(";", next === ";" || next === "&" ? (source[i + 2] === "&" ? 3 : 2) : 1);
    } else if (c === "(" || c === ")") {
      operator(c, 1);
    } else {
      text(c, false);
      i += 1;
    }
  }
  endWord();
  return tokens;
}

/** Index of the `close` matching an already opened `open`, scanning from `start`; the input's length when unmatched. */
function matchClose(source: string, start: number, open: string, close: string): number {
  let depth = 1;
  for (let j = start; j < source.length; j++) {
    const c = source[j];
    if (c === "\\") j++;
    else if (c === "'") {
      const end = source.indexOf("'", j + 1);
      if (end < 0) return source.length;
      j = end;
    } else if (c === '"') j = skipDoubleQuoted(source, j + 1);
    else if (c === "`") j = skipBacktick(source, j + 1);
    else if (c === open) depth++;
    else if (c === close && --depth === 0) return j;
  }
  return source.length;
}

/** Index of the closing double quote of a string starting at `start`. */
function skipDoubleQuoted(source: string, start: number): number {
  for (let j = start; j < source.length; j++) {
    const c = source[j];
    if (c === "\\") j++;
    else if (c === '"') return j;
    else if (c === "$" && source[j + 1] === "(") j = matchClose(source, j + 2, "(", ")");
    else if (c === "`") j = skipBacktick(source, j + 1);
  }
  return source.length;
}

/** Index of the closing backtick of a substitution starting at `start`. */
function skipBacktick(source: string, start: number): number {
  for (let j = start; j < source.length; j++) {
    if (source[j] === "\\") j++;
    else if (source[j] === "`") return j;
  }
  return source.length;
}

// ---------------------------------------------------------------------------------------
// Words

/** A directory known statically, or null when it is only known at run time. */
type Dir = string | null;

/**
 * What the guard knows of the shell while it walks a command line. `cwds` are the
 * directories the next command may run in: more than one when a `cd` may or may not have
 * happened (`cd x || true`, a `cd` in a pipeline). `fallback` are directories that become
 * possible again when the current `&&` chain ends (a `cd` in it may have failed, and
 * whatever follows `||` or `;` then runs where the shell was before).
 */
interface ShellState {
  cwds: Dir[];
  fallback: Dir[];
  /** HOME, WORKTREE or PWD assigned, read or unset earlier on the line: no longer known. */
  unknownVars: Set<string>;
}

interface Guard {
  worktree: string;
  primary: string;
  home: string | undefined;
}

type Lookup = (name: string) => string | undefined;

/** The values of the variables the guard knows, for a command running in `cwd`. */
function lookupIn(state: ShellState, guard: Guard, cwd: Dir): Lookup {
  return (name) => {
    if (state.unknownVars.has(name)) return undefined;
    if (name === "HOME") return guard.home;
    if (name === "WORKTREE") return guard.worktree;
    if (name === "PWD") return cwd ?? undefined;
    return undefined;
  };
}

/** A word after expansion: its text, and which characters are unquoted literals (where globs and braces act). */
type Expansion = { ok: true; text: string; active: boolean[] } | { ok: false; problem: string };

function expand(word: Word, lookup: Lookup): Expansion {
  let text = "";
  const active: boolean[] = [];
  for (const part of word.parts) {
    if (part.kind === "text") {
      text += part.text;
      for (let k = 0; k < part.text.length; k++) active.push(!part.quoted);
    } else if (part.kind === "var") {
      const value = lookup(part.name);
      if (value === undefined) return { ok: false, problem: `${part.source} is not known before the command runs` };
      // Unquoted, bash would split the value on spaces and expand globs in it.
      if (!part.quoted && /[\s*?[]/.test(value))
        return { ok: false, problem: `${part.source} is unquoted and its value contains spaces or wildcards` };
      text += value;
      for (let k = 0; k < value.length; k++) active.push(false);
    } else {
      return { ok: false, problem: `${shown(part.source).slice(0, 60)} is only known when the command runs` };
    }
  }
  return { ok: true, text, active };
}

type Expanded = { text: string; active: boolean[] };

/**
 * Bash's brace expansion of an expanded word: `{build,dist}/x` is `build/x` and `dist/x`.
 * A string when it cannot be followed (a sequence such as `{1..9}`, or too many words).
 */
function braceExpand(word: Expanded, limit = 64): Expanded[] | string {
  const { text, active } = word;
  for (let open = 0; open < text.length; open++) {
    if (text[open] !== "{" || !active[open]) continue;
    // The matching unquoted `}` and the unquoted commas at this level.
    let depth = 0;
    const commas: number[] = [];
    let close = -1;
    for (let k = open + 1; k < text.length && close < 0; k++) {
      if (!active[k]) continue;
      if (text[k] === "{") depth++;
      else if (text[k] === "}" && depth-- === 0) close = k;
      else if (text[k] === "," && depth === 0) commas.push(k);
    }
    if (close < 0) return [word];
    if (commas.length === 0) {
      if (/^[^{}]+\.\.[^{}]+$/.test(text.slice(open + 1, close))) return "it uses a brace sequence ({a..b})";
      continue; // `{x}` stays as written
    }
    const bounds = [open, ...commas, close];
    const results: Expanded[] = [];
    for (let b = 0; b + 1 < bounds.length; b++) {
      const from = (bounds[b] as number) + 1;
      const to = bounds[b + 1] as number;
      const alternative: Expanded = {
        text: text.slice(0, open) + text.slice(from, to) + text.slice(close + 1),
        active: [...active.slice(0, open), ...active.slice(from, to), ...active.slice(close + 1)],
      };
      const expanded = braceExpand(alternative, limit);
      if (typeof expanded === "string") return expanded;
      results.push(...expanded);
      if (results.length > limit) return "its brace expansion makes too many words to check";
    }
    return results;
  }
  return [word];
}

/** The word's value when it is statically known (globs left as they are); undefined otherwise. */
function wordValue(word: Word | undefined, lookup: Lookup): string | undefined {
  if (word === undefined) return undefined;
  const expansion = expand(word, lookup);
  return expansion.ok ? expansion.text : undefined;
}

/**
 * The word as shell code for a nested shell (`bash -c`, `eval`): what is known is filled
 * in, what is not is left as written, so the nested check sees `$X` or `$(...)` itself.
 */
function asScript(word: Word, lookup: Lookup): string {
  return word.parts
    .map((p) => (p.kind === "text" ? p.text : p.kind === "var" ? (lookup(p.name) ?? p.source) : p.source))
    .join("");
}

function isAssignment(word: Word): boolean {
  const first = word.parts[0];
  return first?.kind === "text" && !first.quoted && /^[A-Za-z_][A-Za-z0-9_]*=/.test(first.text);
}

/** The word when it is one unquoted literal (how bash recognises reserved words). */
function bareWord(word: Word): string | undefined {
  const only = word.parts.length === 1 ? word.parts[0] : undefined;
  return only?.kind === "text" && !only.quoted ? only.text : undefined;
}

/** A synthetic word for an option value written inline (`--chdir=/x`). */
function literalWord(text: string, near: Word): Word {
  return { kind: "word", parts: [{ kind: "text", text, quoted: true }], start: near.start, end: near.end };
}

// ---------------------------------------------------------------------------------------
// Paths

function normalizeAbsolute(path: string): string {
  const normal = posix.normalize(path);
  return normal.length > 1 && normal.endsWith("/") ? normal.slice(0, -1) : normal;
}

/** Where a `cd`-style argument leads from `cwd`: null when that is not statically known. */
function resolveDir(word: Word | undefined, cwd: Dir, state: ShellState, guard: Guard): Dir {
  const lookup = lookupIn(state, guard, cwd);
  if (word === undefined) return lookup("HOME") ?? null;
  const expansion = expand(word, lookup);
  if (
    !expansion.ok ||
    expansion.text === "-" ||
    expansion.active.some((a, k) => a && "*?[{".includes(expansion.text[k] as string))
  )
    return null;
  if (posix.isAbsolute(expansion.text)) return normalizeAbsolute(expansion.text);
  return cwd === null ? null : normalizeAbsolute(posix.join(cwd, expansion.text));
}

/** One place an `rm` operand may name; `note` says why when a glob made it possible. */
interface Target {
  path: string;
  note?: string;
}

/**
 * Every path an expanded operand may name, from `cwd`, normalised lexically. A glob
 * segment stands for some entry of its directory, and also for `.` and `..` when it can
 * match them (`.*` does in bash before 5.2): `rm -rf .*` must not reach the parent.
 */
function targetsOf(text: string, active: boolean[], cwd: Dir): Target[] | string {
  const absolute = text.startsWith("/");
  if (!absolute && cwd === null) return "the directory it runs in is not known (an earlier cd could not be resolved)";
  let paths: { segments: string[]; note?: string }[] = [
    { segments: absolute || cwd === null ? [] : cwd.split("/").filter(Boolean) },
  ];
  let offset = 0;
  for (const segment of text.split("/")) {
    const mask = active.slice(offset, offset + segment.length);
    offset += segment.length + 1;
    if (segment === "" || segment === ".") continue;
    if (segment === "..") {
      for (const p of paths) p.segments.pop();
      continue;
    }
    if (!mask.some((a, k) => a && "*?[".includes(segment[k] as string))) {
      for (const p of paths) p.segments.push(segment);
      continue;
    }
    const next = paths.map((p) => ({ ...p, segments: [...p.segments, segment] }));
    const note = `the glob ${segment} can match "." and ".."`;
    if (globMatches(segment, mask, "..")) next.push(...paths.map((p) => ({ segments: p.segments.slice(0, -1), note })));
    if (globMatches(segment, mask, ".")) next.push(...paths.map((p) => ({ segments: [...p.segments], note })));
    paths = next;
    if (paths.length > 64) return "it has too many globs to check";
  }
  return paths.map((p) => ({ path: `/${p.segments.join("/")}`, ...(p.note === undefined ? {} : { note: p.note }) }));
}

/** Whether the glob `pattern` (active: unquoted characters) matches `name`, with bash's rule that a leading dot must be literal. */
function globMatches(pattern: string, active: boolean[], name: string): boolean {
  if (name.startsWith(".") && !pattern.startsWith(".")) return false;
  let regex = "";
  for (let k = 0; k < pattern.length; k++) {
    const c = pattern[k] as string;
    if (!active[k]) regex += c.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");
    else if (c === "*") regex += "[^/]*";
    else if (c === "?") regex += "[^/]";
    else if (c === "[") {
      const close = pattern.indexOf("]", k + 2);
      if (close < 0) regex += "\\[";
      else {
        const body = pattern
          .slice(k + 1, close)
          .replace(/^[!^]/, "^")
          .replace(/\\/g, "\\\\");
        regex += `[${body}]`;
        k = close;
      }
    } else regex += c.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");
  }
  try {
    return new RegExp(`^${regex}$`).test(name);
  } catch {
    return true; // an odd bracket expression: assume it can match
  }
}

/** The targets of every word of a brace expansion; `rm -rf ""` names nothing. */
function flatTargets(words: Expanded[], cwd: Dir): Target[] | string {
  const all: Target[] = [];
  for (const word of words) {
    if (word.text === "") continue;
    const targets = targetsOf(word.text, word.active, cwd);
    if (typeof targets === "string") return targets;
    all.push(...targets);
  }
  return all;
}

function isInside(path: string, worktree: string): boolean {
  return worktree === "/" ? path !== "/" : path.startsWith(`${worktree}/`);
}

// ---------------------------------------------------------------------------------------
// Commands

const MAX_DEPTH = 8;
const RESERVED = new Set(["if", "then", "else", "elif", "do", "while", "until", "!", "{", "}", "fi", "done", "esac"]);
const SHELLS = new Set(["bash", "sh", "dash", "zsh", "ksh"]);
const TRACKED_VARS = new Set(["HOME", "WORKTREE", "PWD"]);

/** Walks one command line; returns the reason of the first refusal, if any. `state` is updated (for `eval`). */
function checkScript(source: string, state: ShellState, guard: Guard, depth: number): string | undefined {
  if (depth > MAX_DEPTH) {
    return `${BLOCKED} it nests shells or command substitutions more than ${MAX_DEPTH} levels deep, too deep to check. Run the commands directly, one level at a time.`;
  }
  const tokens = tokenize(source);
  const stack: ShellState[] = [];
  let words: Word[] = [];
  let others: Word[] = [];
  let redirectPending = false;
  let previous: Operator | undefined;

  const finish = (next: Operator | undefined): string | undefined => {
    let reason: string | undefined;
    if (words.length > 0 || others.length > 0) {
      const all = [...words, ...others];
      const start = Math.min(...all.map((w) => w.start));
      const end = Math.max(...all.map((w) => w.end));
      reason = checkSimpleCommand(
        { words, others, text: source.slice(start, end), previous, next },
        state,
        guard,
        depth,
      );
    }
    words = [];
    others = [];
    redirectPending = false;
    // Once an && chain ends, whatever follows may run where the shell was before a failed cd.
    if (next !== "&&" && next !== "(" && next !== ")") {
      state.cwds = unique([...state.cwds, ...state.fallback]);
      state.fallback = [];
    }
    return reason;
  };

  for (const token of tokens) {
    let reason: string | undefined;
    if (token.kind === "word") {
      if (redirectPending) others.push(token);
      else words.push(token);
      redirectPending = false;
    } else if (token.kind === "redirect") {
      redirectPending = true;
    } else if (token.op === "(") {
      reason = finish("(");
      // A subshell: what happens inside (cd, assignments) does not leak out.
      stack.push(copyState(state));
      state.fallback = [];
      previous = undefined;
    } else if (token.op === ")") {
      reason = finish(")");
      const outer = stack.pop();
      if (outer !== undefined) Object.assign(state, outer);
      previous = undefined;
    } else {
      reason = finish(token.op);
      previous = token.op;
    }
    if (reason !== undefined) return reason;
  }
  return finish(undefined);
}

function copyState(state: ShellState): ShellState {
  return { cwds: [...state.cwds], fallback: [...state.fallback], unknownVars: new Set(state.unknownVars) };
}

function unique(dirs: Dir[]): Dir[] {
  return [...new Set(dirs)];
}

interface SimpleCommand {
  /** Assignments and arguments, command name first (after any assignments). */
  words: Word[];
  /** Redirection targets: not arguments, but their substitutions run. */
  others: Word[];
  /** The command as written, for messages. */
  text: string;
  /** The operators before and after it: a cd in a pipeline or in the background does not move the shell. */
  previous: Operator | undefined;
  next: Operator | undefined;
}

/** A command with wrappers (`sudo`, `env`, `command`, ...) taken off: the program that really runs. */
interface Invocation {
  name: string;
  args: Word[];
  /** A directory a wrapper runs it in (`env -C`, `sudo -D`). */
  chdir?: Word;
}

function checkSimpleCommand(
  command: SimpleCommand,
  state: ShellState,
  guard: Guard,
  depth: number,
): string | undefined {
  // Substitutions run before the command, each in a subshell of the current one.
  for (const word of [...command.words, ...command.others]) {
    for (const part of word.parts) {
      if (part.kind === "dynamic" && part.script !== undefined) {
        const reason = checkScript(part.script, copyState(state), guard, depth + 1);
        if (reason !== undefined) return reason;
      }
    }
  }

  let words = command.words;
  while (words[0] !== undefined && RESERVED.has(bareWord(words[0]) ?? "")) words = words.slice(1);
  const firstArgument = words.findIndex((w) => !isAssignment(w));
  const assignments = firstArgument < 0 ? words : words.slice(0, firstArgument);
  const argv = words.slice(assignments.length);
  if (argv.length === 0) {
    forgetAssigned(
      assignments.map((w) => bareName(w)),
      state,
    );
    return undefined;
  }

  const lookup = lookupIn(state, guard, state.cwds.length === 1 ? (state.cwds[0] ?? null) : null);
  const invocation = unwrap(argv, lookup);
  if (invocation === undefined) return undefined;
  const { name, args } = invocation;

  switch (name) {
    case "cd":
    case "pushd":
    case "popd":
      changeDirectory(name, args, command, state, guard);
      return undefined;
    case "export":
    case "declare":
    case "typeset":
    case "local":
    case "readonly":
    case "unset":
    case "read":
      // The words after these name variables (`export HOME=/x`, `unset WORKTREE`, `read PWD`).
      forgetAssigned(
        args.map((w) => wordValue(w, lookup)?.split("=")[0]),
        state,
      );
      return undefined;
    case "git":
      return checkGit(args, command, guard, lookup);
    case "rm":
      return checkRm(args, invocation.chdir, command, state, guard);
    case "eval": {
      // eval runs in this shell: a cd in it moves the shell.
      return checkScript(args.map((w) => asScript(w, lookup)).join(" "), state, guard, depth + 1);
    }
    default:
      if (SHELLS.has(name)) {
        const script = shellScript(args);
        if (script !== undefined) return checkScript(asScript(script, lookup), copyState(state), guard, depth + 1);
      }
      return undefined;
  }
}

function bareName(word: Word): string | undefined {
  const first = word.parts[0];
  return first?.kind === "text" ? first.text.split("=")[0] : undefined;
}

function forgetAssigned(names: (string | undefined)[], state: ShellState): void {
  for (const name of names) if (name !== undefined && TRACKED_VARS.has(name)) state.unknownVars.add(name);
}

/** Wrapper programs: their options with values (short letters, long names), and positional arguments before the command. */
const WRAPPERS: Record<string, { short: string; long: string[]; positionals?: number; chdir?: string[] }> = {
  sudo: {
    short: "ugpCDrtTUR",
    long: ["user", "group", "prompt", "close-from", "chdir", "role", "type", "other-user", "host", "chroot"],
    chdir: ["D", "chdir"],
  },
  doas: { short: "uC", long: [] },
  command: { short: "", long: [] },
  builtin: { short: "", long: [] },
  exec: { short: "a", long: [] },
  nohup: { short: "", long: [] },
  time: { short: "", long: [] },
  nice: { short: "n", long: ["adjustment"] },
  stdbuf: { short: "ioe", long: ["input", "output", "error"] },
  timeout: { short: "sk", long: ["signal", "kill-after"], positionals: 1 },
  env: { short: "uCS", long: ["unset", "chdir", "split-string"], chdir: ["C", "chdir"] },
};

/** Takes wrappers off `argv`; undefined when nothing runs (`command -v rm`) or the program is not statically known. */
function unwrap(argv: Word[], lookup: Lookup): Invocation | undefined {
  let args = argv;
  let chdir: Word | undefined;
  for (let round = 0; round < 8; round++) {
    const program = wordValue(args[0], lookup);
    if (program === undefined) return undefined;
    const name = posix.basename(program);
    const wrapper = WRAPPERS[name];
    if (wrapper === undefined) return { name, args: args.slice(1), ...(chdir === undefined ? {} : { chdir }) };
    const parsed = parseOptions(args.slice(1), lookup, wrapper.short, wrapper.long);
    if (name === "command" && (parsed.flags.has("v") || parsed.flags.has("V"))) return undefined;
    for (const option of wrapper.chdir ?? []) chdir = parsed.values.get(option) ?? chdir;
    let rest = parsed.rest.slice(wrapper.positionals ?? 0);
    if (name === "env") while (rest[0] !== undefined && isAssignment(rest[0])) rest = rest.slice(1);
    if (rest.length === 0) return undefined;
    args = rest;
  }
  return undefined;
}

interface ParsedOptions {
  /** Option names seen (short letters or long names, without values). */
  flags: Set<string>;
  values: Map<string, Word>;
  /** The words after the options. */
  rest: Word[];
}

/** getopt-style options at the front of `args`, stopping at the first operand or `--`. */
function parseOptions(args: Word[], lookup: Lookup, short: string, long: string[]): ParsedOptions {
  const flags = new Set<string>();
  const values = new Map<string, Word>();
  let k = 0;
  while (k < args.length) {
    const word = args[k] as Word;
    const value = wordValue(word, lookup);
    if (value === "--") {
      k++;
      break;
    }
    if (value === undefined || !value.startsWith("-") || value === "-") break;
    k++;
    if (value.startsWith("--")) {
      const [name = "", inline] = splitOnce(value.slice(2), "=");
      flags.add(name);
      if (inline !== undefined) values.set(name, literalWord(inline, word));
      else if (long.includes(name) && args[k] !== undefined) values.set(name, args[k++] as Word);
      continue;
    }
    for (let c = 1; c < value.length; c++) {
      const letter = value[c] as string;
      flags.add(letter);
      if (short.includes(letter)) {
        if (c + 1 < value.length) values.set(letter, literalWord(value.slice(c + 1), word));
        else if (args[k] !== undefined) values.set(letter, args[k++] as Word);
        break;
      }
    }
  }
  return { flags, values, rest: args.slice(k) };
}

function splitOnce(text: string, separator: string): [string, string | undefined] {
  const at = text.indexOf(separator);
  return at < 0 ? [text, undefined] : [text.slice(0, at), text.slice(at + separator.length)];
}

/** The script of `bash -c SCRIPT` (also `-lc`, `-ec`, ...); undefined when there is none. */
function shellScript(args: Word[]): Word | undefined {
  let command = false;
  for (let k = 0; k < args.length; k++) {
    const word = args[k] as Word;
    const flag = bareWord(word);
    if (flag === undefined || !/^[-+]/.test(flag) || flag === "-" || flag === "--")
      return command ? (flag === "--" ? args[k + 1] : word) : undefined;
    if (/^[-+][a-zA-Z]+$/.test(flag) && flag.includes("c")) command = true;
    else if (
      flag === "-o" ||
      flag === "+o" ||
      flag === "-O" ||
      flag === "+O" ||
      flag === "--rcfile" ||
      flag === "--init-file"
    )
      k++;
  }
  return undefined;
}

function changeDirectory(name: string, args: Word[], command: SimpleCommand, state: ShellState, guard: Guard): void {
  const operands = parseOptions(args, lookupIn(state, guard, null), "", []).rest;
  const targets =
    name === "popd" ||
    (name === "pushd" && (operands.length === 0 || /^[+-]\d/.test(bareWord(operands[0] as Word) ?? "")))
      ? state.cwds.map((): Dir => null)
      : state.cwds.map((cwd) => resolveDir(operands[0], cwd, state, guard));
  const detached = command.previous === "|" || command.next === "|" || command.next === "&";
  if (detached) {
    // Bash runs it in a subshell (zsh runs the last stage of a pipeline in this shell): either.
    state.cwds = unique([...state.cwds, ...targets]);
  } else {
    // If the cd fails, what follows the && chain runs where the shell was.
    state.fallback = unique([...state.fallback, ...state.cwds]);
    state.cwds = unique(targets);
  }
}

// ---------------------------------------------------------------------------------------
// git

/** git's own options that take the next word as their value. */
const GIT_VALUE_OPTIONS = new Set([
  "-C",
  "-c",
  "--git-dir",
  "--work-tree",
  "--namespace",
  "--config-env",
  "--super-prefix",
  "--list-cmds",
]);

function checkGit(args: Word[], command: SimpleCommand, guard: Guard, lookup: Lookup): string | undefined {
  let k = 0;
  while (k < args.length) {
    const value = wordValue(args[k], lookup);
    if (value === undefined || !value.startsWith("-")) break;
    k += GIT_VALUE_OPTIONS.has(value) ? 2 : 1;
  }
  const subcommand = wordValue(args[k], lookup);
  const rest = args.slice(k + 1);
  if (subcommand === "push") return checkPush(rest, command, guard, lookup);
  if (subcommand === "checkout" || subcommand === "switch")
    return checkCheckout(subcommand, rest, command, guard, lookup);
  return undefined;
}

/** Whether a long option as written (`--forc`) is `full` or an abbreviation of it, as git's option parser accepts. */
function abbreviates(written: string, full: string): boolean {
  return written.length >= 3 && full.startsWith(written);
}

type RefTarget = "primary" | "other" | "unknown";

/** Which branch a push refspec updates on the remote: "unknown" when it cannot be told statically. */
function refspecTarget(refspec: string | undefined, primary: string): RefTarget {
  if (refspec === undefined) return "unknown";
  const spec = refspec.startsWith("+") ? refspec.slice(1) : refspec;
  const [source, destination] = splitOnce(spec, ":");
  // Without a destination the remote branch is named after the source; HEAD means the
  // current branch, which could be the primary one.
  const target = destination ?? source;
  if (target === "" || target.includes("*") || (destination === undefined && /^(HEAD|@)([~^@]|$)/.test(source)))
    return "unknown";
  const name = target.startsWith("refs/heads/") ? target.slice("refs/heads/".length) : target;
  return name === primary ? "primary" : "other";
}

function checkPush(args: Word[], command: SimpleCommand, guard: Guard, lookup: Lookup): string | undefined {
  let force = false;
  let remove = false;
  let every = false;
  const positionals: (string | undefined)[] = [];
  let options = true;
  for (let k = 0; k < args.length; k++) {
    const value = wordValue(args[k], lookup);
    if (options && value === "--") {
      options = false;
      continue;
    }
    if (options && value?.startsWith("-") && value !== "-") {
      if (value.startsWith("--")) {
        const [name = "", inline] = splitOnce(value.slice(2), "=");
        if (["force", "force-with-lease", "force-if-includes"].some((full) => abbreviates(name, full))) force = true;
        else if (abbreviates(name, "delete")) remove = true;
        else if (abbreviates(name, "mirror")) every = force = true;
        else if (name === "all" || abbreviates(name, "branches")) every = true;
        else if (
          inline === undefined &&
          ["repo", "receive-pack", "exec", "push-option"].some((full) => abbreviates(name, full))
        )
          k++;
        continue;
      }
      for (let c = 1; c < value.length; c++) {
        const letter = value[c];
        if (letter === "f") force = true;
        else if (letter === "d") remove = true;
        else if (letter === "o") {
          if (c + 1 === value.length) k++;
          break;
        }
      }
      continue;
    }
    positionals.push(value);
  }

  const refspecs = positionals.slice(1);
  const refuse = (why: string, advice: string) =>
    `${BLOCKED} \`${shown(command.text)}\` ${why}. A run never rewrites or deletes the primary branch "${guard.primary}". ${advice}`;
  const branchAdvice = `Work on a branch and open a pull request instead: git push -u origin HEAD:refs/heads/<your-branch>.`;

  for (const refspec of refspecs) {
    const target = refspecTarget(refspec, guard.primary);
    if (target === "other") continue;
    const spec = refspec?.replace(/^\+/, "");
    // `:branch` deletes the remote branch, as --delete does.
    if (remove || (spec !== undefined && spec.length > 1 && spec.startsWith(":"))) {
      return refuse(`deletes ${describeRef(refspec, target, guard.primary)} on the remote`, branchAdvice);
    }
    if (force || refspec?.startsWith("+") === true)
      return refuse(`force-pushes to ${describeRef(refspec, target, guard.primary)}`, branchAdvice);
  }
  if (force && every) return refuse("force-pushes every branch, the primary branch included", branchAdvice);
  if (force && refspecs.length === 0) {
    return refuse(
      `force-pushes without naming the branch it updates, so it could overwrite the primary branch "${guard.primary}"`,
      `If you meant your own branch, name it: git push --force-with-lease origin HEAD:refs/heads/<your-branch>. Work on a branch and open a pull request.`,
    );
  }
  return undefined;
}

function describeRef(refspec: string | undefined, target: RefTarget, primary: string): string {
  if (refspec === undefined)
    return `a branch only known when the command runs (it could be the primary branch "${primary}")`;
  if (target === "primary")
    return refspec === primary ? `the primary branch "${primary}"` : `the primary branch "${primary}" (${refspec})`;
  return `"${refspec}", which could be the primary branch "${primary}" (name the remote branch explicitly, as HEAD:refs/heads/<your-branch>)`;
}

function checkCheckout(
  subcommand: "checkout" | "switch",
  args: Word[],
  command: SimpleCommand,
  guard: Guard,
  lookup: Lookup,
): string | undefined {
  const creates = subcommand === "checkout" ? ["b", "B"] : ["c", "C"];
  const createsLong = subcommand === "checkout" ? ["orphan"] : ["create", "force-create", "orphan"];
  let detach = false;
  let paths = false;
  let track = false;
  const newBranches: (string | undefined)[] = [];
  const positionals: (string | undefined)[] = [];
  for (let k = 0; k < args.length; k++) {
    const value = wordValue(args[k], lookup);
    if (value === "--") {
      // What follows are paths: a checkout of files, not of a branch.
      paths = k + 1 < args.length;
      break;
    }
    if (value?.startsWith("-") && value !== "-") {
      if (value.startsWith("--")) {
        const [name = "", inline] = splitOnce(value.slice(2), "=");
        if (name === "detach") detach = true;
        else if (name === "track") track = true;
        else if (name === "patch" || name === "pathspec-from-file") paths = true;
        else if (createsLong.includes(name)) newBranches.push(inline ?? wordValue(args[++k], lookup));
        continue;
      }
      for (let c = 1; c < value.length; c++) {
        const letter = value[c] as string;
        if (letter === "d" && subcommand === "switch") detach = true;
        else if (letter === "t") track = true;
        else if (letter === "p" && subcommand === "checkout") paths = true;
        else if (creates.includes(letter)) {
          newBranches.push(c + 1 < value.length ? value.slice(c + 1) : wordValue(args[++k], lookup));
          break;
        }
      }
      continue;
    }
    positionals.push(value);
  }

  const advice =
    `This run works in its own worktree (${guard.worktree}) and must stay off "${guard.primary}". ` +
    `Create a branch for your work instead (git switch -c <your-branch> origin/${guard.primary}), commit there, and open a pull request; ` +
    `to read a file as it is on ${guard.primary}, use git show origin/${guard.primary}:<path>.`;
  if (newBranches.includes(guard.primary)) {
    return `${BLOCKED} \`${shown(command.text)}\` creates or resets the primary branch "${guard.primary}" and checks it out. ${advice}`;
  }
  if (newBranches.length > 0 || detach || paths) return undefined;
  // `git checkout main file.txt` restores files; only a lone branch argument moves HEAD.
  let branch = subcommand === "checkout" ? (positionals.length === 1 ? positionals[0] : undefined) : positionals[0];
  // --track without a name creates the branch named after the remote one: origin/main -> main.
  if (track && branch !== undefined) branch = branch.replace(/^(refs\/)?(remotes\/)?[^/]+\//, "");
  if (branch === guard.primary)
    return `${BLOCKED} \`${shown(command.text)}\` checks out the primary branch "${guard.primary}". ${advice}`;
  return undefined;
}

// ---------------------------------------------------------------------------------------
// rm

function checkRm(
  args: Word[],
  chdir: Word | undefined,
  command: SimpleCommand,
  state: ShellState,
  guard: Guard,
): string | undefined {
  let recursive = false;
  let force = false;
  const operands: Word[] = [];
  let options = true;
  const plain = lookupIn(state, guard, null);
  for (const word of args) {
    const value = wordValue(word, plain);
    if (options && value === "--") {
      options = false;
    } else if (options && value?.startsWith("-") && value !== "-") {
      // GNU rm takes options anywhere before `--`, and long ones abbreviated.
      if (value.startsWith("--")) {
        const name = value.slice(2);
        if (name.length > 0 && "recursive".startsWith(name)) recursive = true;
        if (name.length > 0 && "force".startsWith(name)) force = true;
      } else {
        if (/[rR]/.test(value)) recursive = true;
        if (value.includes("f")) force = true;
      }
    } else {
      operands.push(word);
    }
  }
  if (!recursive || !force) return undefined;

  const cwds = chdir === undefined ? state.cwds : unique(state.cwds.map((cwd) => resolveDir(chdir, cwd, state, guard)));
  const stay = `Stay inside the worktree ${guard.worktree}: delete only paths below it`;
  for (const operand of operands) {
    const written = shown(operand.parts.map((p) => (p.kind === "text" ? p.text : p.source)).join(""));
    for (const cwd of cwds) {
      const expansion = expand(operand, lookupIn(state, guard, cwd));
      if (!expansion.ok) {
        return (
          `${BLOCKED} \`${shown(command.text)}\` deletes recursively, but where "${written}" points cannot be checked: ${expansion.problem}. ` +
          `Write the path out (relative to the worktree, or absolute below ${guard.worktree}) so it can be checked. ${stay}.`
        );
      }
      const words = braceExpand(expansion);
      const targets = typeof words === "string" ? words : flatTargets(words, cwd);
      if (typeof targets === "string") {
        return `${BLOCKED} \`${shown(command.text)}\` deletes recursively, but where "${written}" points cannot be checked: ${targets}. ${stay}, written out so it can be checked (e.g. rm -rf ./build).`;
      }
      for (const target of targets) {
        const notes = [
          ...(target.note === undefined ? [] : [target.note]),
          ...(cwds.length > 1 && !posix.isAbsolute(expansion.text)
            ? [
                `a cd before it may have failed, so it may run in ${cwds.map((d) => d ?? "an unknown directory").join(" or ")}; join the cd to it with && so it runs only after the cd`,
              ]
            : []),
        ];
        const because = notes.length === 0 ? "" : ` (${notes.join("; ")})`;
        if (target.path === guard.worktree) {
          return `${BLOCKED} \`${shown(command.text)}\` would delete the worktree itself (${guard.worktree})${because}, which this run needs. ${stay}, naming what to delete (e.g. rm -rf ./build).`;
        }
        if (!isInside(target.path, guard.worktree)) {
          return `${BLOCKED} \`${shown(command.text)}\` deletes ${target.path} recursively${because}, which is outside this run's worktree. ${stay} (e.g. rm -rf ./build).`;
        }
      }
    }
  }
  return undefined;
}
