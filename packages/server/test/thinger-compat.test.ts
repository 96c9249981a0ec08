/**
 * What clients of the Thinger.io API rely on (issue 8): the `usr` claim in tokens (Node-RED
 * nodes refuse tokens without it), device stats under /v1 as well as /v3, and
 * `…/resources/api` listing every resource.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { ADMIN, TestServer } from './helpers.js';

let t: TestServer;

before(async () => {
  t = await TestServer.start({ tls: false });
});
after(async () => {
  await t?.close();
});

function claims(jwt: string): Record<string, unknown> {
  return JSON.parse(Buffer.from(jwt.split('.')[1] as string, 'base64url').toString('utf8'));
}

describe('Thinger.io API compatibility', () => {
  it('login and access tokens carry the user in `usr` (and `sub`)', async () => {
    assert.equal(claims(t.adminToken).usr, ADMIN);
    assert.equal(claims(t.adminToken).sub, ADMIN);
    const res = await t.api('POST', `/v1/users/${ADMIN}/tokens`, { json: { name: 'node-red' } });
    assert.equal(res.status, 201, res.bytes.toString('utf8'));
    const token =
      (res.body as { token?: string; access_token?: string }).token ??
      (res.body as { access_token?: string }).access_token;
    assert.ok(token, JSON.stringify(res.body));
    assert.equal(claims(token).usr, ADMIN);
  });

  it('device stats under /v1 and /v3; …/resources/api lists the resources', async () => {
    await t.createDevice('compat1', 'compat-credential-1');
    const device = t
      .device('tcp', 1, 'compat1', 'compat-credential-1')
      .resource('temperature', { output: () => ({ celsius: 21 }) })
      .resource('api', { output: () => 'a resource named api' });
    await device.connect();
    for (const version of ['v1', 'v3']) {
      const stats = await t.api('GET', `/${version}/users/${ADMIN}/devices/compat1/stats`);
      assert.equal(stats.status, 200);
      assert.equal((stats.body as { connected: boolean }).connected, true, version);
    }
    const all = await t.api('GET', `/v3/users/${ADMIN}/devices/compat1/resources`);
    const viaApi = await t.api('GET', `/v3/users/${ADMIN}/devices/compat1/resources/api`);
    assert.equal(viaApi.status, 200);
    assert.deepEqual(viaApi.body, all.body);
    assert.ok(Object.hasOwn(viaApi.body as object, 'temperature'));
    // The resource named "api" is still described at …/api/api.
    assert.equal((await t.api('GET', `/v3/users/${ADMIN}/devices/compat1/resources/api/api`)).status, 200);
  });

  it('device list: `name` filters by id or name (literally, any case); product and asset filters find nothing', async () => {
    await t.createDevice('kitchen-1', 'compat-credential-2', { name: 'Fridge' });
    await t.createDevice('garden_1', 'compat-credential-3', { name: 'Sprinkler' });
    const ids = async (q: string) => {
      const res = await t.api('GET', `/v1/users/${ADMIN}/devices?${q}`);
      assert.equal(res.status, 200, res.bytes.toString('utf8'));
      return {
        ids: (res.body as Array<{ device: string }>).map((d) => d.device),
        total: res.headers.get('x-total-count'),
      };
    };
    assert.deepEqual(await ids('name=KITCHEN'), { ids: ['kitchen-1'], total: '1' });
    assert.deepEqual(await ids('name=fridge'), { ids: ['kitchen-1'], total: '1' });
    // LIKE wildcards are literal: "_" matches only an underscore.
    assert.deepEqual(await ids('name=n_1'), { ids: ['garden_1'], total: '1' });
    assert.deepEqual(await ids('name=%25'), { ids: [], total: '0' });
    for (const g of ['product', 'asset_group', 'asset_type', 'project']) {
      const res = await t.api('GET', `/v1/users/${ADMIN}/devices?${g}=thermostats`);
      assert.equal(res.status, 404, g);
      assert.equal((res.body as { error: { code: string } }).error.code, `${g}_not_found`);
    }
  });

  it("DELETE answers 200 with an empty body and no content type (clients generated from Thinger.io's API fail on 204)", async () => {
    await t.createDevice('short-lived-compat', 'compat-credential-4');
    const res = await t.api('DELETE', `/v1/users/${ADMIN}/devices/short-lived-compat`);
    assert.equal(res.status, 200);
    assert.equal(res.bytes.length, 0);
    assert.equal(res.headers.get('content-type'), null);
    assert.equal((await t.api('GET', `/v1/users/${ADMIN}/devices/short-lived-compat`)).status, 404);
  });
});
