/**
 * The SDK against the minimal test server over real sockets: TCP, TLS (verified against a
 * certificate the test generates) and WebSocket, in both protocol versions.
 */
import assert from 'node:assert/strict';
import * as net from 'node:net';
import { after, afterEach, before, describe, it } from 'node:test';
import { ResourceError, type Session } from '@iotmp/protocol';
import type { PsonValue } from '@iotmp/pson';
import { AuthError, Device, type DeviceOptions, type DeviceStatus } from '../src/node.js';
import { TestServer } from './test-server.js';

let server: TestServer;
const devices: Device[] = [];

before(async () => {
  server = await new TestServer().start({ tls: true });
  server.credentials.set('user1/other', 'pw2');
});
// Every test closes what it opened, even when it fails: a leftover device with the same
// id would otherwise reconnect and take over the next test's login.
afterEach(async () => {
  for (const d of devices.splice(0)) await d.close();
});
after(async () => {
  await server.stop();
});

type Transport = 'tcp' | 'tls' | 'ws';

function makeDevice(transport: Transport, version: 0 | 1, extra: Partial<DeviceOptions> = {}): Device {
  const port = transport === 'tcp' ? server.tcpPort : transport === 'tls' ? server.tlsPort : server.wsPort;
  const device = new Device({
    host: transport === 'tls' ? 'localhost' : '127.0.0.1',
    port,
    transport,
    version,
    username: 'user1',
    deviceId: 'sensor1',
    credential: 'secret',
    tls: { ca: server.cert?.cert },
    reconnect: { initialDelayMs: 20, maxDelayMs: 100 },
    ...extra,
  });
  devices.push(device);
  return device;
}

function withResources(device: Device): Device {
  let led = false;
  let n = 0;
  return device
    .resource('temperature', { output: () => ({ celsius: 22.5, humidity: 60 }) })
    .resource('led', {
      input: (v) => {
        led = (v as { state: boolean }).state;
      },
    })
    .resource('ledState', { output: () => led })
    .resource('sum', {
      input: true,
      output: (v) => ({ result: (v as { a: number }).a + (v as { b: number }).b }),
    })
    .resource('gpio/:pin', { output: (_v, call) => ({ pin: call.params.pin }) })
    .resource('counter', { output: () => ++n })
    .resource('fail', {
      output: () => {
        throw new ResourceError(418, 'teapot');
      },
    });
}

/** Waits for the first value an async iterator yields, bounded in time. */
async function first<T>(it: AsyncIterator<T>, ms = 5000): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const r = await Promise.race([
    it.next(),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error('no value in time')), ms);
    }),
  ]);
  clearTimeout(timer);
  assert.equal(r.done, false);
  return r.value as T;
}

async function untilStatus(device: Device, state: DeviceStatus['state'], ms = 5000): Promise<void> {
  if (device.status.state === state) return;
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`status never became ${state}`)), ms);
    const off = device.onStatus((s) => {
      if (s.state === state) {
        clearTimeout(timer);
        off();
        resolve();
      }
    });
  });
}

for (const transport of ['tcp', 'tls', 'ws'] as const) {
  for (const version of [1, 0] as const) {
    describe(`device over ${transport}, protocol version ${version}`, () => {
      it('connects, serves every resource kind, streams, and closes', async () => {
        const device = withResources(makeDevice(transport, version));
        const login = server.nextLogin('user1/sensor1');
        await device.connect();
        assert.equal(device.status.state, 'connected');
        const s: Session = await login;
        assert.equal(s.version, version);
        assert.deepEqual(await s.run('temperature'), { celsius: 22.5, humidity: 60 });
        await s.run('led', { state: true });
        assert.equal(await s.run('ledState'), true);
        assert.deepEqual(await s.run('sum', { a: 20, b: 22 }), { result: 42 });
        assert.deepEqual(await s.run('gpio/13'), { pin: '13' });
        await assert.rejects(s.run('fail'), { returnCode: 418 });
        const api = (await s.describe()) as Record<string, PsonValue>;
        assert.deepEqual(Object.keys(api).sort(), [
          'counter',
          'fail',
          'gpio/:pin',
          'led',
          'ledState',
          'sum',
          'temperature',
        ]);

        const values: PsonValue[] = [];
        let resolveTwo: () => void = () => {};
        const two = new Promise<void>((r) => {
          resolveTwo = r;
        });
        const stream = await s.openStream(
          'counter',
          {},
          {
            onData: (v) => {
              values.push(v ?? null);
              if (values.length === 2) resolveTwo();
            },
          },
        );
        assert.equal(await device.stream('counter'), 1);
        await two;
        assert.equal(values.length, 2, 'echo on start, then the pushed value');
        await stream.stop();
        assert.equal(device.stream('counter'), 0);

        await device.close();
        assert.equal(device.status.state, 'closed');
      });

      it('uses the server: properties, buckets, endpoints, device calls, topics, events, locks', async () => {
        const device = makeDevice(transport, version);
        const other = new Device({
          host: '127.0.0.1',
          port: server.tcpPort,
          transport: 'tcp',
          username: 'user1',
          deviceId: 'other',
          credential: 'pw2',
        });
        devices.push(other);
        other.resource('display', { input: true, output: (v) => ({ shown: v ?? null }) });
        await other.connect();
        await device.connect();

        await device.properties.set('config', { threshold: 42 });
        assert.deepEqual(await device.properties.get('config'), { threshold: 42 });
        const watch = device.properties.watch('config');
        assert.deepEqual(await first(watch), { threshold: 42 }, 'current value first');
        server.setProperty('sensor1', 'config', { threshold: 7 });
        assert.deepEqual(await first(watch), { threshold: 7 });
        await watch.return?.();

        await device.buckets.write('b1', { t: 21.5 });
        assert.deepEqual(server.buckets.get('b1')?.at(-1), { t: 21.5 });
        assert.deepEqual(await device.endpoints.call('notify', { msg: 'hi' }), {
          status: 200,
          echo: { msg: 'hi' },
        });
        assert.deepEqual(await device.call('other', 'display', 'hello'), { shown: 'hello' });
        await assert.rejects(device.call('ghost', 'x'), { returnCode: 404 });

        const msgs = device.topics.subscribe('plant/+/temp');
        await msgs.ready;
        await device.topics.publish('plant/2/humidity', 50); // does not match
        await device.topics.publish('plant/1/temp', 22.5);
        assert.deepEqual(await first(msgs), { topic: 'plant/1/temp', payload: 22.5 });
        await msgs.return?.();

        const events = device.events.subscribe('device_state_change');
        await events.ready;
        await other.close();
        assert.deepEqual(await first(events), { device: 'other', connected: false });
        await events.return?.();

        const lock = `lock-${transport}-${version}`;
        assert.equal(await device.syncs.lock(lock), true);
        assert.equal(await device.syncs.lock(lock), false, 'one slot, already taken');
        await device.syncs.unlock(lock);
        assert.equal(await device.syncs.lock(lock), true);
        await device.close();
      });
    });
  }
}

describe('device: login failures and reconnect', () => {
  it('bad credentials reject connect() with AuthError, without retrying', async () => {
    const device = makeDevice('tcp', 1, { credential: 'wrong' });
    const before = server.logins.length;
    await assert.rejects(device.connect(), (e) => e instanceof AuthError && e.reason === 2);
    assert.equal(device.status.state, 'closed');
    assert.equal(server.logins.length, before);
  });

  it('TLS verification fails against an untrusted certificate unless disabled', async () => {
    const strict = makeDevice('tls', 1, { tls: {}, reconnect: false });
    await assert.rejects(strict.connect(), /self[- ]signed|certificate/i);
    const lax = makeDevice('tls', 1, { tls: { rejectUnauthorized: false } });
    await lax.connect();
    await lax.close();
  });

  it('reconnects with backoff after the connection drops, and re-opens subscriptions', async () => {
    const device = makeDevice('tcp', 1);
    const states: string[] = [];
    device.onStatus((s) => states.push(s.state));
    await device.connect();
    await device.properties.set('mode', 'a');
    const watch = device.properties.watch('mode');
    assert.equal(await first(watch), 'a');
    const relogin = server.nextLogin('user1/sensor1');
    server.devices.get('user1/sensor1')?.close(); // server drops the device
    await untilStatus(device, 'disconnected');
    await relogin;
    await untilStatus(device, 'connected');
    // The watch survives: re-opened on the new connection, it first re-sends the current
    // value, then delivers later changes.
    assert.equal(await first(watch), 'a');
    server.setProperty('sensor1', 'mode', 'b');
    assert.equal(await first(watch), 'b');
    assert.deepEqual(states.slice(0, 2), ['connecting', 'connected']);
    assert.ok(states.includes('disconnected'));
    await device.close();
    assert.equal(device.status.state, 'closed');
  });

  it('connect() keeps trying while the server is down, then succeeds', async () => {
    // A port with nothing listening, then a server appears on it.
    const probe = net.createServer();
    await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
    const port = (probe.address() as net.AddressInfo).port;
    await new Promise<void>((r) => probe.close(() => r()));
    const device = new Device({
      host: '127.0.0.1',
      port,
      transport: 'tcp',
      username: 'user1',
      deviceId: 'sensor1',
      credential: 'secret',
      reconnect: { initialDelayMs: 20, maxDelayMs: 50 },
    });
    devices.push(device);
    const failures: DeviceStatus[] = [];
    device.onStatus((s) => {
      if (s.state === 'disconnected') failures.push(s);
    });
    const connecting = device.connect();
    await untilStatus(device, 'disconnected');
    const late = new TestServer();
    const proxy = net.createServer((socket) => {
      const upstream = net.connect(server.tcpPort, '127.0.0.1');
      socket.pipe(upstream).pipe(socket);
      socket.on('error', () => upstream.destroy());
      upstream.on('error', () => socket.destroy());
    });
    await new Promise<void>((r) => proxy.listen(port, '127.0.0.1', r));
    await connecting;
    assert.ok(failures.length >= 1);
    assert.ok(failures.every((f) => typeof f.retryInMs === 'number' && f.retryInMs <= 50));
    await device.close();
    proxy.close();
    assert.ok(late);
  });

  it('a second login of the same device replaces the first', async () => {
    const a = makeDevice('tcp', 1, { reconnect: false });
    const b = makeDevice('tcp', 1, { reconnect: false });
    await a.connect();
    await b.connect();
    await untilStatus(a, 'disconnected');
    assert.equal(b.status.state, 'connected');
    await b.close();
  });
});
