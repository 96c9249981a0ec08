/**
 * Endpoints (issue 5 §5): CRUD over REST with validation errors; calls through
 * POST /v1/users/{u}/endpoints/{e}/call reaching a local echo server (node:http) with the
 * templates filled in URL, headers and body; JSON and text responses, upstream errors and
 * redirects returned as completed calls; timeouts (504), unreachable (502), oversized
 * responses; addresses refused after DNS resolution when private addresses are not allowed
 * (loopback in all its spellings, a name resolving to loopback); per-user concurrency and rate
 * limits (429); other users' endpoints (403); plus the address classifier, the limiter with a
 * manual clock and the boolean configuration settings as units.
 */
import assert from 'node:assert/strict';
import type * as dns from 'node:dns';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { ConfigError, loadConfig } from '../src/config.js';
import { addressRefusal, guardedLookup } from '../src/endpoints/address-guard.js';
import { CallLimiter, EndpointError, EndpointRunner } from '../src/endpoints/runner.js';
import type { EndpointRecord, EndpointStore, HttpRequestProfile } from '../src/storage/endpoints.js';
import { ADMIN, type ApiResponse, assertErrorBody, freePort, TestServer, waitFor } from './helpers.js';

const TIMEOUT_MS = 1500;
const MAX_RESPONSE = 64 * 1024;
const MAX_CONCURRENT = 4;

/** What the echo server saw of one request. */
interface Seen {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/**
 * A local HTTP server that answers with what it received (JSON), plus special paths: /text,
 * /status/<n>, /bad-json, /redirect, /big (chunked), /big-declared, /hang (never answers),
 * /hold (answers when released; counts requests in progress).
 */
class EchoServer {
  readonly seen: Seen[] = [];
  inProgress = 0;
  maxInProgress = 0;
  private held: Array<() => void> = [];
  private readonly hanging = new Set<http.ServerResponse>();
  private readonly server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => this.answer(req, res, Buffer.concat(chunks).toString('utf8')));
  });
  port = 0;

  async start(): Promise<void> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.port = (this.server.address() as AddressInfo).port;
  }

  get base(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  releaseHeld(): void {
    for (const release of this.held.splice(0)) release();
  }

  private answer(req: http.IncomingMessage, res: http.ServerResponse, body: string): void {
    const seen: Seen = { method: req.method ?? '', url: req.url ?? '', headers: req.headers, body };
    this.seen.push(seen);
    const path = seen.url.split('?')[0] as string;
    const json = (status: number, value: unknown) => {
      res.writeHead(status, { 'content-type': 'application/json; charset=utf-8' });
      res.end(JSON.stringify(value));
    };
    if (path === '/text') {
      res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8' });
      res.end('hello text ✓');
    } else if (path.startsWith('/status/'))
      json(Number(path.slice(8)), { error: 'boom', status: path.slice(8) });
    else if (path === '/bad-json') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{not json');
    } else if (path === '/redirect') {
      res.writeHead(302, { location: '/text' });
      res.end();
    } else if (path === '/big') {
      res.writeHead(200, { 'content-type': 'text/plain' });
      for (let i = 0; i < 20; i++) res.write('z'.repeat(8192)); // 160 KiB, chunked
      res.end();
    } else if (path === '/big-declared') {
      res.writeHead(200, { 'content-type': 'text/plain', 'content-length': String(MAX_RESPONSE + 1) });
      res.end('z'.repeat(MAX_RESPONSE + 1));
    } else if (path === '/hang') {
      this.hanging.add(res);
    } else if (path === '/hold') {
      this.inProgress++;
      this.maxInProgress = Math.max(this.maxInProgress, this.inProgress);
      this.held.push(() => {
        this.inProgress--;
        json(200, { held: true });
      });
    } else json(200, seen);
  }

  async close(): Promise<void> {
    this.releaseHeld();
    for (const res of this.hanging) res.destroy();
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

const echo = new EchoServer();
/** Private addresses allowed (the echo server is on loopback), short timeout, small responses. */
let t: TestServer;
/** Default configuration: public addresses only; a small burst. */
let strict: TestServer;
/** Users besides admin: bob on `t`, carol on `strict`. */
let bob = '';
let carol = '';

const base = (user = ADMIN) => `/v1/users/${user}/endpoints`;

before(async () => {
  await echo.start();
  [t, strict] = await Promise.all([
    TestServer.start({
      tcp: false,
      tls: false,
      flags: [
        '--endpoint-allow-private',
        'true',
        '--endpoint-timeout-ms',
        String(TIMEOUT_MS),
        '--endpoint-max-response-bytes',
        String(MAX_RESPONSE),
        '--endpoint-max-concurrent',
        String(MAX_CONCURRENT),
        '--endpoint-rate-per-second',
        '1000',
        '--endpoint-rate-burst',
        '1000',
      ],
    }),
    TestServer.start({
      tcp: false,
      tls: false,
      flags: ['--endpoint-rate-per-second', '1', '--endpoint-rate-burst', '10'],
    }),
  ]);
  // Second users (one scrypt hash and one check each), side by side.
  [bob, carol] = (await Promise.all(
    [
      [t, 'bob'],
      [strict, 'carol'],
    ].map(async ([server, user]) => {
      const s = server as TestServer;
      await s.server.tokens.createUser(user as string, `${user}-password`);
      return (await s.login(user as string, `${user}-password`)).access_token;
    }),
  )) as [string, string];
});
after(async () => {
  await Promise.allSettled([t?.close(), strict?.close()]);
  await echo.close();
});

async function create(
  server: TestServer,
  endpoint: string,
  profile: Partial<HttpRequestProfile> & { url: string },
  extra: Record<string, unknown> = {},
  token = server.adminToken,
  user = ADMIN,
): Promise<Record<string, unknown>> {
  const res = await server.request('POST', base(user), {
    token,
    json: { endpoint, type: 'http_request', profile, ...extra },
  });
  assert.equal(res.status, 201, `create endpoint ${endpoint}: ${res.bytes.toString('utf8')}`);
  return res.body as Record<string, unknown>;
}

function call(
  server: TestServer,
  endpoint: string,
  data?: unknown,
  token = server.adminToken,
  user = ADMIN,
): Promise<ApiResponse> {
  return server.request('POST', `${base(user)}/${endpoint}/call`, {
    token,
    ...(data === undefined ? {} : { json: data }),
  });
}

/** A completed call: 200 with {status, headers, body}. */
function completed(res: ApiResponse): { status: number; headers: Record<string, unknown>; body: unknown } {
  assert.equal(res.status, 200, res.bytes.toString('utf8').slice(0, 500));
  const out = res.body as { status: number; headers: Record<string, unknown>; body: unknown };
  assert.equal(typeof out.status, 'number');
  assert.equal(typeof out.headers, 'object');
  assert.ok('body' in out);
  return out;
}

describe('endpoint definitions (CRUD)', () => {
  it('create, get, list with paging, update, delete', async () => {
    const created = await create(t, 'crud-a', { url: `${echo.base}/a`, headers: { 'X-Key': 'k1' } });
    assert.equal(created.endpoint, 'crud-a');
    assert.equal(created.name, 'crud-a', 'the name defaults to the id');
    assert.equal(created.type, 'http_request');
    assert.equal(created.enabled, true);
    assert.deepEqual(created.profile, { url: `${echo.base}/a`, method: 'POST', headers: { 'X-Key': 'k1' } });
    assert.equal(typeof created.created, 'number');

    const dup = await t.api('POST', base(), {
      json: { endpoint: 'crud-a', type: 'http_request', profile: { url: `${echo.base}/b` } },
    });
    assertErrorBody(dup, 409, 'endpoint_exists');

    await create(t, 'crud-b', { url: `${echo.base}/b`, method: 'GET' }, { name: 'B', description: 'second' });
    await create(t, 'crud-c', { url: `${echo.base}/c`, method: 'PUT', body: { v: '{{v}}' } });

    const got = await t.api('GET', `${base()}/crud-b`);
    assert.equal(got.status, 200);
    assert.deepEqual((got.body as Record<string, unknown>).profile, { url: `${echo.base}/b`, method: 'GET' });
    assert.equal((got.body as Record<string, unknown>).description, 'second');

    const page = await t.api('GET', `${base()}?count=2&index=1`);
    assert.equal(page.status, 200);
    const ids = (page.body as Array<{ endpoint: string }>).map((e) => e.endpoint);
    const all = ((await t.api('GET', base())).body as Array<{ endpoint: string }>).map((e) => e.endpoint);
    assert.deepEqual(ids, all.slice(1, 3));
    assert.equal(page.headers.get('x-total-count'), String(all.length));
    assert.ok(all.includes('crud-a') && all.includes('crud-b') && all.includes('crud-c'));

    const patched = await t.api('PATCH', `${base()}/crud-a`, { json: { name: 'Renamed', enabled: false } });
    assert.equal(patched.status, 200);
    assert.equal((patched.body as Record<string, unknown>).name, 'Renamed');
    assert.equal((patched.body as Record<string, unknown>).enabled, false);
    assert.deepEqual((patched.body as Record<string, unknown>).profile, created.profile, 'profile kept');

    const put = await t.api('PUT', `${base()}/crud-a`, {
      json: { profile: { url: `${echo.base}/new`, method: 'DELETE' } },
    });
    assert.equal(put.status, 200);
    assert.deepEqual((put.body as Record<string, unknown>).profile, {
      url: `${echo.base}/new`,
      method: 'DELETE',
    });
    assert.equal((put.body as Record<string, unknown>).name, 'Renamed');

    assert.equal((await t.api('DELETE', `${base()}/crud-a`)).status, 200);
    assertErrorBody(await t.api('GET', `${base()}/crud-a`), 404, 'endpoint_not_found');
    assertErrorBody(await t.api('DELETE', `${base()}/crud-a`), 404, 'endpoint_not_found');
    assertErrorBody(
      await t.api('PATCH', `${base()}/crud-a`, { json: { name: 'x' } }),
      404,
      'endpoint_not_found',
    );
  });

  it('refuses invalid definitions with 400 and a stable code, storing nothing', async () => {
    const url = `${echo.base}/v`;
    const cases: Array<[string, unknown, string]> = [
      ['no profile', { endpoint: 'v1', type: 'http_request' }, 'invalid_request'],
      ['bad id', { endpoint: 'bad id!', profile: { url } }, 'invalid_request'],
      ['other type', { endpoint: 'v1', type: 'email', profile: { url } }, 'invalid_request'],
      ['ftp URL', { endpoint: 'v1', profile: { url: 'ftp://example.com/x' } }, 'invalid_request'],
      ['no URL', { endpoint: 'v1', profile: { method: 'GET' } }, 'invalid_request'],
      ['TRACE', { endpoint: 'v1', profile: { url, method: 'TRACE' } }, 'invalid_request'],
      ['unknown profile field', { endpoint: 'v1', profile: { url, retries: 3 } }, 'invalid_request'],
      ['unknown field', { endpoint: 'v1', profile: { url }, owner: 'x' }, 'invalid_request'],
      [
        'header name',
        { endpoint: 'v1', profile: { url, headers: { 'Bad Header': 'x' } } },
        'invalid_request',
      ],
      ['header value type', { endpoint: 'v1', profile: { url, headers: { 'X-A': 1 } } }, 'invalid_request'],
      ['Host header', { endpoint: 'v1', profile: { url, headers: { Host: 'x' } } }, 'invalid_request'],
      [
        'Transfer-Encoding',
        { endpoint: 'v1', profile: { url, headers: { 'transfer-encoding': 'chunked' } } },
        'invalid_request',
      ],
      [
        'header twice',
        { endpoint: 'v1', profile: { url, headers: { 'X-A': '1', 'x-a': '2' } } },
        'invalid_request',
      ],
      ['GET with body', { endpoint: 'v1', profile: { url, method: 'GET', body: 'x' } }, 'invalid_request'],
      [
        'function placeholder',
        { endpoint: 'v1', profile: { url: `${url}/{{payload:fn}}` } },
        'invalid_template',
      ],
      [
        'bad placeholder in header',
        { endpoint: 'v1', profile: { url, headers: { 'X-A': '{{a..b}}' } } },
        'invalid_template',
      ],
      [
        'bad placeholder in body',
        { endpoint: 'v1', profile: { url, body: { a: ['{{x=1}}'] } } },
        'invalid_template',
      ],
      ['credentials in URL', { endpoint: 'v1', profile: { url: 'http://u:p@example.com/' } }, 'invalid_url'],
      [
        'not a URL once filled',
        { endpoint: 'v1', profile: { url: 'http://exa mple.com/{{x}}' } },
        'invalid_url',
      ],
    ];
    let deep: unknown = 1;
    for (let i = 0; i < 40; i++) deep = [deep];
    cases.push(['body too deep', { endpoint: 'v1', profile: { url, body: deep } }, 'invalid_template']);
    cases.push([
      'profile too large',
      { endpoint: 'v1', profile: { url, body: 'x'.repeat(70_000) } },
      'invalid_request',
    ]);
    for (const [what, json, code] of cases) {
      const res = await t.api('POST', base(), { json });
      assert.equal(res.status, 400, `${what}: ${res.bytes.toString('utf8')}`);
      assertErrorBody(res, 400, code);
    }
    assertErrorBody(await t.api('GET', `${base()}/v1`), 404, 'endpoint_not_found');
    assertErrorBody(
      await t.api('PATCH', `${base()}/crud-b`, { json: { profile: { url, method: 'GET', body: {} } } }),
      400,
      'invalid_request',
    );
    assertErrorBody(await t.api('GET', `${base()}?count=0`), 400, 'invalid_request');
    assertErrorBody(await t.api('GET', `${base()}/${'x'.repeat(200)}`), 400, 'invalid_request');
  });

  it('the routes are in /openapi.json', async () => {
    const doc = (await t.request('GET', '/openapi.json')).body as { paths: Record<string, unknown> };
    assert.ok(doc.paths['/v1/users/{user}/endpoints']);
    assert.ok(doc.paths['/v1/users/{user}/endpoints/{endpoint}']);
    assert.ok(doc.paths['/v1/users/{user}/endpoints/{endpoint}/call']);
  });
});

describe('calling endpoints', () => {
  it('fills URL (percent-encoded), header values and a JSON body from the data', async () => {
    await create(t, 'tpl', {
      url: `${echo.base}/dev/{{device}}/t?v={{reading.value}}&tag={{tag}}&none={{missing}}`,
      method: 'POST',
      headers: { 'X-Device': '{{device}}', Authorization: 'Bearer static-secret', 'X-Whole': '{{reading}}' },
      body: {
        device: '{{device}}',
        value: '{{reading.value}}',
        msg: 'value is {{reading.value}} at {{tag}}',
        all: '{{payload}}',
        missing: '{{nope}}',
        fixed: [1, true, null],
      },
    });
    const data = { device: 'dev 1', reading: { value: 21.5 }, tag: 'a&b=c/d' };
    const before = echo.seen.length;
    const out = completed(await call(t, 'tpl', data));
    assert.equal(echo.seen.length, before + 1, 'one request reached the echo server');
    const seen = echo.seen.at(-1) as Seen;
    assert.equal(seen.method, 'POST');
    assert.equal(seen.url, '/dev/dev%201/t?v=21.5&tag=a%26b%3Dc%2Fd&none=');
    assert.equal(seen.headers['x-device'], 'dev 1');
    assert.equal(seen.headers.authorization, 'Bearer static-secret');
    assert.equal(seen.headers['x-whole'], '{"value":21.5}');
    assert.equal(seen.headers['content-type'], 'application/json');
    assert.deepEqual(JSON.parse(seen.body), {
      device: 'dev 1',
      value: 21.5,
      msg: 'value is 21.5 at a&b=c/d',
      all: data,
      missing: null,
      fixed: [1, true, null],
    });
    // The echo answer comes back parsed (it is JSON).
    assert.equal(out.status, 200);
    assert.match(String(out.headers['content-type']), /^application\/json/);
    assert.equal((out.body as Seen).url, seen.url);
  });

  it('without a body template POST sends the data as JSON, GET sends nothing; text bodies keep their content type', async () => {
    await create(t, 'plain-post', { url: `${echo.base}/p`, method: 'POST' });
    await create(t, 'plain-get', { url: `${echo.base}/g?x={{x}}`, method: 'GET' });
    await create(t, 'text-body', {
      url: `${echo.base}/x`,
      method: 'PUT',
      headers: { 'Content-Type': 'application/xml' },
      body: '<t>{{x}}</t><all>{{payload}}</all>',
    });
    const p = completed(await call(t, 'plain-post', { x: [1, 2], s: 'é' })).body as Seen;
    assert.deepEqual(JSON.parse(p.body), { x: [1, 2], s: 'é' });
    assert.equal(p.headers['content-type'], 'application/json');

    const g = completed(await call(t, 'plain-get', { x: 5 })).body as Seen;
    assert.equal(g.method, 'GET');
    assert.equal(g.url, '/g?x=5');
    assert.equal(g.body, '');

    const x = completed(await call(t, 'text-body', { x: 'a<b' })).body as Seen;
    assert.equal(x.method, 'PUT');
    assert.equal(x.body, '<t>a<b</t><all>{"x":"a<b"}</all>');
    assert.equal(x.headers['content-type'], 'application/xml');

    // No request body at all: the data is null; POST then sends no body.
    const none = completed(await call(t, 'plain-post')).body as Seen;
    assert.equal(none.body, '');
  });

  it('JSON responses are parsed, others are text; JSON that does not parse is text', async () => {
    await create(t, 'text', { url: `${echo.base}/text`, method: 'GET' });
    await create(t, 'bad-json', { url: `${echo.base}/bad-json`, method: 'GET' });
    const text = completed(await call(t, 'text'));
    assert.equal(text.status, 200);
    assert.equal(text.body, 'hello text ✓');
    assert.match(String(text.headers['content-type']), /^text\/plain/);
    assert.equal(completed(await call(t, 'bad-json')).body, '{not json');
  });

  it('an upstream 500 (or 404) is a completed call: 200 with the status and body', async () => {
    await create(t, 'fails', { url: `${echo.base}/status/{{code}}`, method: 'GET' });
    const failed = completed(await call(t, 'fails', { code: 500 }));
    assert.equal(failed.status, 500);
    assert.deepEqual(failed.body, { error: 'boom', status: '500' });
    assert.equal(completed(await call(t, 'fails', { code: 404 })).status, 404);
  });

  it('redirects are not followed: the 3xx comes back with its location', async () => {
    await create(t, 'redirect', { url: `${echo.base}/redirect`, method: 'GET' });
    const before = echo.seen.length;
    const out = completed(await call(t, 'redirect'));
    assert.equal(out.status, 302);
    assert.equal(out.headers.location, '/text');
    assert.equal(echo.seen.length, before + 1, 'the target of the redirect was not requested');
  });

  it('an endpoint that does not answer in time: 504 endpoint_timeout', async () => {
    await create(t, 'hang', { url: `${echo.base}/hang`, method: 'GET' });
    const started = Date.now();
    assertErrorBody(await call(t, 'hang'), 504, 'endpoint_timeout');
    const elapsed = Date.now() - started;
    assert.ok(elapsed >= TIMEOUT_MS - 50, `waited ${elapsed} ms`);
    assert.ok(elapsed < TIMEOUT_MS + 3000, `waited ${elapsed} ms`);
  });

  it('nothing listening: 502 endpoint_unreachable', async () => {
    const port = await freePort();
    await create(t, 'closed-port', { url: `http://127.0.0.1:${port}/`, method: 'GET' });
    const res = await call(t, 'closed-port');
    assertErrorBody(res, 502, 'endpoint_unreachable');
    assert.match((res.body as { error: { message: string } }).error.message, /ECONNREFUSED/);
  });

  it(`responses larger than ${MAX_RESPONSE} bytes: 502 response_too_large (declared or streamed)`, async () => {
    await create(t, 'big', { url: `${echo.base}/big`, method: 'GET' });
    await create(t, 'big-declared', { url: `${echo.base}/big-declared`, method: 'GET' });
    assertErrorBody(await call(t, 'big'), 502, 'response_too_large');
    assertErrorBody(await call(t, 'big-declared'), 502, 'response_too_large');
  });

  it('hostile data: too deep (400), output too large (413), header injection (400); nothing sent', async () => {
    await create(t, 'repeat', {
      url: `${echo.base}/r`,
      body: Array.from({ length: 100 }, () => '{{payload}}'),
    });
    await create(t, 'header-data', { url: `${echo.base}/h`, headers: { 'X-Name': '{{name}}' } });
    await create(t, 'host-data', { url: 'http://{{host}}/x', method: 'GET' });
    const before = echo.seen.length;
    const deep = `${'['.repeat(100_000)}${']'.repeat(100_000)}`;
    assertErrorBody(
      await t.api('POST', `${base()}/plain-post/call`, { body: deep, contentType: 'application/json' }),
      400,
      'invalid_data',
    );
    assertErrorBody(await call(t, 'repeat', { blob: 'x'.repeat(20_000) }), 413, 'request_too_large');
    assertErrorBody(await call(t, 'header-data', { name: 'a\r\nX-Injected: 1' }), 400, 'invalid_data');
    assertErrorBody(await call(t, 'host-data', { host: 'a b' }), 400, 'invalid_url');
    assert.equal(echo.seen.length, before, 'no request reached the echo server');
    // Prototype-looking keys are plain data, and templates never reach prototypes.
    await create(t, 'proto-tpl', {
      url: `${echo.base}/proto`,
      body: { c: '{{constructor}}', p: '{{__proto__}}', t: '{{toString}}' },
    });
    const own = completed(await call(t, 'plain-post', { toString: 'x', hasOwnProperty: 1 })).body as Seen;
    assert.deepEqual(JSON.parse(own.body), { toString: 'x', hasOwnProperty: 1 });
    const none = completed(await call(t, 'proto-tpl', { a: 1 })).body as Seen;
    assert.deepEqual(JSON.parse(none.body), { c: null, p: null, t: null });
    // Bodies with "__proto__" or "constructor.prototype" are refused by the JSON parser.
    for (const body of ['{"__proto__": {"x": 1}}', '{"constructor": {"prototype": {"x": 1}}}']) {
      assertErrorBody(
        await t.api('POST', `${base()}/plain-post/call`, { body, contentType: 'application/json' }),
        400,
        'invalid_request',
      );
    }
  });

  it('disabled: 409 endpoint_disabled; unknown: 404; bad id: 400', async () => {
    await create(t, 'off', { url: `${echo.base}/off` }, { enabled: false });
    assertErrorBody(await call(t, 'off'), 409, 'endpoint_disabled');
    assertErrorBody(await call(t, 'no-such-endpoint'), 404, 'endpoint_not_found');
    assertErrorBody(await call(t, 'bad%20id'), 400, 'invalid_request');
  });

  it("another user's endpoints: 403, with any token; same ids stay apart", async () => {
    await create(t, 'shared-id', { url: `${echo.base}/bobs`, method: 'GET' }, {}, bob, 'bob');
    await create(t, 'shared-id', { url: `${echo.base}/admins`, method: 'GET' });
    assertErrorBody(await call(t, 'shared-id', undefined, bob, ADMIN), 403, 'forbidden');
    assertErrorBody(await call(t, 'shared-id', undefined, t.adminToken, 'bob'), 403, 'forbidden');
    assertErrorBody(await t.api('GET', base('bob')), 403, 'forbidden');
    assertErrorBody(await t.api('GET', `${base('bob')}/shared-id`), 403, 'forbidden');
    assertErrorBody(await t.api('DELETE', `${base('bob')}/shared-id`), 403, 'forbidden');
    assert.equal((completed(await call(t, 'shared-id', undefined, bob, 'bob')).body as Seen).url, '/bobs');
    assert.equal((completed(await call(t, 'shared-id')).body as Seen).url, '/admins');
  });

  it('access tokens: "call" may call; "read" may not; neither may read or change definitions', async () => {
    const mint = async (access: 'read' | 'call') => {
      const res = await t.api('POST', `/v1/users/${ADMIN}/tokens`, {
        json: { name: `ep-${access}`, scope: { access } },
      });
      assert.equal(res.status, 201);
      return (res.body as { access_token: string }).access_token;
    };
    const caller = await mint('call');
    const reader = await mint('read');
    assert.equal(completed(await call(t, 'text', undefined, caller)).body, 'hello text ✓');
    assertErrorBody(await call(t, 'text', undefined, reader), 403, 'forbidden');
    for (const token of [caller, reader]) {
      assertErrorBody(await t.request('GET', base(), { token }), 403, 'forbidden');
      assertErrorBody(await t.request('GET', `${base()}/text`, { token }), 403, 'forbidden');
      assertErrorBody(
        await t.request('POST', base(), { token, json: { endpoint: 'x', profile: { url: echo.base } } }),
        403,
        'forbidden',
      );
    }
    assertErrorBody(await t.request('POST', `${base()}/text/call`), 401);
  });

  it(`at most ${MAX_CONCURRENT} calls of a user at once: the rest get 429 too_many_calls`, async () => {
    await create(t, 'hold', { url: `${echo.base}/hold`, method: 'GET' });
    echo.maxInProgress = 0;
    const total = 5 * MAX_CONCURRENT;
    const answered: ApiResponse[] = [];
    const flood = Array.from({ length: total }, () =>
      call(t, 'hold').then((res) => {
        answered.push(res);
        return res;
      }),
    );
    // The held calls take the user's slots; every other one is refused at once.
    await waitFor(
      () => echo.inProgress === MAX_CONCURRENT && answered.length === total - MAX_CONCURRENT,
      `${MAX_CONCURRENT} held requests and ${total - MAX_CONCURRENT} refusals`,
      TIMEOUT_MS - 200,
      5,
    );
    for (const res of answered) {
      assertErrorBody(res, 429, 'too_many_calls');
      assert.equal(res.headers.get('retry-after'), '1');
    }
    // Another user is not limited by this one's calls.
    assert.equal(completed(await call(t, 'shared-id', undefined, bob, 'bob')).status, 200);
    echo.releaseHeld();
    const results = await Promise.all(flood);
    const done = results.filter((r) => r.status === 200);
    assert.equal(done.length, MAX_CONCURRENT);
    for (const r of done) assert.deepEqual(completed(r).body, { held: true });
    assert.equal(echo.maxInProgress, MAX_CONCURRENT, 'the echo server never saw more at once');
    // The slots are free again.
    assert.equal(completed(await call(t, 'text')).status, 200);
    assert.ok((await t.metric('iotmp_endpoint_call_duration_seconds_count')) >= total + 2);
  });
});

describe('addresses (default configuration: public addresses only)', () => {
  it('loopback in every spelling, and names resolving to it, are refused (403 address_refused); nothing is sent', async () => {
    const port = echo.port;
    const urls = [
      `http://127.0.0.1:${port}/`,
      `http://localhost:${port}/`,
      `http://[::1]:${port}/`,
      `http://[::ffff:127.0.0.1]:${port}/`,
      `http://0.0.0.0:${port}/`,
      `http://2130706433:${port}/`, // 127.0.0.1 as one number
      `http://0x7f.1:${port}/`,
    ];
    const before = echo.seen.length;
    for (const [i, url] of urls.entries()) {
      await create(strict, `lo-${i}`, { url, method: 'GET' });
      const res = await call(strict, `lo-${i}`);
      assertErrorBody(res, 403, 'address_refused');
      assert.match((res.body as { error: { message: string } }).error.message, /loopback|unspecified/, url);
    }
    assert.equal(echo.seen.length, before, 'no request reached the echo server');
  });

  it('a flood of calls is rate limited per user: 429 rate_limited with retry-after', async () => {
    await create(strict, 'lo', { url: `http://127.0.0.1:${echo.port}/`, method: 'GET' }, {}, carol, 'carol');
    const statuses: number[] = [];
    let retryAfter: string | null = null;
    for (let i = 0; i < 16; i++) {
      const res = await call(strict, 'lo', undefined, carol, 'carol');
      statuses.push(res.status);
      if (res.status === 429) {
        assertErrorBody(res, 429, 'rate_limited');
        retryAfter = res.headers.get('retry-after');
      } else assertErrorBody(res, 403, 'address_refused');
    }
    assert.deepEqual(statuses.slice(0, 10), new Array(10).fill(403), 'the burst of 10 passes the limiter');
    assert.ok(statuses.filter((s) => s === 429).length >= 4, `statuses ${statuses.join(',')}`);
    assert.ok(Number(retryAfter) >= 1, `retry-after ${retryAfter}`);
  });
});

describe('the endpoint runner', () => {
  const record = (url: string, method: HttpRequestProfile['method'] = 'GET'): EndpointRecord => ({
    username: 'u',
    endpoint: 'e',
    name: 'e',
    description: '',
    type: 'http_request',
    enabled: true,
    profile: { url, method },
    createdAt: 0,
    updatedAt: 0,
  });
  const storeOf = (r: EndpointRecord) =>
    ({
      get: (u: string, e: string) => (u === r.username && e === r.endpoint ? r : undefined),
    }) as EndpointStore;
  /** A resolver that answers from a table (and fails for the rest). */
  const resolverOf =
    (table: Record<string, string[]>) =>
    (
      hostname: string,
      _options: dns.LookupAllOptions,
      callback: (err: NodeJS.ErrnoException | null, addresses: dns.LookupAddress[]) => void,
    ) => {
      const addresses = table[hostname];
      if (!addresses) {
        const err: NodeJS.ErrnoException = new Error(`no such host ${hostname}`);
        err.code = 'ENOTFOUND';
        callback(err, []);
        return;
      }
      callback(
        null,
        addresses.map((address) => ({ address, family: address.includes(':') ? 6 : 4 })),
      );
    };
  const runner = (r: EndpointRecord, allowPrivate: boolean, table: Record<string, string[]>) =>
    new EndpointRunner({
      store: storeOf(r),
      allowPrivate,
      timeoutMs: 3000,
      maxResponseBytes: 1024 * 1024,
      maxConcurrent: 0,
      ratePerSecond: 0,
      rateBurst: 0,
      resolver: resolverOf(table),
    });

  it('checks the resolved address (DNS rebinding) and connects to exactly the checked address', async () => {
    // A public-looking name that resolves to loopback: refused after resolution.
    const refused = runner(record(`http://rebind.example:${echo.port}/`), false, {
      'rebind.example': ['127.0.0.1'],
    });
    await assert.rejects(refused.call('u', 'e', null), (err: unknown) => {
      assert.ok(err instanceof EndpointError);
      assert.equal(err.code, 'address_refused');
      assert.equal(err.status, 403);
      assert.match(err.message, /rebind\.example resolves to 127\.0\.0\.1, which is loopback/);
      return true;
    });
    // One public and one private address: refused too.
    const mixed = runner(record(`http://mixed.example:${echo.port}/`), false, {
      'mixed.example': ['8.8.8.8', '10.1.2.3'],
    });
    await assert.rejects(mixed.call('u', 'e', null), { code: 'address_refused' });
    await Promise.all([refused.close(), mixed.close()]);

    // Allowed: the socket connects to the address our resolver gave (no second lookup).
    const before = echo.seen.length;
    const allowed = runner(record(`http://echo.example:${echo.port}/via-name`), true, {
      'echo.example': ['127.0.0.1'],
    });
    const out = await allowed.call('u', 'e', null);
    assert.deepEqual(Object.keys(out).sort(), ['body', 'status']);
    assert.equal(out.status, 200);
    assert.equal((out.body as Seen).url, '/via-name');
    assert.equal((out.body as Seen).headers.host, `echo.example:${echo.port}`);
    assert.equal(echo.seen.length, before + 1);
    await assert.rejects(allowed.call('u', 'other', null), { code: 'endpoint_not_found', status: 404 });
    await allowed.close();
    await assert.rejects(allowed.call('u', 'e', null), { code: 'server_closing', status: 503 });
  });

  it('guardedLookup answers in the shape net.connect asks for (one address or all)', async () => {
    const lookup = guardedLookup(
      false,
      resolverOf({ 'pub.example': ['93.184.216.34', '2606:2800:220:1::1'] }),
    );
    const one = await new Promise<unknown[]>((resolve) =>
      lookup('pub.example', {}, (err, address, family) => resolve([err, address, family])),
    );
    assert.deepEqual(one, [null, '93.184.216.34', 4]);
    const all = await new Promise<unknown[]>((resolve) =>
      lookup('pub.example', { all: true }, (err, address) => resolve([err, address])),
    );
    assert.deepEqual(all, [
      null,
      [
        { address: '93.184.216.34', family: 4 },
        { address: '2606:2800:220:1::1', family: 6 },
      ],
    ]);
  });
});

describe('address classification', () => {
  it('refuses private, loopback, link-local, unique-local, multicast, reserved and embedded forms', () => {
    const refused = [
      '0.0.0.0',
      '0.1.2.3',
      '10.0.0.1',
      '100.64.0.1',
      '100.127.255.255',
      '127.0.0.1',
      '127.255.255.254',
      '169.254.169.254',
      '172.16.0.1',
      '172.31.255.255',
      '192.0.0.8',
      '192.0.2.1',
      '192.88.99.1',
      '192.168.1.1',
      '198.18.0.1',
      '198.19.255.255',
      '198.51.100.7',
      '203.0.113.9',
      '224.0.0.1',
      '239.255.255.250',
      '240.0.0.1',
      '255.255.255.255',
      '::',
      '::1',
      '::ffff:127.0.0.1',
      '::ffff:7f00:1',
      '::ffff:10.0.0.1',
      '::ffff:169.254.169.254',
      '::127.0.0.1',
      '::8.8.8.8',
      '64:ff9b::127.0.0.1',
      '64:ff9b::a00:1',
      '64:ff9b:1::1',
      '100::1',
      '2001::1',
      '2001:0:4136:e378:8000:63bf:3fff:fdd2',
      '2001:db8::1',
      '3fff::1',
      '2002:7f00:1::1',
      '2002:c0a8:101::1',
      'fc00::1',
      'fd12:3456:789a::1',
      'fe80::1',
      'fe80::1%eth0',
      'febf::1',
      'fec0::1',
      'ff02::1',
      'ff0e::1',
      '1::1',
      '4000::1',
      'not-an-address',
      '',
    ];
    for (const a of refused) assert.notEqual(addressRefusal(a), undefined, a);
    for (const a of [
      '8.8.8.8',
      '1.1.1.1',
      '93.184.216.34',
      '100.63.255.255',
      '100.128.0.1',
      '172.15.255.255',
      '172.32.0.1',
      '192.169.0.1',
      '223.255.255.255',
      '2606:4700:4700::1111',
      '2a00:1450:4001:80b::200e',
      '::ffff:8.8.8.8',
      '64:ff9b::808:808',
      '2002:808:808::1',
      '2001:200::1',
    ]) {
      assert.equal(addressRefusal(a), undefined, a);
    }
    assert.equal(addressRefusal('::ffff:127.0.0.1'), 'loopback (IPv4-mapped IPv6)');
    assert.equal(addressRefusal('169.254.169.254'), 'link-local');
  });
});

describe('per-user call limits (manual clock)', () => {
  it('a token bucket: a burst, then the sustained rate', () => {
    let now = 1_000_000;
    const limiter = new CallLimiter(0, 2, 3, () => now);
    for (let i = 0; i < 3; i++) limiter.acquire('u')();
    assert.throws(() => limiter.acquire('u'), { code: 'rate_limited', status: 429 });
    limiter.acquire('other')(); // another user has a bucket of its own
    now += 250;
    assert.throws(() => limiter.acquire('u'), { code: 'rate_limited' });
    now += 250;
    limiter.acquire('u')();
    assert.throws(
      () => limiter.acquire('u'),
      (err: unknown) => err instanceof EndpointError && err.retryAfterSeconds === 1,
    );
    now += 60_000;
    for (let i = 0; i < 3; i++) limiter.acquire('u')(); // refills up to the burst, not beyond
    assert.throws(() => limiter.acquire('u'), { code: 'rate_limited' });
  });

  it('calls in progress at once; released slots (once each) are free again', () => {
    const limiter = new CallLimiter(2, 0, 0);
    const a = limiter.acquire('u');
    const b = limiter.acquire('u');
    assert.throws(() => limiter.acquire('u'), { code: 'too_many_calls', status: 429 });
    a();
    a(); // a second release changes nothing
    const c = limiter.acquire('u');
    assert.throws(() => limiter.acquire('u'), { code: 'too_many_calls' });
    b();
    c();
  });

  it('idle users are forgotten when many are tracked', () => {
    let now = 0;
    const limiter = new CallLimiter(1, 10, 1, () => now);
    for (let i = 0; i < 10_000; i++) limiter.acquire(`user-${i}`)();
    assert.equal(limiter.size, 10_000);
    now += 1000; // every bucket is full again
    limiter.acquire('newcomer')();
    assert.equal(limiter.size, 1);
  });
});

describe('configuration', () => {
  it('endpoint settings from flags and environment; booleans are checked', () => {
    assert.equal(loadConfig([], {}).endpointAllowPrivate, false);
    assert.equal(loadConfig([], { IOTMP_ENDPOINTS_ALLOW_PRIVATE: 'true' }).endpointAllowPrivate, true);
    assert.equal(loadConfig(['--endpoint-allow-private', 'yes'], {}).endpointAllowPrivate, true);
    assert.equal(
      loadConfig(['--endpoint-allow-private', 'false'], { IOTMP_ENDPOINTS_ALLOW_PRIVATE: '1' })
        .endpointAllowPrivate,
      false,
    );
    assert.throws(() => loadConfig([], { IOTMP_ENDPOINTS_ALLOW_PRIVATE: 'maybe' }), ConfigError);
    const c = loadConfig(['--endpoint-timeout-ms', '2500', '--endpoint-max-concurrent', '3'], {
      IOTMP_ENDPOINTS_RATE: '7',
      IOTMP_ENDPOINTS_BURST: '9',
    });
    assert.deepEqual(
      [
        c.endpointTimeoutMs,
        c.endpointMaxConcurrent,
        c.endpointRatePerSecond,
        c.endpointRateBurst,
        c.endpointMaxResponseBytes,
      ],
      [2500, 3, 7, 9, 1024 * 1024],
    );
  });
});
