import { createHash, createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import type { Context } from "hono";
import { deleteCookie, getCookie, setCookie } from "hono/cookie";
import type { Secret } from "../../src/secrets.js";

/** The signed-in browser's cookie: `payload.signature`, both base64url. */
export const SESSION_COOKIE = "fr_session";
/** A nonce for the sign-in form's CSRF token, set by GET /login (there is no session yet). */
export const LOGIN_COOKIE = "fr_login";
/** Name of the hidden field every dashboard form carries. */
export const CSRF_FIELD = "_csrf";

const SESSION_TTL_S = 12 * 60 * 60;
const LOGIN_TTL_S = 60 * 60;

const b64 = (buffer: Buffer) => buffer.toString("base64url");
const digest = (text: string) => createHash("sha256").update(text).digest();

function same(a: string, b: string): boolean {
  const left = digest(a);
  const right = digest(b);
  return timingSafeEqual(left, right);
}

/** What a valid session cookie says. */
export interface DashboardSession {
  /** Random per sign-in; the CSRF token is derived from it. */
  sid: string;
  /** Expiry, seconds since the epoch. */
  exp: number;
}

/**
 * Sign-in sessions for the dashboard, kept in the browser as an HMAC-signed cookie: no
 * server state, valid on every instance. The key is derived from the API token, so a new
 * token signs every browser out; the token itself never leaves the server.
 */
export class SessionKeeper {
  readonly #key: Buffer;
  readonly #token: Buffer;
  readonly #now: () => number;

  constructor(apiToken: Secret, now: () => number = () => Date.now()) {
    this.#key = createHmac("sha256", apiToken.reveal()).update("formula-runner dashboard session v1").digest();
    this.#token = digest(apiToken.reveal());
    this.#now = now;
  }

  /** Whether `guess` is the API token (hashed first: constant time whatever its length). */
  tokenMatches(guess: string): boolean {
    return timingSafeEqual(digest(guess), this.#token);
  }

  #sign(text: string): string {
    return b64(createHmac("sha256", this.#key).update(text).digest());
  }

  /** Starts a session: sets the cookie and returns it. */
  start(c: Context): DashboardSession {
    const session = { sid: b64(randomBytes(18)), exp: Math.floor(this.#now() / 1000) + SESSION_TTL_S };
    const payload = b64(Buffer.from(JSON.stringify(session)));
    setCookie(c, SESSION_COOKIE, `${payload}.${this.#sign(`session:${payload}`)}`, {
      ...cookieBase(c),
      maxAge: SESSION_TTL_S,
    });
    deleteCookie(c, LOGIN_COOKIE, { path: "/login" });
    return session;
  }

  end(c: Context): void {
    deleteCookie(c, SESSION_COOKIE, { path: "/", secure: isTls(c) });
  }

  /** The request's session, or undefined when it has none, a forged one or an expired one. */
  read(c: Context): DashboardSession | undefined {
    const cookie = getCookie(c, SESSION_COOKIE);
    if (!cookie) return undefined;
    const [payload, signature, extra] = cookie.split(".");
    if (!payload || !signature || extra !== undefined) return undefined;
    if (!same(signature, this.#sign(`session:${payload}`))) return undefined;
    try {
      const session = JSON.parse(Buffer.from(payload, "base64url").toString("utf8")) as DashboardSession;
      if (typeof session.sid !== "string" || typeof session.exp !== "number") return undefined;
      if (session.exp * 1000 <= this.#now()) return undefined;
      return session;
    } catch {
      return undefined;
    }
  }

  /** The CSRF token for a session's forms. */
  csrfFor(session: DashboardSession): string {
    return this.#sign(`csrf:${session.sid}`);
  }

  csrfValid(session: DashboardSession, token: unknown): boolean {
    return typeof token === "string" && same(token, this.csrfFor(session));
  }

  /** The sign-in form's CSRF token: a fresh nonce in a cookie, its signature in the form. */
  loginCsrf(c: Context): string {
    const nonce = b64(randomBytes(18));
    setCookie(c, LOGIN_COOKIE, nonce, { ...cookieBase(c), path: "/login", maxAge: LOGIN_TTL_S });
    return this.#sign(`login:${nonce}`);
  }

  loginCsrfValid(c: Context, token: unknown): boolean {
    const nonce = getCookie(c, LOGIN_COOKIE);
    return typeof token === "string" && nonce !== undefined && same(token, this.#sign(`login:${nonce}`));
  }
}

/** Behind TLS (directly, or a proxy that says so) the cookies are Secure. */
export function isTls(c: Context): boolean {
  return new URL(c.req.url).protocol === "https:" || c.req.header("x-forwarded-proto")?.split(",")[0] === "https";
}

function cookieBase(c: Context) {
  return { path: "/", httpOnly: true, sameSite: "Strict", secure: isTls(c) } as const;
}
