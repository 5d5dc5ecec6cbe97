/**
 * Best-effort mapping from a field path (`steps[1].needs`, `on.issue_comment.command`,
 * `guards`) to the 1-based line of a TOML source where it is written.
 *
 * smol-toml returns plain values without positions, so this is a small scanner of its
 * own. It understands what normal formula files use: `[table]` and `[[array]]` headers,
 * dotted and quoted keys, inline tables, arrays over several lines, all four string
 * kinds (so a `[[steps]]` line inside a `"""` description is not taken for a header)
 * and comments. On anything it does not understand it skips to the next line; it never
 * throws, and a path it cannot place gets its nearest located parent instead.
 */

import { formatPath, type PathSegment } from "../validation.js";

export { formatPath, type PathSegment };

/** The inverse of {@link formatPath}; returns `undefined` for text it cannot read. */
export function parsePath(text: string): PathSegment[] | undefined {
  const path: PathSegment[] = [];
  let i = 0;
  while (i < text.length) {
    const char = text[i];
    if (char === "[") {
      const end = text.indexOf("]", i);
      const digits = end === -1 ? "" : text.slice(i + 1, end);
      if (!/^\d+$/.test(digits)) return undefined;
      path.push(Number(digits));
      i = end + 1;
    } else if (char === "." && path.length > 0) {
      i += 1;
    } else if (char === '"') {
      // A JSON-quoted key, as formatPath writes it.
      let end = i + 1;
      while (end < text.length && text[end] !== '"') end += text[end] === "\\" ? 2 : 1;
      try {
        path.push(JSON.parse(text.slice(i, end + 1)) as string);
      } catch {
        return undefined;
      }
      i = end + 1;
    } else {
      const match = /^[A-Za-z0-9_-]+/.exec(text.slice(i));
      if (match === null) return undefined;
      path.push(match[0]);
      i += match[0].length;
    }
  }
  return path;
}

/**
 * Scans `source` once and returns a lookup from field path to 1-based line, or
 * `undefined` when neither the path nor any parent of it can be found.
 */
export function createLocator(source: string): (field: string | readonly PathSegment[]) => number | undefined {
  const lines = new Map<string, number>();
  try {
    new Scanner(source, lines).scan();
  } catch {
    // Positions are a courtesy; whatever was found before the scanner gave up is kept.
  }
  return (field) => {
    const path = typeof field === "string" ? parsePath(field) : [...field];
    if (path === undefined) return undefined;
    for (let length = path.length; length > 0; length--) {
      const line = lines.get(formatPath(path.slice(0, length)));
      if (line !== undefined) return line;
    }
    return undefined;
  };
}

/** One-off form of {@link createLocator}. */
export function locateField(source: string, field: string | readonly PathSegment[]): number | undefined {
  return createLocator(source)(field);
}

class Scanner {
  #pos = 0;
  readonly #lineStarts: number[] = [0];
  /** Array-of-tables paths (formatted) -> index of their latest element. */
  readonly #arrayTables = new Map<string, number>();

  readonly #source: string;
  /** Output: formatted path -> line of its first appearance. */
  readonly #lines: Map<string, number>;

  constructor(source: string, lines: Map<string, number>) {
    this.#source = source;
    this.#lines = lines;
    for (let i = 0; i < source.length; i++) if (source[i] === "\n") this.#lineStarts.push(i + 1);
  }

  scan(): void {
    let table: PathSegment[] = [];
    while (this.#pos < this.#source.length) {
      const start = this.#pos;
      this.skipBlank(true);
      if (this.#pos >= this.#source.length) break;
      if (this.peek() === "[") {
        table = this.header() ?? table;
      } else {
        this.keyValue(table);
      }
      this.skipToLineEnd();
      if (this.#pos === start) this.#pos += 1; // always make progress
    }
  }

  /** `[a.b]` or `[[a.b]]`; returns the table path that following keys belong to. */
  private header(): PathSegment[] | undefined {
    const line = this.lineAt(this.#pos);
    const isArray = this.#source.startsWith("[[", this.#pos);
    this.#pos += isArray ? 2 : 1;
    const keys = this.key();
    if (keys === undefined) return undefined;
    const path = this.resolve(keys);
    if (isArray) {
      const name = formatPath(path);
      const index = (this.#arrayTables.get(name) ?? -1) + 1;
      this.#arrayTables.set(name, index);
      this.record(path, line);
      path.push(index);
    }
    this.record(path, line);
    return path;
  }

  /** Puts the current index after every array-of-tables prefix, as TOML resolves `[a.b]` after `[[a]]`. */
  private resolve(keys: readonly string[]): PathSegment[] {
    const path: PathSegment[] = [];
    keys.forEach((key, i) => {
      path.push(key);
      const index = i < keys.length - 1 ? this.#arrayTables.get(formatPath(path)) : undefined;
      if (index !== undefined) path.push(index);
    });
    return path;
  }

  private keyValue(base: readonly PathSegment[]): void {
    const line = this.lineAt(this.#pos);
    const keys = this.key();
    if (keys === undefined) return;
    this.skipBlank(false);
    if (this.peek() !== "=") return;
    this.#pos += 1;
    this.skipBlank(false);
    const path = [...base, ...keys];
    this.record(path, line);
    this.value(path);
  }

  /** A dotted key: bare or quoted parts separated by dots. */
  private key(): string[] | undefined {
    const parts: string[] = [];
    for (;;) {
      this.skipBlank(false);
      const char = this.peek();
      let part: string | undefined;
      if (char === '"' || char === "'") {
        part = this.string();
      } else {
        const match = /^[A-Za-z0-9_-]+/.exec(this.#source.slice(this.#pos, this.#pos + 256));
        if (match !== null) {
          part = match[0];
          this.#pos += part.length;
        }
      }
      if (part === undefined) return undefined;
      parts.push(part);
      this.skipBlank(false);
      if (this.peek() !== ".") return parts;
      this.#pos += 1;
    }
  }

  private value(path: readonly PathSegment[]): void {
    const char = this.peek();
    if (char === '"' || char === "'") {
      this.string();
    } else if (char === "[") {
      this.array(path);
    } else if (char === "{") {
      this.inlineTable(path);
    } else {
      // Numbers, booleans, dates: up to whatever ends a value.
      while (this.#pos < this.#source.length && !/[,\]}#\n]/.test(this.peek())) this.#pos += 1;
    }
  }

  private array(path: readonly PathSegment[]): void {
    this.#pos += 1; // [
    for (let index = 0; ; index++) {
      this.skipBlank(true);
      if (this.#pos >= this.#source.length) return;
      if (this.peek() === "]") {
        this.#pos += 1;
        return;
      }
      const elementPath = [...path, index];
      this.record(elementPath, this.lineAt(this.#pos));
      const before = this.#pos;
      this.value(elementPath);
      this.skipBlank(true);
      if (this.peek() === ",") {
        this.#pos += 1;
      } else if (this.peek() === "]") {
        this.#pos += 1;
        return;
      } else if (this.#pos === before) {
        return; // not TOML we understand; let the statement loop resynchronise
      }
    }
  }

  private inlineTable(path: readonly PathSegment[]): void {
    this.#pos += 1; // {
    for (;;) {
      this.skipBlank(false);
      if (this.#pos >= this.#source.length) return;
      if (this.peek() === "}") {
        this.#pos += 1;
        return;
      }
      const before = this.#pos;
      this.keyValue(path);
      this.skipBlank(false);
      if (this.peek() === ",") this.#pos += 1;
      else if (this.#pos === before || this.peek() !== "}") return;
    }
  }

  /** Any of the four TOML string kinds; returns its raw content (escapes not decoded). */
  private string(): string {
    const quote = this.peek();
    const triple = this.#source.startsWith(quote.repeat(3), this.#pos);
    const delimiter = triple ? quote.repeat(3) : quote;
    let i = this.#pos + delimiter.length;
    for (;;) {
      if (i >= this.#source.length) break;
      const char = this.#source[i];
      if (!triple && char === "\n") break; // unterminated; stop at the line end
      if (quote === '"' && char === "\\") {
        i += 2;
        continue;
      }
      if (this.#source.startsWith(delimiter, i)) {
        // A multi-line string may end with up to two extra quotes: `""""` closes after one.
        let end = i + delimiter.length;
        while (triple && this.#source[end] === quote && end - i < 5) end += 1;
        const content = this.#source.slice(this.#pos + delimiter.length, end - delimiter.length);
        this.#pos = end;
        return content;
      }
      i += 1;
    }
    const content = this.#source.slice(this.#pos + delimiter.length, i);
    this.#pos = i;
    return content;
  }

  /** Skips spaces, tabs and comments; with `newlines`, line breaks too. */
  private skipBlank(newlines: boolean): void {
    while (this.#pos < this.#source.length) {
      const char = this.peek();
      if (char === " " || char === "\t" || char === "\r" || (newlines && char === "\n")) {
        this.#pos += 1;
      } else if (char === "#") {
        while (this.#pos < this.#source.length && this.peek() !== "\n") this.#pos += 1;
      } else {
        return;
      }
    }
  }

  private skipToLineEnd(): void {
    while (this.#pos < this.#source.length && this.peek() !== "\n") this.#pos += 1;
  }

  private peek(): string {
    return this.#source[this.#pos] ?? "";
  }

  private record(path: readonly PathSegment[], line: number): void {
    const name = formatPath(path);
    if (!this.#lines.has(name)) this.#lines.set(name, line);
    // Parents of a dotted key (`on.issues.types = ...`) are defined on the same line.
    for (let length = path.length - 1; length > 0; length--) {
      const parent = formatPath(path.slice(0, length));
      if (this.#lines.has(parent)) break;
      this.#lines.set(parent, line);
    }
  }

  /** 1-based line of an offset (binary search over line starts). */
  private lineAt(offset: number): number {
    let low = 0;
    let high = this.#lineStarts.length - 1;
    while (low < high) {
      const mid = (low + high + 1) >> 1;
      if ((this.#lineStarts[mid] ?? 0) <= offset) low = mid;
      else high = mid - 1;
    }
    return low + 1;
  }
}
