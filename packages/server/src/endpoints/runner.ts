/**
 * Runs endpoints: a user's stored HTTP request, its templates filled with the caller's data
 * (from the REST API or a device's CALL_ENDPOINT), sent with undici.
 *
 * Limits, all from the server configuration: per user, calls in progress at once and a token
 * bucket of calls per second; per call, a total time (connection to last response byte) and
 * a largest response body. Addresses are checked after DNS resolution, on the address the
 * socket connects to (address-guard.ts). Redirects are not followed: a 3xx answer is returned
 * like any other.
 */
import { isIP } from 'node:net';
import { Agent, request } from 'undici';
import type { EndpointRecord, EndpointStore } from '../storage/endpoints.js';
import { AddressRefusedError, checkAddress, guardedLookup } from './address-guard.js';
import {
  MAX_DATA_DEPTH,
  renderJson,
  renderText,
  renderUrl,
  TemplateError,
  toTemplateData,
} from './template.js';

export type EndpointErrorCode =
  | 'endpoint_not_found'
  | 'endpoint_disabled'
  | 'address_refused'
  | 'endpoint_timeout'
  | 'endpoint_unreachable'
  | 'rate_limited'
  | 'too_many_calls'
  | 'response_too_large'
  | 'request_too_large'
  | 'invalid_url'
  | 'invalid_data'
  | 'server_closing';

/** Why an endpoint call did not complete; `status` is the HTTP status the API answers with. */
export class EndpointError extends Error {
  override name = 'EndpointError';
  constructor(
    readonly code: EndpointErrorCode,
    message: string,
    readonly status: number,
    /** For 429: when a call may succeed again (s). */
    readonly retryAfterSeconds?: number,
  ) {
    super(message);
  }
}

/** A completed call: any upstream status, 5xx included. */
export interface EndpointResponse {
  status: number;
  headers: Record<string, string | string[]>;
  /** Parsed JSON when the response says it is JSON (and parses), else the text (UTF-8). */
  body: unknown;
}

export interface EndpointRunnerOptions {
  store: EndpointStore;
  /** Connect to private, loopback, link-local, … addresses too. */
  allowPrivate: boolean;
  timeoutMs: number;
  maxResponseBytes: number;
  /** Calls in progress at once per user; 0 = no limit. */
  maxConcurrent: number;
  /** Sustained calls per second per user; 0 = no limit. */
  ratePerSecond: number;
  /** Token bucket size per user. */
  rateBurst: number;
  /** Told of each call's outcome ("completed" or an error code) and duration. */
  onOutcome?: (outcome: string, seconds: number) => void;
  /** Clock for the rate limit (ms). */
  now?: () => number;
  /** DNS resolver (tests). */
  resolver?: Parameters<typeof guardedLookup>[1];
}

const MAX_URL_LENGTH = 8192;
const MAX_HEADER_VALUE_LENGTH = 8192;
const MAX_REQUEST_BODY_LENGTH = 1024 * 1024;
/** Header value characters HTTP allows (tab, visible ASCII, obs-text). */
const HEADER_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/;
const JSON_TYPE = /^\s*application\/(?:[\w.+-]+\+)?json\s*(?:;|$)/i;
const METHODS_WITH_DATA_BODY = new Set(['POST', 'PUT', 'PATCH']);

interface UserBucket {
  tokens: number;
  at: number;
  inFlight: number;
}

/** Per-user limits: calls in progress, and a token bucket of calls per second. */
export class CallLimiter {
  private readonly users = new Map<string, UserBucket>();
  private readonly burst: number;

  constructor(
    private readonly maxConcurrent: number,
    private readonly ratePerSecond: number,
    burst: number,
    private readonly now: () => number = Date.now,
  ) {
    this.burst = Math.max(1, burst); // a bucket must hold at least one call
  }

  /** Takes a slot and a token, or throws a 429 EndpointError; call the returned function when done. */
  acquire(user: string): () => void {
    const now = this.now();
    let bucket = this.users.get(user);
    if (!bucket) {
      if (this.users.size >= 10_000) this.sweep(now);
      bucket = { tokens: this.burst, at: now, inFlight: 0 };
      this.users.set(user, bucket);
    }
    this.refill(bucket, now);
    if (this.maxConcurrent > 0 && bucket.inFlight >= this.maxConcurrent)
      throw new EndpointError(
        'too_many_calls',
        `${this.maxConcurrent} endpoint calls of this user are in progress already; wait for one to finish`,
        429,
        1,
      );
    if (this.ratePerSecond > 0) {
      if (bucket.tokens < 1) {
        const wait = Math.ceil((1 - bucket.tokens) / this.ratePerSecond);
        throw new EndpointError(
          'rate_limited',
          `too many endpoint calls: at most ${this.ratePerSecond} per second (bursts of ${this.burst}) per user`,
          429,
          Math.max(1, wait),
        );
      }
      bucket.tokens -= 1;
    }
    bucket.inFlight++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      bucket.inFlight--;
    };
  }

  private refill(bucket: UserBucket, now: number): void {
    if (this.ratePerSecond <= 0) return;
    const elapsed = Math.max(0, now - bucket.at);
    bucket.tokens = Math.min(this.burst, bucket.tokens + (elapsed / 1000) * this.ratePerSecond);
    bucket.at = now;
  }

  /** Forgets idle users whose bucket is full again (the same as a new bucket). */
  private sweep(now: number): void {
    for (const [user, bucket] of this.users) {
      this.refill(bucket, now);
      if (bucket.inFlight === 0 && (this.ratePerSecond <= 0 || bucket.tokens >= this.burst))
        this.users.delete(user);
    }
  }

  /** Users tracked (tests). */
  get size(): number {
    return this.users.size;
  }
}

interface PreparedRequest {
  url: URL;
  method: string;
  headers: Record<string, string>;
  body: string | undefined;
}

function templateFailure(err: unknown): never {
  if (err instanceof TemplateError) {
    if (err.code === 'too_large') throw new EndpointError('request_too_large', err.message, 413);
    throw new EndpointError('invalid_data', err.message, 400);
  }
  throw err;
}

/** Fills an endpoint's templates from the data; throws EndpointError (4xx) on bad data or a bad URL. */
export function prepareRequest(record: EndpointRecord, data: unknown): PreparedRequest {
  const { profile } = record;
  try {
    const urlText = renderUrl(profile.url, data, { maxLength: MAX_URL_LENGTH, what: 'URL' });
    let url: URL;
    try {
      url = new URL(urlText);
    } catch {
      throw new EndpointError(
        'invalid_url',
        `the endpoint URL is not a valid URL once filled: ${urlText.slice(0, 200)}`,
        400,
      );
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:')
      throw new EndpointError(
        'invalid_url',
        `only http: and https: URLs can be called, not ${url.protocol}`,
        400,
      );
    if (url.username !== '' || url.password !== '')
      throw new EndpointError(
        'invalid_url',
        'the URL may not hold credentials: send an Authorization header',
        400,
      );
    const headers: Record<string, string> = {};
    for (const [name, template] of Object.entries(profile.headers ?? {})) {
      const value = renderText(template, data, {
        maxLength: MAX_HEADER_VALUE_LENGTH,
        what: `header ${name}`,
      });
      if (!HEADER_VALUE.test(value))
        throw new EndpointError(
          'invalid_data',
          `header ${name}: the filled value has characters HTTP headers cannot carry (control characters or beyond Latin-1)`,
          400,
        );
      headers[name.toLowerCase()] = value;
    }
    let body: string | undefined;
    let contentType: string | undefined;
    if (profile.body === undefined) {
      if (METHODS_WITH_DATA_BODY.has(profile.method) && data !== null && data !== undefined) {
        body = renderJson('{{payload}}', data, { maxLength: MAX_REQUEST_BODY_LENGTH, what: 'body' });
        contentType = 'application/json';
      }
    } else if (typeof profile.body === 'string') {
      body = renderText(profile.body, data, { maxLength: MAX_REQUEST_BODY_LENGTH, what: 'body' });
      contentType = 'text/plain; charset=utf-8';
    } else {
      body = renderJson(profile.body, data, { maxLength: MAX_REQUEST_BODY_LENGTH, what: 'body' });
      contentType = 'application/json';
    }
    if (body !== undefined && contentType !== undefined && headers['content-type'] === undefined)
      headers['content-type'] = contentType;
    return { url, method: profile.method, headers, body };
  } catch (err) {
    return templateFailure(err);
  }
}

/** Whether a parsed JSON value nests deeper than `max` (checked without recursion). */
function nestsDeeperThan(value: unknown, max: number): boolean {
  const stack: Array<[unknown, number]> = [[value, 0]];
  while (stack.length > 0) {
    const [v, depth] = stack.pop() as [unknown, number];
    if (v === null || typeof v !== 'object') continue;
    if (depth >= max) return true;
    for (const item of Object.values(v)) stack.push([item, depth + 1]);
  }
  return false;
}

function findCause<T>(err: unknown, match: (e: unknown) => e is T): T | undefined {
  let current: unknown = err;
  for (let i = 0; i < 5 && current; i++) {
    if (match(current)) return current;
    current = (current as { cause?: unknown }).cause;
  }
  return undefined;
}

const TIMEOUT = Symbol('endpoint timeout');

/** Runs users' endpoints; one undici Agent (connection pool) for all of them. */
export class EndpointRunner {
  private readonly agent: Agent;
  private readonly limiter: CallLimiter;
  private readonly inFlight = new Set<AbortController>();
  private closed = false;
  /** The endpoint definitions (also used by the REST routes). */
  readonly store: EndpointStore;

  constructor(private readonly options: EndpointRunnerOptions) {
    this.store = options.store;
    this.limiter = new CallLimiter(
      options.maxConcurrent,
      options.ratePerSecond,
      options.rateBurst,
      options.now ?? Date.now,
    );
    this.agent = new Agent({
      connect: {
        timeout: options.timeoutMs,
        lookup: guardedLookup(options.allowPrivate, options.resolver),
      },
      headersTimeout: options.timeoutMs,
      bodyTimeout: options.timeoutMs,
      // Idle connections to third-party services are not kept long.
      keepAliveTimeout: 4_000,
      keepAliveMaxTimeout: 30_000,
      connections: 64,
    });
  }

  /** Runs the user's endpoint with `data` filling its template. */
  async call(username: string, endpoint: string, data: unknown): Promise<{ status: number; body: unknown }> {
    const { status, body } = await this.run(username, endpoint, data);
    return { status, body };
  }

  /** As `call`, with the response headers (for the REST API). */
  async run(username: string, endpoint: string, data: unknown): Promise<EndpointResponse> {
    const started = performance.now();
    let outcome = 'completed';
    try {
      if (this.closed) throw new EndpointError('server_closing', 'the server is shutting down', 503);
      const record = this.options.store.get(username, endpoint);
      if (!record) throw new EndpointError('endpoint_not_found', `endpoint ${endpoint} does not exist`, 404);
      if (!record.enabled)
        throw new EndpointError('endpoint_disabled', `endpoint ${endpoint} is disabled`, 409);
      const release = this.limiter.acquire(username);
      try {
        let filled: unknown;
        try {
          filled = toTemplateData(data);
        } catch (err) {
          templateFailure(err);
        }
        const prepared = prepareRequest(record, filled);
        // IP literals are not looked up, so the socket's lookup never sees them: check here.
        const host = prepared.url.hostname.replace(/^\[(.*)\]$/, '$1');
        if (isIP(host) !== 0) this.checkLiteral(host);
        return await this.send(prepared);
      } finally {
        release();
      }
    } catch (err) {
      outcome = err instanceof EndpointError ? err.code : 'internal_error';
      throw err;
    } finally {
      this.options.onOutcome?.(outcome, (performance.now() - started) / 1000);
    }
  }

  private checkLiteral(address: string): void {
    try {
      checkAddress(address, address, this.options.allowPrivate);
    } catch (err) {
      throw new EndpointError('address_refused', (err as Error).message, 403);
    }
  }

  private async send(prepared: PreparedRequest): Promise<EndpointResponse> {
    const { timeoutMs, maxResponseBytes } = this.options;
    const controller = new AbortController();
    this.inFlight.add(controller);
    const timer = setTimeout(() => controller.abort(TIMEOUT), timeoutMs);
    const origin = prepared.url.origin;
    try {
      const res = await request(prepared.url, {
        dispatcher: this.agent,
        method: prepared.method as 'GET',
        headers: prepared.headers,
        body: prepared.body,
        signal: controller.signal,
      });
      const tooLarge = () =>
        new EndpointError(
          'response_too_large',
          `the response of ${origin} is larger than ${maxResponseBytes} bytes`,
          502,
        );
      const declared = Number(res.headers['content-length']);
      if (Number.isFinite(declared) && declared > maxResponseBytes) {
        res.body.destroy();
        throw tooLarge();
      }
      const chunks: Buffer[] = [];
      let size = 0;
      for await (const chunk of res.body) {
        size += (chunk as Buffer).length;
        if (size > maxResponseBytes) {
          res.body.destroy();
          throw tooLarge();
        }
        chunks.push(chunk as Buffer);
      }
      const text = Buffer.concat(chunks, size).toString('utf8');
      const type = res.headers['content-type'];
      let body: unknown = text;
      if (typeof type === 'string' && JSON_TYPE.test(type)) {
        if (text.trim() === '') body = null;
        else {
          try {
            const parsed: unknown = JSON.parse(text);
            // Deeper than any PSON or JSON writer here accepts: given as text.
            body = nestsDeeperThan(parsed, MAX_DATA_DEPTH) ? text : parsed;
          } catch {
            body = text; // says JSON, is not: given as text
          }
        }
      }
      const headers: Record<string, string | string[]> = {};
      for (const [k, v] of Object.entries(res.headers)) if (v !== undefined) headers[k] = v;
      return { status: res.statusCode, headers, body };
    } catch (err) {
      throw this.failure(err, controller.signal, origin);
    } finally {
      clearTimeout(timer);
      this.inFlight.delete(controller);
    }
  }

  private failure(err: unknown, signal: AbortSignal, origin: string): EndpointError {
    if (err instanceof EndpointError) return err;
    if (signal.aborted && signal.reason === TIMEOUT)
      return new EndpointError(
        'endpoint_timeout',
        `${origin} did not answer within ${this.options.timeoutMs} ms`,
        504,
      );
    if (this.closed) return new EndpointError('server_closing', 'the server is shutting down', 503);
    const refused = findCause(err, (e): e is AddressRefusedError => e instanceof AddressRefusedError);
    if (refused) return new EndpointError('address_refused', refused.message, 403);
    const code = String((err as { code?: unknown }).code ?? '');
    if (/^UND_ERR_(CONNECT|HEADERS|BODY)_TIMEOUT$/.test(code))
      return new EndpointError(
        'endpoint_timeout',
        `${origin} did not answer within ${this.options.timeoutMs} ms`,
        504,
      );
    const detail = code || (err as Error).message || String(err);
    return new EndpointError('endpoint_unreachable', `cannot reach ${origin}: ${detail}`, 502);
  }

  /** Aborts calls in progress, refuses new ones, closes the connection pool. */
  async close(): Promise<void> {
    this.closed = true;
    for (const controller of this.inFlight) controller.abort();
    await this.agent.destroy().catch(() => {});
  }
}
