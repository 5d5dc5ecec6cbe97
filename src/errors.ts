/**
 * Error codes the API can answer with, and the one table that maps them to HTTP statuses.
 * Route handlers throw `AppError`; `createApp`'s error handler turns it into the
 * `{"error": {"code", "message"}}` envelope.
 */
export const ERROR_STATUS = {
  bad_request: 400,
  invalid_json: 400,
  validation_failed: 400,
  unauthorized: 401,
  invalid_signature: 401,
  forbidden: 403,
  not_found: 404,
  method_not_allowed: 405,
  conflict: 409,
  payload_too_large: 413,
  unsupported_media_type: 415,
  rate_limited: 429,
  internal: 500,
  unavailable: 503,
} as const;

export type ErrorCode = keyof typeof ERROR_STATUS;

export interface AppErrorInit {
  code: ErrorCode;
  message: string;
  /** Extra fields for the client (validation problems, ids); never secrets. */
  details?: Record<string, unknown>;
  cause?: unknown;
}

/** An error with a code a client can branch on. */
export class AppError extends Error {
  readonly code: ErrorCode;
  readonly details: Record<string, unknown> | undefined;

  constructor(init: AppErrorInit) {
    super(init.message, init.cause === undefined ? undefined : { cause: init.cause });
    this.name = "AppError";
    this.code = init.code;
    this.details = init.details;
  }

  get status(): (typeof ERROR_STATUS)[ErrorCode] {
    return ERROR_STATUS[this.code];
  }
}

/** Message of any thrown value, for logs and records. */
export function errorMessage(error: unknown): string {
  if (error instanceof Error) return error.message;
  return String(error);
}
