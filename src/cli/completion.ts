/**
 * `formula-runner completion bash|zsh`: a completion script generated from the CLI's own
 * command table (commander), so a new verb or option completes without editing a script.
 * The script is static: completing never starts Node.
 */
// biome-ignore-all lint/suspicious/noTemplateCurlyInString: the scripts are shell code, ${...} is for the shell
import type { Command, Option } from "commander";

export const COMPLETION_SHELLS = ["bash", "zsh"] as const;
export type CompletionShell = (typeof COMPLETION_SHELLS)[number];

/** One command path (`runs list`) with what may follow it. */
interface Entry {
  /** The words after `formula-runner`, space-joined; "" for the top level. */
  path: string;
  /** Subcommand names, when it has subcommands. */
  subcommands: string[];
  /** Long and short flags. */
  flags: string[];
  /** Flags that take a value, with their choices (empty: any value). */
  values: { flags: string[]; choices: string[] }[];
  /** Fixed choices of the first argument (`completion bash|zsh`), when known. */
  argChoices: string[];
}

/** Every command path of `program`, depth first. */
export function commandTable(program: Command): Entry[] {
  const entries: Entry[] = [];
  const visit = (command: Command, words: string[]) => {
    const options: readonly Option[] = command.options;
    const flags = options.flatMap((o) => [o.long, o.short].filter((f): f is string => f !== undefined));
    if (words.length === 0) flags.push("--help", "--version");
    else flags.push("--help");
    // commander answers `help [command]` itself at the top level; it is no entry of the table.
    const subcommands = [...command.commands.map((c) => c.name()), ...(words.length === 0 ? ["help"] : [])];
    const argChoices = (command.registeredArguments[0]?.argChoices ?? []).slice();
    entries.push({
      path: words.join(" "),
      subcommands,
      flags: [...new Set(flags)],
      values: options
        .filter((o) => o.required || o.optional)
        .map((o) => ({
          flags: [o.long, o.short].filter((f): f is string => f !== undefined),
          choices: (o.argChoices ?? []).slice(),
        })),
      argChoices,
    });
    for (const sub of command.commands) visit(sub, [...words, sub.name()]);
  };
  visit(program, []);
  return entries;
}

/** The script for `shell`. */
export function completionScript(program: Command, shell: CompletionShell): string {
  return shell === "bash"
    ? bashScript(program.name(), commandTable(program))
    : zshScript(program.name(), commandTable(program));
}

/** Words go into the scripts bare: only names and flags as the table spells them. */
function word(text: string): string {
  if (!/^[\w.:-]+$/.test(text))
    throw new Error(`completion: ${JSON.stringify(text)} cannot be completed as a bare word`);
  return text;
}
const words = (list: readonly string[]) => list.map(word).join(" ");
/** A case pattern matching exactly `text` (a command path may hold spaces). */
const pattern = (text: string) => `'${text}'`;
const fnName = (name: string) => `_${name.replaceAll(/[^A-Za-z0-9]/g, "_")}`;

/**
 * The part both shells share: it walks the words typed so far (`__words` from index
 * `first` up to the cursor's `__cword`) to the command path they name, then answers
 * with the choices of the option before the cursor, or the path's flags or subcommands.
 */
function body(entries: readonly Entry[], first: number, reply: (list: string) => string): string {
  const valueCases = entries.flatMap((e) =>
    e.values.map(
      (v) =>
        `    ${v.flags.map((f) => `${pattern(e.path)}:${word(f)}`).join("|")}) ${
          v.choices.length > 0 ? `${reply(words(v.choices))}; return 0` : "return 0"
        } ;;`,
    ),
  );
  const pathCases = entries.map((e) => {
    const next = [...e.subcommands, ...e.argChoices];
    return `    ${pattern(e.path)}) if [[ $__cur == -* ]]; then ${reply(words(e.flags))}; else ${reply(words(next))}; fi ;;`;
  });
  const descend = entries
    .filter((e) => e.subcommands.length > 0)
    .map(
      (e) =>
        `      ${pattern(e.path)}) case $__w in ${e.subcommands.map(word).join("|")}) __path=${
          e.path === "" ? "$__w" : '"$__path $__w"'
        } ;; esac ;;`,
    );
  return [
    "  local __path='' __w __i",
    `  for (( __i = ${first}; __i < __cword; __i++ )); do`,
    "    __w=${__words[__i]}",
    "    [[ $__w == -* ]] && continue",
    "    case $__path in",
    ...descend,
    "    esac",
    "  done",
    '  case "$__path:$__prev" in',
    ...valueCases,
    "  esac",
    "  case $__path in",
    ...pathCases,
    "  esac",
  ].join("\n");
}

function bashScript(name: string, entries: readonly Entry[]): string {
  const fn = fnName(name);
  return [
    `# bash completion for ${name}; load it with: source <(${name} completion bash)`,
    `${fn}() {`,
    "  local __cur=${COMP_WORDS[COMP_CWORD]} __prev=${COMP_WORDS[COMP_CWORD-1]} __cword=$COMP_CWORD",
    '  local -a __words=("${COMP_WORDS[@]}")',
    "  COMPREPLY=()",
    body(entries, 1, (list) => `COMPREPLY=($(compgen -W "${list}" -- "$__cur"))`),
    "}",
    `complete -o default -F ${fn} ${name}`,
    "",
  ].join("\n");
}

function zshScript(name: string, entries: readonly Entry[]): string {
  const fn = fnName(name);
  return [
    `#compdef ${name}`,
    `# zsh completion for ${name}; load it with: source <(${name} completion zsh)`,
    `${fn}() {`,
    // zsh arrays start at 1: words[1] is the command, words[CURRENT] the word being completed.
    "  local __cur=${words[CURRENT]} __prev=${words[CURRENT-1]} __cword=$CURRENT",
    '  local -a __words=("${(@)words}")',
    body(entries, 2, (list) => `compadd -- ${list}`),
    "}",
    `if (( $+functions[compdef] )); then compdef ${fn} ${name}; else autoload -Uz compinit && compinit && compdef ${fn} ${name}; fi`,
    "",
  ].join("\n");
}
