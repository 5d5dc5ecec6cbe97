import { describe, expect, it } from "vitest";
import { paint, paintStatus, table, useColor, visibleLength, withColor } from "../../src/cli/format.js";

describe("CLI colours", () => {
  it("only on a terminal, and never with NO_COLOR set to something", () => {
    expect(useColor({ isTTY: true }, {})).toBe(true);
    expect(useColor({ isTTY: false }, {})).toBe(false);
    expect(useColor({}, {})).toBe(false);
    expect(useColor({ isTTY: true }, { NO_COLOR: "1" })).toBe(false);
    expect(useColor({ isTTY: true }, { NO_COLOR: "0" })).toBe(false);
    // no-color.org: an empty NO_COLOR does not count.
    expect(useColor({ isTTY: true }, { NO_COLOR: "" })).toBe(true);
  });

  it("paints only an output that takes colours; withColor decides once per stream", () => {
    const written: string[] = [];
    const tty = withColor({ write: (t) => written.push(t), isTTY: true }, {});
    const piped = withColor({ write: (t) => written.push(t) }, {});
    const noColor = withColor({ write: (t) => written.push(t), isTTY: true }, { NO_COLOR: "1" });
    expect(paint(tty, "red", "failed")).toBe("\x1b[31mfailed\x1b[39m");
    expect(paint(piped, "red", "failed")).toBe("failed");
    expect(paint(noColor, "red", "failed")).toBe("failed");
    expect(paintStatus(tty, "done")).toBe("\x1b[32mdone\x1b[39m");
    expect(paintStatus(tty, "crashed", "crashed after 3s")).toBe("\x1b[31mcrashed after 3s\x1b[39m");
    expect(paintStatus(tty, "FAIL")).toBe("\x1b[31mFAIL\x1b[39m");
    expect(paintStatus(tty, "something-else")).toBe("something-else");
    tty.write("x");
    expect(written).toEqual(["x"]);
  });

  it("tables line up by what shows: colour codes take no room", () => {
    const tty = { color: true };
    expect(visibleLength(paint(tty, "green", "done"))).toBe(4);
    const coloured = table(
      ["ID", "STATUS", "FORMULA"],
      [
        ["1", paintStatus(tty, "done"), "dev"],
        ["22", paintStatus(tty, "timed_out"), "review"],
      ],
    );
    const plain = table(
      ["ID", "STATUS", "FORMULA"],
      [
        ["1", "done", "dev"],
        ["22", "timed_out", "review"],
      ],
    );
    expect(coloured.replaceAll("\x1b[32m", "").replaceAll("\x1b[31m", "").replaceAll("\x1b[39m", "")).toBe(plain);
    expect(plain).toBe("ID  STATUS     FORMULA\n1   done       dev\n22  timed_out  review");
  });
});
