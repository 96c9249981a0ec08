/**
 * The REST client: bearer tokens kept in sessionStorage (gone when the tab closes), one
 * refresh with the refresh token on a 401 (shared by concurrent requests), and every API
 * error as an ApiError carrying the server's `{"error": {"message", "code"}}`.
 */

export interface Session {
  user: string;
  accessToken: string;
  refreshToken: string;
  /** ms since the epoch. */
  expiresAt: number;
}

const STORAGE_KEY = 'iotmp.console.session';
/** The last user name, to fill in the login form again (not a secret). */
const USER_KEY = 'iotmp.console.user';

export class ApiError extends Error {
  override name = 'ApiError';
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export interface CallOptions {
  /** A JSON body. */
  json?: unknown;
  /** Query parameters (undefined values are left out). */
  query?: Record<string, string | number | undefined>;
  /** Abort after this long (ms); default 20 s. */
  timeoutMs?: number;
  /** Aborts the request (e.g. the page was left). */
  signal?: AbortSignal;
}

export interface CallResult {
  status: number;
  headers: Headers;
  contentType: string;
  /** Parsed JSON, a Uint8Array for binary answers, undefined for an empty body. */
  body: unknown;
  /** Time the request took (ms). */
  ms: number;
}

interface TokenAnswer {
  access_token: string;
  refresh_token: string;
  expires_in: number;
}

function loadSession(): Session | undefined {
  try {
    const raw = sessionStorage.getItem(STORAGE_KEY);
    if (!raw) return undefined;
    const s = JSON.parse(raw) as Partial<Session>;
    if (typeof s.user === 'string' && typeof s.accessToken === 'string' && typeof s.refreshToken === 'string')
      return {
        user: s.user,
        accessToken: s.accessToken,
        refreshToken: s.refreshToken,
        expiresAt: Number(s.expiresAt),
      };
  } catch {
    // unreadable: start logged out
  }
  return undefined;
}

/** The server's error shape, or a description of what came back instead. */
async function errorOf(res: Response): Promise<ApiError> {
  const text = await res.text().catch(() => '');
  try {
    const body = JSON.parse(text) as { error?: { message?: unknown; code?: unknown } };
    if (body.error && typeof body.error.message === 'string')
      return new ApiError(res.status, String(body.error.code ?? 'error'), body.error.message);
  } catch {
    // not JSON
  }
  return new ApiError(res.status, `http_${res.status}`, `HTTP ${res.status} ${res.statusText}`.trim());
}

export class Api {
  session: Session | undefined = loadSession();
  private refreshing: Promise<boolean> | undefined;

  /** Called when the session is over (refresh refused): the app shows the login page. */
  onUnauthorized: (message: string) => void = () => {};

  get user(): string {
    return this.session?.user ?? '';
  }

  /** Who logged in last in this tab (the login form starts with it). */
  get lastUser(): string {
    return this.session?.user ?? sessionStorage.getItem(USER_KEY) ?? '';
  }

  /** `/v1/users/{user}` (or /v2, /v3) for the logged-in user. */
  userPath(version: 1 | 2 | 3 = 1): string {
    return `/v${version}/users/${encodeURIComponent(this.user)}`;
  }

  private save(user: string, t: TokenAnswer): void {
    this.session = {
      user,
      accessToken: t.access_token,
      refreshToken: t.refresh_token,
      expiresAt: Date.now() + t.expires_in * 1000,
    };
    sessionStorage.setItem(STORAGE_KEY, JSON.stringify(this.session));
    sessionStorage.setItem(USER_KEY, user);
  }

  logout(): void {
    this.session = undefined;
    sessionStorage.removeItem(STORAGE_KEY);
  }

  private async tokenRequest(fields: Record<string, string>): Promise<TokenAnswer> {
    let res: Response;
    try {
      res = await fetch('/oauth/token', {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams(fields).toString(),
        signal: AbortSignal.timeout(20_000),
      });
    } catch (err) {
      throw networkError(err);
    }
    if (!res.ok) throw await errorOf(res);
    return (await res.json()) as TokenAnswer;
  }

  async login(user: string, password: string): Promise<void> {
    const t = await this.tokenRequest({ grant_type: 'password', username: user, password });
    this.save(user, t);
  }

  /** Refreshes the access token once for everyone waiting; false when the session is over. */
  refresh(): Promise<boolean> {
    const session = this.session;
    if (!session) return Promise.resolve(false);
    this.refreshing ??= this.tokenRequest({
      grant_type: 'refresh_token',
      refresh_token: session.refreshToken,
    })
      .then((t) => {
        this.save(session.user, t);
        return true;
      })
      .catch((err: unknown) => {
        // A refused refresh ends the session; a network failure does not.
        if (err instanceof ApiError && (err.status === 400 || err.status === 401)) return false;
        throw err;
      })
      .finally(() => {
        this.refreshing = undefined;
      });
    return this.refreshing;
  }

  /** An access token valid for at least a minute (WebSocket URLs carry it). */
  async freshToken(): Promise<string> {
    if (this.session && this.session.expiresAt - Date.now() < 60_000) {
      if (!(await this.refresh())) this.sessionOver();
    }
    if (!this.session) throw new ApiError(401, 'unauthorized', 'not logged in');
    return this.session.accessToken;
  }

  private sessionOver(): never {
    this.logout();
    this.onUnauthorized('Your session has ended: log in again.');
    throw new ApiError(401, 'unauthorized', 'session ended');
  }

  /** Any API request; throws ApiError for non-2xx answers. */
  async call(method: string, path: string, options: CallOptions = {}): Promise<CallResult> {
    let url = path;
    if (options.query) {
      const q = new URLSearchParams();
      for (const [k, v] of Object.entries(options.query)) if (v !== undefined) q.set(k, String(v));
      const text = q.toString();
      if (text) url += `?${text}`;
    }
    for (let attempt = 0; ; attempt++) {
      if (!this.session) this.sessionOver();
      const headers: Record<string, string> = { authorization: `Bearer ${this.session.accessToken}` };
      let body: string | undefined;
      if (options.json !== undefined) {
        headers['content-type'] = 'application/json';
        body = JSON.stringify(options.json);
      }
      const timeout = AbortSignal.timeout(options.timeoutMs ?? 20_000);
      const signal = options.signal ? AbortSignal.any([options.signal, timeout]) : timeout;
      const started = performance.now();
      let res: Response;
      try {
        res = await fetch(url, { method, headers, body, signal });
      } catch (err) {
        if (options.signal?.aborted) throw err;
        throw networkError(err);
      }
      if (res.status === 401 && attempt === 0) {
        await res.body?.cancel();
        if (await this.refresh()) continue;
        this.sessionOver();
      }
      if (res.status === 401) {
        const error = await errorOf(res);
        this.logout();
        this.onUnauthorized(error.message);
        throw error;
      }
      if (!res.ok) throw await errorOf(res);
      const contentType = res.headers.get('content-type') ?? '';
      const buffer = new Uint8Array(await res.arrayBuffer());
      let parsed: unknown;
      if (buffer.length > 0) {
        if (contentType.startsWith('application/json')) parsed = JSON.parse(new TextDecoder().decode(buffer));
        else if (contentType.startsWith('text/')) parsed = new TextDecoder().decode(buffer);
        else parsed = buffer;
      }
      return {
        status: res.status,
        headers: res.headers,
        contentType,
        body: parsed,
        ms: Math.round(performance.now() - started),
      };
    }
  }

  async get<T>(path: string, options?: CallOptions): Promise<T> {
    return (await this.call('GET', path, options)).body as T;
  }
  async post<T>(path: string, json?: unknown, options?: CallOptions): Promise<T> {
    return (await this.call('POST', path, { ...options, json })).body as T;
  }
  async put<T>(path: string, json: unknown, options?: CallOptions): Promise<T> {
    return (await this.call('PUT', path, { ...options, json })).body as T;
  }
  async patch<T>(path: string, json: unknown, options?: CallOptions): Promise<T> {
    return (await this.call('PATCH', path, { ...options, json })).body as T;
  }
  async delete(path: string, options?: CallOptions): Promise<void> {
    await this.call('DELETE', path, options);
  }

  /** ws(s)://host/path?authorization=… (browsers cannot set headers on WebSockets). */
  async socketUrl(path: string, query: Record<string, string> = {}): Promise<string> {
    const token = await this.freshToken();
    const q = new URLSearchParams({ ...query, authorization: token });
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    return `${scheme}://${location.host}${path}?${q.toString()}`;
  }
}

function networkError(err: unknown): ApiError {
  if (err instanceof DOMException && err.name === 'TimeoutError')
    return new ApiError(0, 'timeout', 'the server did not answer in time');
  return new ApiError(0, 'network_error', `cannot reach the server (${(err as Error).message ?? err})`);
}

/** "message (code)" for any error. */
export function describeError(err: unknown): { message: string; code: string } {
  if (err instanceof ApiError) return { message: err.message, code: err.code };
  if (err instanceof Error) return { message: err.message, code: err.name };
  return { message: String(err), code: 'error' };
}
