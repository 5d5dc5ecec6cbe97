import { describe, expect, it } from "vitest";
import { MAX_FAILED_SIGN_INS, SIGN_IN_WINDOW_MS, SignInLimit } from "../../routes/dashboard/sign-in-limit.js";

describe("SignInLimit", () => {
  const clock = () => {
    let now = 1_000_000;
    return { now: () => now, advance: (ms: number) => (now += ms) };
  };

  it("refuses an address after its tenth wrong token until the window has passed", () => {
    const time = clock();
    const limit = new SignInLimit(time.now);
    for (let i = 1; i < MAX_FAILED_SIGN_INS; i++) {
      limit.failed("10.0.0.1");
      expect(limit.retryAfterS("10.0.0.1"), `after ${i}`).toBeUndefined();
    }
    limit.failed("10.0.0.1");
    expect(limit.retryAfterS("10.0.0.1")).toBe(SIGN_IN_WINDOW_MS / 1000);
    // Another address is not affected.
    expect(limit.retryAfterS("10.0.0.2")).toBeUndefined();
    time.advance(SIGN_IN_WINDOW_MS - 61_000);
    expect(limit.retryAfterS("10.0.0.1")).toBe(61);
    time.advance(61_000);
    expect(limit.retryAfterS("10.0.0.1")).toBeUndefined();
    // A fresh window: one wrong token is one again.
    limit.failed("10.0.0.1");
    expect(limit.retryAfterS("10.0.0.1")).toBeUndefined();
  });

  it("forgets an address's wrong tokens when it signs in", () => {
    const limit = new SignInLimit(clock().now);
    for (let i = 1; i < MAX_FAILED_SIGN_INS; i++) limit.failed("10.0.0.1");
    limit.succeeded("10.0.0.1");
    limit.failed("10.0.0.1");
    expect(limit.retryAfterS("10.0.0.1")).toBeUndefined();
  });

  it("keeps a bounded number of addresses, forgetting the oldest first", () => {
    const limit = new SignInLimit(clock().now);
    for (let i = 0; i < MAX_FAILED_SIGN_INS; i++) limit.failed("first");
    expect(limit.retryAfterS("first")).toBeDefined();
    for (let i = 0; i < 10_000; i++) limit.failed(`addr-${i}`);
    expect(limit.retryAfterS("first")).toBeUndefined();
  });
});
