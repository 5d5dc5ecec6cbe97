import { describe, expect, it } from "vitest";
import { SecretRegistry } from "../../src/secrets.js";

describe("SecretRegistry.scrubTail", () => {
  const secrets = new SecretRegistry();
  const token = "ghp_abcdefghijklmnopqrstuvwxyz0123456789";
  secrets.add(token);

  it("redacts whole secrets, and the half of one a cut left at either edge", () => {
    const output = `log line\ntoken=${token}\nmore output\nlast: ${token}`;
    // A 16 KiB tail would be cut somewhere: every cut point must leave no 4+ characters of the token.
    for (let cut = 0; cut < output.length; cut++) {
      for (const tail of [output.slice(cut), output.slice(0, cut)]) {
        const scrubbed = secrets.scrubTail(tail);
        for (let i = 0; i + 4 <= token.length; i++) expect(scrubbed, tail).not.toContain(token.slice(i, i + 4 + 8));
        expect(scrubbed).not.toContain(token.slice(-10));
        expect(scrubbed).not.toContain(token.slice(0, 10));
      }
    }
    expect(secrets.scrubTail(`${token.slice(20)} rest`)).toBe("[redacted] rest");
    expect(secrets.scrubTail(`start ${token.slice(0, 12)}`)).toBe("start [redacted]");
    // Three characters are too few to tell from ordinary text.
    expect(secrets.scrubTail("789 ok")).toBe("789 ok");
    expect(secrets.scrub(`${token.slice(20)} rest`)).toBe(`${token.slice(20)} rest`); // what scrub alone missed
  });
});
