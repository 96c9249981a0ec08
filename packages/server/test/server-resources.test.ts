/**
 * Device → server calls and subscriptions (issue 5 §1, §2, §6), end to end over real sockets
 * with SDK devices in both protocol versions: properties read/set/watch, device → device
 * calls (answer, offline, unknown, timeout, device error, another user's device, no answer
 * wanted), syncs (slots, lock ids, timeout, freed on disconnect), server events
 * (device_state_change), both field layouts and both protocol versions from the reference
 * vectors as raw frames, and hostile input (unknown codes, wrong types, huge payloads, bad
 * subscriptions). Codes 4 and 5 run against a hub wired to fake bucket and endpoint services.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Device, type PsonValue, RequestError, ResourceError } from '@iotmp/device';
import { type DecodedMessage, encodeMessage, FrameDecoder, MessageType, Session } from '@iotmp/protocol';
import { SocketTransport } from '@iotmp/protocol/node';
import { hexToBytes, loadFrameVectors } from '@iotmp/spec-vectors';
import { hashSecret } from '../src/auth/passwords.js';
import { DeviceHub } from '../src/devices/hub.js';
import { ServerResources } from '../src/devices/server-resources.js';
import { SyncManager } from '../src/devices/syncs.js';
import { EventBus } from '../src/events/bus.js';
import { TopicBroker } from '../src/events/topics.js';
import { AccountStore } from '../src/storage/accounts.js';
import { openDatabase } from '../src/storage/database.js';
import { PropertyStore } from '../src/storage/properties.js';
import { ADMIN, TestServer, VERSIONS, waitFor, withTimeout } from './helpers.js';

const CALL_TIMEOUT_MS = 400;
const VECTORS = loadFrameVectors();

function vector(name: string, pv: 0 | 1): Uint8Array {
  const v = VECTORS.find((x) => x.name === name && x.pv === pv);
  assert.ok(v, `vector ${name} (pv ${pv})`);
  return hexToBytes(v.hex);
}

/** The device's ERROR for a call: the RequestError, checked for a code and a message. */
async function refused(promise: Promise<unknown>, code: number, message?: RegExp): Promise<RequestError> {
  const err = await withTimeout(promise, 5000, 'an ERROR answer').then(
    (v) => assert.fail(`expected ERROR ${code}, got OK ${JSON.stringify(v)}`),
    (e: unknown) => e,
  );
  assert.ok(err instanceof RequestError, `expected a RequestError, got ${String(err)}`);
  assert.equal(err.returnCode, code, `return code (${JSON.stringify(err.payload)})`);
  const text = (err.payload as { error?: unknown } | undefined)?.error;
  assert.equal(typeof text, 'string', 'ERROR payload is {"error": message}');
  if (message) assert.match(text as string, message);
  return err;
}

/** A bare client session (no SDK) for calls the SDK never makes. */
async function rawSession(
  port: number,
  username: string,
  deviceId: string,
  credential: string,
  version: 0 | 1,
) {
  const socket = net.connect({ host: '127.0.0.1', port });
  socket.on('error', () => {});
  await withTimeout(new Promise((r) => socket.once('connect', r)), 5000, 'connect');
  const session = new Session({ role: 'client', transport: new SocketTransport(socket), version });
  await withTimeout(session.connect({ username, deviceId, credential }), 10_000, 'login');
  return session;
}

/** A device speaking raw frames: CONNECT, then bytes as given; every frame it receives is kept. */
class RawDevice {
  readonly received: DecodedMessage[] = [];
  private readonly decoder = new FrameDecoder({ onMessage: (m) => this.received.push(m) });

  private constructor(readonly socket: net.Socket) {
    socket.on('data', (chunk) => this.decoder.push(chunk));
  }

  static async connect(
    port: number,
    creds: [string, string, string],
    version: 0 | 1,
    sockets: Set<net.Socket>,
  ): Promise<RawDevice> {
    const socket = net.connect({ host: '127.0.0.1', port });
    sockets.add(socket);
    socket.on('error', () => {});
    await withTimeout(new Promise((r) => socket.once('connect', r)), 5000, 'connect');
    const raw = new RawDevice(socket);
    socket.write(
      encodeMessage(
        { type: MessageType.CONNECT, streamId: 1, payload: creds, parameters: version === 0 ? 1 : undefined },
        { version },
      ),
    );
    const ok = await raw.next((m) => m.streamId === 1);
    assert.equal(ok.type, MessageType.OK, 'login accepted');
    return raw;
  }

  send(bytes: Uint8Array): void {
    this.socket.write(bytes);
  }

  /** The first received frame (from now on, or already received) matching `match`. */
  next(match: (m: DecodedMessage) => boolean, what = 'a frame'): Promise<DecodedMessage> {
    return waitFor(() => this.received.find(match), what, 5000, 5);
  }
}

// ---------------------------------------------------------------------------------------------

let t: TestServer;
let bobToken = '';

before(async () => {
  t = await TestServer.start({ flags: ['--device-call-timeout-ms', String(CALL_TIMEOUT_MS)] });
  await t.server.tokens.createUser('bob', 'bob-password-1234');
  bobToken = (await t.login('bob', 'bob-password-1234')).access_token;
});
after(async () => {
  await t?.close();
});

describe('device → server calls, SDK devices in both protocol versions', { concurrency: true }, () => {
  for (const version of VERSIONS) {
    describe(`protocol version ${version}`, { concurrency: false }, () => {
      const A = `sr-a-v${version}`;
      const B = `sr-b-v${version}`;
      const OFF = `sr-off-v${version}`;
      const BOB = `sr-bob-v${version}`;
      let a: Device;
      let b: Device;
      let bob: Device;
      const seen = { led: [] as PsonValue[], bobCalls: 0 };

      before(async () => {
        await Promise.all([
          t.createDevice(A, 'secret-a'),
          t.createDevice(B, 'secret-b'),
          t.createDevice(OFF, 'secret-off'),
          t.createDevice(BOB, 'secret-bob', { user: 'bob', token: bobToken }),
        ]);
        a = t
          .device(version === 0 ? 'tcp' : 'ws', version, A, 'secret-a')
          .resource('whoami', { output: () => A });
        b = t
          .device('tls', version, B, 'secret-b')
          .resource('sum', {
            input: true,
            output: (v) => {
              const { x, y } = v as { x: number; y: number };
              return { sum: x + y };
            },
          })
          .resource('led', {
            input: (v) => {
              seen.led.push(v ?? null);
            },
          })
          .resource('teapot', {
            output: () => {
              throw new ResourceError(418, "I'm a teapot");
            },
          })
          .resource('never', { output: () => new Promise(() => {}) });
        bob = t.device('tcp', version, BOB, 'secret-bob', { username: 'bob' }).resource('secret', {
          output: () => {
            seen.bobCalls++;
            return 'bob data';
          },
        });
        await Promise.all([a.connect(), b.connect(), bob.connect()]);
      });

      it('sets and reads its own properties; a missing one is ERROR 404', async () => {
        await a.properties.set('config', { interval: 5, name: 'ä😀' });
        assert.deepEqual(await a.properties.get('config'), { interval: 5, name: 'ä😀' });
        const rest = await t.api('GET', `/v3/users/${ADMIN}/devices/${A}/properties/config`);
        assert.equal(rest.status, 200);
        assert.deepEqual((rest.body as { value: unknown }).value, { interval: 5, name: 'ä😀' });
        // B has no "config": properties are per device.
        await refused(b.properties.get('config'), 404, /property config does not exist/);
        // Without confirm nothing comes back, but the value is stored.
        await a.properties.set('counter', 7, { confirm: false });
        await waitFor(
          async () => (await a.properties.get('counter').catch(() => undefined)) === 7,
          'counter',
        );
      });

      it('watch: the current value in the OK, then every change (REST, the device itself)', async () => {
        await a.properties.set('mode', 'eco');
        const watch = a.properties.watch('mode');
        assert.deepEqual(await withTimeout(watch.next(), 5000, 'current'), { value: 'eco', done: false });
        const put = await t.api('PUT', `/v3/users/${ADMIN}/devices/${A}/properties/mode`, {
          json: { value: 'boost' },
        });
        assert.equal(put.status, 200);
        assert.deepEqual(await withTimeout(watch.next(), 5000, 'REST change'), {
          value: 'boost',
          done: false,
        });
        await a.properties.set('mode', { level: 3 });
        assert.deepEqual(await withTimeout(watch.next(), 5000, 'device change'), {
          value: { level: 3 },
          done: false,
        });
        // Another device's change to a property of the same name is not this one's.
        await b.properties.set('mode', 'other device');
        await a.properties.set('mode', 'last');
        assert.deepEqual(await withTimeout(watch.next(), 5000, 'next change'), {
          value: 'last',
          done: false,
        });
        await watch.return?.();
        // Without a value yet, current: the OK has no payload, so the first item is the first change.
        const fresh = a.properties.watch('not-yet');
        await a.properties.set('not-yet', 1);
        assert.deepEqual(await withTimeout(fresh.next(), 5000, 'first change'), { value: 1, done: false });
        await fresh.return?.();
      });

      it("a subscription with filters.device follows another device's property", async () => {
        const session = await rawSession(t.server.tcpPort, ADMIN, OFF, 'secret-off', version);
        try {
          const values: PsonValue[] = [];
          await session.subscribe(
            { event: 'device_property_update', filters: { property: 'level', device: B } },
            { onData: (p) => values.push(p ?? null) },
          );
          await b.properties.set('level', 42);
          await waitFor(() => values.length === 1, 'property update from device B');
          assert.deepEqual(values, [42]);
        } finally {
          session.close();
        }
      });

      it("device_state_change: another device's connect and disconnect", async () => {
        const events = a.events.subscribe('device_state_change', { device: OFF });
        await withTimeout(events.ready, 5000, 'subscribed');
        const off = t.device('tcp', version, OFF, 'secret-off');
        await off.connect();
        const up = (await withTimeout(events.next(), 5000, 'connect event')).value as Record<string, unknown>;
        assert.equal(up.device, OFF);
        assert.equal(up.connected, true);
        assert.equal(typeof up.ts, 'number');
        await off.close();
        t.devices.delete(off);
        const down = (await withTimeout(events.next(), 5000, 'disconnect event')).value as Record<
          string,
          unknown
        >;
        assert.deepEqual([down.device, down.connected], [OFF, false]);
        await events.return?.();
      });

      it('calls another device of the same user and relays its answer or error', async () => {
        assert.deepEqual(await a.call(B, 'sum', { x: 2, y: 40 }), { sum: 42 });
        await refused(a.call(B, 'teapot'), 418, /teapot/);
        await refused(a.call(B, 'no/such/resource'), 404);
        // Calling itself works too (the server relays the call back).
        assert.equal(await a.call(A, 'whoami'), A);
        // Without confirm: the call reaches B, A gets no answer.
        const before = seen.led.length;
        assert.equal(await a.call(B, 'led', { on: true }, { confirm: false }), undefined);
        await waitFor(() => seen.led.length === before + 1, 'led input on B');
        assert.deepEqual(seen.led.at(-1), { on: true });
      });

      it('offline, unknown and slow devices; never another user’s device', async () => {
        await refused(a.call(OFF, 'anything'), 503, /not connected/);
        await refused(a.call('nobody-here', 'x'), 404, /does not exist/);
        const started = Date.now();
        await refused(a.call(B, 'never'), 504, /did not answer/);
        assert.ok(Date.now() - started < CALL_TIMEOUT_MS + 2000, 'the relay gives up at the call timeout');
        // bob's device is connected, with the same kind of id: admin's device cannot reach it.
        await refused(a.call(BOB, 'secret'), 404, /does not exist/);
        assert.equal(seen.bobCalls, 0, "bob's device was never called");
        // …and bob's device cannot reach admin's.
        await refused(bob.call(B, 'sum', { x: 1, y: 1 }), 404);
      });

      it('syncs: slots, lock ids, unlock, refusal when taken', async () => {
        const sync = `door-v${version}`;
        assert.equal(await a.syncs.lock(sync), true);
        assert.equal(await a.syncs.lock(sync), true, 'the holder may lock again');
        assert.equal(await b.syncs.lock(sync), false, 'one slot: taken');
        await a.syncs.unlock(sync);
        assert.equal(await b.syncs.lock(sync), true, 'free again');
        await b.syncs.unlock(sync);
        // Two slots; lock ids tell holders of one device apart.
        const pool = `pool-v${version}`;
        assert.equal(await a.syncs.lock(pool, { slots: 2, lock: 'job-1' }), true);
        assert.equal(await a.syncs.lock(pool, { slots: 2, lock: 'job-2' }), true);
        assert.equal(await b.syncs.lock(pool, { slots: 2 }), false, 'both slots taken');
        await refused(b.syncs.unlock(pool, 'job-1'), 404, /not locked by this device/);
        await a.syncs.unlock(pool, 'job-1');
        assert.equal(await b.syncs.lock(pool, { slots: 2 }), true);
        await refused(a.syncs.unlock(pool, 'job-1'), 404);
        await a.syncs.unlock(pool, 'job-2');
        await b.syncs.unlock(pool);
      });

      it('syncs: a slot expires after its timeout, and is freed when its device disconnects', async () => {
        const sync = `expiring-v${version}`;
        assert.equal(await a.syncs.lock(sync, { timeoutSeconds: 0.3 }), true);
        assert.equal(await b.syncs.lock(sync), false);
        await waitFor(() => b.syncs.lock(sync), 'the slot to expire', 3000, 50);
        await b.syncs.unlock(sync);
        // A device that goes away frees its slots.
        const held = `held-v${version}`;
        const off = t.device('tcp', version, OFF, 'secret-off', { reconnect: false });
        await off.connect();
        assert.equal(await off.syncs.lock(held), true);
        assert.equal(await a.syncs.lock(held), false);
        await off.close();
        t.devices.delete(off);
        await waitFor(() => a.syncs.lock(held), 'the slot of the departed device', 3000, 20);
        await a.syncs.unlock(held);
      });

      it('hostile input: unknown codes, wrong types, huge payloads, bad subscriptions', async () => {
        const s = await rawSession(t.server.tcpPort, ADMIN, OFF, 'secret-off', version);
        try {
          await refused(s.callServer(99, 'x'), 404, /unknown server resource 99/);
          await refused(s.callServer(0, 'x'), 404);
          await refused(s.callServer(1, 42), 400, /property id must be a string/);
          await refused(s.callServer(1, undefined), 400, /none given/);
          await refused(s.callServer(1, 'bad id with spaces'), 400);
          await refused(s.callServer(1, 'x'.repeat(200)), 400);
          await refused(s.callServer(3, 'just-a-string'), 400, /\[device, resource\]/);
          await refused(s.callServer(3, [B]), 400);
          await refused(s.callServer(3, [B, 7]), 400);
          await refused(s.callServer(3, ['../etc', 'x']), 400, /device id/);
          await refused(s.callServer(3, [B, 'r'.repeat(2000)]), 400, /resource/);
          await refused(s.callServer(5, 'bucket', 'text'), 400, /bucket data must be an object/);
          await refused(s.callServer(5, 'bad id!', { a: 1 }), 400, /bucket id/);
          await refused(s.callServer(4, 42), 400, /endpoint id/);
          await refused(s.callServer(6, 'sync', 'not an object'), 400, /sync data must be an object/);
          await refused(s.callServer(6, 'sync', { slots: 'many' }), 400, /slots/);
          await refused(s.callServer(6, 'sync', { slots: 0 }), 400, /slots/);
          await refused(s.callServer(6, 'sync', { timeout: -1 }), 400, /timeout/);
          await refused(s.callServer(6, 'sync', { lock: 5 }), 400, /lock/);
          await refused(s.callServer(7, 'sync', { lock: 'l'.repeat(500) }), 400, /lock/);
          // A 100 KiB value: over the 64 KiB property limit.
          await refused(s.callServer(2, 'huge', 'x'.repeat(100 * 1024)), 413, /at most 65536/);
          const deep: PsonValue = JSON.parse(`${'['.repeat(40)}1${']'.repeat(40)}`) as PsonValue;
          await refused(s.callServer(2, 'deep', deep), 400, /nests deeper/);
          // Subscriptions.
          const sub = (parameters: PsonValue) => s.subscribe(parameters, { onData: () => {} });
          await refused(sub('device_state_change'), 400, /"event"/);
          await refused(sub({ event: 'no_such_event' }), 404, /unknown event/);
          await refused(
            sub({ event: 'device_state_change', filters: { colour: 'red' } }),
            400,
            /unknown filter/,
          );
          await refused(sub({ event: 'device_property_update', filters: { property: 7 } }), 400);
          await refused(sub({ event: 'device_topic_publish', scope: 'both', topic: 'a' }), 400, /scope/);
          await refused(
            sub({ event: 'device_topic_publish', scope: 'publish', topic: 'a/+' }),
            400,
            /wildcards/,
          );
          await refused(sub({ event: 'device_topic_publish', scope: 'subscribe', topic: 'a/#/b' }), 400, /#/);
          await refused(
            sub({ event: 'device_topic_publish', scope: 'subscribe', topic: 'a', qos: 3 }),
            400,
            /qos/,
          );
          // The session is still fine after all that.
          assert.equal(s.state, 'open');
          await s.callServer(2, 'after', 'ok');
          assert.equal(await s.callServer(1, 'after'), 'ok');
        } finally {
          s.close();
        }
        const metric = await t.metric('iotmp_server_resource_calls_total');
        assert.ok(metric > 20, `calls counted (${metric})`);
      });
    });
  }
});

describe('the reference vectors as raw frames: both field layouts, both protocol versions', () => {
  const D = 'raw-device';
  const OTHER = 'raw-other';
  before(async () => {
    await t.createDevice(D, 'raw-secret');
    await t.createDevice(OTHER, 'raw-other-secret');
    const res = await t.api('POST', `/v3/users/${ADMIN}/devices/${D}/properties`, {
      json: { property: 'config', value: { threshold: 1 } },
    });
    assert.equal(res.status, 201);
  });

  it('pv 1: read property in the LNX and EMB layouts; an id-less set gets no answer', async () => {
    const raw = await RawDevice.connect(t.server.tcpPort, [ADMIN, D, 'raw-secret'], 1, t.sockets);
    raw.send(vector('srv_read_property', 1));
    const lnx = await raw.next((m) => m.streamId === 8193, 'answer to srv_read_property');
    assert.equal(lnx.type, MessageType.OK);
    assert.deepEqual(lnx.payload, { threshold: 1 });
    raw.received.length = 0;
    raw.send(vector('srv_read_property_embedded_layout', 1));
    const emb = await raw.next((m) => m.streamId === 8193, 'answer to the EMB layout');
    assert.equal(emb.type, MessageType.OK);
    assert.deepEqual(emb.payload, { threshold: 1 });
    // srv_set_property has no stream id: stored, never answered. The confirmed read after it
    // is the only frame that comes back.
    raw.received.length = 0;
    raw.send(vector('srv_set_property', 1));
    raw.send(vector('srv_read_property', 1));
    const read = await raw.next((m) => m.streamId === 8193, 'read after the unconfirmed set');
    assert.deepEqual(read.payload, { threshold: 42 });
    assert.deepEqual(
      raw.received.map((m) => [m.type, m.streamId ?? 0]),
      [[MessageType.OK, 8193]],
      'nothing answered the id-less set',
    );
    // Confirmed set: OK on its id.
    raw.send(vector('srv_set_property_confirmed', 1));
    assert.equal((await raw.next((m) => m.streamId === 8194)).type, MessageType.OK);
  });

  it('pv 1: lock and unlock a sync; property subscription with the current value', async () => {
    const raw = await RawDevice.connect(t.server.tcpPort, [ADMIN, D, 'raw-secret'], 1, t.sockets);
    raw.send(vector('srv_lock_sync', 1));
    assert.equal((await raw.next((m) => m.streamId === 8195)).type, MessageType.OK);
    raw.send(vector('srv_unlock_sync', 1));
    assert.equal((await raw.next((m) => m.streamId === 8196)).type, MessageType.OK);
    raw.received.length = 0;
    raw.send(vector('srv_unlock_sync', 1));
    const again = await raw.next((m) => m.streamId === 8196);
    assert.equal(again.type, MessageType.ERROR, 'unlocking a free sync is refused');
    assert.equal(again.parameters, 404);
    raw.send(vector('srv_subscribe_property', 1));
    const ok = await raw.next((m) => m.streamId === 12291);
    assert.equal(ok.type, MessageType.OK);
    assert.deepEqual(ok.payload, { threshold: 42 }, 'current: true puts the value in the OK');
    const put = await t.api('PUT', `/v3/users/${ADMIN}/devices/${D}/properties/config`, {
      json: { value: { threshold: 7 } },
    });
    assert.equal(put.status, 200);
    const data = await raw.next((m) => m.type === MessageType.STREAM_DATA && m.streamId === 12291);
    assert.deepEqual(data.payload, { threshold: 7 });
  });

  it('pv 0: read property, and a topic subscription with the resource in field 3', async () => {
    const raw = await RawDevice.connect(t.server.tcpPort, [ADMIN, D, 'raw-secret'], 0, t.sockets);
    raw.send(vector('srv_read_property', 0));
    const read = await raw.next((m) => m.streamId === 8193);
    assert.equal(read.type, MessageType.OK);
    assert.equal(read.psonVersion, 0, 'answered in legacy PSON');
    assert.deepEqual(read.payload, { threshold: 7 });
    raw.send(vector('srv_subscribe_event_field3', 0));
    assert.equal((await raw.next((m) => m.streamId === 12289)).type, MessageType.OK);
    const other = t.device('tcp', 1, OTHER, 'raw-other-secret');
    await other.connect();
    await other.topics.publish('devices/sensor1/cmd', { reboot: true });
    const msg = await raw.next((m) => m.type === MessageType.STREAM_DATA && m.streamId === 12289);
    assert.deepEqual(msg.payload, { topic: 'devices/sensor1/cmd', payload: { reboot: true } });
  });

  it('pv 1 and 0: a device call to an unknown device is ERROR; without a stream id, nothing', async () => {
    const raw = await RawDevice.connect(t.server.tcpPort, [ADMIN, D, 'raw-secret'], 0, t.sockets);
    // srv_call_device (pv 0) has no stream id and names "device2", which does not exist.
    raw.send(vector('srv_call_device', 0));
    raw.send(vector('srv_read_property', 0));
    await raw.next((m) => m.streamId === 8193);
    assert.deepEqual(
      raw.received.slice(1).map((m) => m.streamId),
      [8193],
      'the id-less call got no answer',
    );
  });
});

describe('codes 4 and 5 reach the bucket and endpoint services, scoped to the device’s user', () => {
  const bucketWrites: Array<{ username: string; bucket: string; data: unknown }> = [];
  const endpointCalls: Array<{ username: string; endpoint: string; data: unknown }> = [];
  let dir: string;
  let hub: DeviceHub;
  let resources: ServerResources;
  let listener: net.Server;
  let port = 0;
  const devices = new Set<Device>();
  const sockets = new Set<net.Socket>();

  class FakeServiceError extends Error {
    constructor(
      readonly code: string,
      message: string,
      readonly status?: number,
    ) {
      super(message);
    }
  }

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'iotmp-sr-fakes-'));
    const db = openDatabase(join(dir, 'test.db'));
    const accounts = new AccountStore(db);
    for (const user of ['alice', 'carol']) {
      accounts.createUser(user, 'unused');
      accounts.createDevice({
        username: user,
        device: 'meter',
        name: 'meter',
        description: '',
        enabled: true,
        credentialHash: await hashSecret(`${user}-secret`),
      });
    }
    const events = new EventBus();
    const log = { info() {}, warn() {}, debug() {} };
    hub = new DeviceHub({ accounts, log, serverResources: (live) => resources.for(live) });
    resources = new ServerResources({
      hub,
      accounts,
      properties: new PropertyStore(db),
      events,
      topics: new TopicBroker(),
      syncs: new SyncManager(),
      deviceCallTimeoutMs: 1000,
      log,
      buckets: {
        write: async (username, bucket, data) => {
          if (bucket === 'missing')
            throw new FakeServiceError('bucket_not_found', 'bucket missing does not exist', 404);
          if (bucket === 'broken') throw new Error('SQLITE_IOERR: disk I/O error');
          bucketWrites.push({ username, bucket, data });
          return 1;
        },
      },
      endpoints: {
        call: async (username, endpoint, data) => {
          endpointCalls.push({ username, endpoint, data });
          if (endpoint === 'down')
            throw new FakeServiceError('endpoint_unreachable', 'endpoint down did not answer', 502);
          if (endpoint === 'teapot') return { status: 418, body: 'short and stout' };
          return { status: 200, body: { echo: data ?? null, for: username } };
        },
      },
    });
    listener = net.createServer((socket) => hub.accept(new SocketTransport(socket)));
    await new Promise<void>((r) => listener.listen(0, '127.0.0.1', r));
    port = (listener.address() as net.AddressInfo).port;
  });
  after(async () => {
    await Promise.allSettled([...devices].map((d) => d.close()));
    for (const s of sockets) s.destroy();
    hub?.closeAll();
    resources?.close();
    await new Promise((r) => listener?.close(r));
    rmSync(dir, { recursive: true, force: true });
  });

  const device = (username: string, version: 0 | 1) => {
    const d = new Device({
      host: '127.0.0.1',
      port,
      transport: 'tcp',
      version,
      username,
      deviceId: 'meter',
      credential: `${username}-secret`,
      reconnect: false,
      requestTimeoutMs: 5000,
    });
    devices.add(d);
    return d;
  };

  for (const version of VERSIONS) {
    it(`protocol version ${version}: bucket writes and endpoint calls, errors, no answer when unconfirmed`, async () => {
      const alice = device('alice', version);
      const carol = device('carol', version);
      await Promise.all([alice.connect(), carol.connect()]);
      bucketWrites.length = 0;
      endpointCalls.length = 0;
      await alice.buckets.write('energy', { kwh: 1.5 });
      await carol.buckets.write('energy', { kwh: 9 });
      assert.deepEqual(bucketWrites, [
        { username: 'alice', bucket: 'energy', data: { kwh: 1.5 } },
        { username: 'carol', bucket: 'energy', data: { kwh: 9 } },
      ]);
      await alice.buckets.write('energy', { kwh: 2 }, { confirm: false });
      await waitFor(() => bucketWrites.length === 3, 'unconfirmed bucket write');
      assert.equal(bucketWrites[2]?.username, 'alice');
      await refused(alice.buckets.write('missing', { a: 1 }), 404, /bucket missing does not exist/);
      await refused(alice.buckets.write('broken', { a: 1 }), 500, /^internal error$/);
      await refused(alice.buckets.write('energy', [1, 2] as PsonValue), 400, /must be an object/);

      assert.deepEqual(await alice.endpoints.call('notify', { level: 2 }), {
        echo: { level: 2 },
        for: 'alice',
      });
      assert.deepEqual(await carol.endpoints.call('notify'), { echo: null, for: 'carol' });
      await refused(alice.endpoints.call('down'), 502, /did not answer/);
      await refused(alice.endpoints.call('teapot'), 418, /HTTP 418/);
      await alice.endpoints.call('notify', 'fire and forget', { confirm: false });
      await waitFor(
        () => endpointCalls.some((c) => c.data === 'fire and forget'),
        'unconfirmed endpoint call',
      );
      assert.deepEqual(
        endpointCalls.map((c) => c.username),
        ['alice', 'carol', 'alice', 'alice', 'alice'],
      );
      await Promise.all([alice.close(), carol.close()]);
    });
  }

  it('the EMB field layout (srv_write_bucket_embedded_layout) and an id-less pv 0 write', async () => {
    bucketWrites.length = 0;
    const raw = await RawDevice.connect(port, ['alice', 'meter', 'alice-secret'], 1, sockets);
    raw.send(vector('srv_write_bucket_embedded_layout', 1));
    const ok = await raw.next((m) => m.streamId === 4660, 'answer to the EMB bucket write');
    assert.equal(ok.type, MessageType.OK);
    assert.deepEqual(bucketWrites, [
      { username: 'alice', bucket: 'sensor_data', data: { humidity: 60, temperature: 23.5 } },
    ]);
    raw.socket.destroy();
    const legacy = await RawDevice.connect(port, ['carol', 'meter', 'carol-secret'], 0, sockets);
    legacy.send(vector('srv_write_bucket', 0));
    legacy.send(vector('srv_read_property', 0));
    await legacy.next((m) => m.streamId === 8193, 'answer to the read');
    assert.deepEqual(bucketWrites[1], {
      username: 'carol',
      bucket: 'sensor_data',
      data: { humidity: 60, temperature: 23.5 },
    });
    assert.deepEqual(
      legacy.received.slice(1).map((m) => [m.type, m.streamId]),
      [[MessageType.ERROR, 8193]],
      'only the read was answered (ERROR: carol has no property config)',
    );
  });
});
