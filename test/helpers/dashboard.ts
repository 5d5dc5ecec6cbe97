import { type IncomingMessage, request } from "node:http";

/**
 * A tiny browser for the dashboard's route tests: a cookie jar, forms posted as
 * application/x-www-form-urlencoded, redirects not followed (the tests look at them).
 * `localAddress` (127.0.0.2, ...) makes it another client address to the server.
 */
export class DashboardClient {
  readonly cookies = new Map<string, string>();
  /** The `_csrf` value of the last page fetched that had one. */
  csrf: string | undefined;

  constructor(
    readonly baseUrl: string,
    readonly localAddress?: string,
  ) {}

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

  async #send(path: string, init: { method: string; headers: Record<string, string>; body?: string }): Promise<Page> {
    const cookie = [...this.cookies].map(([k, v]) => `${k}=${v}`).join("; ");
    const headers = { ...init.headers, ...(cookie ? { cookie } : {}) };
    const answer = await new Promise<IncomingMessage>((resolve, reject) => {
      const req = request(
        new URL(path, this.baseUrl),
        { method: init.method, headers, localAddress: this.localAddress },
        resolve,
      );
      req.on("error", reject);
      req.end(init.body);
    });
    const chunks: Buffer[] = [];
    for await (const chunk of answer) chunks.push(chunk as Buffer);
    const res = { status: answer.statusCode ?? 0, headers: new Headers() };
    for (let i = 0; i < answer.rawHeaders.length; i += 2)
      res.headers.append(answer.rawHeaders[i] as string, answer.rawHeaders[i + 1] as string);
    const setCookies = res.headers.getSetCookie();
    for (const line of setCookies) {
      const [pair = ""] = line.split(";");
      const eq = pair.indexOf("=");
      const name = pair.slice(0, eq).trim();
      const value = pair.slice(eq + 1).trim();
      if (value === "" || /max-age=0/i.test(line)) this.cookies.delete(name);
      else this.cookies.set(name, value);
    }
    const text = Buffer.concat(chunks).toString("utf8");
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
