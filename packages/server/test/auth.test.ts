/**
 * Accounts and tokens (issue 4 §2): password and refresh_token grants (form and JSON,
 * refresh tokens rotate), 401 for missing/invalid/expired/revoked tokens, ?authorization=,
 * scoped access tokens (read-only, one device, listed resources, no account management),
 * and another user's data never reachable.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Device } from '@iotmp/device';
import { ADMIN, ADMIN_PASSWORD, assertErrorBody, TestServer, waitFor, withTimeout } from './helpers.js';

let t: TestServer;
const devices: Record<string, Device> = {};
const inputs: Record<string, unknown[]> = { d1: [], d2: [] };

before(async () => {
  t = await TestServer.start({ tls: false });
  for (const id of ['d1', 'd2'] as const) {
    await t.createDevice(id, `${id}-secret`);
    const d = t
      .device('tcp', 1, id, `${id}-secret`)
      .resource('temperature', { output: () => ({ device: id, celsius: 20 }) })
      .resource('humidity', { output: () => 55 })
      .resource('led', {
        input: (v) => {
          inputs[id]?.push(v);
        },
      });
    await withTimeout(d.connect(), 5000, `${id} connect`);
    devices[id] = d;
  }
});
after(async () => {
  await t?.close();
});

const resource = (device: string, path: string, user = ADMIN) =>
  `/v3/users/${user}/devices/${device}/resources/${path}`;

function base64url(value: unknown): string {
  return Buffer.from(JSON.stringify(value)).toString('base64url');
}

describe('POST /oauth/token', () => {
  it('password grant as a form and as JSON', async () => {
    for (const as of ['form', 'json'] as const) {
      const res = await t.tokenRequest(
        { grant_type: 'password', username: ADMIN, password: ADMIN_PASSWORD },
        as,
      );
      assert.equal(res.status, 200, res.bytes.toString());
      const body = res.body as Record<string, unknown>;
      assert.deepEqual(Object.keys(body).sort(), [
        'access_token',
        'expires_in',
        'refresh_token',
        'token_type',
      ]);
      assert.equal(body.token_type, 'bearer');
      assert.equal(body.expires_in, 7200, 'access tokens live 2 h');
      assert.equal((body.access_token as string).split('.').length, 3, 'a JWT');
      assert.equal(typeof body.refresh_token, 'string');
      assert.ok((body.refresh_token as string).length >= 32);
      const list = await t.request('GET', `/v1/users/${ADMIN}/devices`, {
        token: body.access_token as string,
      });
      assert.equal(list.status, 200);
    }
  });

  it('wrong password and unknown user: 401 invalid_grant, same message', async () => {
    const wrong = await t.tokenRequest({ grant_type: 'password', username: ADMIN, password: 'nope' });
    assertErrorBody(wrong, 401, 'invalid_grant');
    const unknown = await t.tokenRequest(
      { grant_type: 'password', username: 'nobody', password: 'nope' },
      'json',
    );
    assertErrorBody(unknown, 401, 'invalid_grant');
    assert.deepEqual(wrong.body, unknown.body, 'no user-name oracle');
  });

  it('missing or unsupported fields: 400', async () => {
    assertErrorBody(
      await t.tokenRequest({ grant_type: 'password', username: ADMIN }),
      400,
      'invalid_request',
    );
    assertErrorBody(
      await t.tokenRequest({ grant_type: 'password', password: 'x' }, 'json'),
      400,
      'invalid_request',
    );
    assertErrorBody(await t.tokenRequest({ grant_type: 'client_credentials' }), 400, 'invalid_request');
    assertErrorBody(
      await t.tokenRequest({ username: ADMIN, password: ADMIN_PASSWORD }),
      400,
      'invalid_request',
    );
    assertErrorBody(await t.tokenRequest({ grant_type: 'refresh_token' }, 'json'), 400, 'invalid_request');
  });

  it('refresh_token grant (form and JSON); refresh tokens rotate: a used one is refused', async () => {
    const first = await t.login(ADMIN, ADMIN_PASSWORD, 'json');
    const r1 = await t.tokenRequest({ grant_type: 'refresh_token', refresh_token: first.refresh_token });
    assert.equal(r1.status, 200, r1.bytes.toString());
    const second = r1.body as { access_token: string; refresh_token: string; token_type: string };
    assert.equal(second.token_type, 'bearer');
    assert.notEqual(second.refresh_token, first.refresh_token);
    assert.notEqual(second.access_token, first.access_token);
    assert.equal(
      (await t.request('GET', `/v1/users/${ADMIN}/devices`, { token: second.access_token })).status,
      200,
    );
    // The used refresh token is gone.
    const reuse = await t.tokenRequest(
      { grant_type: 'refresh_token', refresh_token: first.refresh_token },
      'json',
    );
    assertErrorBody(reuse, 401, 'invalid_grant');
    // The new one works once, as JSON.
    const r2 = await t.tokenRequest(
      { grant_type: 'refresh_token', refresh_token: second.refresh_token },
      'json',
    );
    assert.equal(r2.status, 200);
    const r2again = await t.tokenRequest({
      grant_type: 'refresh_token',
      refresh_token: second.refresh_token,
    });
    assertErrorBody(r2again, 401, 'invalid_grant');
    // Neither an access token nor garbage is a refresh token.
    assertErrorBody(
      await t.tokenRequest({ grant_type: 'refresh_token', refresh_token: second.access_token }),
      401,
      'invalid_grant',
    );
    assertErrorBody(
      await t.tokenRequest({ grant_type: 'refresh_token', refresh_token: 'x' }),
      401,
      'invalid_grant',
    );
  });
});

describe('401 for missing, invalid and expired tokens', () => {
  const path = `/v1/users/${ADMIN}/devices`;

  it('missing token: 401 unauthorized with WWW-Authenticate: Bearer', async () => {
    const res = await t.request('GET', path);
    assertErrorBody(res, 401, 'unauthorized');
    assert.equal(res.headers.get('www-authenticate'), 'Bearer');
    for (const [method, p] of [
      ['GET', `/v1/users/${ADMIN}/devices/d1`],
      ['POST', `/v1/users/${ADMIN}/devices`],
      ['DELETE', `/v1/users/${ADMIN}/devices/d1`],
      ['GET', `/v3/users/${ADMIN}/devices/d1/stats`],
      ['GET', `/v3/users/${ADMIN}/devices/d1/resources`],
      ['GET', resource('d1', 'temperature')],
      ['POST', resource('d1', 'led')],
      ['GET', `/v1/users/${ADMIN}/tokens`],
    ] as const) {
      assertErrorBody(await t.request(method, p), 401, 'unauthorized');
    }
    assert.equal(inputs.d1?.length, 0, 'nothing reached the device');
    assert.deepEqual(await t.deviceIds(), ['d1', 'd2'], 'nothing deleted');
  });

  it('invalid tokens: garbage, other schemes, tampered, alg "none", foreign signature', async () => {
    assertErrorBody(await t.request('GET', path, { token: 'garbage' }), 401, 'invalid_token');
    assertErrorBody(
      await t.request('GET', path, {
        headers: { authorization: `Basic ${Buffer.from('admin:x').toString('base64')}` },
      }),
      401,
      'unauthorized',
    );
    assertErrorBody(
      await t.request('GET', path, { headers: { authorization: 'Bearer' } }),
      401,
      'unauthorized',
    );
    const [header, payload, signature] = t.adminToken.split('.') as [string, string, string];
    // Same signature, payload claiming another user.
    const claims = JSON.parse(Buffer.from(payload, 'base64url').toString()) as Record<string, unknown>;
    const forged = `${header}.${base64url({ ...claims, sub: 'root' })}.${signature}`;
    assertErrorBody(await t.request('GET', path, { token: forged }), 401, 'invalid_token');
    // Flipped signature.
    const flipped = `${header}.${payload}.${signature.startsWith('A') ? 'B' : 'A'}${signature.slice(1)}`;
    assertErrorBody(await t.request('GET', path, { token: flipped }), 401, 'invalid_token');
    // Unsigned.
    const none = `${base64url({ alg: 'none', typ: 'JWT' })}.${payload}.`;
    assertErrorBody(await t.request('GET', path, { token: none }), 401, 'invalid_token');
    // Signed by another server (another secret).
    const other = await TestServer.start({ tcp: false, tls: false });
    try {
      assertErrorBody(await t.request('GET', path, { token: other.adminToken }), 401, 'invalid_token');
    } finally {
      await other.close();
    }
    // A refresh token is not an access token.
    const pair = await t.login(ADMIN, ADMIN_PASSWORD);
    assertErrorBody(await t.request('GET', path, { token: pair.refresh_token }), 401, 'invalid_token');
  });

  it('expired access token: 401 token_expired (server with 1 s access tokens); refresh still works', async () => {
    const short = await TestServer.start({
      tcp: false,
      tls: false,
      flags: ['--access-token-ttl-seconds', '1'],
    });
    try {
      const pair = await short.login(ADMIN, ADMIN_PASSWORD);
      assert.equal(pair.expires_in, 1);
      const started = Date.now();
      const expired = await waitFor(
        async () => {
          const res = await short.request('GET', path, { token: pair.access_token });
          return res.status === 401 ? res : undefined;
        },
        'the access token to expire',
        5000,
        100,
      );
      assert.ok(Date.now() - started < 4500, 'expired within about a second (2 s at most, plus load)');
      assertErrorBody(expired, 401, 'token_expired');
      assert.match((expired.body as { error: { message: string } }).error.message, /expired/);
      // The TokenService says the same.
      await assert.rejects(short.server.tokens.verify(pair.access_token), {
        code: 'token_expired',
        status: 401,
      });
      const refreshed = await short.tokenRequest({
        grant_type: 'refresh_token',
        refresh_token: pair.refresh_token,
      });
      assert.equal(refreshed.status, 200);
      const fresh = (refreshed.body as { access_token: string }).access_token;
      assert.equal((await short.request('GET', path, { token: fresh })).status, 200);
    } finally {
      await short.close();
    }
  });

  it('?authorization= works on every route kind', async () => {
    const q = `authorization=${encodeURIComponent(t.adminToken)}`;
    assert.equal((await t.request('GET', `${path}?${q}`)).status, 200);
    assert.equal((await t.request('GET', `/v1/users/${ADMIN}/devices/d1?${q}`)).status, 200);
    assert.equal((await t.request('GET', `/v3/users/${ADMIN}/devices/d1/stats?${q}`)).status, 200);
    assert.equal((await t.request('GET', `/v3/users/${ADMIN}/devices/d1/resources?${q}`)).status, 200);
    const r = await t.request('GET', `${resource('d1', 'temperature')}?${q}`);
    assert.equal(r.status, 200);
    assert.deepEqual(r.body, { device: 'd1', celsius: 20 });
    assert.equal((await t.request('GET', `/v1/users/${ADMIN}/tokens?${q}`)).status, 200);
    assertErrorBody(await t.request('GET', `${path}?authorization=garbage`), 401, 'invalid_token');
    assertErrorBody(await t.request('GET', `${path}?authorization=`), 401, 'unauthorized');
  });
});

describe('scoped access tokens', () => {
  async function token(name: string, scope?: unknown): Promise<{ id: string; access_token: string }> {
    const res = await t.api('POST', `/v1/users/${ADMIN}/tokens`, {
      json: scope === undefined ? { name } : { name, scope },
    });
    assert.equal(res.status, 201, res.bytes.toString());
    return res.body as { id: string; access_token: string };
  }
  const as = (tok: string, method: string, path: string, json?: unknown) =>
    t.request(method, path, { token: tok, json });

  it('a token made or changed with an access token may not outlive it (403); a login may', async () => {
    const short = await t.api('POST', `/v1/users/${ADMIN}/tokens`, {
      json: { name: 'short-admin', allow: { '*': { '*': '*' } }, expires_in: 120 },
    });
    assert.equal(short.status, 201, short.bytes.toString());
    const tok = (short.body as { access_token: string }).access_token;
    const key = (short.body as { token: string }).token;
    const before = ((await t.api('GET', `/v1/users/${ADMIN}/tokens`)).body as unknown[]).length;
    assertErrorBody(
      await as(tok, 'POST', `/v1/users/${ADMIN}/tokens`, { name: 'forever' }),
      403,
      'forbidden',
    );
    assertErrorBody(
      await as(tok, 'POST', `/v1/users/${ADMIN}/tokens`, { name: 'later', expires_in: 3600 }),
      403,
      'forbidden',
    );
    assertErrorBody(
      await as(tok, 'PUT', `/v1/users/${ADMIN}/tokens/${key}`, { expire: 0 }),
      403,
      'forbidden',
    );
    assertErrorBody(
      await as(tok, 'POST', `/v1/users/${ADMIN}/devices/d1/tokens`, { token_name: 'dev-forever' }),
      403,
      'forbidden',
    );
    assert.equal(((await t.api('GET', `/v1/users/${ADMIN}/tokens`)).body as unknown[]).length, before);
    // Within its own lifetime it may; a login token may make one that never expires.
    const within = await as(tok, 'POST', `/v1/users/${ADMIN}/tokens`, { name: 'within', expires_in: 60 });
    assert.equal(within.status, 201, within.bytes.toString());
    const forever = await t.api('PUT', `/v1/users/${ADMIN}/tokens/${key}`, { json: { expire: 0 } });
    assert.equal(forever.status, 200, forever.bytes.toString());
  });

  it('deleting a device deletes the tokens limited to it: a device re-created under its id does not inherit them', async () => {
    const created = await t.api('POST', `/v1/users/${ADMIN}/devices`, {
      json: { device: 'tmpdev', credentials: 'tmp-secret-1' },
    });
    assert.equal(created.status, 201, created.bytes.toString());
    const devTok = await t.api('POST', `/v1/users/${ADMIN}/devices/tmpdev/tokens`, {
      json: { token_name: 'tmp' },
    });
    assert.equal(devTok.status, 201, devTok.bytes.toString());
    const tok = (devTok.body as { access_token: string }).access_token;
    const other = await token('d1-and-tmpdev', { access: 'read', devices: { d1: {}, tmpdev: {} } });
    assert.equal((await as(tok, 'GET', `/v1/users/${ADMIN}/devices/tmpdev`)).status, 200);
    assert.equal((await t.api('DELETE', `/v1/users/${ADMIN}/devices/tmpdev`)).status, 200);
    assert.equal(
      (
        await t.api('POST', `/v1/users/${ADMIN}/devices`, {
          json: { device: 'tmpdev', credentials: 'tmp-secret-2' },
        })
      ).status,
      201,
    );
    assertErrorBody(await as(tok, 'GET', `/v1/users/${ADMIN}/devices/tmpdev`), 401, 'invalid_token');
    // A token naming other devices too is the user's to change: it stays.
    assert.equal((await as(other.access_token, 'GET', `/v1/users/${ADMIN}/devices/d1`)).status, 200);
    assert.equal((await t.api('DELETE', `/v1/users/${ADMIN}/devices/tmpdev`)).status, 200);
  });

  it('the token is shown once; the list shows names and scopes only', async () => {
    const created = await token('listed', { access: 'read' });
    const res = await t.api('GET', `/v1/users/${ADMIN}/tokens`);
    assert.equal(res.status, 200);
    const entry = (res.body as Array<Record<string, unknown>>).find((x) => x.id === created.id);
    assert.ok(entry);
    assert.equal(entry.name, 'listed');
    assert.deepEqual(entry.scope, { access: 'read' });
    assert.equal(entry.expires, null);
    assert.ok(!JSON.stringify(res.body).includes(created.access_token), 'token value not listed');
    const withExpiry = await t.api('POST', `/v1/users/${ADMIN}/tokens`, {
      json: { name: 'e', expires_in: 60 },
    });
    assert.equal(withExpiry.status, 201);
    const expires = (withExpiry.body as { expires: number }).expires;
    assert.ok(Math.abs(expires - (Date.now() + 60_000)) < 10_000);
  });

  it('read-only: reads, cannot POST to resources (403)', async () => {
    const { access_token: tok } = await token('read-only', { access: 'read' });
    assert.equal((await as(tok, 'GET', `/v1/users/${ADMIN}/devices`)).status, 200);
    assert.equal((await as(tok, 'GET', `/v3/users/${ADMIN}/devices/d2/stats`)).status, 200);
    assert.equal((await as(tok, 'GET', `/v3/users/${ADMIN}/devices/d1/resources`)).status, 200);
    assert.equal((await as(tok, 'GET', resource('d1', 'temperature'))).status, 200);
    assert.equal((await as(tok, 'GET', resource('d2', 'humidity/api'))).status, 200);
    const before = inputs.d1?.length;
    assertErrorBody(await as(tok, 'POST', resource('d1', 'led'), { on: true }), 403, 'forbidden');
    assertErrorBody(await as(tok, 'POST', resource('d1', 'temperature')), 403, 'forbidden');
    assert.equal(inputs.d1?.length, before, 'the device saw nothing');
  });

  it('device-scoped: cannot see other devices (403), and the device list is filtered', async () => {
    const { access_token: tok } = await token('only-d1', { access: 'call', devices: { d1: {} } });
    assert.equal((await as(tok, 'GET', `/v1/users/${ADMIN}/devices/d1`)).status, 200);
    assert.equal((await as(tok, 'GET', resource('d1', 'temperature'))).status, 200);
    assert.equal((await as(tok, 'POST', resource('d1', 'led'), 1)).status, 200);
    assertErrorBody(await as(tok, 'GET', `/v1/users/${ADMIN}/devices/d2`), 403, 'forbidden');
    assertErrorBody(await as(tok, 'GET', `/v3/users/${ADMIN}/devices/d2/stats`), 403, 'forbidden');
    assertErrorBody(await as(tok, 'GET', `/v3/users/${ADMIN}/devices/d2/resources`), 403, 'forbidden');
    assertErrorBody(await as(tok, 'GET', resource('d2', 'temperature')), 403, 'forbidden');
    assertErrorBody(await as(tok, 'POST', resource('d2', 'led'), 1), 403, 'forbidden');
    assertErrorBody(await as(tok, 'GET', resource('no-such', 'temperature')), 403, 'forbidden');
    // The list shows d1 only.
    const list = await as(tok, 'GET', `/v1/users/${ADMIN}/devices`);
    assert.equal(list.status, 200, `device list with a device-scoped token: ${list.bytes.toString()}`);
    assert.deepEqual(
      (list.body as Array<{ device: string }>).map((d) => d.device),
      ['d1'],
    );
  });

  it('resource-scoped: cannot call other resources (403)', async () => {
    const { access_token: tok } = await token('only-temperature', {
      access: 'call',
      devices: { d1: { resources: ['temperature'] } },
    });
    const ok = await as(tok, 'GET', resource('d1', 'temperature'));
    assert.equal(ok.status, 200);
    assert.deepEqual(ok.body, { device: 'd1', celsius: 20 });
    assert.equal((await as(tok, 'GET', resource('d1', 'temperature/api'))).status, 200);
    assert.equal((await as(tok, 'POST', resource('d1', 'temperature'))).status, 200);
    const before = inputs.d1?.length;
    assertErrorBody(await as(tok, 'GET', resource('d1', 'humidity')), 403, 'forbidden');
    assertErrorBody(await as(tok, 'GET', resource('d1', 'humidity/api')), 403, 'forbidden');
    assertErrorBody(await as(tok, 'POST', resource('d1', 'led'), 1), 403, 'forbidden');
    assertErrorBody(await as(tok, 'GET', resource('d2', 'temperature')), 403, 'forbidden');
    assert.equal(inputs.d1?.length, before);
    // DESCRIBE of the whole device shows only the resources the token lists.
    for (const path of [`/v3/users/${ADMIN}/devices/d1/resources`, resource('d1', 'api')]) {
      const api = await as(tok, 'GET', path);
      assert.equal(api.status, 200);
      assert.deepEqual(Object.keys(api.body as object), ['temperature'], path);
    }
    const all = await t.api('GET', `/v3/users/${ADMIN}/devices/d1/resources`);
    assert.ok(Object.keys(all.body as object).length > 1, 'a login sees every resource');
    // Properties hold the device's configuration: not for a token limited to some resources.
    const props = `/v3/users/${ADMIN}/devices/d1/properties`;
    assert.equal((await t.api('PUT', `${props}/secret`, { json: { value: { key: 'k1' } } })).status, 200);
    assertErrorBody(await as(tok, 'GET', props), 403, 'forbidden');
    assertErrorBody(await as(tok, 'GET', `${props}/secret`), 403, 'forbidden');
    assertErrorBody(await as(tok, 'PUT', `${props}/secret`, { value: 'stolen' }), 403, 'forbidden');
    assert.deepEqual(((await t.api('GET', `${props}/secret`)).body as { value: unknown }).value, {
      key: 'k1',
    });
    const wholeDevice = await token('whole-d1', { access: 'call', devices: { d1: {} } });
    assert.equal((await as(wholeDevice.access_token, 'GET', `${props}/secret`)).status, 200);
  });

  it('scoped tokens cannot manage devices or tokens (403), nothing changes', async () => {
    const { access_token: tok, id } = await token('full-call');
    assert.equal(
      (await as(tok, 'POST', resource('d2', 'led'), 7)).status,
      200,
      'default scope: call everything',
    );
    const tokensBefore = ((await t.api('GET', `/v1/users/${ADMIN}/tokens`)).body as unknown[]).length;
    for (const [method, path, body] of [
      ['POST', `/v1/users/${ADMIN}/devices`, { device: 'sneaky', credentials: 'x' }],
      ['PUT', `/v1/users/${ADMIN}/devices/d1`, { enabled: false }],
      ['PATCH', `/v1/users/${ADMIN}/devices/d1`, { credentials: 'stolen' }],
      ['DELETE', `/v1/users/${ADMIN}/devices/d1`, undefined],
      ['GET', `/v1/users/${ADMIN}/tokens`, undefined],
      ['POST', `/v1/users/${ADMIN}/tokens`, { name: 'escalate' }],
      ['DELETE', `/v1/users/${ADMIN}/tokens/${id}`, undefined],
    ] as const) {
      assertErrorBody(await as(tok, method, path, body), 403, 'forbidden');
    }
    assert.deepEqual(await t.deviceIds(), ['d1', 'd2']);
    const d1 = (await t.api('GET', `/v1/users/${ADMIN}/devices/d1`)).body as { enabled: boolean };
    assert.equal(d1.enabled, true);
    assert.equal(devices.d1?.status.state, 'connected', 'the device was not dropped');
    assert.equal(((await t.api('GET', `/v1/users/${ADMIN}/tokens`)).body as unknown[]).length, tokensBefore);
  });

  it('a user holds at most 1,000 access tokens (409 too_many_tokens), and may make more after deleting', async () => {
    const list = async () =>
      (await t.api('GET', `/v1/users/${ADMIN}/tokens?count=1000`)).body as Array<{ id: string }>;
    const made: string[] = [];
    for (let n = (await list()).length; n < 1000; n++) {
      const res = await t.api('POST', `/v1/users/${ADMIN}/tokens`, {
        json: { name: `bulk-${n}`, scope: { access: 'read' } },
      });
      assert.equal(res.status, 201, res.bytes.toString());
      made.push((res.body as { id: string }).id);
    }
    assertErrorBody(
      await t.api('POST', `/v1/users/${ADMIN}/tokens`, { json: { name: 'one-too-many' } }),
      409,
      'too_many_tokens',
    );
    assert.equal((await list()).length, 1000);
    for (const id of made)
      assert.equal((await t.api('DELETE', `/v1/users/${ADMIN}/tokens/${id}`)).status, 200);
    assert.equal(
      (await t.api('POST', `/v1/users/${ADMIN}/tokens`, { json: { name: 'after-cleanup' } })).status,
      201,
    );
  });

  it('deleting a token revokes it at once (401)', async () => {
    const { access_token: tok, id } = await token('short-lived', { access: 'read' });
    assert.equal((await as(tok, 'GET', `/v1/users/${ADMIN}/devices`)).status, 200);
    const del = await t.api('DELETE', `/v1/users/${ADMIN}/tokens/${id}`);
    assert.equal(del.status, 200);
    assertErrorBody(await as(tok, 'GET', `/v1/users/${ADMIN}/devices`), 401, 'invalid_token');
    assertErrorBody(await as(tok, 'GET', resource('d1', 'temperature')), 401, 'invalid_token');
    assertErrorBody(await t.api('DELETE', `/v1/users/${ADMIN}/tokens/${id}`), 404, 'token_not_found');
    const listed = (await t.api('GET', `/v1/users/${ADMIN}/tokens`)).body as Array<{ id: string }>;
    assert.ok(!listed.some((x) => x.id === id));
  });
});

describe("another user's data is never reachable", () => {
  let bob: string;

  before(async () => {
    await t.server.tokens.createUser('bob', 'bob-password');
    bob = (await t.login('bob', 'bob-password')).access_token;
  });

  it("bob's token on admin's routes: 403, nothing reached or changed", async () => {
    const before = inputs.d1?.length;
    for (const [method, path, body] of [
      ['GET', `/v1/users/${ADMIN}/devices`, undefined],
      ['POST', `/v1/users/${ADMIN}/devices`, { device: 'planted', credentials: 'x' }],
      ['GET', `/v1/users/${ADMIN}/devices/d1`, undefined],
      ['PUT', `/v1/users/${ADMIN}/devices/d1`, { enabled: false }],
      ['DELETE', `/v1/users/${ADMIN}/devices/d1`, undefined],
      ['GET', `/v3/users/${ADMIN}/devices/d1/stats`, undefined],
      ['GET', `/v3/users/${ADMIN}/devices/d1/resources`, undefined],
      ['GET', resource('d1', 'temperature'), undefined],
      ['POST', resource('d1', 'led'), { on: true }],
      ['GET', `/v1/users/${ADMIN}/tokens`, undefined],
      ['POST', `/v1/users/${ADMIN}/tokens`, { name: 'x' }],
      ['GET', `/v1/users/${ADMIN}/devices/no-such-device`, undefined],
      ['GET', resource('no-such-device', 'x'), undefined],
    ] as const) {
      assertErrorBody(await t.request(method, path, { token: bob, json: body }), 403, 'forbidden');
    }
    assert.equal(inputs.d1?.length, before);
    assert.deepEqual(await t.deviceIds(), ['d1', 'd2']);
  });

  it('same device ids in two accounts stay apart; admin cannot reach bob either', async () => {
    const created = await t.createDevice('d1', 'bobs-own', { user: 'bob', token: bob });
    assert.equal(created.device, 'd1');
    assert.deepEqual(await t.deviceIds(bob, 'bob'), ['d1']);
    assert.deepEqual(await t.deviceIds(), ['d1', 'd2']);
    // Admin's d1 is live; bob's d1 is not: the hub keys devices by user too.
    assertErrorBody(
      await t.request('GET', resource('d1', 'temperature', 'bob'), { token: bob }),
      404,
      'device_offline',
    );
    assertErrorBody(await t.api('GET', '/v1/users/bob/devices'), 403, 'forbidden');
    assertErrorBody(await t.api('GET', resource('d1', 'temperature', 'bob')), 403, 'forbidden');
    assertErrorBody(await t.api('DELETE', '/v1/users/bob/devices/d1'), 403, 'forbidden');
    // Admin's scoped token does not reach bob either.
    const scoped = await t.api('POST', `/v1/users/${ADMIN}/tokens`, {
      json: { name: 'a', scope: { access: 'call' } },
    });
    const tok = (scoped.body as { access_token: string }).access_token;
    assertErrorBody(await t.request('GET', '/v1/users/bob/devices', { token: tok }), 403, 'forbidden');
    // A token id of bob's cannot be deleted through admin's path.
    const bobs = await t.request('POST', '/v1/users/bob/tokens', { token: bob, json: { name: 'bobs' } });
    assert.equal(bobs.status, 201);
    const { id, access_token } = bobs.body as { id: string; access_token: string };
    assertErrorBody(await t.api('DELETE', `/v1/users/${ADMIN}/tokens/${id}`), 404, 'token_not_found');
    assert.equal((await t.request('GET', '/v1/users/bob/devices', { token: access_token })).status, 200);
    // A non-existing user: 403 as well (no user enumeration).
    assertErrorBody(await t.api('GET', '/v1/users/nobody/devices'), 403, 'forbidden');
  });
});
