/**
 * Errors caused by what the user gave us (a file, a flag, a request field).
 * The CLI prints these as one line without a stack trace; the server maps them to
 * OpenAI-style error objects. Anything else is a bug and keeps its stack.
 */
export class UserError extends Error {
  override name = 'UserError';
  constructor(
    message: string,
    /** Which file, tensor or field the error is about, when there is one. */
    readonly where?: string,
  ) {
    super(where ? `${where}: ${message}` : message);
  }
}

export function isUserError(e: unknown): e is UserError {
  return e instanceof UserError;
}
