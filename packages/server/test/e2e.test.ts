/**
 * End to end over real sockets (issue 4 §3, §4, §6): a device created by REST connects with
 * the SDK over TCP, TLS and WebSocket in both protocol versions; every resource kind answers
 * through the REST API (JSON, binary, path parameters, query parameters, DESCRIBE, device
 * error codes, unknown resources, timeouts); the device leaves (its network is cut by a proxy)
 * and comes back by itself; and device administration (disable, delete, new credentials, a
 * second login) acts on live sessions.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { AuthError, type Device, type PsonValue, ResourceError } from '@iotmp/device';
import {
  ADMIN,
  assertErrorBody,
  TcpProxy,
  TestServer,
  TRANSPORTS,
  type TransportName,
  VERSIONS,
  waitFor,
  waitForStatus,
  withTimeout,
} from './helpers.js';

const CALL_TIMEOUT_MS = 600;
const BLOB = Uint8Array.from({ length: 300 }, (_, i) => (i * 7) & 0xff);

let t: TestServer;

before(async () => {
  t = await TestServer.start({ flags: ['--device-call-timeout-ms', String(CALL_TIMEOUT_MS)] });
});
after(async () => {
  await t?.close();
});

/** What a device's handlers saw. */
interface Probe {
  led: PsonValue | undefined;
  runs: number;
  upload: PsonValue | undefined;
  parameters: PsonValue | undefined;
  release: (() => void) | undefined;
}

function addResources(device: Device, probe: Probe, label = 'device'): Device {
  return device
    .resource('temperature', { output: () => ({ celsius: 22.5, humidity: 60 }) })
    .resource('led', {
      input: (v) => {
        probe.led = v;
      },
    })
    .resource('ledState', { output: () => probe.led ?? null })
    .resource('sum', {
      input: true,
      output: (v) => {
        const { a, b } = v as { a: number; b: number };
        return { result: a + b };
      },
    })
    .resource('reboot', {
      run: () => {
        probe.runs++;
      },
    })
    .resource('blob', { output: () => BLOB })
    .resource('upload', {
      input: true,
      output: (v) => {
        probe.upload = v;
        return v instanceof Uint8Array
          ? { binary: true, length: v.length, first: v[0] ?? -1, last: v[v.length - 1] ?? -1 }
          : { binary: false };
      },
    })
    .resource('gpio/:pin', { output: (_v, call) => ({ pin: call.params.pin ?? null, path: call.path }) })
    .resource('sensors/room/temp', { output: () => 21 })
    .resource('echo', {
      output: (_v, call) => {
        probe.parameters = call.parameters;
        return { parameters: call.parameters ?? null };
      },
    })
    .resource('teapot', {
      output: () => {
        throw new ResourceError(418, "I'm a teapot");
      },
    })
    .resource('slow', {
      output: () =>
        new Promise((resolve) => {
          probe.release = () => resolve('late');
        }),
    })
    .resource('whoami', { output: () => label });
}

function newProbe(): Probe {
  return { led: undefined, runs: 0, upload: undefined, parameters: undefined, release: undefined };
}

const res = (device: string, path = '') => `/v3/users/${ADMIN}/devices/${device}/resources${path}`;

// The six transport × version combinations run side by side (each on its own device and
// proxy); the steps of one combination run in order.
describe('every resource kind, over every transport and protocol version', { concurrency: true }, () => {
  for (const transport of TRANSPORTS) {
    for (const version of VERSIONS) {
      describe(`device over ${transport}, protocol version ${version}`, { concurrency: false }, () => {
        const id = `e2e-${transport}-v${version}`;
        const credential = `cred-${transport}-${version}!`;
        const probe = newProbe();
        let device: Device;
        let proxy: TcpProxy;

        before(async () => {
          proxy = new TcpProxy(t.portOf(transport));
          t.closers.push(() => proxy.close());
          await proxy.start();
        });

        it('is created by REST and connects', async () => {
          const created = await t.createDevice(id, credential, { name: `Device ${id}` });
          assert.equal(created.device, id);
          assert.equal(created.name, `Device ${id}`);
          assert.equal(created.enabled, true);
          assert.deepEqual(created.connection, { active: false, ts: null });
          assert.ok(!('credentials' in created) && !('credentialHash' in created), 'no credential returned');
          device = addResources(t.device(transport, version, id, credential, { port: proxy.port }), probe);
          await withTimeout(device.connect(), 5000, 'device connect');
          assert.equal(device.status.state, 'connected');
        });

        it('is listed as connected, with stats', async () => {
          const list = await t.api('GET', `/v1/users/${ADMIN}/devices`);
          assert.equal(list.status, 200);
          const entry = (
            list.body as Array<{ device: string; connection: { active: boolean; ts: unknown } }>
          ).find((d) => d.device === id);
          assert.ok(entry, 'device listed');
          assert.equal(entry.connection.active, true);
          assert.equal(typeof entry.connection.ts, 'number');
          assert.ok(Math.abs((entry.connection.ts as number) - Date.now()) < 60_000);
          const one = await t.api('GET', `/v1/users/${ADMIN}/devices/${id}`);
          assert.equal(one.status, 200);
          assert.equal((one.body as { connection: { active: boolean } }).connection.active, true);

          const stats = await t.api('GET', `/v3/users/${ADMIN}/devices/${id}/stats`);
          assert.equal(stats.status, 200);
          const s = stats.body as Record<string, unknown>;
          assert.deepEqual(Object.keys(s).sort(), [
            'connected',
            'connected_ts',
            'ip_address',
            'rx_bytes',
            'tx_bytes',
          ]);
          assert.equal(s.connected, true);
          assert.equal(s.connected_ts, entry.connection.ts);
          assert.equal(s.ip_address, '127.0.0.1');
          assert.ok((s.rx_bytes as number) > 0, 'rx_bytes > 0 (the CONNECT)');
          assert.ok((s.tx_bytes as number) > 0, 'tx_bytes > 0 (the OK)');
        });

        it('DESCRIBE: all resources with their kinds', async () => {
          const r = await t.api('GET', res(id));
          assert.equal(r.status, 200);
          assert.deepEqual(r.body, {
            temperature: { fn: 3 },
            led: { fn: 2 },
            ledState: { fn: 3 },
            sum: { fn: 4 },
            reboot: { fn: 1 },
            blob: { fn: 3 },
            upload: { fn: 4 },
            'gpio/:pin': { fn: 3 },
            'sensors/room/temp': { fn: 3 },
            echo: { fn: 3 },
            teapot: { fn: 3 },
            slow: { fn: 3 },
            whoami: { fn: 3 },
          });
        });

        it('output: GET returns the JSON output', async () => {
          const r = await t.api('GET', res(id, '/temperature'));
          assert.equal(r.status, 200);
          assert.match(r.contentType, /^application\/json/);
          assert.deepEqual(r.body, { celsius: 22.5, humidity: 60 });
        });

        it('input: POST a JSON body', async () => {
          const r = await t.api('POST', res(id, '/led'), { json: { state: true, level: 3 } });
          assert.equal(r.status, 200);
          assert.equal(r.body, null);
          assert.deepEqual(probe.led, { state: true, level: 3 });
          const state = await t.api('GET', res(id, '/ledState'));
          assert.deepEqual(state.body, { state: true, level: 3 });
          // Scalars are JSON bodies too.
          const scalar = await t.api('POST', res(id, '/led'), { json: 42 });
          assert.equal(scalar.status, 200);
          assert.equal(probe.led, 42);
        });

        it('input and output: POST JSON → output', async () => {
          const r = await t.api('POST', res(id, '/sum'), { json: { a: 2, b: 40 } });
          assert.equal(r.status, 200);
          assert.deepEqual(r.body, { result: 42 });
        });

        it('run: no input, no output (GET and POST)', async () => {
          const before = probe.runs;
          const g = await t.api('GET', res(id, '/reboot'));
          assert.equal(g.status, 200);
          assert.equal(g.body, null);
          const p = await t.api('POST', res(id, '/reboot'));
          assert.equal(p.status, 200);
          assert.equal(probe.runs, before + 2);
        });

        it('binary output: application/octet-stream', async () => {
          const r = await t.api('GET', res(id, '/blob'));
          assert.equal(r.status, 200);
          assert.equal(r.contentType, 'application/octet-stream');
          assert.deepEqual(new Uint8Array(r.bytes), BLOB);
        });

        it('binary input: POST application/octet-stream', async () => {
          const bytes = Uint8Array.from([0, 1, 2, 250, 255, 0, 128]);
          const r = await t.api('POST', res(id, '/upload'), {
            body: bytes,
            contentType: 'application/octet-stream',
          });
          assert.equal(r.status, 200);
          assert.deepEqual(r.body, { binary: true, length: 7, first: 0, last: 128 });
          assert.ok(probe.upload instanceof Uint8Array);
          assert.deepEqual([...(probe.upload as Uint8Array)], [...bytes]);
          // The same resource with JSON gets JSON.
          const j = await t.api('POST', res(id, '/upload'), { json: [1, 2, 3] });
          assert.deepEqual(j.body, { binary: false });
        });

        it('path parameters: gpio/:pin called as gpio/5; names with slashes', async () => {
          const r = await t.api('GET', res(id, '/gpio/5'));
          assert.equal(r.status, 200);
          assert.deepEqual(r.body, { pin: '5', path: 'gpio/5' });
          const deep = await t.api('GET', res(id, '/sensors/room/temp'));
          assert.equal(deep.status, 200);
          assert.equal(deep.body, 21);
        });

        it('query string → RUN parameters (the authorization parameter is not passed on)', async () => {
          const r = await t.request(
            'GET',
            `${res(id, '/echo')}?x=1&name=hello%20world&authorization=${t.adminToken}`,
          );
          assert.equal(r.status, 200);
          assert.deepEqual(r.body, { parameters: { x: '1', name: 'hello world' } });
          assert.deepEqual(probe.parameters, { x: '1', name: 'hello world' });
          const none = await t.api('GET', res(id, '/echo'));
          assert.deepEqual(none.body, { parameters: null });
        });

        it('/api suffix: DESCRIBE one resource', async () => {
          const r = await t.api('GET', res(id, '/temperature/api'));
          assert.equal(r.status, 200);
          assert.deepEqual(r.body, { out: { celsius: 22.5, humidity: 60 } });
          const sum = await t.api('GET', res(id, '/sum/api'));
          assert.equal(sum.status, 200);
          assert.deepEqual(sum.body, { in: { a: 2, b: 40 } });
          const gpio = await t.api('GET', res(id, '/gpio/7/api'));
          assert.equal(gpio.status, 200);
          assert.deepEqual(gpio.body, {});
          const unknown = await t.api('GET', res(id, '/nope/api'));
          assertErrorBody(unknown, 404, 'resource_not_found');
        });

        it("a device's ResourceError(418) → HTTP 418", async () => {
          const r = await t.api('GET', res(id, '/teapot'));
          assertErrorBody(r, 418, 'device_error');
          assert.equal((r.body as { error: { message: string } }).error.message, "I'm a teapot");
        });

        it('unknown resource → 404 resource_not_found', async () => {
          assertErrorBody(await t.api('GET', res(id, '/nope')), 404, 'resource_not_found');
          assertErrorBody(await t.api('POST', res(id, '/gpio')), 404, 'resource_not_found');
          assertErrorBody(
            await t.api('POST', res(id, '/nope'), { json: { a: 1 } }),
            404,
            'resource_not_found',
          );
        });

        it('device does not answer in time → 504, and the late answer is ignored', async () => {
          const started = Date.now();
          const r = await t.api('GET', res(id, '/slow'));
          const took = Date.now() - started;
          assertErrorBody(r, 504, 'device_timeout');
          assert.ok(took >= CALL_TIMEOUT_MS - 50, `answered after ${took} ms`);
          assert.ok(took < CALL_TIMEOUT_MS + 3000, `answered after ${took} ms`);
          assert.ok(probe.release, 'the device saw the call');
          probe.release();
          probe.release = undefined;
          const next = await t.api('GET', res(id, '/temperature'));
          assert.equal(next.status, 200, 'the session survives a late answer');
          assert.equal(device.status.state, 'connected');
        });

        it('unknown device → 404 device_not_found', async () => {
          assertErrorBody(await t.api('GET', res('no-such-device', '/temperature')), 404, 'device_not_found');
          assertErrorBody(await t.api('GET', res('no-such-device')), 404, 'device_not_found');
          assertErrorBody(
            await t.api('POST', res('no-such-device', '/led'), { json: 1 }),
            404,
            'device_not_found',
          );
          assertErrorBody(
            await t.api('GET', `/v3/users/${ADMIN}/devices/no-such-device/stats`),
            404,
            'device_not_found',
          );
        });

        it('leaves (network cut) → 404 device_offline; list and stats say so', async () => {
          const statsBefore = (await t.api('GET', `/v3/users/${ADMIN}/devices/${id}/stats`)).body as {
            connected_ts: number;
          };
          await proxy.cut();
          await waitForStatus(device, 'disconnected');
          await waitFor(async () => {
            const s = await t.api('GET', `/v3/users/${ADMIN}/devices/${id}/stats`);
            return (s.body as { connected: boolean }).connected === false;
          }, 'server to see the device gone');
          assertErrorBody(await t.api('GET', res(id, '/temperature')), 404, 'device_offline');
          assertErrorBody(await t.api('GET', res(id)), 404, 'device_offline');
          assertErrorBody(
            await t.api('POST', res(id, '/sum'), { json: { a: 1, b: 2 } }),
            404,
            'device_offline',
          );
          const stats = (await t.api('GET', `/v3/users/${ADMIN}/devices/${id}/stats`)).body as Record<
            string,
            unknown
          >;
          assert.equal(stats.connected, false);
          assert.equal(stats.connected_ts, statsBefore.connected_ts, 'last connection time kept');
          assert.equal(stats.ip_address, '127.0.0.1', 'last address kept');
          const one = await t.api('GET', `/v1/users/${ADMIN}/devices/${id}`);
          assert.deepEqual((one.body as { connection: unknown }).connection, {
            active: false,
            ts: statsBefore.connected_ts,
          });
        });

        it('returns by itself (SDK reconnect) → calls work again', async () => {
          await proxy.restore();
          await waitForStatus(device, 'connected', 5000);
          await waitFor(
            async () => (await t.api('GET', res(id, '/temperature'))).status === 200,
            'calls to work',
          );
          const r = await t.api('POST', res(id, '/sum'), { json: { a: 1, b: 2 } });
          assert.deepEqual(r.body, { result: 3 });
          const stats = (await t.api('GET', `/v3/users/${ADMIN}/devices/${id}/stats`)).body as Record<
            string,
            unknown
          >;
          assert.equal(stats.connected, true);
        });

        it('leaves for good (close) → 404 device_offline', async () => {
          await device.close();
          assert.equal(device.status.state, 'closed');
          await waitFor(
            async () => (await t.api('GET', res(id, '/temperature'))).status === 404,
            'server to see the device gone',
          );
          assertErrorBody(await t.api('GET', res(id, '/temperature')), 404, 'device_offline');
        });
      });
    }
  }
});

describe('device administration acts on live sessions', () => {
  /** A connected SDK device that does not reconnect (so refused logins are not retried). */
  async function connected(
    id: string,
    credential: string,
    transport: TransportName = 'tcp',
    version: 0 | 1 = 1,
  ) {
    const d = addResources(
      t.device(transport, version, id, credential, { reconnect: false }),
      newProbe(),
      id,
    );
    await withTimeout(d.connect(), 5000, `${id} connect`);
    return d;
  }

  async function refused(
    id: string,
    credential: string,
    transport: TransportName = 'tcp',
    version: 0 | 1 = 1,
  ) {
    const d = t.device(transport, version, id, credential, { reconnect: false });
    await assert.rejects(withTimeout(d.connect(), 5000, `${id} login`), AuthError);
    await d.close();
  }

  const live = async (id: string) =>
    (await t.api('GET', `/v1/users/${ADMIN}/devices/${id}`)).body as {
      enabled: boolean;
      connection: { active: boolean };
    };

  it('disabling drops the live session and refuses logins; enabling lets it back', async () => {
    await t.createDevice('adm-disable', 'secret-1');
    const d = await connected('adm-disable', 'secret-1');
    assert.equal((await live('adm-disable')).connection.active, true);
    const put = await t.api('PUT', `/v1/users/${ADMIN}/devices/adm-disable`, { json: { enabled: false } });
    assert.equal(put.status, 200);
    assert.equal((put.body as { enabled: boolean }).enabled, false);
    const status = await waitForStatus(d, 'disconnected');
    assert.match(status.reason ?? '', /DISCONNECT/, 'the device was told (DISCONNECT)');
    assert.equal((await live('adm-disable')).connection.active, false);
    assertErrorBody(await t.api('GET', res('adm-disable', '/temperature')), 404, 'device_offline');
    await refused('adm-disable', 'secret-1');
    const on = await t.api('PATCH', `/v1/users/${ADMIN}/devices/adm-disable`, { json: { enabled: true } });
    assert.equal(on.status, 200);
    const again = await connected('adm-disable', 'secret-1', 'ws', 0);
    assert.equal((await t.api('GET', res('adm-disable', '/whoami'))).body, 'adm-disable');
    await again.close();
  });

  it('a device created disabled cannot log in', async () => {
    const created = await t.createDevice('adm-born-disabled', 'secret-x', { enabled: false });
    assert.equal(created.enabled, false);
    await refused('adm-born-disabled', 'secret-x', 'tls', 1);
  });

  it('deleting drops the live session and refuses logins', async () => {
    await t.createDevice('adm-delete', 'secret-2');
    const d = await connected('adm-delete', 'secret-2', 'ws', 1);
    const del = await t.api('DELETE', `/v1/users/${ADMIN}/devices/adm-delete`);
    assert.equal(del.status, 200);
    assert.equal(del.bytes.length, 0);
    const status = await waitForStatus(d, 'disconnected');
    assert.match(status.reason ?? '', /DISCONNECT/);
    assert.ok(!(await t.deviceIds()).includes('adm-delete'));
    assertErrorBody(await t.api('GET', res('adm-delete', '/temperature')), 404, 'device_not_found');
    assertErrorBody(await t.api('GET', `/v1/users/${ADMIN}/devices/adm-delete`), 404, 'device_not_found');
    assertErrorBody(await t.api('DELETE', `/v1/users/${ADMIN}/devices/adm-delete`), 404, 'device_not_found');
    await refused('adm-delete', 'secret-2', 'ws', 1);
  });

  it('new credentials drop the session and invalidate the old (cached) credential', async () => {
    await t.createDevice('adm-rotate', 'old-secret');
    // Two logins with the old credential: the second one is served from the verifier cache.
    const first = await connected('adm-rotate', 'old-secret');
    await first.close();
    await waitFor(async () => !(await live('adm-rotate')).connection.active, 'first session gone');
    const d = await connected('adm-rotate', 'old-secret', 'tls', 0);
    const put = await t.api('PUT', `/v1/users/${ADMIN}/devices/adm-rotate`, {
      json: { credentials: 'new-secret' },
    });
    assert.equal(put.status, 200);
    assert.ok(!JSON.stringify(put.body).includes('new-secret'), 'credential not echoed');
    await waitForStatus(d, 'disconnected');
    await refused('adm-rotate', 'old-secret');
    await refused('adm-rotate', 'old-secret', 'tls', 0);
    const fresh = await connected('adm-rotate', 'new-secret');
    assert.equal((await t.api('GET', res('adm-rotate', '/whoami'))).body, 'adm-rotate');
    await fresh.close();
  });

  it('a deleted and re-created device does not accept its old (cached) credential', async () => {
    await t.createDevice('adm-recreate', 'first-life');
    const d = await connected('adm-recreate', 'first-life');
    await d.close();
    assert.equal((await t.api('DELETE', `/v1/users/${ADMIN}/devices/adm-recreate`)).status, 200);
    await t.createDevice('adm-recreate', 'second-life');
    await refused('adm-recreate', 'first-life');
    const again = await connected('adm-recreate', 'second-life');
    await again.close();
  });

  it('a second login of the same device replaces the first (which gets DISCONNECT)', async () => {
    await t.createDevice('adm-twice', 'twice');
    const one = addResources(
      t.device('tcp', 1, 'adm-twice', 'twice', { reconnect: false }),
      newProbe(),
      'one',
    );
    await withTimeout(one.connect(), 5000, 'first login');
    assert.equal((await t.api('GET', res('adm-twice', '/whoami'))).body, 'one');
    const two = addResources(
      t.device('ws', 0, 'adm-twice', 'twice', { reconnect: false }),
      newProbe(),
      'two',
    );
    await withTimeout(two.connect(), 5000, 'second login');
    const status = await waitForStatus(one, 'disconnected');
    assert.match(status.reason ?? '', /DISCONNECT/);
    assert.equal(two.status.state, 'connected');
    assert.equal((await t.api('GET', res('adm-twice', '/whoami'))).body, 'two');
    const list = await t.api('GET', `/v1/users/${ADMIN}/devices`);
    assert.equal(
      (list.body as Array<{ device: string }>).filter((x) => x.device === 'adm-twice').length,
      1,
      'listed once',
    );
    assert.equal((await live('adm-twice')).connection.active, true);
    await two.close();
  });

  it('device list paging: count and index, x-total-count', async () => {
    const all = await t.deviceIds();
    assert.ok(all.length >= 4);
    const total = Number((await t.api('GET', `/v1/users/${ADMIN}/devices`)).headers.get('x-total-count'));
    assert.equal(total, all.length);
    const page = await t.api('GET', `/v1/users/${ADMIN}/devices?count=2&index=1`);
    assert.equal(page.status, 200);
    assert.deepEqual(
      (page.body as Array<{ device: string }>).map((d) => d.device),
      all.slice(1, 3),
    );
    const past = await t.api('GET', `/v1/users/${ADMIN}/devices?count=10&index=100000`);
    assert.deepEqual(past.body, []);
  });
});
