import type { PsonValue } from '@iotmp/pson';
import { IotmpError } from '../errors.js';

export const SessionErrorCode = {
  /** The peer answered ERROR. */
  REQUEST_FAILED: 'IOTMP_ERR_REQUEST_FAILED',
  /** No answer within the request timeout. */
  TIMEOUT: 'IOTMP_ERR_TIMEOUT',
  /** The caller's AbortSignal fired. */
  ABORTED: 'IOTMP_ERR_ABORTED',
  /** The session closed (or was never open) while the call was pending. */
  CLOSED: 'IOTMP_ERR_CLOSED',
  /** The server refused the credentials (CONNECT answered with ERROR). */
  AUTH_FAILED: 'IOTMP_ERR_AUTH_FAILED',
  /** Too many requests in flight, or no free stream id. */
  TOO_MANY_REQUESTS: 'IOTMP_ERR_TOO_MANY_REQUESTS',
  /** Too many streams open on this connection. */
  TOO_MANY_STREAMS: 'IOTMP_ERR_TOO_MANY_STREAMS',
  /** The peer did not read: outgoing bytes went over the limit. */
  SLOW_PEER: 'IOTMP_ERR_SLOW_PEER',
  /** Nothing received for longer than the keep-alive allows. */
  KEEPALIVE_TIMEOUT: 'IOTMP_ERR_KEEPALIVE_TIMEOUT',
  /** The peer broke the protocol (message before CONNECT, unreadable stream, …). */
  PROTOCOL: 'IOTMP_ERR_PROTOCOL',
} as const;

export type SessionErrorCode = (typeof SessionErrorCode)[keyof typeof SessionErrorCode];

export class SessionError extends IotmpError {
  override name = 'SessionError';
  declare readonly code: SessionErrorCode;

  constructor(code: SessionErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}

/** The peer answered a request with ERROR. */
export class RequestError extends SessionError {
  override name = 'RequestError';
  /** PARAMETERS of the ERROR: a numeric return code (HTTP-like, e.g. 404), when the peer sent one. */
  readonly returnCode: number | undefined;
  /** PAYLOAD of the ERROR, e.g. {"error": "…"}. */
  readonly payload: PsonValue | undefined;
  readonly parameters: PsonValue | undefined;

  constructor(message: string, parameters: PsonValue | undefined, payload: PsonValue | undefined) {
    super(SessionErrorCode.REQUEST_FAILED, message);
    this.parameters = parameters;
    this.payload = payload;
    this.returnCode = typeof parameters === 'number' ? parameters : undefined;
  }
}

export class TimeoutError extends SessionError {
  override name = 'TimeoutError';
  constructor(message: string) {
    super(SessionErrorCode.TIMEOUT, message);
  }
}

export class ClosedError extends SessionError {
  override name = 'ClosedError';
  constructor(message: string, cause?: unknown) {
    super(SessionErrorCode.CLOSED, message, cause === undefined ? undefined : { cause });
  }
}

/** CONNECT was refused. `reason` is the server's error code (2 = bad credentials, spec §5.2). */
export class AuthError extends SessionError {
  override name = 'AuthError';
  readonly reason: number | undefined;
  constructor(message: string, reason: number | undefined) {
    super(SessionErrorCode.AUTH_FAILED, message);
    this.reason = reason;
  }
}
