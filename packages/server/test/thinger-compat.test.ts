/**
 * What clients of the Thinger.io API rely on (issue 8): the `usr` claim in tokens (Node-RED
 * nodes refuse tokens without it), device stats under /v1 as well as /v3, and
 * `…/resources/api` listing every resource.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { AccountStore } from '../src/storage/accounts.js';
import { openDatabase } from '../src/storage/database.js';
import { ADMIN, assertErrorBody, TestServer } from './helpers.js';

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
    // `access_token` is the JWT (`token` is the token's key, as on Thinger.io).
    const token = (res.body as { access_token?: string }).access_token;
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

  it('device list: plain-text `name` is a substring of id or name (any case); product and asset filters find nothing', async () => {
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

// ---------------------------------------------------------------------------------------------
// What the Thinger.io tools do (issue 8), call by call. "node-red" is node-red-contrib-thinger
// (its nodes and its editor), "thinr" is thinr-cli (its login, device, token and bucket
// commands), "thinger-node" the client generated from Thinger.io's OpenAPI document.

type Json = Record<string, unknown>;
const U = `/v1/users/${ADMIN}`;

function keys(o: unknown): string[] {
  return Object.keys(o as object).sort();
}

describe('Thinger.io tools: server metadata and probes', () => {
  it('node-red editor: /v1/server/assets without a token lists the assets served, with working list paths', async () => {
    // The editor asks with "Authorization: Bearer undefined" (its server lookup never finds the node).
    const res = await t.request('GET', '/v1/server/assets', {
      headers: { authorization: 'Bearer undefined' },
    });
    assert.equal(res.status, 200);
    const assets = res.body as Array<{
      asset: string;
      category: string;
      paths: { list: string };
      role: string;
    }>;
    assert.deepEqual(
      assets.map((a) => a.asset),
      ['bucket', 'device', 'endpoint', 'token'],
    );
    for (const a of assets) {
      assert.deepEqual(keys(a), ['asset', 'category', 'paths', 'role']);
      assert.equal(a.role, 'user');
      // asset-iterator: replace the (?<user>…) group with the user, then GET /{path}?count=50&index=0.
      const path = a.paths.list.replace(/\(\?<user>[^)]+\)/, ADMIN);
      assert.equal(path, `v1/users/${ADMIN}/${a.asset}s`);
      const list = await t.api('GET', `/${path}?count=50&index=0`);
      assert.equal(list.status, 200, `${path}: ${list.bytes.toString()}`);
      assert.ok(Array.isArray(list.body));
    }
  });

  it('node-red editor: /v1/server/events without a token lists the events and their filters', async () => {
    const res = await t.request('GET', '/v1/server/events');
    assert.equal(res.status, 200);
    assert.deepEqual(res.body, [
      { event: 'bucket_write', filters: [{ field: 'bucket' }], role: 'user' },
      {
        event: 'device_property_update',
        filters: [{ field: 'device' }, { field: 'property' }],
        role: 'user',
      },
      {
        event: 'device_resource_stream',
        filters: [{ field: 'device' }, { field: 'resource' }],
        role: 'user',
      },
      {
        event: 'device_state_change',
        filters: [{ field: 'device' }, { field: 'state', hints: ['connected', 'disconnected'] }],
        role: 'user',
      },
      { event: 'device_topic_publish', filters: [{ field: 'topic' }], role: 'user' },
    ]);
  });

  it('node-red editor: GET /v1/users/{u} is the profile with a role; another user is 403', async () => {
    const res = await t.api('GET', U);
    assert.equal(res.status, 200);
    assert.deepEqual(keys(res.body), ['created', 'role', 'user']);
    assert.equal((res.body as Json).user, ADMIN);
    assert.equal((res.body as Json).role, 'user');
    assertErrorBody(await t.api('GET', '/v1/users/somebody-else'), 403, 'forbidden');
    assertErrorBody(await t.request('GET', U), 401, 'unauthorized');
  });

  it('thinr: a token is checked with GET /v1/proxies: [] for a valid token, 401 otherwise', async () => {
    const ok = await t.api('GET', '/v1/proxies');
    assert.equal(ok.status, 200);
    assert.deepEqual(ok.body, []);
    assertErrorBody(await t.request('GET', '/v1/proxies', { token: 'not-a-token' }), 401, 'invalid_token');
    assertErrorBody(await t.request('GET', '/v1/proxies'), 401, 'unauthorized');
  });

  it('node-red editor, thinr product commands: products, projects, groups and types are empty lists', async () => {
    for (const kind of ['products', 'projects', 'groups', 'types']) {
      const res = await t.api('GET', `${U}/${kind}?name=&count=50&index=0`);
      assert.equal(res.status, 200, kind);
      assert.deepEqual(res.body, []);
      assert.equal(res.headers.get('x-total-count'), '0');
    }
  });
});

describe('Thinger.io tools: access tokens', () => {
  const tokens = `${U}/tokens`;

  it('thinr login: delete "ThinRemote" (404 when absent), create it with allow */*/*, use it, delete it', async () => {
    assertErrorBody(await t.api('DELETE', `${tokens}/ThinRemote`), 404, 'token_not_found');
    const body = {
      enabled: true,
      allow: { '*': { '*': '*' } },
      deny: {},
      token: 'ThinRemote',
      name: 'ThinRemote',
      description: '',
    };
    const res = await t.api('POST', tokens, { json: body });
    assert.equal(res.status, 201, res.bytes.toString());
    const doc = res.body as Json;
    assert.deepEqual(keys(doc), [
      'access_token',
      'allow',
      'created',
      'deny',
      'description',
      'enabled',
      'expires',
      'id',
      'modified',
      'name',
      'scope',
      'token',
    ]);
    assert.equal(doc.token, 'ThinRemote');
    assert.deepEqual(doc.allow, { '*': { '*': '*' } });
    assert.deepEqual(doc.deny, {});
    assert.deepEqual(doc.scope, { access: 'admin' });
    assert.equal(doc.expires, null);
    const jwt = doc.access_token as string;
    assert.equal(claims(jwt).usr, ADMIN);
    // The same key again: 409.
    assertErrorBody(await t.api('POST', tokens, { json: body }), 409, 'token_exists');
    // Everything thinr then does with it, account management included.
    assert.equal((await t.request('GET', `${U}/devices?count=50&index=0`, { token: jwt })).status, 200);
    const created = await t.request('POST', `${U}/devices`, {
      token: jwt,
      json: { device: 'made-by-token', credentials: 'made-by-token-secret' },
    });
    assert.equal(created.status, 201, created.bytes.toString());
    assert.equal((await t.request('DELETE', `${U}/devices/made-by-token`, { token: jwt })).status, 200);
    const listed = await t.request('GET', tokens, { token: jwt });
    assert.equal(listed.status, 200);
    const entry = (listed.body as Json[]).find((x) => x.token === 'ThinRemote');
    assert.ok(entry);
    assert.equal(entry.access_token, undefined, 'the list does not show the JWT');
    assert.ok(!listed.bytes.toString().includes(jwt));
    // thinr logout: DELETE by key; the JWT is revoked at once.
    const del = await t.api('DELETE', `${tokens}/ThinRemote`);
    assert.equal(del.status, 200);
    assert.equal(del.bytes.length, 0);
    assertErrorBody(await t.request('GET', '/v1/proxies', { token: jwt }), 401, 'invalid_token');
  });

  it('thinr tokens: get, update (name, enabled, expire), list paging; a disabled token is refused', async () => {
    const expire = Math.floor(Date.now() / 1000) + 90 * 86400;
    const res = await t.api('POST', tokens, {
      json: {
        token: 'backup_notifier',
        name: 'Backup',
        enabled: true,
        allow: { Device: { '*': ['AccessDeviceResources'] } },
        expire,
      },
    });
    assert.equal(res.status, 201, res.bytes.toString());
    const jwt = (res.body as Json).access_token as string;
    assert.equal((res.body as Json).expire, expire);
    assert.equal((res.body as Json).expires, expire * 1000);
    assert.deepEqual((res.body as Json).scope, { access: 'call', devices: { '*': {} } });

    const got = await t.api('GET', `${tokens}/backup_notifier`);
    assert.equal(got.status, 200);
    assert.equal((got.body as Json).name, 'Backup');
    assert.equal((got.body as Json).access_token, undefined, 'the JWT is shown once');
    // By generated id as well.
    assert.equal((await t.api('GET', `${tokens}/${(res.body as Json).id}`)).status, 200);

    const put = await t.api('PUT', `${tokens}/backup_notifier`, {
      json: { name: 'Backup 2', enabled: false },
    });
    assert.equal(put.status, 200, put.bytes.toString());
    assert.equal((put.body as Json).name, 'Backup 2');
    assert.equal((put.body as Json).enabled, false);
    assertErrorBody(await t.request('GET', `${U}/devices`, { token: jwt }), 401, 'token_disabled');
    assert.equal((await t.api('PUT', `${tokens}/backup_notifier`, { json: { enabled: true } })).status, 200);
    assert.equal((await t.request('GET', `${U}/devices`, { token: jwt })).status, 200);
    // A later expiry applies to the JWT already given out (it carries none of its own).
    const later = expire + 86400;
    const moved = await t.api('PUT', `${tokens}/backup_notifier`, { json: { expire: later } });
    assert.equal((moved.body as Json).expires, later * 1000);
    assert.equal((await t.request('GET', `${U}/devices`, { token: jwt })).status, 200);

    // asset-iterator pages by count/index; `name` filters by key or name.
    await t.api('POST', tokens, {
      json: { token: 'page_two', name: 'Second', allow: { '*': { '*': ['ReadDevice'] } } },
    });
    const page = await t.api('GET', `${tokens}?count=1&index=0&name=o`);
    assert.equal(page.status, 200);
    assert.equal((page.body as Json[]).length, 1);
    assert.ok(Number(page.headers.get('x-total-count')) >= 2);
    assertErrorBody(await t.api('PUT', `${tokens}/nope`, { json: { name: 'x' } }), 404, 'token_not_found');
  });

  it('Thinger.io permissions: what they grant here (devices only, read only) and what is refused', async () => {
    await t.createDevice('perm-a', 'perm-a-secret');
    await t.createDevice('perm-b', 'perm-b-secret');
    const make = async (token: string, allow: unknown) => {
      const res = await t.api('POST', tokens, { json: { token, name: token, allow } });
      assert.equal(res.status, 201, res.bytes.toString());
      return (res.body as Json).access_token as string;
    };
    // Every device (and nothing else): lists all devices, reads one, cannot touch buckets or manage.
    const anyDevice = await make('any_device', { Device: { '*': '*' } });
    const list = await t.request('GET', `${U}/devices`, { token: anyDevice });
    assert.equal(list.status, 200, list.bytes.toString());
    assert.ok((list.body as Json[]).some((d) => d.device === 'perm-b'));
    assert.equal(
      (await t.request('GET', `/v3/users/${ADMIN}/devices/perm-a/stats`, { token: anyDevice })).status,
      200,
    );
    assertErrorBody(await t.request('GET', `${U}/buckets`, { token: anyDevice }), 403, 'forbidden');
    assertErrorBody(
      await t.request('POST', `${U}/devices`, {
        token: anyDevice,
        json: { device: 'x1', credentials: 'x1-secret' },
      }),
      403,
      'forbidden',
    );
    // One device, read only (a string leaf).
    const oneDevice = await make('one_device', { Device: { 'perm-a': 'ReadDevice' } });
    assert.equal(
      (await t.request('GET', `/v3/users/${ADMIN}/devices/perm-a/stats`, { token: oneDevice })).status,
      200,
    );
    assertErrorBody(
      await t.request('GET', `/v3/users/${ADMIN}/devices/perm-b/stats`, { token: oneDevice }),
      403,
    );
    assertErrorBody(
      await t.request('PUT', `/v3/users/${ADMIN}/devices/perm-a/properties/p`, {
        token: oneDevice,
        json: { value: 1 },
      }),
      403,
      'forbidden',
    );
    // Read everything.
    const reader = await make('reader_all', { '*': { '*': ['ReadDevice', 'ListDevices'] } });
    assert.equal((await t.request('GET', `${U}/buckets`, { token: reader })).status, 200);
    assertErrorBody(await t.request('DELETE', `${U}/devices/perm-b`, { token: reader }), 403, 'forbidden');

    const refused = async (what: string, body: unknown) => {
      const res = await t.api('POST', tokens, { json: body });
      assertErrorBody(res, 400, 'invalid_request');
      assert.ok((res.body as { error: { message: string } }).error.message.length > 10, what);
    };
    await refused('other resource types', {
      token: 'r1',
      name: 'r',
      allow: { Bucket: { b: ['ReadBucket'] } },
    });
    await refused('several types', {
      token: 'r2',
      name: 'r',
      allow: { Bucket: { b: ['ReadBucket'] }, Device: { '*': ['AccessDeviceResources'] } },
    });
    await refused('deny rules', {
      token: 'r3',
      name: 'r',
      allow: { '*': { '*': '*' } },
      deny: { Device: { d: '*' } },
    });
    await refused('unknown action', { token: 'r4', name: 'r', allow: { Device: { d: ['RebootDevice'] } } });
    await refused('call on everything', {
      token: 'r5',
      name: 'r',
      allow: { '*': { '*': ['AccessDeviceResources'] } },
    });
    await refused('mixed device access', {
      token: 'r6',
      name: 'r',
      allow: { Device: { a: '*', b: ['ReadDevice'] } },
    });
    await refused('scope and allow', { name: 'r', scope: { access: 'read' }, allow: { '*': { '*': '*' } } });
    await refused('expire in the past', {
      token: 'r7',
      name: 'r',
      allow: { '*': { '*': '*' } },
      expire: 1000,
    });
    await refused('expire in ms', {
      token: 'r8',
      name: 'r',
      allow: { '*': { '*': '*' } },
      expire: Date.now() + 60_000,
    });
    await refused('bad key', { token: 'bad key', name: 'r', allow: { '*': { '*': '*' } } });
    // Our own scope cannot ask for admin (only a login token, or allow */*/*, can).
    await refused('scope admin', { name: 'r', scope: { access: 'admin' } });
  });

  it('thinr device tokens: create for some resources, list, use, delete', async () => {
    await t.createDevice('dt-dev', 'dt-dev-secret');
    const device = t
      .device('tcp', 1, 'dt-dev', 'dt-dev-secret')
      .resource('temperature', { output: () => 21.5 })
      .resource('secret', { output: () => 'no' });
    await device.connect();
    const path = `${U}/devices/dt-dev/tokens`;
    const res = await t.api('POST', path, {
      json: { token_name: 'ops-bot', token_resources: ['temperature'] },
    });
    assert.equal(res.status, 201, res.bytes.toString());
    const doc = res.body as Json;
    assert.equal(doc.token_name, 'ops-bot');
    assert.deepEqual(doc.token_resources, ['temperature']);
    assert.equal(doc.token_expiration, null);
    const jwt = doc.access_token as string;
    const r = (name: string) => `/v3/users/${ADMIN}/devices/dt-dev/resources/${name}`;
    const ok = await t.request('GET', r('temperature'), { token: jwt });
    assert.equal(ok.status, 200);
    assert.equal(ok.body, 21.5);
    assertErrorBody(await t.request('GET', r('secret'), { token: jwt }), 403, 'forbidden');
    const listed = await t.api('GET', path);
    assert.deepEqual(
      (listed.body as Json[]).map((x) => [x.token, x.token_name]),
      [[doc.token, 'ops-bot']],
    );
    assertErrorBody(await t.api('DELETE', `${U}/devices/perm-a/tokens/${doc.token}`), 404, 'token_not_found');
    const del = await t.api('DELETE', `${path}/${doc.token}`);
    assert.equal(del.status, 200);
    assert.equal(del.bytes.length, 0);
    assertErrorBody(await t.request('GET', r('temperature'), { token: jwt }), 401, 'invalid_token');
  });
});

describe('Thinger.io tools: devices', () => {
  it('node-red device-create: POST {type: "Generic", …}, then PUT with "" groupings; other types and groupings refused', async () => {
    const created = await t.api('POST', `${U}/devices`, {
      json: { type: 'Generic', device: 'nr-dev', credentials: 'nr-dev-secret', name: 'NR', enabled: true },
    });
    assert.equal(created.status, 201, created.bytes.toString());
    const d = created.body as Json;
    assert.deepEqual(keys(d), [
      'connection',
      'created',
      'description',
      'device',
      'enabled',
      'modified',
      'name',
      'type',
      'updated',
      'user',
    ]);
    assert.equal(d.type, 'Generic');
    assert.equal(d.user, ADMIN);
    assert.equal(d.modified, d.updated);
    // node-red: GET (exists) → PUT without device and type.
    const put = await t.api('PUT', `${U}/devices/nr-dev`, {
      json: {
        credentials: 'nr-dev-secret-2',
        name: 'NR 2',
        enabled: true,
        product: '',
        asset_group: '',
        asset_type: '',
      },
    });
    assert.equal(put.status, 200, put.bytes.toString());
    assert.equal((put.body as Json).name, 'NR 2');
    assertErrorBody(
      await t.api('POST', `${U}/devices`, {
        json: { type: 'MQTT', device: 'mqtt-dev', credentials: 'mqtt-dev-secret' },
      }),
      400,
      'unsupported_device_type',
    );
    for (const g of ['product', 'asset_group', 'asset_type']) {
      assertErrorBody(
        await t.api('POST', `${U}/devices`, {
          json: { device: 'g-dev', credentials: 'g-dev-secret', [g]: 'x' },
        }),
        404,
        `${g}_not_found`,
      );
      assertErrorBody(
        await t.api('PUT', `${U}/devices/nr-dev`, { json: { [g]: 'x' } }),
        404,
        `${g}_not_found`,
      );
    }
    // thinr "product assign" (PUT {product}) is refused the same way.
    assertErrorBody(
      await t.api('PUT', `${U}/devices/nr-dev`, { json: { product: 'p1' } }),
      404,
      'product_not_found',
    );
    assert.equal((await t.api('GET', `${U}/devices/g-dev`)).status, 404, 'nothing was created');
  });

  it('thinger-node: v1 and v2 resource paths run resources like …/v3/…/resources/{r}', async () => {
    await t.createDevice('legacy-dev', 'legacy-dev-secret');
    const device = t
      .device('tcp', 1, 'legacy-dev', 'legacy-dev-secret')
      .resource('temperature', { output: () => ({ celsius: 19 }) })
      .resource('echo', { input: true, output: (v) => v ?? null });
    await device.connect();
    for (const v of ['v1', 'v2']) {
      const get = await t.api('GET', `/${v}/users/${ADMIN}/devices/legacy-dev/temperature`);
      assert.equal(get.status, 200, `${v}: ${get.bytes.toString()}`);
      assert.deepEqual(get.body, { celsius: 19 });
      const post = await t.api('POST', `/${v}/users/${ADMIN}/devices/legacy-dev/echo`, { json: { x: v } });
      assert.equal(post.status, 200);
      assert.deepEqual(post.body, { x: v });
    }
    // The fixed routes of the same place still win.
    const stats = await t.api('GET', `/v1/users/${ADMIN}/devices/legacy-dev/stats`);
    assert.equal((stats.body as Json).connected, true);
  });
});

describe('Thinger.io tools: list `name` filters are case-insensitive regular expressions', () => {
  const list = async (path: string, token?: string) => {
    const res = await t.request('GET', path, { token: token ?? t.adminToken });
    assert.equal(res.status, 200, `${path}: ${res.bytes.toString()}`);
    return {
      ids: (res.body as Json[]).map((d) => (d.device ?? d.endpoint ?? d.bucket) as string),
      total: res.headers.get('x-total-count'),
    };
  };
  const q = (pattern: string) => encodeURIComponent(pattern);

  before(async () => {
    await t.createDevice('rx-alpha', 'rx-alpha-secret', { name: 'Revpi Kitchen' });
    await t.createDevice('rx-beta', 'rx-beta-secret', { name: 'Jetson Nano' });
    await t.createDevice('rx-gamma-1', 'rx-gamma-secret', { name: 'Other' });
  });

  it('thinr device list: a regex searched in ids and names, any case; paging and x-total-count follow it', async () => {
    const devices = (pattern: string, extra = '') => list(`${U}/devices?name=${q(pattern)}${extra}`);
    // thinr-cli's README examples: alternation, anchors (on the id or on the name).
    assert.deepEqual(await devices('^RX-A|jetson'), { ids: ['rx-alpha', 'rx-beta'], total: '2' });
    assert.deepEqual(await devices('^revpi'), { ids: ['rx-alpha'], total: '1' });
    assert.deepEqual(await devices('gamma-\\d$'), { ids: ['rx-gamma-1'], total: '1' });
    assert.deepEqual(await devices('^rx-.*a$'), { ids: ['rx-alpha', 'rx-beta'], total: '2' });
    assert.deepEqual(await devices('^rx-[ab]'), { ids: ['rx-alpha', 'rx-beta'], total: '2' });
    assert.deepEqual(await devices('^rx-', '&count=1&index=1'), { ids: ['rx-beta'], total: '3' });
    assert.deepEqual(await devices('^rx-', '&count=2&index=2'), { ids: ['rx-gamma-1'], total: '3' });
    assert.deepEqual(await devices('^rx-alpha$|^nomatch$'), { ids: ['rx-alpha'], total: '1' });
    assert.deepEqual(await devices('^rx-zzz'), { ids: [], total: '0' });
    // Plain text is a substring ("." matches itself too).
    assert.deepEqual(await devices('RX-GAMMA'), { ids: ['rx-gamma-1'], total: '1' });
    // Empty: no filter (the Node-RED editor may send name=).
    const all = await list(`${U}/devices?name=`);
    assert.ok(all.ids.includes('rx-alpha') && all.ids.includes('rx-beta'));
    assert.equal(all.total, String(all.ids.length));
  });

  it('a token limited to devices filters among its devices', async () => {
    const created = await t.api('POST', `${U}/tokens`, {
      json: { name: 'rx-limited', allow: { Device: { 'rx-alpha': '*', 'rx-gamma-1': '*' } } },
    });
    assert.equal(created.status, 201, created.bytes.toString());
    const token = (created.body as { access_token: string }).access_token;
    assert.deepEqual(await list(`${U}/devices?name=${q('^rx-')}`, token), {
      ids: ['rx-alpha', 'rx-gamma-1'],
      total: '2',
    });
    assert.deepEqual(await list(`${U}/devices?name=${q('kitchen|nano')}`, token), {
      ids: ['rx-alpha'],
      total: '1',
    });
  });

  it('patterns the non-backtracking matcher cannot run are refused with 400; none is slow', async () => {
    for (const bad of ['(rx)-alpha', 'rx{2}', '*rx', 'rx[', 'a**']) {
      const res = await t.api('GET', `${U}/devices?name=${q(bad)}`);
      assertErrorBody(res, 400, 'invalid_request');
      assert.match((res.body as { error: { message: string } }).error.message, /^name: /, bad);
    }
    assertErrorBody(await t.api('GET', `${U}/devices?name=${'a'.repeat(129)}`), 400, 'invalid_request');
    // The worst case for a backtracking engine, on every device: linear here.
    const started = performance.now();
    const evil = await list(`${U}/devices?name=${q(`${'a*'.repeat(60)}b`)}`);
    assert.ok(performance.now() - started < 2000, `took ${performance.now() - started} ms`);
    assert.ok(Array.isArray(evil.ids));
  });

  it('node-red editor: endpoints and buckets take the same `name` filter', async () => {
    for (const [endpoint, name] of [
      ['rx-ep-1', 'Slack alert'],
      ['rx-ep-2', 'Mail'],
    ]) {
      const res = await t.api('POST', `${U}/endpoints`, {
        json: { endpoint, name, profile: { url: 'https://example.com/hook', method: 'POST' } },
      });
      assert.equal(res.status, 201, res.bytes.toString());
    }
    assert.deepEqual(await list(`${U}/endpoints?name=slack`), { ids: ['rx-ep-1'], total: '1' });
    assert.deepEqual(await list(`${U}/endpoints?name=${q('^rx-ep-')}`), {
      ids: ['rx-ep-1', 'rx-ep-2'],
      total: '2',
    });
    assert.deepEqual(await list(`${U}/endpoints?name=${q('^rx-ep-')}&count=1&index=1`), {
      ids: ['rx-ep-2'],
      total: '2',
    });
    assert.deepEqual(await list(`${U}/endpoints?name=${q('^MAIL$')}`), { ids: ['rx-ep-2'], total: '1' });
    assertErrorBody(await t.api('GET', `${U}/endpoints?name=${q('(slack)')}`), 400, 'invalid_request');
    const unfiltered = await list(`${U}/endpoints?name=`);
    assert.ok(unfiltered.ids.includes('rx-ep-1') && unfiltered.ids.includes('rx-ep-2'));

    for (const bucket of ['rx-bucket-a', 'rx-bucket-b'])
      assert.equal(
        (
          await t.api('POST', `${U}/buckets`, {
            json: { bucket, name: bucket.toUpperCase(), source: 'write' },
          })
        ).status,
        201,
      );
    assert.deepEqual(await list(`${U}/buckets?name=${q('^RX-BUCKET-[b-z]')}`), {
      ids: ['rx-bucket-b'],
      total: '1',
    });
    assert.deepEqual(await list(`${U}/buckets?name=rx-bucket`), {
      ids: ['rx-bucket-a', 'rx-bucket-b'],
      total: '2',
    });
    assertErrorBody(await t.api('GET', `${U}/buckets?name=${q('b{1}')}`), 400, 'invalid_request');
  });

  it('10,000 buckets with 256-character names: patterns answer at once; one too costly to run is refused with 400', async () => {
    const s = await TestServer.start({ tcp: false, tls: false });
    try {
      // Names of random a/b (a fixed sequence): no pattern's automaton can cache them all.
      let seed = 42;
      const bit = () => {
        seed = (seed * 1103515245 + 12345) & 0x7fffffff;
        return seed & 1024 ? 'a' : 'b';
      };
      for (let i = 0; i < 10_000; i++)
        s.server.buckets.create(ADMIN, {
          bucket: `bk${String(i).padStart(5, '0')}`,
          name: Array.from({ length: 256 }, bit).join(''),
          source: 'write',
        });
      const timed = async (pattern: string, extra = '') => {
        const started = performance.now();
        const res = await s.api('GET', `${U}/buckets?name=${q(pattern)}${extra}`);
        return { res, ms: performance.now() - started };
      };
      const ids = (res: { body: unknown }) => (res.body as Json[]).map((b) => b.bucket);
      // The reviewer's worst case for the per-position matcher (seconds before, twice over).
      const worst = await timed(`${'[^!]*'.repeat(25)}!`.slice(0, 128));
      assert.equal(worst.res.status, 200, worst.res.bytes.toString());
      assert.deepEqual(ids(worst.res), []);
      assert.equal(worst.res.headers.get('x-total-count'), '0');
      assert.ok(worst.ms < 1500, `worst-case pattern took ${worst.ms} ms`);
      // Ordinary patterns and plain text: the same answers as always.
      const simple = await timed('^bk0000[0-4]$|nomatch');
      assert.deepEqual(ids(simple.res), ['bk00000', 'bk00001', 'bk00002', 'bk00003', 'bk00004']);
      assert.equal(simple.res.headers.get('x-total-count'), '5');
      const paged = await timed('^BK09.*9$', '&count=2&index=98');
      assert.deepEqual(ids(paged.res), ['bk09989', 'bk09999']);
      assert.equal(paged.res.headers.get('x-total-count'), '100');
      const plain = await timed('bk0999');
      assert.equal(plain.res.headers.get('x-total-count'), '10');
      assert.equal((await timed('esp.*32')).res.headers.get('x-total-count'), '0');
      // A pattern whose states do not fit the matcher's cache: refused once its work passes
      // the budget, rather than matched for seconds.
      const costly = await timed(`a${'.'.repeat(100)}!`);
      assertErrorBody(costly.res, 400, 'invalid_request');
      assert.match(
        (costly.res.body as { error: { message: string } }).error.message,
        /too costly to search this many buckets; use a simpler pattern or plain text/,
      );
      assert.ok(costly.ms < 1500, `costly pattern took ${costly.ms} ms`);
      assert.equal((await s.request('GET', '/health')).status, 200);
    } finally {
      await s.close();
    }
  });
});

describe('Thinger.io tools: device statistics', () => {
  it('thinger-node readDevicesStatistics: GET /v1/users/{u}/info/devices/stats counts devices and connected ones', async () => {
    const before = await t.api('GET', `${U}/info/devices/stats`);
    assert.equal(before.status, 200, before.bytes.toString());
    const b = before.body as { devices: number; connected: number; disconnected: number };
    assert.deepEqual(keys(b), ['connected', 'devices', 'disconnected']);
    assert.equal(b.devices, (await t.deviceIds()).length);
    assert.equal(b.disconnected, b.devices - b.connected);
    await t.createDevice('stats-dev', 'stats-dev-secret');
    const device = t.device('tcp', 1, 'stats-dev', 'stats-dev-secret');
    await device.connect();
    const after = (await t.api('GET', `${U}/info/devices/stats`)).body as typeof b;
    assert.deepEqual(after, {
      devices: b.devices + 1,
      connected: b.connected + 1,
      disconnected: b.disconnected,
    });
    // A token limited to devices counts those.
    const created = await t.api('POST', `${U}/tokens`, {
      json: { name: 'stats-limited', allow: { Device: { 'stats-dev': '*', 'no-such-dev': '*' } } },
    });
    const token = (created.body as { access_token: string }).access_token;
    const limited = await t.request('GET', `${U}/info/devices/stats`, { token });
    assert.equal(limited.status, 200, limited.bytes.toString());
    assert.deepEqual(limited.body, { devices: 1, connected: 1, disconnected: 0 });
    await device.close();
    assertErrorBody(await t.api('GET', '/v1/users/somebody-else/info/devices/stats'), 403, 'forbidden');
    assertErrorBody(await t.request('GET', `${U}/info/devices/stats`), 401, 'unauthorized');
  });
});

describe('Thinger.io tools: buckets', () => {
  const base = Date.UTC(2024, 0, 1); // a Monday, 00:00 UTC
  const min = 60_000;

  before(async () => {
    await t.createDevice('sensor-a', 'sensor-a-secret');
    await t.createDevice('sensor-b', 'sensor-b-secret');
    const create = await t.api('POST', `${U}/buckets`, {
      json: { bucket: 'climate', name: 'Climate', enabled: true, config: { source: 'write' } },
    });
    assert.equal(create.status, 201, create.bytes.toString());
    const write = await t.api('POST', `${U}/buckets/climate/data`, {
      json: [
        { ts: base, temperature: 10, humidity: 50, device: 'sensor-a' },
        { ts: base + 10 * min, temperature: 20, device: 'sensor-b' },
        { ts: base + 70 * min, temperature: 30, humidity: 70, device: 'sensor-a' },
        { ts: base + 80 * min, temperature: 50, device: 'sensor-a' },
        { ts: base + 6 * 60 * min, temperature: 1, device: 'sensor-b' },
      ],
    });
    assert.equal(write.status, 200, write.bytes.toString());
  });

  const rows = async (path: string) => {
    const res = await t.api('GET', path);
    assert.equal(res.status, 200, `${path}: ${res.bytes.toString()}`);
    return res.body as Json[];
  };

  it('node-red bucket-create: Thinger.io form (config.source) creates and updates; what there is not is refused', async () => {
    const exists = await t.api('GET', `${U}/buckets/nr-bucket`);
    assert.equal(exists.status, 404);
    const post = await t.api('POST', `${U}/buckets`, {
      json: { bucket: 'nr-bucket', name: 'NR', enabled: true, config: { source: 'api' } },
    });
    assert.equal(post.status, 201, post.bytes.toString());
    assert.equal((post.body as Json).source, 'write');
    assert.deepEqual((post.body as Json).config, {});
    const put = await t.api('PUT', `${U}/buckets/nr-bucket`, {
      json: { name: 'NR 2', enabled: false, config: { source: 'write', tags: [] }, product: '' },
    });
    assert.equal(put.status, 200, put.bytes.toString());
    assert.equal((put.body as Json).name, 'NR 2');
    assert.equal((put.body as Json).enabled, false);
    const dev = await t.api('POST', `${U}/buckets`, {
      json: {
        bucket: 'nr-device',
        name: 'D',
        enabled: true,
        config: {
          source: 'device',
          device: 'sensor-a',
          resource: 'climate',
          update: 'interval',
          interval: 3600,
          user: ADMIN,
        },
      },
    });
    assert.equal(dev.status, 201, dev.bytes.toString());
    assert.deepEqual((dev.body as Json).config, {
      device: 'sensor-a',
      resource: 'climate',
      update: 'interval',
      interval: 3600,
    });
    const refused = async (body: Json, status = 400, code = 'invalid_request') =>
      assertErrorBody(
        await t.api('POST', `${U}/buckets`, {
          json: { bucket: 'refused', name: 'r', enabled: true, ...body },
        }),
        status,
        code,
      );
    await refused({ config: { source: 'mqtt', topic: 'a/b' } });
    await refused({ config: { source: 'write', tags: ['device'] } });
    await refused({ config: { source: 'write', user: 'somebody' } });
    await refused({ config: { source: 'device', device: 'sensor-a', resource: 'r', update: 'none' } });
    await refused({ source: 'device', config: { source: 'write' } });
    await refused({ config: { source: 'write' }, backend: 'influxdb' });
    await refused({ config: { source: 'write' }, asset_type: 't' }, 404, 'asset_type_not_found');
    await refused({ name: 'no source' });
    assert.equal((await t.api('GET', `${U}/buckets/refused`)).status, 404);
  });

  it('node-red asset-iterator, editor: the bucket list filters by `name`', async () => {
    const res = await t.api('GET', `${U}/buckets?count=50&name=CLIM&index=0`);
    assert.equal(res.status, 200);
    assert.deepEqual(
      (res.body as Json[]).map((b) => b.bucket),
      ['climate'],
    );
    assert.equal(res.headers.get('x-total-count'), '1');
  });

  it('node-red bucket-read: tz, sort, items, min_ts and max_ts=0 (no upper bound); [{ts, val}] rows', async () => {
    const got = await rows(
      `${U}/buckets/climate/data?items=2&sort=asc&tz=Europe/Madrid&min_ts=${base + 1}&max_ts=0&`,
    );
    assert.deepEqual(got, [
      { ts: base + 10 * min, val: { ts: base + 10 * min, temperature: 20, device: 'sensor-b' } },
      {
        ts: base + 70 * min,
        val: { ts: base + 70 * min, temperature: 30, humidity: 70, device: 'sensor-a' },
      },
    ]);
    // node-red pages by max_ts = last.ts - 1 (sort=desc).
    const page = await rows(`${U}/buckets/climate/data?items=1000&sort=desc&max_ts=${base + 70 * min - 1}`);
    assert.deepEqual(
      page.map((r) => r.ts),
      [base + 10 * min, base],
    );
  });

  it('node-red bucket-read: agg and agg_type over windows (numeric fields; count counts every value)', async () => {
    const mean = await rows(
      `${U}/buckets/climate/data?items=1000&agg=1h&agg_type=mean&sort=asc&tz=UTC&min_ts=${base}&max_ts=${base + 2 * 60 * min}`,
    );
    assert.deepEqual(mean, [
      { ts: base, val: { temperature: 15, humidity: 50 } },
      { ts: base + 60 * min, val: { temperature: 40, humidity: 70 } },
    ]);
    // agg without agg_type: mean.
    assert.deepEqual(
      await rows(`${U}/buckets/climate/data?agg=1h&sort=asc&min_ts=${base}&max_ts=${base + 2 * 60 * min}`),
      mean,
    );
    const count = await rows(
      `${U}/buckets/climate/data?agg=1h&agg_type=count&sort=desc&min_ts=${base}&max_ts=${base + 2 * 60 * min}`,
    );
    assert.deepEqual(count, [
      { ts: base + 60 * min, val: { temperature: 2, humidity: 1, device: 2 } },
      { ts: base, val: { temperature: 2, humidity: 1, device: 2 } },
    ]);
    const others = await rows(`${U}/buckets/climate/data?agg=1d&agg_type=max&sort=asc`);
    assert.deepEqual(others, [{ ts: base, val: { temperature: 50, humidity: 70 } }]);
    for (const [type, value] of [
      ['min', 1],
      ['sum', 111],
      ['spread', 49],
      ['median', 20],
      ['first', 10],
      ['last', 1],
    ] as const) {
      const r = await rows(`${U}/buckets/climate/data?agg=1w&agg_type=${type}&fields=temperature`);
      assert.deepEqual(r, [{ ts: base, val: { temperature: value } }], type);
    }
    // Days in a time zone: New York's midnight is 05:00 UTC in January.
    const ny = await rows(
      `${U}/buckets/climate/data?agg=1d&agg_type=count&tz=America/New_York&sort=asc&fields=temperature`,
    );
    assert.deepEqual(ny, [
      { ts: base - 19 * 60 * min, val: { temperature: 4 } },
      { ts: base + 5 * 60 * min, val: { temperature: 1 } },
    ]);
  });

  it('year and month windows reaching back before year 100 start at 0 (1970), not in 1900', async () => {
    const window = async (agg: string) =>
      rows(`${U}/buckets/climate/data?agg=${agg}&agg_type=count&fields=temperature`);
    // 3000 years (or 2025, or 30000 months) from year 0: the window holding 2024 starts in year 0.
    for (const agg of ['3000y', '2025y', '30000mo'])
      assert.deepEqual(await window(agg), [{ ts: 0, val: { temperature: 5 } }], agg);
    assert.deepEqual(
      await rows(`${U}/buckets/climate/data?agg=3000y&agg_type=count&fields=temperature&tz=Asia/Tokyo`),
      [{ ts: 0, val: { temperature: 5 } }],
    );
    for (const agg of ['1000y', '12000mo'])
      assert.deepEqual(await window(agg), [{ ts: Date.UTC(2000, 0, 1), val: { temperature: 5 } }], agg);
    assert.deepEqual(await window('1y'), [{ ts: base, val: { temperature: 5 } }]);
  });

  it('bucket reads refuse what they cannot answer: transform, unknown time zones, windows and parameters', async () => {
    const bad = async (q: string, code = 'invalid_request') =>
      assertErrorBody(await t.api('GET', `${U}/buckets/climate/data?${q}`), 400, code);
    await bad('transform=derivative');
    await bad('tz=Mars/Olympus');
    await bad('agg=5q');
    await bad('agg_type=average');
    await bad('group_by=a..b');
    await bad('device=sensor-a');
    await bad('items=1001');
  });

  it('thinr: /v2 user-level reads answer rows with the record fields beside ts; group_by and fields', async () => {
    const v2 = `/v2/users/${ADMIN}/buckets/climate/data`;
    assert.deepEqual(await rows(`${v2}?items=2&sort=desc`), [
      { ts: base + 360 * min, temperature: 1, device: 'sensor-b' },
      { ts: base + 80 * min, temperature: 50, device: 'sensor-a' },
    ]);
    // thinr fleet view: group_by=device (the latest record of each), fields trims them.
    assert.deepEqual(await rows(`${v2}?items=500&sort=desc&group_by=device&fields=temperature`), [
      { ts: base + 360 * min, device: 'sensor-b', temperature: 1 },
      { ts: base + 80 * min, device: 'sensor-a', temperature: 50 },
    ]);
    // agg_type alone: over the whole range, one row per group.
    assert.deepEqual(await rows(`${v2}?group_by=device&agg_type=max&sort=asc`), [
      { ts: base, device: 'sensor-a', temperature: 50, humidity: 70 },
      { ts: base + 10 * min, device: 'sensor-b', temperature: 20 },
    ]);
    // Items above 1000 are taken on v2/v3 (answered page by page).
    assert.equal((await rows(`${v2}?items=5000`)).length, 5);
  });

  it('thinr, thinger-node: /v3 (and /v1, /v2) device-scoped reads: records naming the device, or of a bucket it feeds', async () => {
    const dev = (v: string, d: string, b: string, q = '') =>
      `/${v}/users/${ADMIN}/devices/${d}/buckets/${b}/data${q}`;
    assert.deepEqual(await rows(dev('v3', 'sensor-b', 'climate', '?items=10')), [
      { ts: base + 360 * min, temperature: 1, device: 'sensor-b' },
      { ts: base + 10 * min, temperature: 20, device: 'sensor-b' },
    ]);
    // thinr device status: items=1, sort=desc.
    assert.deepEqual(await rows(dev('v3', 'sensor-a', 'climate', '?items=1&sort=desc')), [
      { ts: base + 80 * min, temperature: 50, device: 'sensor-a' },
    ]);
    assert.deepEqual(await rows(dev('v3', 'sensor-a', 'climate', '?agg=1h&agg_type=max&sort=asc')), [
      { ts: base, temperature: 10, humidity: 50 },
      { ts: base + 60 * min, temperature: 50, humidity: 70 },
    ]);
    assert.deepEqual(await rows(dev('v1', 'sensor-b', 'climate', '?items=1')), [
      { ts: base + 360 * min, val: { ts: base + 360 * min, temperature: 1, device: 'sensor-b' } },
    ]);
    // A bucket sampling sensor-a: all its records are sensor-a's, none sensor-b's.
    const feed = await t.api('POST', `${U}/buckets`, {
      json: {
        bucket: 'feed',
        source: 'device',
        config: { device: 'sensor-a', resource: 'climate', interval: 3600 },
      },
    });
    assert.equal(feed.status, 201, feed.bytes.toString());
    const store = t.server.buckets;
    await store.appendSample((store.get(ADMIN, 'feed') as { id: number }).id, { celsius: 21 });
    const sampled = await rows(dev('v2', 'sensor-a', 'feed'));
    assert.equal(sampled.length, 1);
    assert.deepEqual(keys(sampled[0]), ['celsius', 'ts']);
    assert.deepEqual(await rows(dev('v3', 'sensor-b', 'feed')), []);
    // thinger-node: the buckets of a device.
    const listed = await rows(`/v3/users/${ADMIN}/devices/sensor-a/buckets`);
    assert.deepEqual(
      listed.map((b) => b.bucket),
      ['feed', 'nr-device'],
    );
    assertErrorBody(await t.api('GET', dev('v3', 'ghost', 'climate')), 404, 'device_not_found');
    assertErrorBody(await t.api('GET', dev('v3', 'sensor-a', 'ghost')), 404, 'bucket_not_found');
  });

  it('device-scoped bucket reads take read access to the device and to the account', async () => {
    const res = await t.api('POST', `${U}/tokens`, {
      json: { token: 'only_sensor_a', name: 's', allow: { Device: { 'sensor-a': '*' } } },
    });
    const jwt = (res.body as Json).access_token as string;
    const path = `/v3/users/${ADMIN}/devices/sensor-a/buckets/climate/data`;
    assertErrorBody(await t.request('GET', path, { token: jwt }), 403, 'forbidden');
    const read = await t.api('POST', `${U}/tokens`, { json: { name: 'r', scope: { access: 'read' } } });
    const readJwt = (read.body as Json).access_token as string;
    assert.equal((await t.request('GET', path, { token: readJwt })).status, 200);
  });
});

describe('stored tokens from before (migration)', () => {
  it('tokens of a database made before token keys keep working, named by their id', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'iotmp-migration-'));
    try {
      const file = join(dir, 'iotmp.db');
      // The schema as it was (user_version 4): no token key, description, enabled, permissions.
      let db = openDatabase(file);
      db.exec(`DROP INDEX access_tokens_user_token;
        ALTER TABLE access_tokens DROP COLUMN token; ALTER TABLE access_tokens DROP COLUMN description;
        ALTER TABLE access_tokens DROP COLUMN enabled; ALTER TABLE access_tokens DROP COLUMN permissions;
        ALTER TABLE access_tokens DROP COLUMN updated_at;`);
      db.pragma('user_version = 4');
      db.prepare('INSERT INTO users (username, password_hash, created_at) VALUES (?, ?, ?)').run(
        'old',
        'x',
        1,
      );
      db.prepare(
        'INSERT INTO access_tokens (id, username, name, scope, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)',
      ).run('0b7e4d2c-1111-4222-8333-444455556666', 'old', 'legacy', '{"access":"read"}', 1000, null);
      db.close();
      db = openDatabase(file);
      assert.equal(db.pragma('user_version', { simple: true }), 5);
      const accounts = new AccountStore(db);
      const t0 = accounts.findAccessToken('old', '0b7e4d2c-1111-4222-8333-444455556666');
      assert.deepEqual(t0, {
        id: '0b7e4d2c-1111-4222-8333-444455556666',
        username: 'old',
        token: '0b7e4d2c-1111-4222-8333-444455556666',
        name: 'legacy',
        description: '',
        enabled: true,
        scope: { access: 'read' },
        permissions: null,
        createdAt: 1000,
        updatedAt: 1000,
        expiresAt: null,
      });
      assert.equal(accounts.findAccessToken('someone', '0b7e4d2c-1111-4222-8333-444455556666'), undefined);
      db.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
