import type { IncomingMessage } from "node:http";

/**
 * An answer given before the request's body arrived in full (a 413 over the size limit,
 * a 401 before a body was read, a 503 while starting) says `Connection: close`, and Node
 * closes the connection after it. Left as keep-alive, @hono/node-server drained the rest
 * for at most 500 ms or 64 MiB and then cut the socket anyway: the client was told it may
 * reuse a connection that was about to go, and its next request on it failed. Answers to
 * requests whose body was received in full keep the connection.
 */
export function closeIfBodyUnread(response: Response, env: unknown): Response {
  const incoming = (env as { incoming?: IncomingMessage } | undefined)?.incoming;
  if (!incoming || incoming.complete) return response;
  const headers = new Headers(response.headers);
  headers.set("connection", "close");
  return new Response(response.body, { status: response.status, statusText: response.statusText, headers });
}
