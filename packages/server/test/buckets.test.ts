/**
 * Data buckets (issue 5 §4): CRUD and validation, API writes and reads (items, min_ts,
 * max_ts, sort), record timestamps (server time, unique; a record's own ts; replacement),
 * arrays, limits and errors, authorization; device writes (code 5 through the SDK, and the
 * BucketStore.write shape the dispatcher uses); the log → table compaction; the retention
 * sweep with an injected time; deleted buckets' records purged; restart; and device-sourced
 * buckets sampling a resource at an interval and storing stream events, in both protocol
 * versions.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { type Device, RequestError } from '@iotmp/device';
import { type BucketQuery, QueryError, type QueryStats, runQuery } from '../src/storage/bucket-query.js';
import { BucketError, BucketStore } from '../src/storage/buckets.js';
import { openDatabase } from '../src/storage/database.js';
import {
  ADMIN,
  type ApiResponse,
  assertErrorBody,
  TestServer,
  VERSIONS,
  waitFor,
  waitForStatus,
} from './helpers.js';

interface Row {
  ts: number;
  val: Record<string, unknown>;
}

const HOUR = 3_600_000;
const buckets = `/v1/users/${ADMIN}/buckets`;
const data = (bucket: string, query = '') => `${buckets}/${bucket}/data${query}`;

let t: TestServer;

before(async () => {
  t = await TestServer.start();
});
after(async () => {
  await t?.close();
});

async function create(body: Record<string, unknown>): Promise<ApiResponse> {
  return t.api('POST', buckets, { json: body });
}

async function createOk(body: Record<string, unknown>): Promise<Record<string, unknown>> {
  const res = await create(body);
  assert.equal(res.status, 201, res.bytes.toString('utf8'));
  return res.body as Record<string, unknown>;
}

async function write(bucket: string, json: unknown): Promise<ApiResponse> {
  return t.api('POST', data(bucket), { json });
}

async function read(bucket: string, query = ''): Promise<Row[]> {
  const res = await t.api('GET', data(bucket, query));
  assert.equal(res.status, 200, res.bytes.toString('utf8'));
  return res.body as Row[];
}

// The API suites share one server and run in order; the restart and device-sourced suites
// run beside them (they wait on timers and a second server, not on the CPU).
describe('buckets', { concurrency: true }, () => {
  describe('on one server, in order', { concurrency: false }, () => {
    describe('bucket CRUD', { concurrency: false }, () => {
      it('creates, lists (paged), gets, updates and deletes buckets', async () => {
        const created = await createOk({
          bucket: 'crud-a',
          name: 'Bucket A',
          description: 'first',
          source: 'write',
          retention: { period: 7, unit: 'days' },
        });
        assert.equal(created.bucket, 'crud-a');
        assert.equal(created.name, 'Bucket A');
        assert.equal(created.description, 'first');
        assert.equal(created.enabled, true);
        assert.equal(created.source, 'write');
        assert.deepEqual(created.config, {});
        assert.deepEqual(created.retention, { period: 7, unit: 'days' });
        assert.equal(typeof created.created, 'number');
        await createOk({ bucket: 'crud-b', source: 'write' });
        const c = await createOk({
          bucket: 'crud-c',
          source: 'device',
          enabled: false,
          config: { device: 'nobody', resource: 'temp', interval: 60 },
        });
        assert.deepEqual(c.config, { device: 'nobody', resource: 'temp', update: 'interval', interval: 60 });
        assert.deepEqual(c.status, { state: 'disabled' });
        assert.equal(c.retention, null);
        assert.equal(c.name, 'crud-c', 'the name defaults to the id');

        assertErrorBody(await create({ bucket: 'crud-a', source: 'write' }), 409, 'bucket_exists');

        const page = await t.api('GET', `${buckets}?count=2&index=0`);
        assert.equal(page.status, 200);
        const all = Number(page.headers.get('x-total-count'));
        assert.ok(all >= 3, `x-total-count ${all}`);
        const first = (page.body as Array<{ bucket: string }>).map((b) => b.bucket);
        assert.equal(first.length, 2);
        const rest = await t.api('GET', `${buckets}?count=1000&index=2`);
        const ids = [...first, ...(rest.body as Array<{ bucket: string }>).map((b) => b.bucket)];
        assert.equal(ids.length, all);
        assert.deepEqual(ids, [...ids].sort(), 'sorted by id');
        for (const id of ['crud-a', 'crud-b', 'crud-c']) assert.ok(ids.includes(id), id);

        const got = await t.api('GET', `${buckets}/crud-a`);
        assert.equal(got.status, 200);
        assert.deepEqual(got.body, created);

        const patched = await t.api('PATCH', `${buckets}/crud-a`, {
          json: { name: 'renamed', retention: null, enabled: false },
        });
        assert.equal(patched.status, 200, patched.bytes.toString('utf8'));
        const p = patched.body as Record<string, unknown>;
        assert.equal(p.name, 'renamed');
        assert.equal(p.description, 'first', 'untouched fields stay');
        assert.equal(p.retention, null);
        assert.equal(p.enabled, false);
        const put = await t.api('PUT', `${buckets}/crud-a`, {
          json: { enabled: true, retention: { period: 2, unit: 'months' } },
        });
        assert.equal(put.status, 200);
        assert.deepEqual((put.body as Record<string, unknown>).retention, { period: 2, unit: 'months' });
        // Switching a bucket to device source needs a config.
        assertErrorBody(
          await t.api('PATCH', `${buckets}/crud-b`, { json: { source: 'device' } }),
          400,
          'invalid_request',
        );
        const switched = await t.api('PATCH', `${buckets}/crud-b`, {
          json: { source: 'device', config: { device: 'd', resource: 'r', update: 'events' } },
        });
        assert.equal(switched.status, 200, switched.bytes.toString('utf8'));
        assert.deepEqual((switched.body as Record<string, unknown>).config, {
          device: 'd',
          resource: 'r',
          update: 'events',
        });

        const del = await t.api('DELETE', `${buckets}/crud-c`);
        assert.equal(del.status, 200);
        assertErrorBody(await t.api('GET', `${buckets}/crud-c`), 404, 'bucket_not_found');
        assertErrorBody(await t.api('DELETE', `${buckets}/crud-c`), 404, 'bucket_not_found');
        assertErrorBody(
          await t.api('PATCH', `${buckets}/crud-c`, { json: { name: 'x' } }),
          404,
          'bucket_not_found',
        );
      });

      it('refuses invalid definitions with 400 invalid_request', async () => {
        const bad: Array<[string, Record<string, unknown>]> = [
          ['bad id', { bucket: 'no spaces', source: 'write' }],
          ['id too long', { bucket: 'x'.repeat(129), source: 'write' }],
          ['no source', { bucket: 'v1' }],
          ['unknown source', { bucket: 'v1', source: 'mqtt' }],
          ['unknown field', { bucket: 'v1', source: 'write', colour: 'red' }],
          [
            'config on a write bucket',
            { bucket: 'v1', source: 'write', config: { device: 'd', resource: 'r' } },
          ],
          ['device bucket without config', { bucket: 'v1', source: 'device' }],
          [
            'device bucket without interval',
            { bucket: 'v1', source: 'device', config: { device: 'd', resource: 'r' } },
          ],
          [
            'interval 0',
            { bucket: 'v1', source: 'device', config: { device: 'd', resource: 'r', interval: 0 } },
          ],
          [
            'fractional interval',
            { bucket: 'v1', source: 'device', config: { device: 'd', resource: 'r', interval: 1.5 } },
          ],
          [
            'interval with events',
            {
              bucket: 'v1',
              source: 'device',
              config: { device: 'd', resource: 'r', update: 'events', interval: 5 },
            },
          ],
          [
            'bad device id',
            { bucket: 'v1', source: 'device', config: { device: '-x', resource: 'r', interval: 5 } },
          ],
          ['retention unit', { bucket: 'v1', source: 'write', retention: { period: 1, unit: 'fortnights' } }],
          ['retention period 0', { bucket: 'v1', source: 'write', retention: { period: 0, unit: 'days' } }],
          ['retention as a number', { bucket: 'v1', source: 'write', retention: 86400000 }],
          [
            'retention over 100 years',
            { bucket: 'v1', source: 'write', retention: { period: 101, unit: 'years' } },
          ],
          ['name not a string', { bucket: 'v1', source: 'write', name: 5 }],
        ];
        for (const [what, body] of bad) {
          const res = await create(body);
          assert.equal(res.status, 400, `${what}: ${res.bytes.toString('utf8')}`);
          assertErrorBody(res, 400, 'invalid_request');
        }
        assertErrorBody(await t.api('GET', `${buckets}/v1`), 404, 'bucket_not_found');
        assertErrorBody(await t.api('GET', `${buckets}?count=0`), 400, 'invalid_request');
      });

      it("keeps users apart: another user's buckets are 403, read-only tokens cannot write", async () => {
        await createOk({ bucket: 'private', source: 'write' });
        assert.equal((await write('private', { v: 1 })).status, 200);
        // The admin's token has no business in another user's namespace (existing or not).
        const other = '/v1/users/mallory/buckets';
        for (const [method, path, json] of [
          ['GET', other, undefined],
          ['GET', `${other}/private`, undefined],
          ['GET', `${other}/private/data`, undefined],
          ['POST', `${other}/private/data`, { v: 2 }],
          ['POST', other, { bucket: 'intruder', source: 'write' }],
          ['PATCH', `${other}/private`, { name: 'x' }],
          ['DELETE', `${other}/private`, undefined],
        ] as const) {
          assertErrorBody(await t.api(method, path, { json }), 403, 'forbidden');
        }
        assertErrorBody(await t.request('GET', buckets), 401);

        const token = await t.api('POST', `/v1/users/${ADMIN}/tokens`, {
          json: { name: 'reader', scope: { access: 'read' } },
        });
        assert.equal(token.status, 201);
        const reader = (token.body as { access_token: string }).access_token;
        const rows = await t.request('GET', data('private'), { token: reader });
        assert.equal(rows.status, 200);
        assert.equal((rows.body as Row[]).length, 1);
        assertErrorBody(
          await t.request('POST', data('private'), { token: reader, json: { v: 3 } }),
          403,
          'forbidden',
        );
        assertErrorBody(
          await t.request('POST', buckets, { token: reader, json: { bucket: 'x', source: 'write' } }),
          403,
          'forbidden',
        );
      });
    });

    describe('writing and reading records', { concurrency: false }, () => {
      before(async () => {
        await createOk({ bucket: 'rw', source: 'write' });
      });

      it('stores an object at the server time and reads it back as {ts, val}', async () => {
        const before = Date.now();
        const res = await write('rw', {
          temperature: 21.5,
          humidity: 40,
          tags: ['a', 'b'],
          nested: { x: null },
        });
        assert.equal(res.status, 200, res.bytes.toString('utf8'));
        assert.deepEqual(res.body, { written: 1 });
        const rows = await read('rw');
        assert.equal(rows.length, 1);
        const row = rows[0] as Row;
        assert.ok(row.ts >= before && row.ts <= Date.now() + 1000, `server ts ${row.ts}`);
        assert.deepEqual(row.val, { temperature: 21.5, humidity: 40, tags: ['a', 'b'], nested: { x: null } });
      });

      it('gives records without ts unique server times (arrays: consecutive)', async () => {
        await createOk({ bucket: 'auto', source: 'write' });
        const res = await write('auto', [{ i: 0 }, { i: 1 }, { i: 2 }, { i: 3 }, { i: 4 }]);
        assert.deepEqual(res.body, { written: 5 });
        await Promise.all([write('auto', { i: 5 }), write('auto', { i: 6 })]);
        const rows = await read('auto', '?sort=asc');
        assert.equal(rows.length, 7, 'nothing replaced another');
        assert.deepEqual(
          rows.slice(0, 5).map((r) => r.val.i),
          [0, 1, 2, 3, 4],
        );
        for (let i = 1; i < rows.length; i++)
          assert.ok((rows[i] as Row).ts > (rows[i - 1] as Row).ts, 'strictly increasing');
      });

      it("uses a record's own ts, replaces a record with the same ts, and filters by items/min_ts/max_ts/sort", async () => {
        await createOk({ bucket: 'series', source: 'write' });
        const base = 1_700_000_000_000;
        const records = Array.from({ length: 10 }, (_, i) => ({ ts: base + i * 1000, n: i }));
        assert.deepEqual((await write('series', records)).body, { written: 10 });
        let rows = await read('series');
        assert.deepEqual(
          rows.map((r) => r.ts),
          records.map((r) => r.ts).reverse(),
          'newest first by default',
        );
        assert.deepEqual(rows[0]?.val, { ts: base + 9000, n: 9 }, 'the value keeps its ts field');

        rows = await read('series', '?sort=asc&items=3');
        assert.deepEqual(
          rows.map((r) => r.val.n),
          [0, 1, 2],
        );
        rows = await read('series', `?items=2&max_ts=${base + 5000}`);
        assert.deepEqual(
          rows.map((r) => r.val.n),
          [5, 4],
        );
        rows = await read('series', `?min_ts=${base + 3000}&max_ts=${base + 6000}&sort=asc`);
        assert.deepEqual(
          rows.map((r) => r.val.n),
          [3, 4, 5, 6],
        );
        rows = await read('series', `?min_ts=${base + 6000}&max_ts=${base + 3000}`);
        assert.deepEqual(rows, []);

        // Same ts again: replaced (one record), before and after the compaction moved it.
        assert.equal((await write('series', { ts: base + 4000, n: 'four' })).status, 200);
        await t.server.buckets.compact();
        assert.equal((await write('series', { ts: base + 5000, n: 'five' })).status, 200);
        rows = await read('series', '?sort=asc');
        assert.equal(rows.length, 10);
        assert.deepEqual(
          rows.map((r) => r.val.n),
          [0, 1, 2, 3, 'four', 'five', 6, 7, 8, 9],
        );
        await t.server.buckets.compact();
        assert.deepEqual(
          (await read('series', '?sort=asc')).map((r) => r.val.n),
          [0, 1, 2, 3, 'four', 'five', 6, 7, 8, 9],
        );
        assert.equal(t.server.buckets.countRecords(ADMIN, 'series'), 10);
      });

      it('refuses bad records, oversized bodies, and writes to disabled, device or unknown buckets', async () => {
        await createOk({ bucket: 'strict', source: 'write' });
        const bad: unknown[] = [
          'a string',
          42,
          null,
          [],
          [{ ok: 1 }, 'not an object'],
          [[{ nested: 'array' }]],
          Array.from({ length: 1001 }, (_, i) => ({ i })),
          { ts: -1 },
          { ts: 1.5 },
          { ts: '2024-01-01' },
          { ts: 8_640_000_000_000_001 },
        ];
        for (const body of bad) assertErrorBody(await write('strict', body), 400, 'invalid_request');
        assertErrorBody(
          await t.api('POST', data('strict'), { body: 'not json', contentType: 'application/json' }),
          400,
        );
        assertErrorBody(await write('strict', { big: 'x'.repeat(70 * 1024) }), 413, 'record_too_large');
        assertErrorBody(
          await write(
            'strict',
            Array.from({ length: 30 }, () => ({ chunk: 'y'.repeat(40 * 1024) })),
          ),
          413,
          'payload_too_large',
        );
        assert.deepEqual(await read('strict'), [], 'nothing of a refused write was stored');
        // A 1000-record array is fine.
        assert.deepEqual(
          (
            await write(
              'strict',
              Array.from({ length: 1000 }, (_, i) => ({ i })),
            )
          ).body,
          {
            written: 1000,
          },
        );
        assert.equal((await read('strict', '?items=1000')).length, 1000);
        assertErrorBody(await t.api('GET', data('strict', '?items=1001')), 400, 'invalid_request');
        assertErrorBody(await t.api('GET', data('strict', '?sort=up')), 400, 'invalid_request');

        await createOk({ bucket: 'off', source: 'write', enabled: false });
        assertErrorBody(await write('off', { v: 1 }), 409, 'bucket_disabled');
        await createOk({
          bucket: 'sampled',
          source: 'device',
          config: { device: 'ghost', resource: 'r', interval: 10 },
        });
        assertErrorBody(await write('sampled', { v: 1 }), 409, 'bucket_not_writable');
        assertErrorBody(await write('missing', { v: 1 }), 404, 'bucket_not_found');
        assertErrorBody(await t.api('GET', data('missing')), 404, 'bucket_not_found');
      });
    });

    describe('device writes', { concurrency: false }, () => {
      it('BucketStore.write: the shape the code-5 dispatcher calls, with device values', async () => {
        await createOk({ bucket: 'direct', source: 'write' });
        const store = t.server.buckets;
        const n = await store.write(ADMIN, 'direct', {
          ts: 1_600_000_000_000n,
          raw: Uint8Array.from([1, 2, 3]),
          huge: 2n ** 60n,
          map: new Map([['k', 1]]),
        });
        assert.equal(n, 1);
        const rows = await read('direct');
        assert.deepEqual(rows, [
          {
            ts: 1_600_000_000_000,
            val: { ts: 1_600_000_000_000, raw: 'AQID', huge: '1152921504606846976', map: { k: 1 } },
          },
        ]);
        assert.equal(await store.write(ADMIN, 'direct', [{ a: 1 }, { a: 2 }]), 2);
        const codeOf = async (p: Promise<unknown>) => {
          try {
            await p;
            return 'resolved';
          } catch (err) {
            assert.ok(err instanceof BucketError, String(err));
            return `${err.code} ${err.status}`;
          }
        };
        assert.equal(await codeOf(store.write(ADMIN, 'nope', { a: 1 })), 'bucket_not_found 404');
        assert.equal(await codeOf(store.write('mallory', 'direct', { a: 1 })), 'bucket_not_found 404');
        assert.equal(await codeOf(store.write(ADMIN, 'direct', 'text')), 'invalid_record 400');
        assert.equal(await codeOf(store.write(ADMIN, 'direct', Uint8Array.from([1]))), 'invalid_record 400');
        assert.equal(await codeOf(store.write(ADMIN, 'direct', [{ a: 1 }, 7])), 'invalid_record 400');
        assert.equal(await codeOf(store.write(ADMIN, 'direct', { ts: 2n ** 63n })), 'invalid_record 400');
        let deep: unknown = { leaf: true };
        for (let i = 0; i < 100; i++) deep = { deep };
        assert.equal(await codeOf(store.write(ADMIN, 'direct', deep)), 'invalid_record 400');
        assert.equal(
          await codeOf(store.write(ADMIN, 'direct', { s: 'é'.repeat(40_000) })),
          'record_too_large 413',
        );
        assert.equal(await codeOf(store.write(ADMIN, 'off', { a: 1 })), 'bucket_disabled 409');
        assert.equal(await codeOf(store.write(ADMIN, 'sampled', { a: 1 })), 'bucket_not_writable 409');
      });

      for (const version of VERSIONS) {
        it(`an SDK device writes with code 5, confirmed (protocol version ${version})`, async () => {
          const bucket = `from-device-v${version}`;
          await createOk({ bucket, source: 'write' });
          const id = `bucket-writer-v${version}`;
          await t.createDevice(id, 'writer-secret');
          const device = t.device('tcp', version, id, 'writer-secret');
          await device.connect();
          await waitForStatus(device, 'connected');
          await device.buckets.write(
            bucket,
            { temperature: 20 + version, ts: 1_650_000_000_000 },
            { confirm: true },
          );
          await Promise.all(
            Array.from({ length: 20 }, (_, i) => device.buckets.write(bucket, { i }, { confirm: true })),
          );
          const rows = await read(bucket, '?items=100&sort=asc');
          assert.equal(rows.length, 21);
          assert.deepEqual(rows[0], {
            ts: 1_650_000_000_000,
            val: { temperature: 20 + version, ts: 1_650_000_000_000 },
          });
          assert.deepEqual(
            rows
              .slice(1)
              .map((r) => r.val.i)
              .sort((a, b) => Number(a) - Number(b)),
            Array.from({ length: 20 }, (_, i) => i),
          );
          await assert.rejects(
            device.buckets.write('no-such-bucket', { a: 1 }, { confirm: true }),
            (err: unknown) => err instanceof RequestError && err.returnCode === 404,
          );
          await assert.rejects(
            device.buckets.write('off', { a: 1 }, { confirm: true }),
            (err: unknown) => err instanceof RequestError && err.returnCode === 409,
          );
        });
      }
    });

    describe('retention and deletion', { concurrency: false }, () => {
      it('the sweep deletes expired records (in the table and still in the log); reads hide them before', async () => {
        await createOk({ bucket: 'short', source: 'write', retention: { period: 1, unit: 'hours' } });
        const now = Date.now();
        const min = 60_000;
        await write(
          'short',
          Array.from({ length: 12 }, (_, i) => ({ ts: now - 30 * min + i, kind: 'table' })),
        );
        await t.server.buckets.compact(); // these twelve are in the table now
        await write('short', [
          { ts: now - 2 * HOUR, kind: 'expired' },
          { ts: now - 50 * min, kind: 'log' },
          { ts: now - 10 * min, kind: 'recent' },
          { ts: now, kind: 'now' },
        ]);
        const store = t.server.buckets;
        // Reads hide expired records even before the sweep.
        const visible = (await read('short', '?sort=asc')).map((r) => r.val.kind);
        assert.equal(visible.length, 15);
        assert.ok(!visible.includes('expired'));

        // (The periodic compaction may have moved the log already: it skips expired records.)
        assert.equal((await store.sweep(now)).expired, 0, 'nothing in the table had expired');
        assert.equal(store.countRecords(ADMIN, 'short'), 15, 'the expired record is gone');
        await store.sweep(now + 15 * min); // cutoff now - 45 min: the "log" record
        assert.equal(store.countRecords(ADMIN, 'short'), 14);
        const swept = await store.sweep(now + 40 * min); // cutoff now - 20 min: the table's twelve
        assert.equal(swept.expired, 12);
        assert.equal(store.countRecords(ADMIN, 'short'), 2);
        await store.compact();
        assert.equal(store.countRecords(ADMIN, 'short'), 2, 'the compaction brought nothing back');
        assert.deepEqual(
          (await read('short', '?sort=asc')).map((r) => r.val.kind),
          ['recent', 'now'],
        );
        await store.sweep(now + 2 * HOUR);
        assert.equal(store.countRecords(ADMIN, 'short'), 0);
      });

      it('a deleted bucket loses its records; a new bucket of the same name starts empty', async () => {
        await createOk({ bucket: 'doomed', source: 'write' });
        await write(
          'doomed',
          Array.from({ length: 50 }, (_, i) => ({ i })),
        );
        await t.server.buckets.compact();
        await write('doomed', { i: 'in the log' });
        const id = t.server.buckets.get(ADMIN, 'doomed')?.id as number;
        assert.equal(t.server.buckets.countById(id), 51);
        assert.equal((await t.api('DELETE', `${buckets}/doomed`)).status, 200);
        await t.server.buckets.sweep();
        await t.server.buckets.compact();
        assert.equal(t.server.buckets.countById(id), 0);
        await createOk({ bucket: 'doomed', source: 'write' });
        assert.deepEqual(await read('doomed'), []);
        assert.notEqual(t.server.buckets.get(ADMIN, 'doomed')?.id, id, 'ids are not reused');
      });

      it('sweeps in batches of sweepBatch rows, with an injected clock', async () => {
        const dir = mkdtempSync(join(tmpdir(), 'iotmp-buckets-'));
        const db = openDatabase(join(dir, 'b.db'));
        db.prepare('INSERT INTO users (username, password_hash, created_at) VALUES (?, ?, ?)').run(
          'u',
          'x',
          0,
        );
        let clock = 1_000_000_000;
        const store = new BucketStore(db, { now: () => clock, sweepBatch: 10, sweepIntervalMs: 0 });
        try {
          store.create('u', { bucket: 'b', source: 'write', retention: { period: 1, unit: 'minutes' } });
          await store.write(
            'u',
            'b',
            Array.from({ length: 35 }, () => ({ v: 1 })),
          );
          const first = store.read('u', 'b', { items: 1000, sort: 'asc' });
          assert.deepEqual(
            first.map((r) => r.ts),
            Array.from({ length: 35 }, (_, i) => clock + i),
            'server times from the injected clock, unique',
          );
          await store.compact();
          clock += 60_000 + 21; // the first 21 records are now older than a minute
          const swept = await store.sweep();
          assert.equal(swept.expired, 21);
          assert.equal(store.countRecords('u', 'b'), 14);
          assert.equal(store.read('u', 'b', { items: 1000, sort: 'asc' })[0]?.ts, 1_000_000_021);
        } finally {
          await store.close();
          db.close();
          rmSync(dir, { recursive: true, force: true });
        }
      });
    });
  });

  it('refuses writes with "unavailable" (503) while too many wait to be made durable; bounds buckets per user', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'iotmp-buckets-busy-'));
    const db = openDatabase(join(dir, 'b.db'));
    try {
      db.prepare('INSERT INTO users (username, password_hash, created_at) VALUES (?, ?, ?)').run('u', 'x', 0);
      const store = new BucketStore(db, {
        maxUnacknowledged: 3,
        maxBucketsPerUser: 2,
        compactIntervalMs: 0,
        sweepIntervalMs: 0,
      });
      store.create('u', { bucket: 'b', source: 'write' });
      store.create('u', { bucket: 'c', source: 'write' });
      assert.throws(
        () => store.create('u', { bucket: 'd', source: 'write' }),
        (err: unknown) => err instanceof BucketError && err.code === 'too_many_buckets' && err.status === 409,
      );
      const first = store.write('u', 'b', [{ a: 1 }, { a: 2 }]);
      const second = store.write('u', 'b', { a: 3 });
      // Three are waiting (none is durable before the next turn): the fourth is refused at once.
      await assert.rejects(
        store.write('u', 'b', { a: 4 }),
        (err: unknown) => err instanceof BucketError && err.code === 'unavailable' && err.status === 503,
      );
      assert.deepEqual(await Promise.all([first, second]), [2, 1]);
      assert.equal(store.unacknowledged, 0);
      assert.equal(await store.write('u', 'b', { a: 5 }), 1, 'accepted again once they are durable');
      assert.equal(store.countRecords('u', 'b'), 4);
      await store.close();
    } finally {
      db.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('aggregations keep only what their type needs, charged to the answer as kept: too much is refused (413) at once', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'iotmp-buckets-agg-'));
    const db = openDatabase(join(dir, 'b.db'));
    try {
      db.prepare('INSERT INTO users (username, password_hash, created_at) VALUES (?, ?, ?)').run('u', 'x', 0);
      const store = new BucketStore(db, { compactIntervalMs: 0, sweepIntervalMs: 0 });
      store.create('u', { bucket: 'b', source: 'write' });
      const big = 'x'.repeat(20_000);
      // One record per second: with agg=1s, one window each.
      await store.write(
        'u',
        'b',
        Array.from({ length: 300 }, (_, i) => ({ ts: (i + 1) * 1000, s: `${big}${i}`, n: i })),
      );
      const perSecond = (aggType: BucketQuery['aggType'], items = 1000): BucketQuery => ({
        items,
        sort: 'asc',
        agg: { n: 1, unit: 's' },
        aggType,
      });
      const run = async (q: BucketQuery, maxAnswerBytes?: number) => {
        const stats: QueryStats = { pages: 0, records: 0, peakBytes: 0 };
        const rows = await runQuery(store, 'u', 'b', q, { stats, maxAnswerBytes });
        return { rows: rows.map((r) => ({ ts: r.ts, val: JSON.parse(r.data) })), stats };
      };

      // count keeps no values: a few bytes per window, not the 20 kB strings.
      const count = await run(perSecond('count'));
      assert.deepEqual(
        count.rows,
        Array.from({ length: 300 }, (_, i) => ({ ts: (i + 1) * 1000, val: { s: 1, n: 1 } })),
      );
      assert.ok(count.stats.peakBytes < 300 * 200, `count held ${count.stats.peakBytes} bytes`);
      const mean = await run(perSecond('mean'));
      assert.deepEqual(mean.rows[7], { ts: 8000, val: { n: 7 } });
      assert.ok(mean.stats.peakBytes < 300 * 200, `mean held ${mean.stats.peakBytes} bytes`);

      // last over one window keeps one value at a time.
      const last = await run({ items: 10, sort: 'asc', aggType: 'last' });
      assert.deepEqual(last.rows, [{ ts: 1000, val: { s: `${big}299`, n: 299 } }]);
      assert.ok(last.stats.peakBytes < 3 * 20_100, `last held ${last.stats.peakBytes} bytes`);
      const first = await run({ items: 10, sort: 'asc', aggType: 'first', minTs: 5000 });
      assert.deepEqual(first.rows, [{ ts: 5000, val: { s: `${big}4`, n: 4 } }]);

      // last per second keeps every string: refused as soon as they pass the budget, long
      // before the scan ends, and never holding much more than the budget.
      const budget = 1_000_000;
      const stats: QueryStats = { pages: 0, records: 0, peakBytes: 0 };
      await assert.rejects(
        runQuery(store, 'u', 'b', perSecond('last'), { stats, maxAnswerBytes: budget }),
        (err: unknown) =>
          err instanceof QueryError && err.status === 413 && err.code === 'response_too_large',
      );
      assert.ok(stats.records < 60, `read ${stats.records} records before refusing`);
      assert.ok(stats.peakBytes <= budget + 20_100, `held ${stats.peakBytes} bytes`);
      // Within the budget, the same query answers exactly.
      const few = await run({ ...perSecond('last'), maxTs: 40_000 }, budget);
      assert.equal(few.rows.length, 40);
      assert.deepEqual(few.rows[39], { ts: 40_000, val: { s: `${big}39`, n: 39 } });

      // Long group values (kept by digest) still group exactly.
      store.create('u', { bucket: 'g', source: 'write' });
      await store.write('u', 'g', [
        { ts: 1, g: `${big}a`, n: 1 },
        { ts: 2, g: `${big}b`, n: 2 },
        { ts: 3, g: `${big}a`, n: 3 },
      ]);
      const groups = await runQuery(store, 'u', 'g', { items: 10, sort: 'asc', groupBy: ['g'] });
      assert.deepEqual(
        groups.map((r) => [r.ts, (JSON.parse(r.data) as { n: number }).n]),
        [
          [1, 1],
          [2, 2],
        ],
      );
      const sums = await runQuery(store, 'u', 'g', {
        items: 10,
        sort: 'asc',
        groupBy: ['g'],
        aggType: 'sum',
      });
      assert.deepEqual(
        sums.map((r) => JSON.parse(r.data)),
        [
          { g: `${big}a`, n: 4 },
          { g: `${big}b`, n: 2 },
        ],
      );
      await store.close();
    } finally {
      db.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('scans read pages bounded by bytes as well as records', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'iotmp-buckets-pages-'));
    const db = openDatabase(join(dir, 'b.db'));
    try {
      db.prepare('INSERT INTO users (username, password_hash, created_at) VALUES (?, ?, ?)').run('u', 'x', 0);
      const store = new BucketStore(db, { compactIntervalMs: 0, sweepIntervalMs: 0 });
      store.create('u', { bucket: 'b', source: 'write' });
      const big = 'y'.repeat(30_000);
      for (let part = 0; part < 2; part++)
        await store.write(
          'u',
          'b',
          Array.from({ length: 300 }, (_, i) => ({ ts: part * 300 + i + 1, s: big, n: 1 })),
        );
      await store.compact();
      // Small records after the large ones.
      for (let part = 0; part < 2; part++)
        await store.write(
          'u',
          'b',
          Array.from({ length: 1000 }, (_, i) => ({ ts: 1000 + part * 1000 + i, n: 1 })),
        );
      const pages: Array<{ items: number; bytes: number }> = [];
      const spy = Object.create(store) as BucketStore;
      spy.read = (...args: Parameters<BucketStore['read']>) => {
        const page = store.read(...args);
        pages.push({ items: page.length, bytes: page.reduce((n, r) => n + r.data.length, 0) });
        return page;
      };
      const rows = await runQuery(spy, 'u', 'b', { items: 10, sort: 'asc', aggType: 'count' });
      assert.deepEqual(
        rows.map((r) => JSON.parse(r.data)),
        [{ s: 600, n: 2600 }],
      );
      assert.equal(
        pages.reduce((n, p) => n + p.items, 0),
        2600,
      );
      const largest = Math.max(...pages.map((p) => p.bytes));
      assert.ok(largest <= 8 * 1024 * 1024 + 64 * 1024, `a page of ${largest} bytes`);
      // 1000 records a page would be 30 MB here.
      assert.ok(pages[0] && pages[0].items < 1000 && pages.length > 3, JSON.stringify(pages));
      await store.close();
    } finally {
      db.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  describe('restart', { concurrency: false }, () => {
    it('a new store finds the records a closed one left in the log', async () => {
      const dir = mkdtempSync(join(tmpdir(), 'iotmp-buckets-log-'));
      let db = openDatabase(join(dir, 'b.db'));
      try {
        db.prepare('INSERT INTO users (username, password_hash, created_at) VALUES (?, ?, ?)').run(
          'u',
          'x',
          0,
        );
        // A stopped clock: server times must still not collide across the two stores.
        const options = { compactIntervalMs: 0, sweepIntervalMs: 0, now: () => 5_000_000 };
        let store = new BucketStore(db, options);
        store.create('u', { bucket: 'b', source: 'write' });
        await store.write('u', 'b', [
          { ts: 1, v: 'one' },
          { ts: 2, v: 'two' },
        ]);
        await store.compact();
        await store.write('u', 'b', [
          { ts: 2, v: 'TWO' },
          { ts: 3, v: 'three' },
        ]);
        assert.equal(await store.write('u', 'b', [{ v: 'auto-1' }, { v: 'auto-2' }]), 2);
        assert.equal(store.logRecords, 4);
        await store.close();
        db.close();
        db = openDatabase(join(dir, 'b.db'));
        store = new BucketStore(db, options);
        assert.equal(store.logRecords, 4, 'the log survived');
        await store.write('u', 'b', { v: 'auto-3' });
        const values = () =>
          store
            .read('u', 'b', { items: 10, sort: 'asc' })
            .map((r) => (JSON.parse(r.data) as { v: string }).v);
        const expected = ['one', 'TWO', 'three', 'auto-1', 'auto-2', 'auto-3'];
        assert.deepEqual(values(), expected, 'the new server time follows the old ones');
        assert.deepEqual(
          store
            .read('u', 'b', { items: 10, sort: 'asc' })
            .slice(3)
            .map((r) => r.ts),
          [5_000_000, 5_000_001, 5_000_002],
        );
        await store.compact();
        assert.equal(store.logRecords, 0);
        assert.deepEqual(values(), expected);
        await store.close();
      } finally {
        db.close();
        rmSync(dir, { recursive: true, force: true });
      }
    });

    it('keeps buckets and records across a restart, and starts device buckets again', async () => {
      const dir = mkdtempSync(join(tmpdir(), 'iotmp-buckets-restart-'));
      try {
        let s = await TestServer.start({ dataDir: dir, tls: false });
        try {
          const res = await s.api('POST', buckets, { json: { bucket: 'kept', source: 'write' } });
          assert.equal(res.status, 201);
          await s.api('POST', data('kept'), {
            json: [
              { ts: 1, a: 1 },
              { ts: 2, a: 2 },
            ],
          });
          await s.server.buckets.compact();
          await s.api('POST', data('kept'), {
            json: [
              { ts: 2, a: 'two' },
              { ts: 3, a: 3 },
            ],
          });
          await s.createDevice('restart-dev', 'restart-secret');
          const dev = await s.api('POST', buckets, {
            json: {
              bucket: 'restart-events',
              source: 'device',
              config: { device: 'restart-dev', resource: 'ev', update: 'events' },
            },
          });
          assert.equal(dev.status, 201);
        } finally {
          await s.close();
        }
        s = await TestServer.start({ dataDir: dir, tls: false });
        try {
          const rows = (await s.api('GET', data('kept', '?sort=asc'))).body as Row[];
          assert.deepEqual(rows, [
            { ts: 1, val: { ts: 1, a: 1 } },
            { ts: 2, val: { ts: 2, a: 'two' } },
            { ts: 3, val: { ts: 3, a: 3 } },
          ]);
          // The device bucket defined before the restart records as soon as its device is online.
          const device = s
            .device('tcp', 1, 'restart-dev', 'restart-secret')
            .resource('ev', { output: () => ({ n: 0 }) });
          await device.connect();
          await waitFor(
            async () =>
              ((await s.api('GET', `${buckets}/restart-events`)).body as { status: { state: string } }).status
                .state === 'running',
            'the device bucket running after the restart',
          );
          await device.stream('ev', { n: 42 });
          await waitFor(
            async () => ((await s.api('GET', data('restart-events'))).body as Row[])[0]?.val.n === 42,
            'the streamed value stored',
          );
        } finally {
          await s.close();
        }
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  });

  describe('device-sourced buckets', { concurrency: true }, () => {
    for (const version of VERSIONS) {
      it(`samples a resource every second and stores stream events (protocol version ${version})`, async () => {
        const id = `sampled-v${version}`;
        await t.createDevice(id, 'sampled-secret');
        let n = 0;
        const device: Device = t
          .device('tcp', version, id, 'sampled-secret')
          .resource('climate', { output: () => ({ celsius: 20, n: n++ }) })
          .resource('alarm', { output: () => ({ level: 0 }) });
        await device.connect();
        await waitForStatus(device, 'connected');

        const interval = `interval-v${version}`;
        const events = `events-v${version}`;
        await createOk({
          bucket: interval,
          source: 'device',
          config: { device: id, resource: 'climate', interval: 1 },
        });
        await createOk({
          bucket: events,
          source: 'device',
          config: { device: id, resource: 'alarm', update: 'events' },
        });

        // Interval: a sample now and one a second later.
        const sampled = await waitFor(
          async () => {
            const rows = await read(interval, '?sort=asc');
            return rows.length >= 2 ? rows : undefined;
          },
          'two samples',
          5000,
          50,
        );
        assert.equal(sampled[0]?.val.celsius, 20);
        assert.ok((sampled[1] as Row).ts - (sampled[0] as Row).ts >= 500, 'about a second apart');
        const status = (await t.api('GET', `${buckets}/${interval}`)).body as { status: unknown };
        assert.deepEqual(status.status, { state: 'running' });

        // Events: what the device streams, as it streams it.
        await waitFor(
          async () =>
            ((await t.api('GET', `${buckets}/${events}`)).body as { status: { state: string } }).status
              .state === 'running',
          'the events bucket running',
        );
        await device.stream('alarm', { level: 3 });
        await device.stream('alarm', { level: 7 });
        const stored = await waitFor(async () => {
          const rows = await read(events, '?sort=asc');
          return rows.length >= 2 ? rows : undefined;
        }, 'two events');
        // The device's current value when the stream opened, then what it pushed.
        const levels = stored.map((r) => r.val.level);
        assert.deepEqual(levels.slice(-2), [3, 7]);
        assert.ok(levels.length <= 3 && (levels.length === 2 || levels[0] === 0), JSON.stringify(levels));

        // Disabled: the subscription ends (the device's stream for it closes).
        const off = await t.api('PATCH', `${buckets}/${interval}`, { json: { enabled: false } });
        assert.deepEqual((off.body as { status: unknown }).status, { state: 'disabled' });
        // A bucket on a resource the device lacks reports the error.
        const broken = `broken-v${version}`;
        await createOk({
          bucket: broken,
          source: 'device',
          config: { device: id, resource: 'nope', interval: 5 },
        });
        await waitFor(
          async () =>
            ((await t.api('GET', `${buckets}/${broken}`)).body as { status: { state: string } }).status
              .state === 'error',
          'the error status',
        );
        await device.close();
        await waitFor(
          async () =>
            ((await t.api('GET', `${buckets}/${events}`)).body as { status: { state: string } }).status
              .state === 'waiting',
          'waiting for the device',
        );
      });
    }
  });
});
