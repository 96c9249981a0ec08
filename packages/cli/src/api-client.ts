/**
 * The server's REST and WebSocket API as the command line uses it: base URL, bearer token
 * (a stored login, refreshed when it expires, or a raw token), HTTPS trust (--ca, --insecure),
 * and every failure turned into a CliError with the exit code it means and what to do next.
 */
import { readFileSync } from 'node:fs';
import type { IncomingHttpHeaders } from 'node:http';
import * as http from 'node:http';
import * as https from 'node:https';
import type { Dispatcher, WebSocket } from 'undici';
import type { ConfigStore, StoredLogin } from './config-store.js';
import { CliError, ExitCode, usageError } from './errors.js';

export const DEFAULT_SERVER = 'http://localhost:3000';
const DEFAULT_TIMEOUT_MS = 60_000;
/** Refresh a stored access token this long before it expires. */
const REFRESH_MARGIN_MS = 30_000;

export type Auth =
  | { kind: 'none' }
  | { kind: 'token'; token: string }
  | { kind: 'login'; login: StoredLogin; store: ConfigStore };

export interface ClientOptions {
  server: string;
  auth: Auth;
  /** Whose data the commands address (the login's user, or the token's subject). */
  user: string | undefined;
  /** PEM file of a CA (or self-signed certificate) to trust for HTTPS. */
  ca?: string | undefined;
  /** Do not check the server's certificate. */
  insecure?: boolean | undefined;
  timeoutMs?: number;
}

export interface RequestOptions {
  /** A JSON body. */
  json?: unknown;
  /** A raw body (sent as application/octet-stream unless contentType says otherwise). */
  body?: Uint8Array | string;
  contentType?: string;
  query?: Record<string, string | number | undefined>;
  /** Send the bearer token (default true). */
  auth?: boolean;
  /** Return error answers instead of throwing. */
  allowError?: boolean;
}

export interface ApiResult {
  status: number;
  ok: boolean;
  headers: IncomingHttpHeaders;
  contentType: string;
  bytes: Buffer;
  /** The body parsed as JSON (undefined when empty or not JSON). */
  json: unknown;
  isBinary: boolean;
}

/** "localhost:3000" → "http://localhost:3000"; no trailing slash; http and https only. */
export function normalizeServer(raw: string): string {
  let text = raw.trim();
  if (!/^[a-z][a-z0-9+.-]*:\/\//i.test(text)) text = `http://${text}`;
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw usageError(`invalid server URL ${JSON.stringify(raw)}`, 'use e.g. --server http://localhost:3000');
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:')
    throw usageError(`the server URL must be http:// or https://, got ${raw}`);
  return `${url.protocol}//${url.host}${url.pathname.replace(/\/+$/, '')}`;
}

/** The subject (user name) of a JWT access token, without verifying it (the server does). */
export function tokenSubject(token: string): string {
  const part = token.split('.')[1];
  try {
    const payload = JSON.parse(Buffer.from(part ?? '', 'base64url').toString('utf8')) as { sub?: unknown };
    if (typeof payload.sub === 'string' && payload.sub.length > 0) return payload.sub;
  } catch {
    // fall through
  }
  throw usageError(
    'the token is not an iotmp access token (no user in it)',
    'pass a token from `iotmp tokens add` or `iotmp login`',
  );
}

/** Each path segment percent-encoded ("a/b c" → "a/b%20c"): resource names may hold slashes. */
export function encodePath(path: string): string {
  return path.split('/').map(encodeURIComponent).join('/');
}

const TLS_TRUST = /CERT|SELF_SIGNED|UNABLE_TO_VERIFY|UNABLE_TO_GET_ISSUER|ERR_TLS/;

export class ApiClient {
  readonly server: string;
  private auth: Auth;
  private readonly userName: string | undefined;
  /** TLS settings from --ca and --insecure (undefined: the system's CAs). */
  private readonly tls: { ca?: string; rejectUnauthorized: boolean } | undefined;
  private dispatcher: Dispatcher | undefined;
  /** undici, loaded for WebSockets only (Node 20 has none built in): it costs ~0.2 s of start-up. */
  private undici: Promise<typeof import('undici')> | undefined;
  private readonly timeoutMs: number;
  private refreshing: Promise<void> | undefined;

  constructor(options: ClientOptions) {
    this.server = options.server;
    this.auth = options.auth;
    this.userName = options.user;
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    if (options.ca !== undefined || options.insecure) {
      let ca: string | undefined;
      if (options.ca !== undefined) {
        try {
          ca = readFileSync(options.ca, 'utf8');
        } catch (err) {
          throw usageError(`cannot read the CA file ${options.ca}: ${(err as Error).message}`);
        }
      }
      this.tls = { ...(ca !== undefined ? { ca } : {}), rejectUnauthorized: !options.insecure };
    }
  }

  /** PEM text of --ca, for device connections (simulate). */
  static readCa(file: string | undefined): string | undefined {
    return file === undefined ? undefined : readFileSync(file, 'utf8');
  }

  /** The user whose data the commands address; throws "not logged in" when unknown. */
  get user(): string {
    if (this.userName === undefined) throw this.notLoggedIn();
    return this.userName;
  }

  /** `/v1/users/{user}` (or `/v3/…` with version 3). */
  userPath(version: 1 | 2 | 3 = 1): string {
    return `/v${version}/users/${encodeURIComponent(this.user)}`;
  }

  notLoggedIn(): CliError {
    const flag = this.server === DEFAULT_SERVER ? '' : ` --server ${this.server}`;
    return new CliError(
      ExitCode.AUTH,
      `not logged in to ${this.server}`,
      `run \`iotmp login${flag}\` (or pass an access token with --token / IOTMP_TOKEN)`,
    );
  }

  async close(): Promise<void> {
    await this.dispatcher?.close();
  }

  private async loadUndici(): Promise<typeof import('undici')> {
    this.undici ??= import('undici').then((undici) => {
      if (this.tls) this.dispatcher = new undici.Agent({ connect: this.tls });
      return undici;
    });
    return this.undici;
  }

  /** A valid access token: the stored one, refreshed first when it is about to expire. */
  async accessToken(): Promise<string> {
    const auth = this.auth;
    if (auth.kind === 'none') throw this.notLoggedIn();
    if (auth.kind === 'token') return auth.token;
    if (auth.login.expiry - REFRESH_MARGIN_MS <= Date.now()) await this.refresh();
    return (this.auth as { login: StoredLogin }).login.access_token;
  }

  /** One refresh at a time, however many requests found the token expired. */
  private refresh(): Promise<void> {
    this.refreshing ??= this.doRefresh().finally(() => {
      this.refreshing = undefined;
    });
    return this.refreshing;
  }

  private async doRefresh(): Promise<void> {
    const auth = this.auth;
    if (auth.kind !== 'login') return;
    const used = auth.login.refresh_token;
    const res = await this.send('POST', '/oauth/token', {
      json: { grant_type: 'refresh_token', refresh_token: used },
      auth: false,
      allowError: true,
    });
    const body = res.json as { access_token?: string; refresh_token?: string; expires_in?: number };
    if (res.ok && typeof body.access_token === 'string' && typeof body.refresh_token === 'string') {
      const login: StoredLogin = {
        ...auth.login,
        access_token: body.access_token,
        refresh_token: body.refresh_token,
        expiry: Date.now() + (body.expires_in ?? 0) * 1000,
      };
      auth.store.saveLogin(login);
      this.auth = { ...auth, login };
      return;
    }
    // Refresh tokens are single-use: another iotmp process may have just used this one.
    const stored = auth.store.readLogin();
    if (stored && stored.server === auth.login.server && stored.refresh_token !== used) {
      this.auth = { ...auth, login: stored };
      return;
    }
    if (res.status === 400 || res.status === 401)
      throw new CliError(
        ExitCode.AUTH,
        `your login to ${this.server} has expired or was revoked`,
        `run \`iotmp login${this.server === DEFAULT_SERVER ? '' : ` --server ${this.server}`}\``,
      );
    throw this.apiError(res);
  }

  /** A REST request; error answers throw a CliError (unless allowError). */
  async request(method: string, path: string, options: RequestOptions = {}): Promise<ApiResult> {
    const useAuth = options.auth ?? true;
    let res = await this.send(method, path, options, useAuth ? await this.accessToken() : undefined);
    if (res.status === 401 && useAuth && this.auth.kind === 'login') {
      // Expired early, or the server restarted with a new signing key: refresh once and retry.
      await this.refresh();
      res = await this.send(method, path, options, await this.accessToken());
    }
    if (!res.ok && !options.allowError) throw this.apiError(res);
    return res;
  }

  private url(path: string, query?: Record<string, string | number | undefined>): URL {
    const url = new URL(`${this.server}${path}`);
    for (const [k, v] of Object.entries(query ?? {})) if (v !== undefined) url.searchParams.set(k, String(v));
    return url;
  }

  /**
   * One HTTP exchange with node:http(s): a command line starts often, and the first use of
   * Node's fetch costs about 0.3 s of start-up.
   */
  private send(method: string, path: string, options: RequestOptions, token?: string): Promise<ApiResult> {
    const headers: Record<string, string> = { accept: 'application/json, application/octet-stream;q=0.9' };
    if (token !== undefined) headers.authorization = `Bearer ${token}`;
    let body: Buffer | undefined;
    if (options.json !== undefined) {
      body = Buffer.from(JSON.stringify(options.json), 'utf8');
      headers['content-type'] = 'application/json';
    } else if (options.body !== undefined) {
      body = typeof options.body === 'string' ? Buffer.from(options.body, 'utf8') : Buffer.from(options.body);
      headers['content-type'] = options.contentType ?? 'application/octet-stream';
    }
    if (body !== undefined) headers['content-length'] = String(body.length);
    const url = this.url(path, options.query);
    const transport = url.protocol === 'https:' ? https : http;
    return new Promise<ApiResult>((resolve, reject) => {
      const req = transport.request(
        url,
        {
          method,
          headers,
          ...(url.protocol === 'https:' && this.tls ? this.tls : {}),
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (chunk: Buffer) => chunks.push(chunk));
          res.on('error', (err) => reject(this.networkError(err)));
          res.on('end', () => {
            const bytes = Buffer.concat(chunks);
            const status = res.statusCode ?? 0;
            const contentType = res.headers['content-type'] ?? '';
            const isJson = contentType.startsWith('application/json');
            let json: unknown;
            if (isJson && bytes.length > 0) {
              try {
                json = JSON.parse(bytes.toString('utf8'));
              } catch {
                json = undefined;
              }
            }
            resolve({
              status,
              ok: status >= 200 && status < 300,
              headers: res.headers,
              contentType,
              bytes,
              json,
              isBinary: !isJson && contentType.startsWith('application/octet-stream'),
            });
          });
        },
      );
      req.setTimeout(this.timeoutMs, () =>
        req.destroy(Object.assign(new Error('request timed out'), { name: 'TimeoutError' })),
      );
      req.on('error', (err) => reject(this.networkError(err)));
      req.end(body);
    });
  }

  networkError(err: unknown): CliError {
    const e = err as { name?: string; message?: string; cause?: { code?: string; message?: string } };
    if (e.name === 'TimeoutError' || e.name === 'AbortError')
      return new CliError(
        ExitCode.UNREACHABLE,
        `no answer from ${this.server} within ${this.timeoutMs / 1000} s`,
        'is the server overloaded or unreachable? retry, or check --server',
      );
    const code = e.cause?.code ?? (err as { code?: string }).code ?? '';
    const detail = e.cause?.message ?? e.message ?? String(err);
    if (TLS_TRUST.test(code))
      return new CliError(
        ExitCode.UNREACHABLE,
        `cannot reach ${this.server}: its TLS certificate is not trusted (${code})`,
        'pass --ca FILE with the server certificate (a generated one is <data dir>/tls/server-cert.pem), or --insecure to skip the check',
      );
    return new CliError(
      ExitCode.UNREACHABLE,
      `cannot reach ${this.server}: ${detail}${code && !detail.includes(code) ? ` (${code})` : ''}`,
      'is the server running (`iotmp server`)? pass --server URL or set IOTMP_SERVER',
    );
  }

  /** An API error answer as a CliError: 401/403 → 3, 404 → 4, the rest → 1. */
  apiError(res: ApiResult): CliError {
    const err = (res.json as { error?: { message?: unknown; code?: unknown } } | undefined)?.error;
    const message =
      typeof err?.message === 'string'
        ? err.message
        : `HTTP ${res.status}${res.bytes.length > 0 ? `: ${res.bytes.toString('utf8').slice(0, 200)}` : ''}`;
    const code = typeof err?.code === 'string' ? err.code : undefined;
    if (res.status === 401) {
      const hint =
        this.auth.kind === 'token'
          ? 'the access token was refused: check --token / IOTMP_TOKEN, or run `iotmp login`'
          : 'run `iotmp login`';
      return new CliError(ExitCode.AUTH, message, hint, code);
    }
    if (res.status === 403)
      return new CliError(
        ExitCode.AUTH,
        message,
        'this needs more access: log in as the owner (`iotmp login`) or use a token that covers it',
        code,
      );
    if (res.status === 404) {
      const hint =
        code === 'device_not_found'
          ? '`iotmp devices list` shows your devices'
          : code === 'device_offline'
            ? 'start the device (or `iotmp simulate`), then retry'
            : code === 'resource_not_found'
              ? '`iotmp describe <device>` lists its resources'
              : undefined;
      return new CliError(ExitCode.NOT_FOUND, message, hint, code);
    }
    return new CliError(ExitCode.FAILURE, message, undefined, code);
  }

  /** Opens a WebSocket of the API (authenticated like requests); resolves once open. */
  async webSocket(path: string, query?: Record<string, string | number | undefined>): Promise<WebSocket> {
    const token = await this.accessToken();
    const url = this.url(path, query);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    const undici = await this.loadUndici();
    const ws = new undici.WebSocket(url, {
      headers: { authorization: `Bearer ${token}` },
      ...(this.dispatcher ? { dispatcher: this.dispatcher } : {}),
    });
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        ws.close();
        reject(this.networkError(Object.assign(new Error('timeout'), { name: 'TimeoutError' })));
      }, this.timeoutMs);
      ws.addEventListener('open', () => {
        clearTimeout(timer);
        resolve();
      });
      ws.addEventListener('error', (event) => {
        clearTimeout(timer);
        const cause = (event as unknown as { error?: unknown }).error;
        reject(
          cause
            ? this.networkError(cause)
            : new CliError(ExitCode.FAILURE, `the WebSocket ${url.pathname} could not be opened`),
        );
      });
    });
    return ws;
  }
}
