import type { FastifyReply } from 'fastify';

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

/** The answer to a DELETE: 200 with an empty body, as Thinger.io answers (its generated clients fail on 204). */
export const deletedSchema = { description: 'Deleted (empty body)', type: 'null' } as const;

export function sendDeleted(reply: FastifyReply): FastifyReply {
  return reply.code(200).send();
}
