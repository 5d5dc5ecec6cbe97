import { describe, expect, it } from "vitest";
import { silentLogger } from "../../src/logger.js";
import { retryWhileUnavailable } from "../../src/runs/retry-database.js";

const cut = () => Object.assign(new Error("write CONNECTION_CLOSED"), { code: "CONNECTION_CLOSED" });

describe("retryWhileUnavailable", () => {
  it("retries while the database is out of reach and returns what the write returned", async () => {
    let calls = 0;
    const result = await retryWhileUnavailable(
      async () => {
        calls++;
        if (calls < 4) throw new Error("Failed query: update sessions ...", { cause: cut() });
        return "recorded";
      },
      { log: silentLogger(), what: "record the end of session 1", firstDelayMs: 1 },
    );
    expect(result).toBe("recorded");
    expect(calls).toBe(4);
  });

  it("throws a failure that is not about reaching the database at once", async () => {
    let calls = 0;
    const bad = Object.assign(new Error("value too long"), { code: "22001" });
    await expect(
      retryWhileUnavailable(
        async () => {
          calls++;
          throw bad;
        },
        { log: silentLogger(), what: "x", firstDelayMs: 1 },
      ),
    ).rejects.toBe(bad);
    expect(calls).toBe(1);
  });

  it("gives up after giveUpAfterMs with the last error", async () => {
    await expect(
      retryWhileUnavailable(
        async () => {
          throw cut();
        },
        { log: silentLogger(), what: "x", firstDelayMs: 1, maxDelayMs: 2, giveUpAfterMs: 30 },
      ),
    ).rejects.toMatchObject({ code: "CONNECTION_CLOSED" });
  });
});
