// Typed errors and the sentences shown to users. Every failure the client reports is a
// VoxgateError with a protocol error code, so apps can branch on `code` instead of messages.

import type { ErrorCode } from "./types";

export interface VoxgateErrorOptions {
  /** The session is over (the gateway closes, or the client gave up reconnecting). */
  fatal?: boolean;
  /** The WebSocket close code, when the error came with a close. */
  closeCode?: number;
}

/** An error the user can act on: a protocol error code, a sentence, and whether it ended the session. */
export class VoxgateError extends Error {
  readonly code: ErrorCode;
  readonly fatal: boolean;
  readonly closeCode: number | undefined;

  constructor(code: ErrorCode, message: string, options: VoxgateErrorOptions = {}) {
    super(message);
    this.name = "VoxgateError";
    this.code = code;
    this.fatal = !!options.fatal;
    this.closeCode = options.closeCode;
  }
}

export function isVoxgateError(value: unknown): value is VoxgateError {
  return value instanceof VoxgateError;
}

/** Close codes after which reconnecting can help (server restart, network drop, crash). */
export const RETRYABLE_CLOSE_CODES: ReadonlySet<number> = new Set([1001, 1005, 1006, 1011, 1012, 1013, 1014, 1015]);
/** Fatal error codes after which reconnecting can help; every other fatal error is final. */
export const RETRYABLE_ERROR_CODES: ReadonlySet<string> = new Set(["internal", "timeout"]);

export const CLOSE_SENTENCES: Readonly<Record<number, string>> = {
  1008: "The server closed the session because it received too many invalid messages.",
  1009: "A message was too large for the server, so it closed the session.",
  4401: "The server refused the connection: sign-in is required, or the token has expired.",
  4403: "The server does not accept connections from this page's address (allowed origins).",
  4408: "The session ended after being idle for too long. Press Start to begin again.",
  4409: "The session reached its maximum length. Press Start to begin a new one.",
  4429: "The server is at its session or rate limit. Please try again in a moment.",
  4502: "The voice provider failed and the session had to end. Please try again later.",
  4503: "The voice engine is unavailable right now. Please try again later.",
};

const CLOSE_CODE_ERRORS: Readonly<Record<number, ErrorCode>> = {
  1008: "bad_request",
  1009: "payload_too_large",
  4401: "unauthorized",
  4403: "forbidden_origin",
  4408: "timeout",
  4409: "session_expired",
  4429: "session_limit",
  4502: "upstream_unavailable",
  4503: "engine_unavailable",
};

export function closeCodeToError(code: number): ErrorCode {
  return CLOSE_CODE_ERRORS[code] ?? "disconnected";
}

const DENIED =
  "Microphone access was denied, so this conversation is text-only. Allow the microphone in the browser's site settings and press Start again to talk.";

export const MIC_SENTENCES: Readonly<Record<string, string>> = {
  NotAllowedError: DENIED,
  SecurityError: DENIED,
  NotFoundError: "No microphone was found, so this conversation is text-only. Connect one and press Start again to talk.",
  NotReadableError:
    "The microphone is in use by another application or could not be opened, so this conversation is text-only.",
  OverconstrainedError: "The selected microphone is not available, so this conversation is text-only.",
  AbortError: "The microphone could not start, so this conversation is text-only.",
};
