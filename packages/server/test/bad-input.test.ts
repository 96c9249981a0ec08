/**
 * Hostile input (issue 4 §4, §6): every route with wrong types, missing fields, oversized
 * bodies, invalid ids, unknown users/devices/resources, wrong content types and invalid JSON
 * gets the right 4xx with {"error": {"message", "code"}} and changes nothing; garbage on the
 * device ports (TCP, TLS, WebSocket) closes that connection only; a flood of bad device
 * logins is throttled.
 */
import assert from 'node:assert/strict';
import * as net from 'node:net';
import { after, before, describe, it } from 'node:test';
import * as tls from 'node:tls';
import { AuthError, type Device } from '@iotmp/device';
import { encodeMessage, MessageType, Session, type Transport } from '@iotmp/protocol';
import { connectWebSocket, SocketTransport } from '@iotmp/protocol/node';
import {
  ADMIN,
  type ApiOptions,
  type ApiResponse,
  assertErrorBody,
  TestServer,
  waitFor,
  withTimeout,
} from './helpers.js';

const MAX_BODY = 8192;
const CONNECT_TIMEOUT_MS = 500;

let t: TestServer;
let good: Device;
/** Every call the live device received. */
const seen: Array<{ path: string; input: unknown }> = [];
let tokenId = '';

before(async () => {
  t = await TestServer.start({
    flags: [
      '--max-body-bytes',
      String(MAX_BODY),
      '--connect-timeout-ms',
      String(CONNECT_TIMEOUT_MS),
      '--device-call-timeout-ms',
      '2000',
    ],
  });
  await t.createDevice('good', 'good-secret', { name: 'Good', description: 'the one that stays' });
  good = t
    .device('tcp', 1, 'good', 'good-secret')
    .resource('echo', {
      input: true,
      output: (v, call) => {
        seen.push({ path: call.path, input: v });
        return v ?? null;
      },
    })
    .resource('temperature', {
      output: (_v, call) => {
        seen.push({ path: call.path, input: undefined });
        return 21.5;
      },
    });
  await withTimeout(good.connect(), 5000, 'good device connect');
  const tok = await t.api('POST', `/v1/users/${ADMIN}/tokens`, { json: { name: 'keep' } });
  assert.equal(tok.status, 201);
  tokenId = (tok.body as { id: string }).id;
});
after(async () => {
  await t?.close();
});

/** Everything a bad request could have changed: devices (incl. live state) and tokens. */
async function snapshot(): Promise<string> {
  const devices = await t.api('GET', `/v1/users/${ADMIN}/devices`);
  const tokens = await t.api('GET', `/v1/users/${ADMIN}/tokens`);
  assert.equal(devices.status, 200);
  assert.equal(tokens.status, 200);
  return JSON.stringify({ devices: devices.body, tokens: tokens.body });
}

interface Case {
  what: string;
  method: string;
  path: string;
  options?: ApiOptions;
  status: number;
  code?: string;
}

/** Runs bad requests one by one: each gets its 4xx with an error body and changes nothing. */
async function expectRejected(cases: Case[]): Promise<void> {
  const before = await snapshot();
  const calls = seen.length;
  for (const c of cases) {
    let res: ApiResponse;
    try {
      res = await t.api(c.method, c.path, c.options);
    } catch (err) {
      throw new Error(`${c.what}: ${(err as Error).message}`);
    }
    try {
      assertErrorBody(res, c.status, c.code);
    } catch (err) {
      (err as Error).message = `${c.what} (${c.method} ${c.path.slice(0, 120)}): ${(err as Error).message}`;
      throw err;
    }
    assert.equal(await snapshot(), before, `${c.what}: nothing changed`);
  }
  assert.equal(seen.length, calls, 'the device received none of these');
  assert.equal(good.status.state, 'connected');
}

const json = (value: unknown): ApiOptions => ({ json: value });
const raw = (body: string | Uint8Array, contentType: string): ApiOptions => ({ body, contentType });
const big = (n: number) => 'x'.repeat(n);

describe('HTTP routes reject bad input with 4xx and change nothing', () => {
  const devices = `/v1/users/${ADMIN}/devices`;

  it('POST /v1/users/{u}/devices: missing fields, wrong types, invalid ids and credentials', async () => {
    const c = (what: string, options: ApiOptions, status = 400, code = 'invalid_request'): Case => ({
      what,
      method: 'POST',
      path: devices,
      options,
      status,
      code,
    });
    await expectRejected([
      c('no body', {}),
      c('empty object', json({})),
      c('no credentials', json({ device: 'x1' })),
      c('no device', json({ credentials: 'x' })),
      c('device is an object', json({ device: {}, credentials: 'x' })),
      c('device is an array', json({ device: ['a'], credentials: 'x' })),
      c('device is null', json({ device: null, credentials: 'x' })),
      c('credentials is an object', json({ device: 'x1', credentials: { a: 1 } })),
      c('enabled is "maybe"', json({ device: 'x1', credentials: 'x', enabled: 'maybe' })),
      c('name is an object', json({ device: 'x1', credentials: 'x', name: {} })),
      c('unknown field', json({ device: 'x1', credentials: 'x', owner: 'root' })),
      c('device id with a space', json({ device: 'bad id', credentials: 'x' })),
      c('device id with a slash', json({ device: 'a/b', credentials: 'x' })),
      c('device id starting with a dash', json({ device: '-a', credentials: 'x' })),
      c('device id ..', json({ device: '..', credentials: 'x' })),
      c('empty device id', json({ device: '', credentials: 'x' })),
      c('device id of 129 characters', json({ device: big(129), credentials: 'x' })),
      c('non-ASCII device id', json({ device: 'dévice', credentials: 'x' })),
      c('device id with NUL', json({ device: 'a\u0000b', credentials: 'x' })),
      c('empty credentials', json({ device: 'x1', credentials: '' })),
      c('credentials with a space', json({ device: 'x1', credentials: 'a b' })),
      c('credentials with a tab', json({ device: 'x1', credentials: 'a\tb' })),
      c('non-ASCII credentials', json({ device: 'x1', credentials: 'pässword' })),
      c('credentials of 257 characters', json({ device: 'x1', credentials: big(257) })),
      c('name of 257 characters', json({ device: 'x1', credentials: 'x', name: big(257) })),
      c('description of 4097 characters', json({ device: 'x1', credentials: 'x', description: big(4097) })),
      c('body is an array', json([{ device: 'x1', credentials: 'x' }])),
      c('body is a string', json('x1')),
      c('body is null', raw('null', 'application/json')),
      c('invalid JSON', raw('{"device": "x1", "credentials": ', 'application/json')),
      c('empty JSON body', raw('', 'application/json')),
      c(
        '__proto__ in JSON',
        raw('{"__proto__": {"admin": true}, "device": "x1", "credentials": "x"}', 'application/json'),
      ),
      c('text/plain body', raw('{"device":"x1","credentials":"x"}', 'text/plain')),
      c('octet-stream body', raw(new Uint8Array([1, 2, 3]), 'application/octet-stream')),
      c('XML body', raw('<device>x1</device>', 'application/xml'), 415, 'unsupported_media_type'),
      c(
        'oversized body',
        json({ device: 'x1', credentials: 'x', description: big(MAX_BODY) }),
        413,
        'payload_too_large',
      ),
      c('existing device', json({ device: 'good', credentials: 'other' }), 409, 'device_exists'),
      {
        ...c('invalid user in path', json({ device: 'x1', credentials: 'x' })),
        path: '/v1/users/bad%20user/devices',
      },
      {
        ...c('another user', json({ device: 'x1', credentials: 'x' }), 403, 'forbidden'),
        path: '/v1/users/other/devices',
      },
    ]);
  });

  it('JSON bodies are validated, not type-coerced (a number is not a device id, "false" is not a boolean)', async () => {
    const created: string[] = [];
    try {
      for (const [what, body] of [
        ['device id as a number', { device: 12345, credentials: 'x' }],
        ['credentials as a number', { device: 'coerced-cred', credentials: 12345 }],
        ['enabled as a string', { device: 'coerced-bool', credentials: 'x', enabled: 'false' }],
      ] as const) {
        const res = await t.api('POST', devices, json(body));
        if (res.status === 201) created.push((res.body as { device: string }).device);
        assert.equal(res.status, 400, `${what}: accepted as ${res.bytes.toString()}`);
        assertErrorBody(res, 400, 'invalid_request');
      }
    } finally {
      for (const d of created) await t.api('DELETE', `${devices}/${d}`);
    }
  });

  it('GET /v1/users/{u}/devices: bad paging, bad user', async () => {
    const c = (what: string, path: string, status = 400, code = 'invalid_request'): Case => ({
      what,
      method: 'GET',
      path,
      status,
      code,
    });
    await expectRejected([
      c('count=0', `${devices}?count=0`),
      c('count=1001', `${devices}?count=1001`),
      c('count=abc', `${devices}?count=abc`),
      c('count=1.5', `${devices}?count=1.5`),
      c('index=-1', `${devices}?index=-1`),
      c('index=abc', `${devices}?index=abc`),
      c('user with a space', '/v1/users/a%20b/devices'),
      c('user starting with a dot', '/v1/users/.hidden/devices'),
      c('user of 129 characters', `/v1/users/${big(129)}/devices`),
      c('another user', '/v1/users/someone-else/devices', 403, 'forbidden'),
    ]);
  });

  it('GET/PUT/PATCH/DELETE /v1/users/{u}/devices/{d}: invalid ids, unknown devices, bad updates', async () => {
    const one = `${devices}/good`;
    const c = (
      what: string,
      method: string,
      path: string,
      options?: ApiOptions,
      status = 400,
      code = 'invalid_request',
    ): Case => ({
      what,
      method,
      path,
      options,
      status,
      code,
    });
    const cases: Case[] = [];
    for (const method of ['GET', 'PUT', 'PATCH', 'DELETE']) {
      const body = method === 'PUT' || method === 'PATCH' ? json({ name: 'n' }) : undefined;
      cases.push(
        c(`${method} invalid id`, method, `${devices}/bad%20id`, body),
        c(`${method} id with %2F`, method, `${devices}/a%2Fb`, body),
        c(`${method} id of 129 characters`, method, `${devices}/${big(129)}`, body),
        c(`${method} unknown device`, method, `${devices}/nope`, body, 404, 'device_not_found'),
        c(`${method} another user's device`, method, '/v1/users/other/devices/good', body, 403, 'forbidden'),
      );
    }
    for (const method of ['PUT', 'PATCH']) {
      cases.push(
        c(`${method} enabled "maybe"`, method, one, json({ enabled: 'maybe' })),
        c(`${method} enabled {}`, method, one, json({ enabled: {} })),
        c(`${method} empty credentials`, method, one, json({ credentials: '' })),
        c(`${method} credentials with a space`, method, one, json({ credentials: 'a b' })),
        c(`${method} credentials as an object`, method, one, json({ credentials: {} })),
        c(`${method} name of 257 characters`, method, one, json({ name: big(257) })),
        c(`${method} unknown field`, method, one, json({ device: 'renamed' })),
        c(`${method} body is an array`, method, one, json([{ name: 'x' }])),
        c(`${method} invalid JSON`, method, one, raw('{"name":', 'application/json')),
        c(`${method} XML`, method, one, raw('<x/>', 'application/xml'), 415, 'unsupported_media_type'),
        c(
          `${method} oversized`,
          method,
          one,
          json({ description: big(MAX_BODY + 10) }),
          413,
          'payload_too_large',
        ),
      );
    }
    await expectRejected(cases);
  });

  it('GET /v3/users/{u}/devices/{d}/stats: invalid ids, unknown device or user', async () => {
    await expectRejected([
      { what: 'invalid id', method: 'GET', path: `/v3/users/${ADMIN}/devices/bad%20id/stats`, status: 400 },
      {
        what: 'unknown',
        method: 'GET',
        path: `/v3/users/${ADMIN}/devices/nope/stats`,
        status: 404,
        code: 'device_not_found',
      },
      {
        what: 'other user',
        method: 'GET',
        path: '/v3/users/other/devices/good/stats',
        status: 403,
        code: 'forbidden',
      },
    ]);
  });

  it('/v1/users/{u}/tokens: bad names, scopes, expiry; DELETE bad and unknown ids', async () => {
    const tokens = `/v1/users/${ADMIN}/tokens`;
    const c = (what: string, body: unknown, status = 400, code = 'invalid_request'): Case => ({
      what,
      method: 'POST',
      path: tokens,
      options: json(body),
      status,
      code,
    });
    await expectRejected([
      c('no name', {}),
      c('empty name', { name: '' }),
      c('name is a number-like object', { name: { x: 1 } }),
      c('name of 257 characters', { name: big(257) }),
      c('access "admin"', { name: 'n', scope: { access: 'admin' } }),
      c('scope without access', { name: 'n', scope: { devices: {} } }),
      c('scope is a string', { name: 'n', scope: 'all' }),
      c('invalid device id in scope', { name: 'n', scope: { access: 'read', devices: { 'bad id': {} } } }),
      c('resources not an array', {
        name: 'n',
        scope: { access: 'read', devices: { d: { resources: 'x' } } },
      }),
      c('empty resource name', { name: 'n', scope: { access: 'read', devices: { d: { resources: [''] } } } }),
      c('unknown scope field', { name: 'n', scope: { access: 'read', admin: true } }),
      c('unknown device grant field', {
        name: 'n',
        scope: { access: 'read', devices: { d: { all: true } } },
      }),
      c('expires_in below 60', { name: 'n', expires_in: 59 }),
      c('expires_in above ten years', { name: 'n', expires_in: 10 * 365 * 24 * 3600 + 1 }),
      c('expires_in "soon"', { name: 'n', expires_in: 'soon' }),
      c('expires_in 1.5', { name: 'n', expires_in: 90.5 }),
      c('unknown field', { name: 'n', admin: true }),
      c('oversized', { name: big(MAX_BODY) }, 413, 'payload_too_large'),
      {
        what: 'invalid JSON',
        method: 'POST',
        path: tokens,
        options: raw('{', 'application/json'),
        status: 400,
      },
      {
        what: 'other user',
        method: 'POST',
        path: '/v1/users/other/tokens',
        options: json({ name: 'n' }),
        status: 403,
      },
      {
        what: 'DELETE invalid id',
        method: 'DELETE',
        path: `${tokens}/bad%20id`,
        status: 400,
        code: 'invalid_request',
      },
      {
        what: 'DELETE unknown id',
        method: 'DELETE',
        path: `${tokens}/nope`,
        status: 404,
        code: 'token_not_found',
      },
      { what: 'DELETE other user', method: 'DELETE', path: `/v1/users/other/tokens/${tokenId}`, status: 403 },
      {
        what: 'GET other user',
        method: 'GET',
        path: '/v1/users/other/tokens',
        status: 403,
        code: 'forbidden',
      },
    ]);
  });

  it('/v3/users/{u}/devices/{d}/resources…: bad names, queries, bodies; unknown device/user', async () => {
    const base = `/v3/users/${ADMIN}/devices/good/resources`;
    const c = (
      what: string,
      method: string,
      path: string,
      options?: ApiOptions,
      status = 400,
      code = 'invalid_request',
    ): Case => ({
      what,
      method,
      path,
      options,
      status,
      code,
    });
    const manyParams = Array.from({ length: 65 }, (_, i) => `p${i}=1`).join('&');
    await expectRejected([
      c('empty resource name', 'GET', `${base}/`),
      c('empty resource name (POST)', 'POST', `${base}/`, json(1)),
      c('only /api', 'GET', `${base}//api`),
      c('resource name of 1025 characters', 'GET', `${base}/${big(1025)}`),
      c('65 query parameters', 'GET', `${base}/echo?${manyParams}`),
      c('query value of 4097 characters', 'GET', `${base}/echo?x=${big(4097)}`),
      c('invalid JSON input', 'POST', `${base}/echo`, raw('{"a":', 'application/json')),
      c('empty JSON input', 'POST', `${base}/echo`, raw('', 'application/json')),
      c('__proto__ in JSON input', 'POST', `${base}/echo`, raw('{"__proto__":{"x":1}}', 'application/json')),
      c('XML input', 'POST', `${base}/echo`, raw('<a/>', 'application/xml'), 415, 'unsupported_media_type'),
      c('oversized JSON input', 'POST', `${base}/echo`, json({ x: big(MAX_BODY) }), 413, 'payload_too_large'),
      c(
        'oversized binary input',
        'POST',
        `${base}/echo`,
        raw(new Uint8Array(MAX_BODY + 1), 'application/octet-stream'),
        413,
        'payload_too_large',
      ),
      c('invalid device id', 'GET', `/v3/users/${ADMIN}/devices/bad%20id/resources/echo`),
      c('invalid device id (DESCRIBE)', 'GET', `/v3/users/${ADMIN}/devices/bad%20id/resources`),
      c('invalid user', 'POST', '/v3/users/a%20b/devices/good/resources/echo', json(1)),
      c(
        'unknown device',
        'GET',
        `/v3/users/${ADMIN}/devices/nope/resources/echo`,
        undefined,
        404,
        'device_not_found',
      ),
      c(
        'unknown device (POST)',
        'POST',
        `/v3/users/${ADMIN}/devices/nope/resources/echo`,
        json(1),
        404,
        'device_not_found',
      ),
      c('unknown user', 'GET', '/v3/users/nobody/devices/good/resources/echo', undefined, 403, 'forbidden'),
      c(
        'unknown user (DESCRIBE)',
        'GET',
        '/v3/users/nobody/devices/good/resources',
        undefined,
        403,
        'forbidden',
      ),
    ]);
    // Unknown resources reach the device (it is the one that knows) and answer 404.
    assertErrorBody(await t.api('GET', `${base}/nope`), 404, 'resource_not_found');
    assertErrorBody(await t.api('POST', `${base}/nope`, json({ a: 1 })), 404, 'resource_not_found');
    assertErrorBody(await t.api('GET', `${base}/nope/api`), 404, 'resource_not_found');
  });

  it('JSON input nested deeper than PSON allows: 400, the session survives', async () => {
    const depth = 1500; // within the body limit, beyond any sane nesting
    const body = `${'['.repeat(depth)}${']'.repeat(depth)}`;
    const res = await t.api(
      'POST',
      `/v3/users/${ADMIN}/devices/good/resources/echo`,
      raw(body, 'application/json'),
    );
    assert.ok(
      res.status >= 400 && res.status < 500,
      `got ${res.status}: ${res.bytes.toString().slice(0, 200)}`,
    );
    assertErrorBody(res, res.status);
    const ok = await t.api(
      'POST',
      `/v3/users/${ADMIN}/devices/good/resources/echo`,
      json({ fine: [1, [2, [3]]] }),
    );
    assert.equal(ok.status, 200);
    assert.deepEqual(ok.body, { fine: [1, [2, [3]]] });
    assert.equal(good.status.state, 'connected');
  });

  it('POST /oauth/token: wrong types, oversized, invalid JSON, wrong content type', async () => {
    const c = (what: string, options: ApiOptions, status = 400, code = 'invalid_request'): Case => ({
      what,
      method: 'POST',
      path: '/oauth/token',
      options: { token: undefined, ...options },
      status,
      code,
    });
    await expectRejected([
      c('no body', {}),
      c('grant_type is a number', json({ grant_type: 5 })),
      c('grant_type unknown', json({ grant_type: 'implicit' })),
      c('username of 129 characters', json({ grant_type: 'password', username: big(129), password: 'x' })),
      c(
        'password of 1025 characters',
        json({ grant_type: 'password', username: ADMIN, password: big(1025) }),
      ),
      c('username is an object', json({ grant_type: 'password', username: {}, password: 'x' })),
      c('refresh_token of 513 characters', json({ grant_type: 'refresh_token', refresh_token: big(513) })),
      c('invalid JSON', raw('{"grant_type":', 'application/json')),
      c(
        'oversized form',
        raw(
          `grant_type=password&username=admin&password=${big(MAX_BODY)}`,
          'application/x-www-form-urlencoded',
        ),
        413,
        'payload_too_large',
      ),
      c('XML', raw('<grant/>', 'application/xml'), 415, 'unsupported_media_type'),
    ]);
  });

  it('unknown routes and methods: 404 not_found with a token, 401 without', async () => {
    await expectRejected([
      { what: 'unknown path', method: 'GET', path: '/v1/nothing-here', status: 404, code: 'not_found' },
      {
        what: 'unknown method',
        method: 'DELETE',
        path: `/v1/users/${ADMIN}/devices`,
        status: 404,
        code: 'not_found',
      },
      { what: 'v1 resources', method: 'GET', path: `/v1/users/${ADMIN}/devices/good/resources`, status: 404 },
      {
        what: 'no token',
        method: 'GET',
        path: '/v1/nothing-here',
        options: { token: undefined },
        status: 401,
        code: 'unauthorized',
      },
    ]);
  });

  it('device ids of up to 128 characters are addressable in every path', async () => {
    const id = `long-${big(123)}`;
    assert.equal(id.length, 128);
    await t.createDevice(id, 'x');
    try {
      assert.equal((await t.api('GET', `${devices}/${id}`)).status, 200);
      assert.equal((await t.api('PUT', `${devices}/${id}`, json({ name: 'long' }))).status, 200);
      assert.equal((await t.api('GET', `/v3/users/${ADMIN}/devices/${id}/stats`)).status, 200);
      assertErrorBody(
        await t.api('GET', `/v3/users/${ADMIN}/devices/${id}/resources/x`),
        404,
        'device_offline',
      );
    } finally {
      assert.equal((await t.api('DELETE', `${devices}/${id}`)).status, 200);
    }
  });

  it('malformed URLs and over-long path parameters get the error body too', async () => {
    await expectRejected([
      { what: 'bad %-encoding in the user', method: 'GET', path: '/v1/users/%E0%A4%A/devices', status: 400 },
      { what: 'lone % in the device', method: 'GET', path: `${devices}/%`, status: 400 },
      {
        what: 'bad %-encoding in a resource',
        method: 'GET',
        path: `/v3/users/${ADMIN}/devices/good/resources/%ZZ`,
        status: 400,
      },
      { what: 'device id of 2000 characters', method: 'GET', path: `${devices}/${big(2000)}`, status: 414 },
    ]);
  });

  it('GET /iotmp without a WebSocket upgrade: 4xx, not a crash', async () => {
    const res = await t.request('GET', '/iotmp');
    assert.ok(res.status >= 400 && res.status < 500, `got ${res.status}`);
    assert.equal((await t.api('GET', `/v3/users/${ADMIN}/devices/good/resources/temperature`)).status, 200);
  });
});

/** Waits (bounded) for a raw socket to be closed by the server; returns how long it took. */
function closedBy(socket: net.Socket, timeoutMs = 5000): Promise<{ ms: number; received: Buffer }> {
  const started = Date.now();
  const chunks: Buffer[] = [];
  socket.on('data', (c: Buffer) => chunks.push(c));
  return withTimeout(
    new Promise((resolve) => {
      const done = () => resolve({ ms: Date.now() - started, received: Buffer.concat(chunks) });
      if (socket.destroyed) done();
      else socket.once('close', done);
    }),
    timeoutMs,
    'the server to close the connection',
  );
}

function transportClosed(transport: Transport, timeoutMs = 5000): Promise<number> {
  const started = Date.now();
  return withTimeout(
    new Promise((resolve) =>
      transport.attach({ onData: () => {}, onClose: () => resolve(Date.now() - started) }),
    ),
    timeoutMs,
    'the server to close the connection',
  );
}

describe('garbage on the device ports', () => {
  async function stillServing(): Promise<void> {
    const r = await t.api('POST', `/v3/users/${ADMIN}/devices/good/resources/echo`, json({ still: 'here' }));
    assert.equal(r.status, 200);
    assert.deepEqual(r.body, { still: 'here' });
    assert.equal(good.status.state, 'connected');
  }

  it('TCP: random bytes, an oversized frame, a message before CONNECT, a broken CONNECT', async () => {
    const payloads: Array<[string, Uint8Array]> = [
      ['random bytes', Uint8Array.from({ length: 4096 }, (_, i) => (i * 2654435761) >>> 24)],
      ['HTTP request', Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n')],
      ['frame claiming 4 GiB', Uint8Array.from([MessageType.CONNECT, 0xff, 0xff, 0xff, 0xff, 0x0f])],
      ['RUN before CONNECT', encodeMessage({ type: MessageType.RUN, streamId: 1, resource: 'x' })],
      [
        'CONNECT with 2 strings',
        encodeMessage({ type: MessageType.CONNECT, streamId: 1, payload: ['admin', 'good'] }),
      ],
      ['CONNECT with a number', encodeMessage({ type: MessageType.CONNECT, streamId: 1, payload: 42 })],
    ];
    for (const [what, bytes] of payloads) {
      const socket = await t.rawSocket(t.server.tcpPort);
      socket.write(bytes);
      const { ms } = await closedBy(socket).catch((err: Error) => {
        throw new Error(`${what}: ${err.message}`);
      });
      assert.ok(ms < 4000, `${what}: closed after ${ms} ms`);
    }
    await stillServing();
  });

  it('TCP: silence, or half a frame, is closed after the connect timeout', async () => {
    for (const [what, bytes] of [
      ['silence', undefined],
      [
        'half a CONNECT',
        encodeMessage({ type: MessageType.CONNECT, payload: ['admin', 'good', 'x'] }).slice(0, 6),
      ],
    ] as const) {
      const socket = await t.rawSocket(t.server.tcpPort);
      if (bytes) socket.write(bytes);
      const { ms } = await closedBy(socket);
      assert.ok(ms >= CONNECT_TIMEOUT_MS - 100, `${what}: closed after ${ms} ms, before the timeout`);
      assert.ok(ms < CONNECT_TIMEOUT_MS + 3000, `${what}: closed after ${ms} ms`);
    }
    await stillServing();
  });

  it('TLS: plaintext and garbage after the handshake', async () => {
    const plain = await t.rawSocket(t.server.tlsPort);
    plain.write(Buffer.from('\x03\x01garbage that is not a TLS record'.repeat(10)));
    await closedBy(plain);
    const secure = tls.connect({
      host: '127.0.0.1',
      port: t.server.tlsPort,
      ca: t.server.tlsCert,
      servername: 'localhost',
    });
    t.sockets.add(secure);
    secure.on('error', () => {});
    await withTimeout(new Promise((r) => secure.once('secureConnect', r)), 5000, 'TLS handshake');
    secure.write(Uint8Array.from({ length: 2048 }, (_, i) => (i * 31 + 7) & 0xff));
    await closedBy(secure);
    await stillServing();
  });

  it('WebSocket /iotmp: garbage frames', async () => {
    const ws = await connectWebSocket({ url: `ws://127.0.0.1:${t.server.httpPort}/iotmp`, timeoutMs: 5000 });
    const closed = transportClosed(ws);
    ws.write(Uint8Array.from({ length: 1024 }, (_, i) => (i * 13) & 0xff));
    await closed;
    const ws2 = await connectWebSocket({ url: `ws://127.0.0.1:${t.server.httpPort}/iotmp`, timeoutMs: 5000 });
    const closed2 = transportClosed(ws2);
    ws2.write(encodeMessage({ type: MessageType.RUN, streamId: 1, resource: 'x' }));
    await closed2;
    await stillServing();
  });

  it('a new device still logs in after all that, and the server counted nothing as a device', async () => {
    await t.createDevice('after-garbage', 'fine');
    const d = t.device('ws', 0, 'after-garbage', 'fine', { reconnect: false });
    await withTimeout(d.connect(), 5000, 'login after garbage');
    assert.equal(await t.metric('iotmp_devices_connected'), 2);
    await d.close();
    await stillServing();
  });
});

describe('a flood of bad device logins is throttled', () => {
  let f: TestServer;
  let bystander: Device;

  before(async () => {
    f = await TestServer.start({ tls: false });
    await f.createDevice('victim', 'right-secret');
    await f.createDevice('bystander', 'bystander-secret');
    await f.createDevice('late', 'late-secret');
    await f.createDevice('victim2', 'right-secret');
    bystander = f.device('tcp', 1, 'bystander', 'bystander-secret', { reconnect: false });
    bystander.resource('ping', { output: () => 'pong' });
    await withTimeout(bystander.connect(), 5000, 'bystander connect');
  });
  after(async () => {
    await f?.close();
  });

  async function badLogin(deviceId: string, credential: string): Promise<void> {
    const d = f.device('tcp', 1, deviceId, credential, { reconnect: false });
    await assert.rejects(withTimeout(d.connect(), 10_000, 'refused login'), AuthError);
    await d.close();
  }

  /** A login over a socket bound to another loopback address (another source address). */
  async function loginFrom(localAddress: string, deviceId: string, credential: string): Promise<Session> {
    const socket = net.connect({ host: '127.0.0.1', port: f.server.tcpPort, localAddress });
    f.sockets.add(socket);
    socket.on('error', () => {});
    await withTimeout(new Promise((r) => socket.once('connect', r)), 5000, 'connect');
    const session = new Session({ role: 'client', transport: new SocketTransport(socket) });
    await withTimeout(session.connect({ username: ADMIN, deviceId, credential }), 10_000, 'login');
    return session;
  }

  it('a concurrent burst of bad logins from one address is throttled past the limit too', async () => {
    // 12 bad logins at once from a fresh address for a fresh device: only the first 10 should
    // cost a credential check; the throttle must count attempts in flight, not only finished ones.
    const before = await f.metric('iotmp_device_auth_throttled_total');
    const results = await Promise.allSettled(
      Array.from({ length: 12 }, (_, i) => loginFrom('127.0.0.4', 'victim2', `burst-${i}`)),
    );
    assert.ok(
      results.every((r) => r.status === 'rejected' && r.reason instanceof AuthError),
      'all refused',
    );
    const throttled = (await f.metric('iotmp_device_auth_throttled_total')) - before;
    assert.ok(
      throttled >= 2,
      `only ${throttled} of 12 concurrent bad logins were throttled (each other one ran scrypt)`,
    );
  });

  it('bad logins are refused and, past the limit, throttled (metrics)', async () => {
    const failures0 = await f.metric('iotmp_device_auth_failures_total');
    const throttled0 = await f.metric('iotmp_device_auth_throttled_total');
    // Ten failures, the limit (at once: each costs a credential check, so this saves time).
    await Promise.all(Array.from({ length: 10 }, (_, i) => badLogin('victim', `wrong-${i}`)));
    assert.equal((await f.metric('iotmp_device_auth_failures_total')) - failures0, 10);
    assert.equal(await f.metric('iotmp_device_auth_throttled_total'), throttled0, 'nothing throttled yet');
    // Past the limit: refused without checking the credential, quickly.
    const started = Date.now();
    await Promise.all(Array.from({ length: 20 }, (_, i) => badLogin('victim', `wrong-again-${i}`)));
    const took = Date.now() - started;
    assert.equal((await f.metric('iotmp_device_auth_throttled_total')) - throttled0, 20, 'throttled counted');
    assert.equal((await f.metric('iotmp_device_auth_failures_total')) - failures0, 30);
    assert.ok(took < 5000, `20 throttled logins took ${took} ms (no KDF work)`);
  });

  it('observed: while blocked, even the right credential is refused, for that device and for any device from 127.0.0.1', async () => {
    // The device key is blocked: the right credential is refused too.
    await badLogin('victim', 'right-secret');
    // The source address is blocked: another device with its right credential from the same
    // address (every test connects from 127.0.0.1) is refused as well.
    await badLogin('late', 'late-secret');
    assert.ok((await f.metric('iotmp_device_auth_throttled_total')) > 0);
  });

  it('a live session is not affected, and a good device from another address logs in', async () => {
    assert.equal(bystander.status.state, 'connected');
    const r = await f.api('GET', `/v3/users/${ADMIN}/devices/bystander/resources/ping`);
    assert.equal(r.status, 200);
    assert.equal(r.body, 'pong');
    const session = await loginFrom('127.0.0.2', 'late', 'late-secret');
    await waitFor(async () => {
      const s = await f.api('GET', `/v3/users/${ADMIN}/devices/late/stats`);
      return (s.body as { connected: boolean; ip_address: string }).ip_address === '127.0.0.2';
    }, 'late to be connected from 127.0.0.2');
    session.close();
    // Throttling is per device *from an address*: failures from 127.0.0.1 do not lock the
    // victim out when it logs in from elsewhere (no lock-out by strangers).
    const victim = await loginFrom('127.0.0.3', 'victim', 'right-secret');
    victim.close();
  });
});
