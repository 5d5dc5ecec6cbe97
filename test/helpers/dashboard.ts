/**
 * A tiny browser for the dashboard's route tests: a cookie jar, forms posted as
 * application/x-www-form-urlencoded, redirects not followed (the tests look at them).
 */
export class DashboardClient {
  readonly cookies = new Map<string, string>();
  /** The `_csrf` value of the last page fetched that had one. */
  csrf: string | undefined;

  constructor(readonly baseUrl: string) {}

  async get(path: string, headers: Record<string, string> = {}): Promise<Page> {
    return this.#send(path, { method: "GET", headers });
  }

  /** Posts a form; the CSRF token of the last page is added unless `_csrf` is given (null leaves it out). */
  async post(path: string, fields: Record<string, string | null> = {}, headers: Record<string, string> = {}) {
    const body = new URLSearchParams();
    const withCsrf = { _csrf: this.csrf ?? "", ...fields };
    for (const [key, value] of Object.entries(withCsrf)) if (value !== null) body.set(key, value);
    return this.#send(path, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded", ...headers },
      body: body.toString(),
    });
  }

  /** Signs in with `token` (GET /login for the form's CSRF token, then POST /login). */
  async signIn(token: string, next = "/"): Promise<Page> {
    await this.get(`/login?next=${encodeURIComponent(next)}`);
    return this.post("/login", { token, next });
  }

  async #send(path: string, init: RequestInit): Promise<Page> {
    const cookie = [...this.cookies].map(([k, v]) => `${k}=${v}`).join("; ");
    const res = await fetch(new URL(path, this.baseUrl), {
      ...init,
      redirect: "manual",
      headers: { ...(init.headers as Record<string, string>), ...(cookie ? { cookie } : {}) },
    });
    const setCookies = res.headers.getSetCookie();
    for (const line of setCookies) {
      const [pair = ""] = line.split(";");
      const eq = pair.indexOf("=");
      const name = pair.slice(0, eq).trim();
      const value = pair.slice(eq + 1).trim();
      if (value === "" || /max-age=0/i.test(line)) this.cookies.delete(name);
      else this.cookies.set(name, value);
    }
    const text = await res.text();
    const csrf = /name="_csrf" value="([^"]+)"/.exec(text)?.[1];
    if (csrf) this.csrf = csrf;
    return { status: res.status, headers: res.headers, text, location: res.headers.get("location"), setCookies };
  }
}

export interface Page {
  status: number;
  headers: Headers;
  text: string;
  location: string | null;
  setCookies: string[];
}
