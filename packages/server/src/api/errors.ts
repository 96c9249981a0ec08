/** An API error: HTTP status, a stable machine-readable code, and a message saying what to do. */
export class HttpError extends Error {
  override name = 'HttpError';
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export const errorSchema = {
  type: 'object',
  properties: {
    error: {
      type: 'object',
      properties: { message: { type: 'string' }, code: { type: 'string' } },
      required: ['message', 'code'],
    },
  },
  required: ['error'],
} as const;

export function errorBody(code: string, message: string): { error: { message: string; code: string } } {
  return { error: { message, code } };
}
