/**
 * The WebSocket API as Thinger.io's tools speak it (issue 8), with real SDK devices:
 *
 * - thinr-cli's dashboard (`/v2/users/{u}/events`): `device_resource_stream` subscriptions
 *   `{event, filters: {product|device, resource}, params: {interval: ms}}` acknowledged with
 *   `registered`, frames `{event, signal, user, device, resource, ts, payload}` for every
 *   connected device, on the hub's shared device streams; `device_state_change` read from the
 *   frame's top level; unknown events refused without closing;
 * - Node-RED's server-events and n8n's trigger (`/v1/users/{u}/events`): flat subscriptions
 *   with patterns, flat frames, no acknowledgement;
 * - Node-RED's thinger-server (`/v3/…/resources`): `{resource, interval (s), enabled}`;
 * - thinr-cli's exec (`$cmd/{id}?cmd=…&timeout=…`, `{bytes}` output, stdin before the stream
 *   opens) and console (`$terminal/{id}?raw=1`: bare text and binary frames).
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { Device } from '@iotmp/device';
import WebSocket from 'ws';
import { HttpError } from '../src/api/errors.js';
import { MAX_NAME_FILTER_WORK, nameFilter } from '../src/api/name-filter.js';
import { compileCountingMatcher, compilePattern } from '../src/api/ws-pattern.js';
import { ADMIN, TestServer, waitFor, withTimeout } from './helpers.js';

const WAIT_MS = 8000;

interface Received {
  binary: boolean;
  data: Buffer;
  /** The frame as JSON, when it is JSON text. */
  json: Record<string, unknown> | undefined;
}

/** A WebSocket client keeping every frame; `next` waits (bounded) for the next matching one. */
class Client {
  readonly frames: Received[] = [];
  private cursor = 0;
  private readonly waiters = new Set<() => void>();
  closed: { code: number; reason: string } | undefined;

  private constructor(readonly ws: WebSocket) {
    ws.on('message', (data: Buffer, binary: boolean) => {
      let json: Record<string, unknown> | undefined;
      if (!binary) {
        try {
          json = JSON.parse(data.toString('utf8')) as Record<string, unknown>;
        } catch {
          json = undefined;
        }
      }
      this.frames.push({ binary, data, json });
      for (const w of [...this.waiters]) w();
    });
    ws.on('close', (code, reason) => {
      this.closed = { code, reason: String(reason) };
      for (const w of [...this.waiters]) w();
    });
  }

  static open(t: TestServer, path: string, token: string | undefined = t.adminToken): Promise<Client> {
    const ws = new WebSocket(
      `ws://127.0.0.1:${t.server.httpPort}${path}`,
      token ? { headers: { authorization: `Bearer ${token}` } } : {},
    );
    t.closers.push(() => ws.terminate());
    return withTimeout(
      new Promise<Client>((resolve, reject) => {
        ws.once('open', () => resolve(new Client(ws)));
        ws.once('error', reject);
      }),
      5000,
      `open ${path}`,
    );
  }

  send(frame: unknown): void {
    this.ws.send(typeof frame === 'string' ? frame : JSON.stringify(frame));
  }

  /** The next frame (after those already taken) matching `pred`; earlier ones are skipped. */
  next(pred: (f: Received) => boolean, what: string): Promise<Received> {
    return new Promise((resolve, reject) => {
      const check = () => {
        while (this.cursor < this.frames.length) {
          const f = this.frames[this.cursor++] as Received;
          if (pred(f)) {
            done();
            resolve(f);
            return;
          }
        }
        if (this.closed) {
          done();
          reject(new Error(`socket closed (${this.closed.code}) waiting for ${what}`));
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(
          new Error(
            `timed out waiting for ${what}; frames: ${this.frames.map((f) => (f.binary ? `<${f.data.length} bytes>` : f.data.toString())).join(' | ')}`,
          ),
        );
      }, WAIT_MS);
      const done = () => {
        clearTimeout(timer);
        this.waiters.delete(check);
      };
      this.waiters.add(check);
      check();
    });
  }

  /** The next JSON frame whose fields include `fields`. */
  async json(
    fields: Record<string, unknown>,
    what = JSON.stringify(fields),
  ): Promise<Record<string, unknown>> {
    const f = await this.next(
      (x) => x.json !== undefined && Object.entries(fields).every(([k, v]) => x.json?.[k] === v),
      what,
    );
    return f.json as Record<string, unknown>;
  }

  /** Every JSON frame received so far (taken or not). */
  all(): Record<string, unknown>[] {
    return this.frames.flatMap((f) => (f.json ? [f.json] : []));
  }

  waitClosed(): Promise<{ code: number; reason: string }> {
    return withTimeout(
      new Promise((resolve) => {
        if (this.closed) resolve(this.closed);
        else this.waiters.add(() => this.closed && resolve(this.closed));
      }),
      WAIT_MS,
      'socket close',
    );
  }

  close(): Promise<void> {
    if (this.closed) return Promise.resolve();
    return withTimeout(
      new Promise<void>((resolve) => {
        this.ws.once('close', () => resolve());
        this.ws.close();
      }),
      WAIT_MS,
      'close',
    );
  }
}

/** A frame with its timestamp checked (a number near now) and zeroed, for exact comparison. */
function zeroTs(frame: Record<string, unknown>): Record<string, unknown> {
  assert.equal(typeof frame.ts, 'number', `ts in ${JSON.stringify(frame)}`);
  assert.ok(Math.abs((frame.ts as number) - Date.now()) < 60_000, 'ts is the time in ms');
  return { ...frame, ts: 0 };
}

const RS = 'device_resource_stream';

describe('WebSocket API: Thinger.io tools', () => {
  let t: TestServer;
  /** The last START_STREAM parameters each device saw for `telemetry`. */
  const streamParams = new Map<string, unknown>();

  /** A connected SDK device with `telemetry` (and what `extra` adds). */
  const connectDevice = async (
    id: string,
    define: (d: Device) => void = (d) => {
      d.resource('telemetry', {
        output: (_input, call) => {
          streamParams.set(id, call.parameters);
          return { temperature: 21.5, device: id };
        },
      });
    },
  ): Promise<Device> => {
    const created = await t.api('POST', `/v1/users/${ADMIN}/devices`, {
      json: { device: id, credentials: `secret-${id}` },
    });
    assert.ok(created.status === 201 || created.status === 409, created.bytes.toString());
    const d = t.device('tcp', 1, id, `secret-${id}`);
    define(d);
    await d.connect();
    return d;
  };

  /** Device streams the server has open on a device (one per shared device resource). */
  const openStreams = (id: string) => t.server.hub.get(ADMIN, id)?.session.openStreams ?? 0;

  before(async () => {
    t = await TestServer.start({ tls: false });
  });

  after(async () => {
    await t?.close();
  });

  test('thinr-cli dashboard: device_resource_stream is acknowledged, then streams every connected device; late devices join, leaving ones stop', async () => {
    const rs1 = await connectDevice('rs1');
    const rs2 = await connectDevice('rs2');
    const c = await Client.open(t, `/v2/users/${ADMIN}/events?authorization=${t.adminToken}`, undefined);
    // As useProductMetrics sends it (interval in ms), here without a product.
    c.send({ event: RS, filters: { resource: 'telemetry' }, params: { interval: 200 } });
    const first = await c.next(() => true, 'first frame');
    assert.deepEqual(first.json, {
      event: RS,
      signal: 'start',
      registered: true,
      payload: { filters: { resource: 'telemetry' }, params: { interval: 200 } },
    });
    const dataOf = async (device: string) =>
      zeroTs(await c.json({ signal: 'data', device }, `data of ${device}`));
    for (const device of ['rs1', 'rs2']) {
      assert.deepEqual(await dataOf(device), {
        event: RS,
        signal: 'data',
        user: ADMIN,
        device,
        resource: 'telemetry',
        ts: 0,
        payload: { temperature: 21.5, device },
      });
    }
    // Each device's start was announced before its data; the device samples at 200 ms.
    const starts = c.all().filter((f) => f.signal === 'start' && f.device !== undefined);
    assert.deepEqual(starts.map((f) => f.device).sort(), ['rs1', 'rs2'], JSON.stringify(starts));
    assert.deepEqual(starts[0], {
      event: RS,
      signal: 'start',
      user: ADMIN,
      device: starts[0]?.device,
      resource: 'telemetry',
    });
    assert.deepEqual(streamParams.get('rs1'), { interval: 200 });

    // A device that connects later joins the subscription.
    const rs3 = await connectDevice('rs3');
    await dataOf('rs3');
    // One that leaves stops, and nothing more comes from it.
    await rs2.close();
    const stop = await c.json({ signal: 'stop', device: 'rs2' });
    assert.match(String((stop.payload as { message: string }).message), /disconnected/);
    assert.deepEqual(
      { ...stop, payload: { ...(stop.payload as object), message: '' } },
      {
        event: RS,
        signal: 'stop',
        user: ADMIN,
        device: 'rs2',
        resource: 'telemetry',
        payload: { code: 'device_offline', message: '' },
      },
    );
    const stopAt = c.frames.length;
    for (let i = 0; i < 3; i++) await dataOf('rs1');
    assert.ok(
      c.frames.slice(stopAt).every((f) => f.json?.device !== 'rs2'),
      'no frames from the device that left',
    );
    await c.close();
    await waitFor(() => openStreams('rs1') === 0 && openStreams('rs3') === 0, 'device streams stopped');
    await Promise.all([rs1.close(), rs3.close()]);
  });

  test('device_resource_stream shares the device stream with resource sockets (GCD); unsubscribing and closing stop it', async () => {
    const sh = await connectDevice('sh1');
    const events = await Client.open(t, `/v2/users/${ADMIN}/events`);
    const filters = { device: 'sh1', resource: 'telemetry' };
    events.send({ event: RS, filters, params: { interval: 400 } });
    await events.json({ signal: 'start', registered: true });
    await events.json({ signal: 'data', device: 'sh1' });
    const socket = await Client.open(t, `/v3/users/${ADMIN}/devices/sh1/resources/telemetry?interval=0.6`);
    assert.deepEqual((await socket.json({ signal: 'start' })).payload, { interval: 0.6 });
    // One device stream, at gcd(400, 600) = 200 ms.
    await waitFor(() => (streamParams.get('sh1') as { interval?: number })?.interval === 200, 'GCD 200 ms');
    assert.equal(openStreams('sh1'), 1);
    // `enabled: false` with the same filters removes the subscription: the stream follows 600 ms.
    events.send({ event: RS, filters, enabled: false });
    assert.deepEqual(await events.json({ signal: 'stop' }), {
      event: RS,
      signal: 'stop',
      payload: { code: 'unsubscribed', message: `unsubscribed from ${RS}` },
    });
    await waitFor(
      () => (streamParams.get('sh1') as { interval?: number })?.interval === 600,
      'back to 600 ms',
    );
    events.send({ event: RS, filters, enabled: false });
    assert.equal(
      ((await events.json({ signal: 'error' })).payload as { code: string }).code,
      'not_subscribed',
    );
    await socket.close();
    await waitFor(() => openStreams('sh1') === 0, 'device stream stopped');
    // Closing the events socket stops its device streams too.
    events.send({ event: RS, filters: { resource: 'telemetry', device: 'sh1' } });
    await events.json({ signal: 'data', device: 'sh1' });
    assert.equal(openStreams('sh1'), 1);
    await events.close();
    await waitFor(() => openStreams('sh1') === 0, 'device stream stopped at socket close');
    await sh.close();
  });

  test('product and asset filters match no device here (and are no error); a device filter picks one device', async () => {
    const withStatus = (d: Device) => {
      d.resource('telemetry', { output: () => ({ temperature: 1 }) });
      d.resource('status', { output: () => 'ok' });
    };
    const p1 = await connectDevice('p1', withStatus);
    const p2 = await connectDevice('p2', withStatus);
    const c = await Client.open(t, `/v2/users/${ADMIN}/events`);
    c.send({
      event: RS,
      filters: { product: 'thinremote', resource: 'telemetry' },
      params: { interval: 100 },
    });
    assert.deepEqual(await c.json({ signal: 'start' }), {
      event: RS,
      signal: 'start',
      registered: true,
      payload: { filters: { product: 'thinremote', resource: 'telemetry' }, params: { interval: 100 } },
    });
    c.send({ event: RS, filters: { asset_type: 'sensor', resource: 'telemetry' } });
    await c.json({ signal: 'start' });
    c.send({ event: RS, filters: { device: 'p2', resource: 'status' }, params: { interval: 100 } });
    await c.json({ signal: 'start', registered: true });
    for (let i = 0; i < 3; i++)
      assert.deepEqual(zeroTs(await c.json({ signal: 'data' })), {
        event: RS,
        signal: 'data',
        user: ADMIN,
        device: 'p2',
        resource: 'status',
        ts: 0,
        payload: 'ok',
      });
    assert.deepEqual(
      c.all().filter((f) => f.resource === 'telemetry' || f.signal === 'error'),
      [],
      'nothing for the product and asset subscriptions, no errors',
    );
    await c.close();
    await Promise.all([p1.close(), p2.close()]);
  });

  test('a matching device without the resource: an error frame for that device, the others stream on', async () => {
    const g1 = await connectDevice('g1', (d) => d.resource('gauge', { output: () => 7 }));
    const g2 = await connectDevice('g2', () => undefined);
    const c = await Client.open(t, `/v2/users/${ADMIN}/events`);
    c.send({ event: RS, filters: { resource: 'gauge' }, params: { interval: 100 } });
    await c.json({ signal: 'start', registered: true });
    assert.deepEqual(zeroTs(await c.json({ signal: 'error', device: 'g2' })), {
      event: RS,
      signal: 'error',
      user: ADMIN,
      device: 'g2',
      resource: 'gauge',
      ts: 0,
      payload: { code: 'resource_not_found', message: 'device has no resource gauge' },
    });
    await c.json({ signal: 'data', device: 'g1' });
    await c.json({ signal: 'data', device: 'g1' });
    await c.close();
    await Promise.all([g1.close(), g2.close()]);
  });

  test('v2 refusals: seconds given as params.interval, no resource, events this server lacks — the socket stays open', async () => {
    const c = await Client.open(t, `/v2/users/${ADMIN}/events`);
    const refused = async (frame: unknown, event: string, code: string, message: RegExp) => {
      c.send(frame);
      const f = await c.json({ signal: 'error' }, `refusal of ${JSON.stringify(frame)}`);
      assert.equal(f.event, event);
      assert.equal((f.payload as { code: string }).code, code, JSON.stringify(f));
      assert.match((f.payload as { message: string }).message, message);
    };
    // stream-metrics.mjs passes --interval in seconds: 60 ms is refused, saying the unit.
    await refused(
      { event: RS, filters: { resource: 'telemetry' }, params: { interval: 60 } },
      RS,
      'invalid_frame',
      /milliseconds/,
    );
    await refused(
      { event: RS, filters: { product: 'x' } },
      RS,
      'invalid_frame',
      /filters.resource is required/,
    );
    await refused(
      { event: RS, filters: { resource: 'x', colour: 'red' } },
      RS,
      'invalid_frame',
      /unknown filter/,
    );
    await refused(
      { event: 'bucket_write', filters: { device: 'x' } },
      'bucket_write',
      'invalid_frame',
      /unknown filter "device" \(expected bucket\)/,
    );
    await refused({ event: 'alarm_instance_activate' }, 'alarm_instance_activate', 'unknown_event', /one of/);
    c.send({ event: 'device_state_change' });
    assert.deepEqual(await c.json({ signal: 'start' }), {
      event: 'device_state_change',
      signal: 'start',
      payload: { filters: {} },
    });
    assert.equal(c.closed, undefined);
    await c.close();
  });

  test('GET /v1/server/events lists what the events socket takes: each event with its listed filters is acknowledged', async () => {
    const listed = (await t.request('GET', '/v1/server/events')).body as Array<{
      event: string;
      filters: Array<{ field: string; hints?: string[] }>;
    }>;
    const values: Record<string, string> = {
      device: 'list-dev',
      property: 'p',
      state: 'connected',
      topic: 'a/b',
      resource: 'r',
      bucket: 'list-bucket',
    };
    const c = await Client.open(t, `/v2/users/${ADMIN}/events`);
    for (const { event, filters } of listed) {
      const given = Object.fromEntries(filters.map((f) => [f.field, f.hints?.[0] ?? values[f.field]]));
      c.send({ event, filters: given });
      const ack = await c.next((f) => f.json?.event === event, `answer to ${event}`);
      assert.equal(ack.json?.signal, 'start', `${event}: ${ack.data.toString()}`);
      assert.deepEqual((ack.json?.payload as { filters?: unknown } | undefined)?.filters, given);
      // A field the list does not name is refused.
      c.send({ event, filters: { ...given, colour: 'red' } });
      const refused = await c.next((f) => f.json?.event === event, `refusal of colour on ${event}`);
      assert.equal(refused.json?.signal, 'error', refused.data.toString());
    }
    // And the socket knows no event the list leaves out.
    c.send({ event: 'device_.*' });
    const unknown = await c.json({ signal: 'error' });
    const named = /^event must be one of: (.*)$/.exec((unknown.payload as { message: string }).message)?.[1];
    assert.deepEqual(
      named?.split(', ').sort(),
      listed.map((e) => e.event),
    );
    await c.close();
  });

  test('thinr-cli dashboard: bucket_write {bucket: "monitoring"} streams each record written (REST, device, device-sourced) as {event, user, bucket, ts, data}', async () => {
    const buckets = `/v1/users/${ADMIN}/buckets`;
    for (const body of [
      { bucket: 'monitoring', source: 'write' },
      { bucket: 'other-writes', source: 'write' },
    ])
      assert.equal((await t.api('POST', buckets, { json: body })).status, 201);
    const c = await Client.open(t, `/v2/users/${ADMIN}/events`);
    c.send({ event: 'bucket_write', filters: { bucket: 'monitoring' } });
    assert.deepEqual(await c.json({ signal: 'start' }), {
      event: 'bucket_write',
      signal: 'start',
      payload: { filters: { bucket: 'monitoring' } },
    });
    await waitFor(() => t.server.events.listenerCount(ADMIN, 'bucket_write') === 1, 'one bus listener');
    const v1 = await Client.open(t, `/v1/users/${ADMIN}/events`);
    v1.send({ event: 'bucket_.*', bucket: 'mon.*' });

    // REST: an array with timestamps, then one record without (the server's time).
    const ts = Date.now() - 60_000;
    assert.equal(
      (await t.api('POST', `${buckets}/other-writes/data`, { json: { skipped: true } })).status,
      200,
    );
    const written = await t.api('POST', `${buckets}/monitoring/data`, {
      json: [
        { ts, device: 'agent-1', cpu: { usage: 12.5 } },
        { ts: ts + 1, device: 'agent-2', cpu: { usage: 50 } },
      ],
    });
    assert.equal(written.status, 200, written.bytes.toString());
    assert.deepEqual(await c.json({ event: 'bucket_write', signal: 'data' }), {
      event: 'bucket_write',
      signal: 'data',
      user: ADMIN,
      bucket: 'monitoring',
      ts,
      data: { ts, device: 'agent-1', cpu: { usage: 12.5 } },
    });
    assert.deepEqual((await c.json({ event: 'bucket_write', signal: 'data' })).data, {
      ts: ts + 1,
      device: 'agent-2',
      cpu: { usage: 50 },
    });
    await t.api('POST', `${buckets}/monitoring/data`, { json: { device: 'agent-3', load: 1 } });
    const auto = zeroTs(await c.json({ event: 'bucket_write', signal: 'data' }));
    assert.deepEqual(auto, {
      event: 'bucket_write',
      signal: 'data',
      user: ADMIN,
      bucket: 'monitoring',
      ts: 0,
      data: { device: 'agent-3', load: 1 },
    });
    // v1: the same records, flat, no signal; the write to other-writes reached neither.
    const flat = (await v1.next((f) => f.json?.event === 'bucket_write', 'v1 bucket_write')).json;
    assert.deepEqual(flat, {
      event: 'bucket_write',
      user: ADMIN,
      bucket: 'monitoring',
      ts,
      data: { ts, device: 'agent-1', cpu: { usage: 12.5 } },
    });
    assert.ok(
      [...c.all(), ...v1.all()].every((f) => f.bucket !== 'other-writes'),
      'a write to another bucket is not sent',
    );

    // A device writing (code 5), and a device-sourced bucket sampling the device's stream.
    const d = await connectDevice('mon-agent', (dev) => {
      dev.resource('stats', { output: () => ({ cpu: 3 }) });
    });
    await d.buckets.write('monitoring', { device: 'mon-agent', cpu: { usage: 7 } });
    assert.deepEqual((await c.json({ event: 'bucket_write', signal: 'data' })).data, {
      device: 'mon-agent',
      cpu: { usage: 7 },
    });
    const sourced = await t.api('POST', buckets, {
      json: {
        bucket: 'mon-sourced',
        source: 'device',
        config: { device: 'mon-agent', resource: 'stats', update: 'events' },
      },
    });
    assert.equal(sourced.status, 201, sourced.bytes.toString());
    c.send({ event: 'bucket_write', filters: { bucket: 'mon-sourced' } });
    await c.json({ event: 'bucket_write', signal: 'start' });
    const pump = setInterval(() => void d.stream('stats'), 100);
    try {
      const sample = await c.json({ event: 'bucket_write', signal: 'data', bucket: 'mon-sourced' });
      assert.deepEqual(sample.data, { cpu: 3 });
    } finally {
      clearInterval(pump);
    }

    // A token limited to devices may not listen to buckets; a v1 pattern skips the event.
    const limited = await t.api('POST', `/v1/users/${ADMIN}/tokens`, {
      json: { name: 'bw-limited', allow: { Device: { 'mon-agent': '*' } } },
    });
    const token = (limited.body as { access_token: string }).access_token;
    const lc = await Client.open(t, `/v2/users/${ADMIN}/events`, token);
    lc.send({ event: 'bucket_write' });
    const refused = await lc.json({ signal: 'error' });
    assert.equal((refused.payload as { code: string }).code, 'forbidden');
    const lv1 = await Client.open(t, `/v1/users/${ADMIN}/events`, token);
    lv1.send({ event: 'bucket_.*' });
    assert.deepEqual((await lv1.next(() => true, 'v1 refusal')).json, {
      success: false,
      event: 'bucket_.*',
      error: {
        code: 'invalid_frame',
        message:
          '"bucket_.*" matches no event this subscription can take (bucket_write is not for tokens limited to devices)',
      },
    });

    // Unsubscribing and closing leave no listener behind.
    c.send({ event: 'bucket_write', enabled: false });
    await c.json({ event: 'bucket_write', signal: 'stop' });
    assert.equal(t.server.events.listenerCount(ADMIN, 'bucket_write'), 1, 'the v1 socket still listens');
    await v1.close();
    await waitFor(() => t.server.events.listenerCount(ADMIN, 'bucket_write') === 0, 'no listener left');
    await Promise.all([c.close(), lc.close(), lv1.close(), d.close()]);
  });

  test("thinr-cli fleet events: v2 device_state_change frames carry Thinger.io's top-level device, state, ts", async () => {
    const c = await Client.open(t, `/v2/users/${ADMIN}/events`);
    c.send({ event: 'device_state_change' });
    await c.json({ signal: 'start' });
    const d = await connectDevice('fleet1');
    const connected = zeroTs(await c.json({ signal: 'data', device: 'fleet1' }));
    assert.deepEqual(connected, {
      event: 'device_state_change',
      signal: 'data',
      user: ADMIN,
      device: 'fleet1',
      state: 'connected',
      ts: 0,
      payload: {
        device: 'fleet1',
        connected: true,
        ts: (connected.payload as { ts: number }).ts,
        ip: '127.0.0.1',
      },
    });
    await d.close();
    const gone = await c.json({ signal: 'data', device: 'fleet1', state: 'disconnected' });
    assert.equal((gone.payload as { connected: boolean }).connected, false);
    await c.close();
  });

  test('WebSockets opened with an access token close (4401) when the token is changed, deleted or expires', async () => {
    const d = await connectDevice('rev-1', (dev) => dev.resource('sample', { output: () => 1 }));
    const make = async (name: string, extra: Record<string, unknown> = {}) => {
      const res = await t.api('POST', `/v1/users/${ADMIN}/tokens`, {
        json: { name, allow: { Device: { 'rev-1': '*' } }, ...extra },
      });
      assert.equal(res.status, 201, res.bytes.toString());
      return res.body as { access_token: string; token: string };
    };
    const changed = await make('rev-changed');
    const deleted = await make('rev-deleted');
    // Expires within 1–2 s (Thinger.io's `expire`: seconds since 1970).
    const expiring = await make('rev-expiring', { expire: Math.floor(Date.now() / 1000) + 2 });
    const untouched = await make('rev-untouched');
    const events = await Client.open(t, `/v2/users/${ADMIN}/events`, changed.access_token);
    const many = await Client.open(t, `/v3/users/${ADMIN}/devices/rev-1/resources`, deleted.access_token);
    const one = await Client.open(
      t,
      `/v3/users/${ADMIN}/devices/rev-1/resources/sample`,
      expiring.access_token,
    );
    const kept = await Client.open(t, `/v2/users/${ADMIN}/events`, untouched.access_token);
    assert.equal(
      (await t.api('PUT', `/v1/users/${ADMIN}/tokens/${changed.token}`, { json: { enabled: false } })).status,
      200,
    );
    assert.equal((await events.waitClosed()).code, 4401);
    assert.equal((await t.api('DELETE', `/v1/users/${ADMIN}/tokens/${deleted.token}`)).status, 200);
    assert.equal((await many.waitClosed()).code, 4401);
    const expired = await one.waitClosed();
    assert.deepEqual(expired, { code: 4401, reason: 'access token expired' });
    // Another token's socket is not touched.
    kept.send({ event: 'device_state_change' });
    await kept.json({ signal: 'start' });
    assert.equal(kept.closed, undefined);
    await kept.close();
    await d.close();
  });

  test("a token limited to some resources of a device gets no property events of it (properties are the whole device's)", async () => {
    const limited = (
      (
        await t.api('POST', `/v1/users/${ADMIN}/tokens`, {
          json: {
            name: 'props-limited',
            scope: { access: 'read', devices: { 'pl-1': { resources: ['sample'] } } },
          },
        })
      ).body as { access_token: string }
    ).access_token;
    const c = await Client.open(t, `/v2/users/${ADMIN}/events`, limited);
    c.send({ event: 'device_property_update', filters: { device: 'pl-1' } });
    await c.json({ signal: 'start' });
    c.send({ event: 'device_state_change', filters: { device: 'pl-1' } });
    await c.json({ signal: 'start', event: 'device_state_change' });
    const d = await connectDevice('pl-1');
    assert.equal(
      (await t.api('PUT', `/v3/users/${ADMIN}/devices/pl-1/properties/config`, { json: { value: { k: 1 } } }))
        .status,
      200,
    );
    await d.close();
    // The connect and the disconnect arrive; the property change in between does not.
    const events: unknown[] = [];
    for (let i = 0; i < 2; i++) events.push((await c.next(() => true, `frame ${i}`)).json?.event);
    assert.deepEqual(events, ['device_state_change', 'device_state_change']);
    await c.close();
  });

  test('v1 patterns and device-limited tokens: account-wide events are left out of a pattern, refused by name, and a refused frame changes nothing', async () => {
    const limited = (
      (
        await t.api('POST', `/v1/users/${ADMIN}/tokens`, {
          json: { name: 'v1-limited', allow: { Device: { 'lim-1': '*' } } },
        })
      ).body as { access_token: string }
    ).access_token;
    const c = await Client.open(t, `/v1/users/${ADMIN}/events`, limited);
    // By name: refused, nothing subscribed.
    c.send({ event: 'device_topic_publish', topic: 'a/#' });
    const refused = (await c.next(() => true, 'refusal')).json as {
      success: boolean;
      error: { code: string };
    };
    assert.equal(refused.success, false);
    assert.equal(refused.error.code, 'forbidden');
    // A pattern that also names an event needing a missing filter, and nothing else: refused whole.
    c.send({ event: 'bucket_write|device_topic_.*' });
    const none = (await c.next(() => true, 'second refusal')).json as {
      success: boolean;
      error: { code: string };
    };
    assert.equal(none.success, false);
    assert.equal(none.error.code, 'invalid_frame');
    // Nothing of the refused frames was applied: a device coming and going sends nothing yet.
    const d0 = await connectDevice('lim-1');
    await d0.close();
    // A pattern over every event: the device events the token covers are taken, topics and buckets left out.
    c.send({ event: '.*', topic: 'a/#' });
    const d = await connectDevice('lim-1');
    const frame = (await c.next(() => true, 'state change')).json as Record<string, unknown>;
    assert.equal(frame.event, 'device_state_change', 'the first frame after the refusals is the new connect');
    assert.equal(frame.state, 'connected');
    await d.close();
    await c.close();
  });

  test('Node-RED server-events (v1): a flat subscription with a state filter, no acknowledgement, flat event frames', async () => {
    const c = await Client.open(t, `/v1/users/${ADMIN}/events?authorization=${t.adminToken}`, undefined);
    // What the node sends for "device_state_change" with state "disconnected" (alert example).
    c.send({ event: 'device_state_change', state: 'disconnected' });
    const d = await connectDevice('nr1');
    await d.close();
    // The connect matched nothing and nothing acknowledged the subscription: the first frame is the disconnect.
    const first = await c.next(() => true, 'first frame');
    const frame = first.json as Record<string, unknown>;
    assert.equal(typeof frame.reason === 'string' || frame.reason === undefined, true);
    const { reason: _reason, ...rest } = frame;
    assert.deepEqual(zeroTs(rest), {
      event: 'device_state_change',
      user: ADMIN,
      device: 'nr1',
      state: 'disconnected',
      ts: 0,
    });
    await c.close();
  });

  test('v1 patterns: "device_.*" and a device pattern, unknown keys (params) ignored; property updates flat', async () => {
    const c = await Client.open(t, `/v1/users/${ADMIN}/events`);
    // The node's "any" event of the device asset, with a device pattern (its help: ".*8266").
    c.send({ event: 'device_.*', device: 'esp.*66', params: { anything: 1 }, bucket: '' });
    await t.createDevice('other1', 'secret-other1');
    await t.createDevice('esp8266', 'secret-esp8266');
    const prop = (device: string, value: unknown) =>
      t.api('PUT', `/v3/users/${ADMIN}/devices/${device}/properties/setpoint`, { json: { value } });
    assert.equal((await prop('other1', 1)).status, 200);
    assert.equal((await prop('esp8266', { celsius: 19 })).status, 200);
    const first = (await c.next(() => true, 'first frame')).json as Record<string, unknown>;
    assert.deepEqual(zeroTs(first), {
      event: 'device_property_update',
      user: ADMIN,
      device: 'esp8266',
      property: 'setpoint',
      value: { celsius: 19 },
      ts: 0,
    });
    const d = await connectDevice('esp8266', () => undefined);
    const state = await c.json({ event: 'device_state_change' });
    assert.deepEqual(zeroTs(state), {
      event: 'device_state_change',
      user: ADMIN,
      device: 'esp8266',
      state: 'connected',
      ts: 0,
      ip: '127.0.0.1',
    });
    await d.close();
    await c.close();
  });

  test('v1 refusals are {success: false, error}; v1 device_resource_stream takes flat filters', async () => {
    const c = await Client.open(t, `/v1/users/${ADMIN}/events`);
    c.send({ event: 'bucket_export_completed', bucket: 'b' });
    assert.deepEqual((await c.next(() => true, 'refusal')).json, {
      success: false,
      event: 'bucket_export_completed',
      error: {
        code: 'unknown_event',
        message:
          'no event matches "bucket_export_completed" (events: device_state_change, device_property_update, device_topic_publish, device_resource_stream, bucket_write)',
      },
    });
    c.send({ event: 'device_state_change', device: 'a(b)' });
    const bad = (await c.next(() => true, 'bad pattern')).json as {
      success: boolean;
      error: { code: string; message: string };
    };
    assert.equal(bad.success, false);
    assert.match(bad.error.message, /filters.device: "\(" is not supported/);
    const d = await connectDevice('v1rs');
    c.send({ event: RS, device: 'v1rs', resource: 'telemetry', params: { interval: 150 } });
    assert.deepEqual((await c.next(() => true, 'ack')).json, {
      event: RS,
      signal: 'start',
      registered: true,
      payload: { filters: { resource: 'telemetry', device: 'v1rs' }, params: { interval: 150 } },
    });
    // v1: no per-device start; data straight away.
    const next = await c.next(() => true, 'data');
    assert.deepEqual(zeroTs(next.json as Record<string, unknown>), {
      event: RS,
      signal: 'data',
      user: ADMIN,
      device: 'v1rs',
      resource: 'telemetry',
      ts: 0,
      payload: { temperature: 21.5, device: 'v1rs' },
    });
    await c.close();
    await d.close();
  });

  test('Node-RED thinger-server (v3 resources socket): {resource, interval in s, enabled}, NaN interval, enabled:false; binary as {bytes}', async () => {
    const d = await connectDevice('nrs', (dev) => {
      dev.resource('telemetry', {
        output: (_i, call) => {
          streamParams.set('nrs', call.parameters);
          return { v: 1 };
        },
      });
      dev.resource('image', { output: () => new Uint8Array([0, 1, 254, 255]) });
    });
    const c = await Client.open(
      t,
      `/v3/users/${ADMIN}/devices/nrs/resources?authorization=${t.adminToken}`,
      undefined,
    );
    c.send({ resource: 'telemetry', interval: 1, enabled: true });
    assert.deepEqual(await c.json({ signal: 'start', resource: 'telemetry' }), {
      resource: 'telemetry',
      signal: 'start',
      payload: { interval: 1 },
    });
    assert.deepEqual(await c.json({ signal: 'data', resource: 'telemetry' }), {
      resource: 'telemetry',
      signal: 'data',
      payload: { v: 1 },
    });
    assert.deepEqual(streamParams.get('nrs'), { interval: 1000 });
    // Number(undefined) is NaN, which JSON.stringify writes as null: the device's own events.
    c.send('{"resource":"image","interval":null,"enabled":true}');
    assert.deepEqual((await c.json({ signal: 'start', resource: 'image' })).payload, { interval: null });
    assert.deepEqual(await c.json({ signal: 'data', resource: 'image' }), {
      resource: 'image',
      signal: 'data',
      payload: { bytes: [0, 1, 254, 255] },
    });
    c.send({ resource: 'telemetry', enabled: false });
    assert.deepEqual(await c.json({ signal: 'stop', resource: 'telemetry' }), {
      resource: 'telemetry',
      signal: 'stop',
      payload: { code: 'unsubscribed', message: 'unsubscribed from telemetry' },
    });
    await c.close();
    await d.close();
  });

  test('thinr-cli exec: $cmd/{id}?cmd=…&timeout=… reaches the device as stream parameters; stdin sent at once waits for the stream; output in {bytes}; the session ends with its device', async () => {
    const stdin: unknown[] = [];
    const params: unknown[] = [];
    const d = await connectDevice('cmd1', (dev) => {
      dev.resource('$cmd/:session', {
        input: (v) => {
          stdin.push(v);
        },
        output: (_i, call) => {
          // (Also called, without stream parameters, for each input: the SDK's RPC form.)
          if (call.parameters !== undefined) params.push(call.parameters);
          return { out: new Uint8Array(Buffer.from(`ran ${(call.parameters as { cmd: string }).cmd}\n`)) };
        },
        streamEcho: false,
      });
    });
    const path = `/v3/users/${ADMIN}/devices/cmd1/resources/$cmd/4f1c?cmd=${encodeURIComponent('ls -l')}&timeout=30`;
    const c = await Client.open(t, path);
    // CommandStream forwards stdin as soon as the socket is open.
    c.send({ resource: '$cmd/4f1c', payload: 'some input\n' });
    assert.deepEqual(await c.json({ signal: 'start' }), {
      resource: '$cmd/4f1c',
      signal: 'start',
      payload: { interval: null },
    });
    await waitFor(() => stdin.length === 1, 'stdin at the device');
    assert.deepEqual(stdin, ['some input\n']);
    await d.stream('$cmd/4f1c');
    const out = await c.json({ signal: 'data' });
    assert.deepEqual(out, {
      resource: '$cmd/4f1c',
      signal: 'data',
      payload: { out: { bytes: [...Buffer.from('ran ls -l\n')] } },
    });
    assert.deepEqual(params, [{ cmd: 'ls -l', timeout: 30 }]);
    assert.equal(await d.stream('$cmd/4f1c', { exit: 0 }), 1);
    assert.deepEqual(await c.json({ signal: 'data' }), {
      resource: '$cmd/4f1c',
      signal: 'data',
      payload: { exit: 0 },
    });
    // The device goes: the session ends (it is not re-run when the device returns).
    await d.close();
    const stop = await c.json({ signal: 'stop' });
    assert.equal((stop.payload as { code: string }).code, 'device_offline');
    assert.equal((await c.waitClosed()).code, 4503);
    // A session for a device that is not connected is refused at the upgrade, as thinr-cli expects.
    await assert.rejects(Client.open(t, path), /404/);
  });

  test('a command or console session needs call access: read-only tokens are refused at the upgrade and the device runs nothing', async () => {
    const started: unknown[] = [];
    const d = await connectDevice('cmd-ro', (dev) => {
      dev.resource('$cmd/:session', {
        output: (_i, call) => {
          if (call.parameters !== undefined) started.push(call.parameters);
          return { out: 'ran' };
        },
        streamEcho: false,
      });
      dev.resource('sample', { output: () => 1 });
    });
    const tokenOf = async (name: string, body: Record<string, unknown>) =>
      (
        (await t.api('POST', `/v1/users/${ADMIN}/tokens`, { json: { name, ...body } })).body as {
          access_token: string;
        }
      ).access_token;
    const readOnly = await tokenOf('ro-everything', { scope: { access: 'read' } });
    const readDevice = await tokenOf('ro-device', {
      allow: { Device: { 'cmd-ro': ['ReadDeviceResource'] } },
    });
    const caller = await tokenOf('call-device', { allow: { Device: { 'cmd-ro': '*' } } });
    const base = `/v3/users/${ADMIN}/devices/cmd-ro/resources`;
    for (const token of [readOnly, readDevice]) {
      await assert.rejects(Client.open(t, `${base}/$cmd/s1?cmd=reboot&timeout=5`, token), /403/);
      await assert.rejects(Client.open(t, `${base}/$cmd/s2?raw=1`, token), /403/);
      // Reading a plain stream stays allowed.
      const reader = await Client.open(t, `${base}/sample`, token);
      await reader.json({ signal: 'start' });
      await reader.close();
    }
    // No stream was opened on the device for them (streaming reaches no one, runs nothing).
    assert.equal(await d.stream('$cmd/s1'), 0);
    assert.equal(await d.stream('$cmd/s2'), 0);
    assert.deepEqual(started, [], 'no session reached the device');
    const c = await Client.open(t, `${base}/$cmd/s3?cmd=uptime&timeout=5`, caller);
    await c.json({ signal: 'start' });
    assert.equal(await d.stream('$cmd/s3'), 1, 'the call token opened the session');
    assert.deepEqual(started, [{ cmd: 'uptime', timeout: 5 }]);
    await c.close();
    await d.close();
  });

  test('thinr-cli console: $terminal/{id}?raw=1 carries bare text and binary both ways, and closes when the device goes', async () => {
    const inputs: unknown[] = [];
    const d = await connectDevice('term1', (dev) => {
      dev.resource('$terminal/:session', {
        input: (v) => {
          inputs.push(v);
        },
        output: () => undefined,
        streamEcho: false,
      });
    });
    const c = await Client.open(t, `/v3/users/${ADMIN}/devices/term1/resources/$terminal/s1?raw=1`);
    c.send('\u0003ls\r'); // keystrokes, sent before the device stream is open
    await waitFor(() => inputs.length === 1, 'keystrokes at the device');
    assert.deepEqual(inputs, ['\u0003ls\r']);
    const prompt = Buffer.from('\u001b[1mhost\u001b[0m$ ');
    assert.equal(await d.stream('$terminal/s1', new Uint8Array(prompt)), 1);
    assert.equal(await d.stream('$terminal/s1', 'plain text'), 1);
    const binary = await c.next(() => true, 'terminal output');
    assert.equal(binary.binary, true);
    assert.deepEqual(binary.data, prompt);
    const text = await c.next(() => true, 'text output');
    assert.equal(text.binary, false);
    assert.equal(text.data.toString('utf8'), 'plain text');
    c.ws.send(Buffer.from([1, 2, 3]), { binary: true });
    await waitFor(() => inputs.length === 2, 'bytes at the device');
    assert.deepEqual(inputs[1], new Uint8Array([1, 2, 3]));
    await d.close();
    assert.equal((await c.waitClosed()).code, 4503);
    assert.equal(c.frames.length, 2, 'nothing but the device output');
  });

  test('a device_resource_stream consumer that does not read: data frames dropped and counted, memory bounded', async () => {
    const big = 'x'.repeat(64 * 1024);
    const devices = [
      await connectDevice('big1', (d) => d.resource('blob', { output: () => big })),
      await connectDevice('big2', (d) => d.resource('blob', { output: () => big })),
    ];
    const droppedBefore = await t.metric('iotmp_ws_messages_dropped_total');
    const c = await Client.open(t, `/v2/users/${ADMIN}/events`);
    c.send({ event: RS, filters: { resource: 'blob' } });
    await c.json({ signal: 'data', device: 'big1' });
    await c.json({ signal: 'data', device: 'big2' });
    c.ws.pause();
    const serverSide = () => [...t.server.app.websocketServer.clients];
    let maxBuffered = 0;
    for (let i = 0; i < 200; i++) {
      for (const d of devices) {
        await waitFor(() => d.bufferedAmount < 256 * 1024, 'device send buffer');
        d.stream('blob');
      }
      for (const s of serverSide()) maxBuffered = Math.max(maxBuffered, s.bufferedAmount);
    }
    await waitFor(
      async () => (await t.metric('iotmp_ws_messages_dropped_total')) > droppedBefore,
      'dropped data frames',
      15_000,
    );
    assert.ok(maxBuffered < (1 << 20) + 2 * (64 * 1024 + 256), `buffered up to ${maxBuffered} bytes`);
    c.ws.resume();
    assert.equal(c.closed, undefined, 'the slow consumer stays connected');
    await c.close();
    await Promise.all(devices.map((d) => d.close()));
  });
});

describe('v1 filter patterns', () => {
  test('whole-value matching of the basic patterns the Node-RED node documents', () => {
    const cases: Array<[string, string, boolean]> = [
      ['.*8266', 'esp8266', true],
      ['.*8266', 'esp8266x', false],
      ['esp_.*2.*', 'esp_a2b', true],
      ['esp_.*2.*', 'esp_ab', false],
      ['device_.*', 'device_state_change', true],
      ['.*', '', true],
      ['dev1|dev2', 'dev2', true],
      ['dev[0-9]+', 'dev42', true],
      ['dev[0-9]+', 'dev', false],
      ['dev[^0-9]', 'devx', true],
      ['^a\\.b$', 'a.b', true],
      ['^a\\.b$', 'axb', false],
      ['colou?r', 'color', true],
      ['plain', 'plain', true],
      ['plain', 'plainer', false],
    ];
    for (const [pattern, value, expected] of cases)
      assert.equal(compilePattern(pattern)(value), expected, `${pattern} ~ ${value}`);
    for (const bad of ['(a)', 'a{2}', '*a', 'a**', '[a-', 'a\\'])
      assert.throws(() => compilePattern(bad), bad);
  });

  test('search mode (list `name` filters): found anywhere unless anchored, any case; case folding before negation', () => {
    const cases: Array<[string, string, boolean]> = [
      ['^revpi|jetson', 'my-jetson-2', true],
      ['^revpi|jetson', 'RevPi 4', true],
      ['^revpi|jetson', 'a revpi', false],
      ['kitchen$', 'Fridge KITCHEN', true],
      ['kitchen$', 'kitchen 2', false],
      ['^a.c$', 'ABC', true],
      ['^a.c$', 'xabc', false],
      ['b+', 'aBBc', true],
      ['x?', 'anything', true],
      ['', 'anything', true],
      ['dev[0-9]+$', 'DEV42', true],
      ['[^a]', 'A', false],
      ['[^a]', 'Ab', true],
      ['[A-C]x', 'bX', true],
      ['\\$', 'price$', true],
      ['\\$', 'price', false],
      ['\\\\$', 'a\\', true],
      ['a\\.b', 'A.B', true],
      ['a\\.b', 'axb', false],
      ['plain', 'a PLAIN text', true],
      ['plain', 'plan', false],
    ];
    for (const [pattern, value, expected] of cases)
      assert.equal(
        compilePattern(pattern, { search: true, ignoreCase: true })(value),
        expected,
        `${pattern} ~ ${value}`,
      );
    // Case-sensitive search, and whole-value matching unchanged by the options' absence.
    assert.equal(compilePattern('Kitchen', { search: true })('my kitchen'), false);
    assert.equal(compilePattern('k.tchen', { search: true })('my kitchen'), true);
    assert.equal(compilePattern('k.tchen')('my kitchen'), false);
    assert.equal(compilePattern('ESP.*', { ignoreCase: true })('esp32'), true);
  });

  test('no pattern makes matching slow (no backtracking)', () => {
    const evil = compilePattern(`${'a*'.repeat(100)}b`);
    const value = 'a'.repeat(5000);
    const start = performance.now();
    assert.equal(evil(value), false);
    assert.ok(performance.now() - start < 500, `took ${performance.now() - start} ms`);
    const search = compilePattern(`${'a*'.repeat(60)}b`, { search: true, ignoreCase: true });
    const searchStart = performance.now();
    assert.equal(search('A'.repeat(5000)), false);
    assert.ok(performance.now() - searchStart < 1000, `search took ${performance.now() - searchStart} ms`);
  });

  /** A deterministic pseudo-random source (the same cases on every run). */
  const random = (seed: number) => {
    let state = seed;
    const next = (n: number) => {
      state = (state * 1103515245 + 12345) & 0x7fffffff;
      return state % n;
    };
    const pick = <T>(items: readonly T[]): T => items[next(items.length)] as T;
    const text = (alphabet: readonly string[], length: number) =>
      Array.from({ length }, () => pick(alphabet)).join('');
    return { next, pick, text };
  };

  test('the cached automaton agrees with RegExp on random patterns, matchers reused across many values', () => {
    const { next, pick, text } = random(20240601);
    const atoms = [
      'a',
      'b',
      'A',
      '0',
      '-',
      '.',
      '[ab]',
      '[^a]',
      '[a-c]',
      '[^0-9b]',
      '\\d',
      '\\w',
      '\\.',
      'é',
    ];
    const quantifiers = ['', '', '*', '+', '?'];
    const permissive = ['.', '.', '[^a]', '\\w', '[ab]', 'a', '[^-]'];
    // No line terminators (RegExp's `.` skips them) and no astral characters (RegExp without
    // the u flag sees two): on these both engines agree.
    const alphabet = ['a', 'b', 'A', 'B', 'c', '0', '1', '-', '.', 'é', 'É', '中'];
    let compared = 0;
    for (let k = 0; k < 400; k++) {
      // The last ones are longer and permissive: sets of positions over several 32-bit words.
      const long = k >= 300;
      const alternatives = Array.from({ length: 1 + next(3) }, () => {
        const body = Array.from(
          { length: long ? 12 + next(30) : next(7) },
          () => pick(long ? permissive : atoms) + pick(quantifiers),
        ).join('');
        return `${next(4) === 0 ? '^' : ''}${body}${next(4) === 0 ? '$' : ''}`;
      });
      const pattern = alternatives.join('|');
      if (pattern.length > 256) continue; // longer than patterns may be
      const search = compilePattern(pattern, { search: true, ignoreCase: true });
      const searchRe = new RegExp(pattern, 'i');
      const whole = compilePattern(pattern);
      const wholeRe = new RegExp(
        `^(?:${alternatives.map((a) => a.replace(/^\^/, '').replace(/\$$/, '')).join('|')})$`,
      );
      for (let v = 0; v < 40; v++) {
        const value = text(alphabet, next(k < 300 ? 14 : 60));
        assert.equal(search(value), searchRe.test(value), `search ${pattern} ~ ${value}`);
        assert.equal(whole(value), wholeRe.test(value), `whole ${pattern} ~ ${value}`);
        compared++;
      }
    }
    assert.ok(compared > 380 * 40, `${compared} compared`);

    // More states than the cache holds (it starts over), long values, both modes.
    const wide = `a${'.'.repeat(12)}`;
    const wideSearch = compilePattern(wide, { search: true, ignoreCase: true });
    const wideWhole = compilePattern(`.*${wide}b.*`);
    for (let v = 0; v < 200; v++) {
      const value = text(['a', 'b', 'B'], 64);
      assert.equal(wideSearch(value), /a.{12}/i.test(value), `${wide} ~ ${value}`);
      assert.equal(wideWhole(value), /^.*a.{12}b.*$/.test(value), `whole ~ ${value}`);
    }

    // More classes of characters outside ASCII than the class table holds.
    const greek = [...'αβγδεζηθικλμνξοπρτυφχψω'];
    const many = `${greek.map((g, i) => (i % 2 === 0 ? g : `${g}|`)).join('')}.z`;
    const manySearch = compilePattern(many, { search: true, ignoreCase: true });
    const manyRe = new RegExp(many, 'i');
    const both = [...greek, ...greek.map((g) => g.toUpperCase()), 'z', 'Z', 'x'];
    for (let v = 0; v < 300; v++) {
      const value = text(both, next(30));
      assert.equal(manySearch(value), manyRe.test(value), `${many} ~ ${value}`);
    }
  });

  test('a surrogate pair is one character, a lone surrogate too', () => {
    assert.equal(compilePattern('a.b')('a\u{1F600}b'), true);
    assert.equal(compilePattern('a..b')('a\u{1F600}b'), false);
    assert.equal(compilePattern('^.$', { search: true })('\u{1F600}'), true);
    assert.equal(compilePattern('a.b')('a\ud800b'), true);
    assert.equal(compilePattern('[^x]+')('\u{1F600}\u{1F601}\udc00'), true);
  });

  test('matchers count their work: one unit per character once cached; more, still linear, for patterns with too many states', () => {
    // The reviewer's worst case for the per-position matcher: one table read per character here.
    const worst = compileCountingMatcher(`${'[^!]*'.repeat(25)}!`.slice(0, 128), {
      search: true,
      ignoreCase: true,
    });
    const name = 'N'.repeat(256);
    assert.equal(worst.test(name), false);
    const warm = worst.work;
    for (let i = 0; i < 100; i++) assert.equal(worst.test(name), false);
    assert.equal(worst.work - warm, 100 * 256);
    assert.equal(worst.test(`${name}!`), true);

    const { text } = random(7);
    const hostile = compileCountingMatcher(`a${'.'.repeat(100)}!`, { search: true });
    const values = Array.from({ length: 20 }, () => text(['a', 'b'], 256));
    for (const v of values) assert.equal(hostile.test(v), false);
    // Nearly every character is a new state: a step over ~100 positions each, but bounded.
    assert.ok(hostile.work > 20 * 200 * 100, `work ${hostile.work}`);
    assert.ok(hostile.work < 20 * 256 * 200, `work ${hostile.work}`);
  });

  test('a list `name` filter refuses (400) once its matching work passes the budget', () => {
    const { text } = random(11);
    const rows = Array.from({ length: 200 }, (_, i) => [`b${i}`, text(['a', 'b'], 256)] as const);
    const costly = nameFilter(`a${'.'.repeat(100)}!`, 'buckets', 1_000_000);
    assert.throws(
      () => {
        for (const [id, name] of rows) costly?.matches(id, name);
      },
      (err: unknown) =>
        err instanceof HttpError &&
        err.status === 400 &&
        err.code === 'invalid_request' &&
        /too costly to search this many buckets; use a simpler pattern or plain text/.test(err.message),
    );
    // Ordinary patterns over the same rows stay well within it.
    for (const pattern of ['^b1.*a$', 'aab|bba', 'abba', 'b[0-9]+']) {
      const f = nameFilter(pattern, 'buckets', 1_000_000);
      const re = new RegExp(pattern, 'i');
      for (const [id, name] of rows)
        assert.equal(f?.matches(id, name), re.test(id) || re.test(name), pattern);
    }
    assert.ok(
      MAX_NAME_FILTER_WORK > 10_000 * 384,
      'the default allows 10,000 ids and names at one unit per character',
    );
  });
});
