/**
 * Device properties (issue 5 §3): the REST API (list, create one or many, get, put, merge
 * patch, delete) with its error cases and limits; storage (survives a restart, goes with its
 * device); values written by devices (codes 1 and 2, both protocol versions); and every
 * change reaching the events WebSocket (`device_property_update` with filters).
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { Device } from '@iotmp/device';
import WebSocket from 'ws';
import { ADMIN, assertErrorBody, TestServer, VERSIONS, withTimeout } from './helpers.js';

const D = 'prop-device';
const base = (device = D, user = ADMIN) => `/v3/users/${user}/devices/${device}/properties`;

interface PropertyView {
  property: string;
  value: unknown;
  created_ts: number;
  modified_ts: number;
}

type EventFrame = { event?: string; signal: string; payload?: unknown };

/** The events WebSocket: keeps every frame; `next` waits (bounded) for the next matching one. */
class EventsClient {
  readonly frames: EventFrame[] = [];
  private cursor = 0;
  private wake: (() => void) | undefined;

  private constructor(readonly ws: WebSocket) {
    ws.on('message', (data) => {
      this.frames.push(JSON.parse(String(data)) as EventFrame);
      this.wake?.();
    });
  }

  static async open(t: TestServer, token: string, user = ADMIN): Promise<EventsClient> {
    const ws = new WebSocket(`ws://127.0.0.1:${t.server.httpPort}/v2/users/${user}/events`, {
      headers: { authorization: `Bearer ${token}` },
    });
    t.closers.push(() => ws.terminate());
    await withTimeout(
      new Promise((resolve, reject) => {
        ws.once('open', resolve);
        ws.once('error', reject);
      }),
      5000,
      'events socket open',
    );
    return new EventsClient(ws);
  }

  send(frame: unknown): void {
    this.ws.send(JSON.stringify(frame));
  }

  /** The next frame (after those already returned) matching `match`. */
  async next(match: (f: EventFrame) => boolean, what: string): Promise<EventFrame> {
    const deadline = Date.now() + 5000;
    for (;;) {
      while (this.cursor < this.frames.length) {
        const f = this.frames[this.cursor++] as EventFrame;
        if (match(f)) return f;
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${what}; frames: ${JSON.stringify(this.frames)}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  }
}

let t: TestServer;
let bobToken = '';

before(async () => {
  t = await TestServer.start();
  await t.createDevice(D, 'prop-secret');
  await t.server.tokens.createUser('bob', 'bob-password-1234');
  bobToken = (await t.login('bob', 'bob-password-1234')).access_token;
  await t.createDevice(D, 'bob-secret', { user: 'bob', token: bobToken });
});
after(async () => {
  await t?.close();
});

describe('REST: /v3/users/{u}/devices/{d}/properties', { concurrency: false }, () => {
  it('creates one or many, lists, gets one as {property, value, created_ts, modified_ts}', async () => {
    const one = await t.api('POST', base(), { json: { property: 'config', value: { interval: 10 } } });
    assert.equal(one.status, 201, one.bytes.toString());
    const created = one.body as PropertyView;
    assert.equal(created.property, 'config');
    assert.deepEqual(created.value, { interval: 10 });
    assert.equal(typeof created.created_ts, 'number');
    assert.equal(created.created_ts, created.modified_ts);
    const many = await t.api('POST', base(), {
      json: [
        { property: 'location', value: { lat: 40.4, lon: -3.7 } },
        { property: 'name', value: 'Greenhouse ☘' },
        { property: 'empty', value: null },
      ],
    });
    assert.equal(many.status, 201, many.bytes.toString());
    assert.deepEqual(
      (many.body as PropertyView[]).map((p) => [p.property, p.value]),
      [
        ['location', { lat: 40.4, lon: -3.7 }],
        ['name', 'Greenhouse ☘'],
        ['empty', null],
      ],
    );
    const list = await t.api('GET', base());
    assert.equal(list.status, 200);
    assert.deepEqual(
      (list.body as PropertyView[]).map((p) => p.property),
      ['config', 'empty', 'location', 'name'],
    );
    for (const p of list.body as PropertyView[])
      assert.deepEqual(Object.keys(p).sort(), ['created_ts', 'modified_ts', 'property', 'value']);
    const get = await t.api('GET', `${base()}/location`);
    assert.equal(get.status, 200);
    assert.deepEqual((get.body as PropertyView).value, { lat: 40.4, lon: -3.7 });
  });

  it('POST of an existing property is 409 and changes nothing (all or none)', async () => {
    assertErrorBody(
      await t.api('POST', base(), { json: { property: 'config', value: 1 } }),
      409,
      'property_exists',
    );
    assertErrorBody(
      await t.api('POST', base(), {
        json: [
          { property: 'brand-new', value: 1 },
          { property: 'config', value: 2 },
        ],
      }),
      409,
      'property_exists',
    );
    assertErrorBody(
      await t.api('POST', base(), {
        json: [
          { property: 'twice', value: 1 },
          { property: 'twice', value: 2 },
        ],
      }),
      409,
      'property_exists',
    );
    assertErrorBody(await t.api('GET', `${base()}/brand-new`), 404, 'property_not_found');
    assertErrorBody(await t.api('GET', `${base()}/twice`), 404, 'property_not_found');
    assert.deepEqual(((await t.api('GET', `${base()}/config`)).body as PropertyView).value, { interval: 10 });
  });

  it('PUT {value} replaces (or creates); PATCH merges (RFC 7396); DELETE removes', async () => {
    const put = await t.api('PUT', `${base()}/config`, { json: { value: { interval: 20, mode: 'eco' } } });
    assert.equal(put.status, 200, put.bytes.toString());
    const p = put.body as PropertyView;
    assert.deepEqual(p.value, { interval: 20, mode: 'eco' });
    assert.ok(p.modified_ts >= p.created_ts);
    const created = await t.api('PUT', `${base()}/threshold`, {
      json: { property: 'threshold', value: 3.5 },
    });
    assert.equal(created.status, 200);
    assert.equal((created.body as PropertyView).value, 3.5);
    assertErrorBody(
      await t.api('PUT', `${base()}/threshold`, { json: { property: 'other', value: 1 } }),
      400,
      'invalid_request',
    );

    await t.api('PUT', `${base()}/doc`, { json: { value: { a: 1, b: { c: 2, d: 3 }, list: [1, 2] } } });
    const patched = await t.api('PATCH', `${base()}/doc`, {
      json: { value: { b: { c: null, e: 4 }, f: 5, list: [3] } },
    });
    assert.equal(patched.status, 200, patched.bytes.toString());
    assert.deepEqual((patched.body as PropertyView).value, { a: 1, b: { d: 3, e: 4 }, f: 5, list: [3] });
    // A patch that is not an object replaces the value (RFC 7396).
    const replaced = await t.api('PATCH', `${base()}/doc`, { json: { value: 'plain' } });
    assert.equal((replaced.body as PropertyView).value, 'plain');
    assertErrorBody(
      await t.api('PATCH', `${base()}/missing`, { json: { value: { a: 1 } } }),
      404,
      'property_not_found',
    );

    const del = await t.api('DELETE', `${base()}/doc`);
    assert.equal(del.status, 200);
    assertErrorBody(await t.api('GET', `${base()}/doc`), 404, 'property_not_found');
    assertErrorBody(await t.api('DELETE', `${base()}/doc`), 404, 'property_not_found');
  });

  it('bad input: ids, bodies, sizes, depth, unknown devices; nothing changes', async () => {
    const before = JSON.stringify((await t.api('GET', base())).body);
    const bad: Array<[string, string, unknown, number, string]> = [
      ['GET', `${base()}/bad%20id`, undefined, 400, 'invalid_request'],
      ['GET', `${base()}/.hidden`, undefined, 400, 'invalid_request'],
      ['PUT', `${base()}/${'p'.repeat(200)}`, { value: 1 }, 400, 'invalid_request'],
      ['POST', base(), { property: 'x' }, 400, 'invalid_request'],
      ['POST', base(), { property: 'x', value: 1, extra: true }, 400, 'invalid_request'],
      ['POST', base(), { property: 'bad id', value: 1 }, 400, 'invalid_request'],
      ['POST', base(), { property: 5, value: 1 }, 400, 'invalid_request'],
      ['POST', base(), [], 400, 'invalid_request'],
      ['POST', base(), 'config', 400, 'invalid_request'],
      [
        'POST',
        base(),
        Array.from({ length: 101 }, (_, i) => ({ property: `p${i}`, value: i })),
        400,
        'invalid_request',
      ],
      ['PUT', `${base()}/config`, { val: 1 }, 400, 'invalid_request'],
      ['PUT', `${base()}/config`, 42, 400, 'invalid_request'],
      ['PATCH', `${base()}/config`, {}, 400, 'invalid_request'],
      ['PUT', `${base()}/big`, { value: 'x'.repeat(70 * 1024) }, 413, 'value_too_large'],
      [
        'PUT',
        `${base()}/deep`,
        { value: JSON.parse(`${'['.repeat(40)}${']'.repeat(40)}`) },
        400,
        'invalid_value',
      ],
      ['GET', base('no-such-device'), undefined, 404, 'device_not_found'],
      ['PUT', `${base('no-such-device')}/x`, { value: 1 }, 404, 'device_not_found'],
      ['GET', `/v3/users/${ADMIN}/devices/bad%20device/properties`, undefined, 400, 'invalid_request'],
    ];
    for (const [method, path, json, status, code] of bad) {
      const res = await t.api(method, path, json === undefined ? {} : { json });
      assertErrorBody(res, status, code);
    }
    // Not JSON: text is not an object with a value; an unknown media type is refused.
    assertErrorBody(
      await t.api('PUT', `${base()}/config`, { body: 'value=1', contentType: 'text/plain' }),
      400,
      'invalid_request',
    );
    assertErrorBody(
      await t.api('PUT', `${base()}/config`, { body: '<value/>', contentType: 'application/xml' }),
      415,
      'unsupported_media_type',
    );
    assertErrorBody(
      await t.api('PUT', `${base()}/config`, { body: '{"value": ', contentType: 'application/json' }),
      400,
    );
    assert.equal(JSON.stringify((await t.api('GET', base())).body), before, 'nothing changed');
  });

  it('authorization: no token 401, another user 403, read-only token reads only', async () => {
    assertErrorBody(await t.request('GET', base()), 401);
    assertErrorBody(await t.request('GET', base(), { token: bobToken }), 403, 'forbidden');
    assertErrorBody(
      await t.request('PUT', `${base()}/config`, { token: bobToken, json: { value: 'hijack' } }),
      403,
      'forbidden',
    );
    // bob has a device with the same id: its properties are his own.
    const bobs = await t.request('GET', base(D, 'bob'), { token: bobToken });
    assert.equal(bobs.status, 200);
    assert.deepEqual(bobs.body, []);
    const tok = await t.api('POST', `/v1/users/${ADMIN}/tokens`, {
      json: { name: 'ro', scope: { access: 'read' } },
    });
    assert.equal(tok.status, 201, tok.bytes.toString());
    const ro = (tok.body as { access_token: string }).access_token;
    assert.equal((await t.request('GET', `${base()}/config`, { token: ro })).status, 200);
    assertErrorBody(
      await t.request('PUT', `${base()}/config`, { token: ro, json: { value: 1 } }),
      403,
      'forbidden',
    );
    assertErrorBody(await t.request('DELETE', `${base()}/config`, { token: ro }), 403, 'forbidden');
  });

  it('at most 1000 properties per device', async () => {
    await t.createDevice('crowded', 'crowded-secret');
    for (let batch = 0; batch < 10; batch++) {
      const res = await t.api('POST', base('crowded'), {
        json: Array.from({ length: 100 }, (_, i) => ({ property: `p${batch * 100 + i}`, value: i })),
      });
      assert.equal(res.status, 201, res.bytes.toString());
    }
    assertErrorBody(
      await t.api('POST', base('crowded'), { json: { property: 'one-more', value: 1 } }),
      409,
      'too_many_properties',
    );
    assertErrorBody(
      await t.api('PUT', `${base('crowded')}/one-more`, { json: { value: 1 } }),
      409,
      'too_many_properties',
    );
    // Replacing an existing one is fine.
    assert.equal((await t.api('PUT', `${base('crowded')}/p5`, { json: { value: 'new' } })).status, 200);
  });

  it('properties go with their device', async () => {
    await t.createDevice('short-lived', 'short-secret');
    assert.equal(
      (await t.api('POST', base('short-lived'), { json: { property: 'left-over', value: 1 } })).status,
      201,
    );
    assert.equal((await t.api('DELETE', `/v1/users/${ADMIN}/devices/short-lived`)).status, 200);
    await t.createDevice('short-lived', 'short-secret');
    assert.deepEqual((await t.api('GET', base('short-lived'))).body, []);
  });
});

describe('devices and properties (codes 1 and 2)', () => {
  for (const version of VERSIONS) {
    it(`protocol version ${version}: what a device sets, REST reads, and the reverse`, async () => {
      const id = `prop-dev-v${version}`;
      await t.createDevice(id, 'dev-secret');
      const device: Device = t.device(version === 0 ? 'tcp' : 'tls', version, id, 'dev-secret');
      await device.connect();
      await device.properties.set('status', { ok: true, temperature: 21.5, tags: ['a', 'b'] });
      const res = await t.api('GET', `${base(id)}/status`);
      assert.equal(res.status, 200);
      assert.deepEqual((res.body as PropertyView).value, { ok: true, temperature: 21.5, tags: ['a', 'b'] });
      // Binary from a device is stored as base64 (values are JSON).
      await device.properties.set('blob', new Uint8Array([1, 2, 3, 250]));
      assert.equal(((await t.api('GET', `${base(id)}/blob`)).body as PropertyView).value, 'AQID+g==');
      await t.api('PUT', `${base(id)}/setpoint`, { json: { value: { celsius: 19, schedule: [6, 22] } } });
      assert.deepEqual(await device.properties.get('setpoint'), { celsius: 19, schedule: [6, 22] });
    });
  }
});

describe('the events WebSocket: device_property_update', () => {
  it('REST and device changes reach subscribers, filtered by device and property', async () => {
    const ws = await EventsClient.open(t, t.adminToken);
    ws.send({ event: 'device_property_update', filters: { device: D, property: 'watched' } });
    const start = await ws.next((f) => f.signal === 'start', 'start');
    assert.deepEqual(start.payload, { filters: { device: D, property: 'watched' } });
    // Not matching: another property, another device, another user's device of the same id.
    await t.api('PUT', `${base()}/unwatched`, { json: { value: 0 } });
    await t.request('PUT', `${base(D, 'bob')}/watched`, { token: bobToken, json: { value: 'bob' } });
    await t.api('PUT', `${base()}/watched`, { json: { value: { v: 1 } } });
    const first = await ws.next((f) => f.signal === 'data', 'first change');
    assert.deepEqual(first, {
      event: 'device_property_update',
      signal: 'data',
      payload: { device: D, property: 'watched', value: { v: 1 } },
    });
    // A device's own change (code 2).
    const device = t.device('tcp', 1, D, 'prop-secret');
    await device.connect();
    await device.properties.set('watched', [1, 2, 3]);
    const second = await ws.next((f) => f.signal === 'data', 'device change');
    assert.deepEqual(second.payload, { device: D, property: 'watched', value: [1, 2, 3] });
    await t.api('DELETE', `${base()}/watched`);
    const deleted = await ws.next((f) => f.signal === 'data', 'delete');
    assert.deepEqual(deleted.payload, { device: D, property: 'watched', value: null, deleted: true });
    ws.send({ event: 'device_property_update', filters: { topic: 'a' } });
    const error = await ws.next((f) => f.signal === 'error', 'bad filter');
    assert.match((error.payload as { message: string }).message, /unknown filter "topic"/);
    ws.send({ event: 'device_property_update', enabled: false });
    await ws.next((f) => f.signal === 'stop', 'stop');
    await t.api('PUT', `${base()}/watched`, { json: { value: 'unseen' } });
    // A later subscription's start proves the unseen change was not sent in between.
    ws.send({ event: 'device_state_change' });
    await ws.next((f) => f.signal === 'start', 'second start');
    assert.equal(ws.frames.filter((f) => f.signal === 'data').length, 3);
  });
});

describe('storage', () => {
  it('properties survive a restart', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'iotmp-props-restart-'));
    try {
      const first = await TestServer.start({ dataDir: dir, tcp: false, tls: false });
      try {
        await first.createDevice('keeper', 'keeper-secret');
        const res = await first.api('POST', base('keeper'), { json: { property: 'kept', value: { n: 1 } } });
        assert.equal(res.status, 201);
      } finally {
        await first.close();
      }
      const second = await TestServer.start({ dataDir: dir, tcp: false, tls: false });
      try {
        const res = await second.api('GET', `${base('keeper')}/kept`);
        assert.equal(res.status, 200);
        assert.deepEqual((res.body as PropertyView).value, { n: 1 });
      } finally {
        await second.close();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
