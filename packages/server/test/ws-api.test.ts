import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Device } from '@iotmp/device';
import { type DecodedMessage, FrameDecoder, MessageType } from '@iotmp/protocol';
import WebSocket from 'ws';
import { BoundedSender, type FrameSink, type ServerFrame } from '../src/api/ws-routes.js';
import { loadConfig } from '../src/config.js';
import { type RunningServer, startServer } from '../src/server.js';

const WAIT_MS = 8000;

// --- helpers -----------------------------------------------------------------------------

/** Polls `cond` on every event-loop turn until it holds; fails after `ms`. */
async function until(cond: () => boolean | Promise<boolean>, what: string, ms = WAIT_MS): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await cond()) return;
    await new Promise((r) => setTimeout(r, 5));
  }
  assert.fail(`timed out after ${ms} ms waiting for ${what}`);
}

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

/**
 * A TCP proxy between the device and the server that decodes every IOTMP frame the device
 * receives (per connection), and can cut the device off and keep it out.
 */
class TapProxy {
  readonly connections: DecodedMessage[][] = [];
  refuse = false;
  private readonly sockets = new Set<net.Socket>();
  private readonly server: net.Server;
  port = 0;

  constructor(private readonly targetPort: number) {
    this.server = net.createServer((client) => {
      if (this.refuse) {
        client.destroy();
        return;
      }
      const seen: DecodedMessage[] = [];
      this.connections.push(seen);
      const decoder = new FrameDecoder({ onMessage: (m) => seen.push(m) });
      const upstream = net.connect(this.targetPort, '127.0.0.1');
      this.sockets.add(client);
      this.sockets.add(upstream);
      upstream.on('data', (chunk) => {
        decoder.push(chunk);
        client.write(chunk);
      });
      client.on('data', (chunk) => upstream.write(chunk));
      const end = () => {
        client.destroy();
        upstream.destroy();
        this.sockets.delete(client);
        this.sockets.delete(upstream);
      };
      client.on('close', end);
      upstream.on('close', end);
      client.on('error', end);
      upstream.on('error', end);
    });
  }

  async start(): Promise<void> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    this.port = (this.server.address() as net.AddressInfo).port;
  }

  /** Every message the device received, all connections. */
  get received(): DecodedMessage[] {
    return this.connections.flat();
  }

  /** START_STREAM / STOP_STREAM the device received, as [type, resource, parameters]. */
  streamControl(): Array<[string, unknown, unknown]> {
    return this.received
      .filter((m) => m.type === MessageType.START_STREAM || m.type === MessageType.STOP_STREAM)
      .map((m) => [m.type === MessageType.START_STREAM ? 'start' : 'stop', m.resource, m.parameters]);
  }

  cut(): void {
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise((r) => this.server.close(r));
  }
}

type Frame = { resource?: string; event?: string; signal: string; payload?: unknown };

/** A WebSocket API client that keeps every frame and waits for frames with a deadline. */
class Client {
  readonly frames: Frame[] = [];
  private cursor = 0;
  private waiters = new Set<() => void>();
  closed: { code: number; reason: string } | undefined;

  private constructor(readonly ws: WebSocket) {
    ws.on('message', (data) => {
      this.frames.push(JSON.parse(String(data)) as Frame);
      for (const w of [...this.waiters]) w();
    });
    ws.on('close', (code, reason) => {
      this.closed = { code, reason: String(reason) };
      for (const w of [...this.waiters]) w();
    });
  }

  static open(url: string, token?: string): Promise<Client> {
    const ws = new WebSocket(url, token ? { headers: { authorization: `Bearer ${token}` } } : {});
    return new Promise((resolve, reject) => {
      ws.once('open', () => resolve(new Client(ws)));
      ws.once('unexpected-response', (_req, res) => {
        let body = '';
        res.on('data', (c: Buffer) => {
          body += String(c);
        });
        res.on('end', () =>
          reject(Object.assign(new Error(`HTTP ${res.statusCode}`), { status: res.statusCode, body })),
        );
      });
      ws.once('error', reject);
    });
  }

  send(frame: unknown): void {
    this.ws.send(typeof frame === 'string' ? frame : JSON.stringify(frame));
  }

  /** The next frame (after those already taken) matching `pred`; earlier non-matching ones are skipped. */
  next(pred: (f: Frame) => boolean, what: string, ms = WAIT_MS): Promise<Frame> {
    return new Promise((resolve, reject) => {
      const check = () => {
        while (this.cursor < this.frames.length) {
          const f = this.frames[this.cursor++] as Frame;
          if (pred(f)) {
            done();
            resolve(f);
            return;
          }
        }
        if (this.closed) {
          done();
          reject(new Error(`socket closed (${this.closed.code} ${this.closed.reason}) waiting for ${what}`));
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(
          new Error(`timed out after ${ms} ms waiting for ${what}; frames: ${JSON.stringify(this.frames)}`),
        );
      }, ms);
      const done = () => {
        clearTimeout(timer);
        this.waiters.delete(check);
      };
      this.waiters.add(check);
      check();
    });
  }

  signal(signal: string, resource?: string): Promise<Frame> {
    return this.next(
      (f) => f.signal === signal && (resource === undefined || f.resource === resource),
      `${signal}${resource ? ` of ${resource}` : ''}`,
    );
  }

  close(): Promise<void> {
    if (this.closed) return Promise.resolve();
    return new Promise((r) => {
      this.ws.once('close', () => r());
      this.ws.close();
    });
  }
}

async function rejection(p: Promise<unknown>): Promise<{ status: number; body: string }> {
  try {
    await p;
  } catch (err) {
    return err as { status: number; body: string };
  }
  assert.fail('expected the upgrade to be refused');
}

// --- the tests ---------------------------------------------------------------------------

describe('WebSocket API', () => {
  let server: RunningServer;
  let dataDir: string;
  let proxy: TapProxy;
  let device: Device;
  let token: string;
  let http: string;
  let wsBase: string;
  let tempSample = 0;
  const ledInputs: unknown[] = [];
  let ledState: unknown = false;

  const api = async (path: string, init?: RequestInit & { token?: string }) => {
    const headers = new Headers(init?.headers);
    headers.set('authorization', `Bearer ${init?.token ?? token}`);
    return fetch(`${http}${path}`, { ...init, headers });
  };

  const login = async (username: string, password: string): Promise<string> => {
    const res = await fetch(`${http}/oauth/token`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: `grant_type=password&username=${username}&password=${password}`,
    });
    assert.equal(res.status, 200);
    return ((await res.json()) as { access_token: string }).access_token;
  };

  const resourceUrl = (resource: string, query = '') =>
    `${wsBase}/v3/users/admin/devices/d1/resources/${resource}${query}`;

  before(async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'iotmp-ws-'));
    const tcpPort = await freePort();
    server = await startServer(
      loadConfig([
        '--data-dir',
        dataDir,
        '--http-port',
        '0',
        '--tcp-port',
        String(tcpPort),
        '--tls-port',
        '0',
        '--https-port',
        '0',
        '--admin-password',
        'pw',
        '--log-level',
        'warn',
        '--host',
        '127.0.0.1',
      ]),
    );
    http = `http://127.0.0.1:${server.httpPort}`;
    wsBase = `ws://127.0.0.1:${server.httpPort}`;
    token = await login('admin', 'pw');
    const created = await api('/v1/users/admin/devices', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ device: 'd1', credentials: 'secret-1' }),
    });
    assert.equal(created.status, 201);

    proxy = new TapProxy(server.tcpPort);
    await proxy.start();
    device = new Device({
      username: 'admin',
      deviceId: 'd1',
      credential: 'secret-1',
      host: '127.0.0.1',
      port: proxy.port,
      transport: 'tcp',
      reconnect: { initialDelayMs: 20, maxDelayMs: 100 },
    });
    device.resource('temp', { output: () => tempSample++ });
    device.resource('led', {
      input: (v) => {
        ledInputs.push(v);
        ledState = v;
      },
      output: () => ledState,
    });
    device.resource('sensors/room/1', { output: () => ({ celsius: 21.5 }) });
    device.resource('blob', { output: () => 'x'.repeat(64 * 1024) });
    await device.connect();
  });

  after(async () => {
    await device?.close();
    await proxy?.close();
    await server?.close();
    rmSync(dataDir, { recursive: true, force: true });
  });

  test('two subscribers at 4 s and 6 s share one device stream at the GCD (the device receives 2000 ms)', async () => {
    const before = proxy.streamControl().length;
    const a = await Client.open(resourceUrl('temp', '?interval=4'), token);
    assert.deepEqual((await a.signal('start')).payload, { interval: 4 });
    const firstA = await a.signal('data');
    assert.equal(firstA.resource, 'temp');
    assert.equal(typeof firstA.payload, 'number');

    const b = await Client.open(resourceUrl('temp', '?interval=6'), token);
    assert.deepEqual((await b.signal('start')).payload, { interval: 6 });
    await b.signal('data');
    await until(() => proxy.streamControl().length >= before + 3, 'the re-open at the GCD');
    // What the device received: START_STREAM at 4000 ms; then STOP_STREAM of it and
    // START_STREAM at gcd(4000, 6000) = 2000 ms. One device stream for both subscribers.
    assert.deepEqual(proxy.streamControl().slice(before), [
      ['start', 'temp', { interval: 4000 }],
      ['stop', undefined, undefined],
      ['start', 'temp', { interval: 2000 }],
    ]);
    assert.equal(server.hub.get('admin', 'd1')?.session.openStreams, 1);

    // The same paths still answer plain HTTP (REST read and DESCRIBE).
    const read = await api('/v3/users/admin/devices/d1/resources/temp');
    assert.equal(read.status, 200);
    assert.equal(typeof (await read.json()), 'number');
    const described = await api('/v3/users/admin/devices/d1/resources');
    assert.equal(described.status, 200);
    assert.ok('temp' in ((await described.json()) as object));

    // A leaves: the device stream follows the remaining interval; B leaves: it stops.
    await a.close();
    await until(() => proxy.streamControl().length >= before + 5, 're-open at 6000');
    assert.deepEqual(proxy.streamControl().slice(before + 3), [
      ['stop', undefined, undefined],
      ['start', 'temp', { interval: 6000 }],
    ]);
    await b.close();
    await until(() => proxy.streamControl().length >= before + 6, 'STOP_STREAM at the device');
    assert.deepEqual(proxy.streamControl().at(-1), ['stop', undefined, undefined]);
    assert.equal(server.hub.get('admin', 'd1')?.session.openStreams, 0);
  });

  test('a resource name with slashes, at a fractional interval', async () => {
    const c = await Client.open(resourceUrl('sensors/room/1', '?interval=0.2'), token);
    await c.signal('start');
    const frames = [await c.signal('data'), await c.signal('data'), await c.signal('data')];
    for (const f of frames)
      assert.deepEqual(f, { resource: 'sensors/room/1', signal: 'data', payload: { celsius: 21.5 } });
    assert.deepEqual(proxy.streamControl().at(-1), ['start', 'sensors/room/1', { interval: 200 }]);
    await c.close();
  });

  test('many resources on one socket: control frames, data to the device, and bad frames', async () => {
    const m = await Client.open(`${wsBase}/v3/users/admin/devices/d1/resources`, token);
    m.send({ resource: 'temp', interval: 0.3 });
    assert.deepEqual((await m.signal('start', 'temp')).payload, { interval: 0.3 });
    await m.signal('data', 'temp');
    m.send({ resource: 'led' });
    assert.deepEqual((await m.signal('start', 'led')).payload, { interval: null });
    assert.equal((await m.signal('data', 'led')).payload, false);

    // Client data → STREAM_DATA on the led stream → the device's input; its new state comes back.
    m.send({ resource: 'led', payload: true });
    assert.equal((await m.signal('data', 'led')).payload, true);
    assert.deepEqual(ledInputs, [true]);
    const streamData = proxy.received.filter((x) => x.type === MessageType.STREAM_DATA);
    assert.equal(streamData.at(-1)?.payload, true);

    // A new interval re-opens the device stream at it and is acknowledged.
    m.send({ resource: 'temp', interval: 0.5 });
    assert.deepEqual((await m.signal('start', 'temp')).payload, { interval: 0.5 });
    await until(
      () =>
        JSON.stringify(proxy.streamControl().at(-1)) === JSON.stringify(['start', 'temp', { interval: 500 }]),
      'START_STREAM at 500 ms',
    );
    m.send({ resource: 'temp', enabled: false });
    assert.deepEqual((await m.signal('stop', 'temp')).payload, {
      code: 'unsubscribed',
      message: 'unsubscribed from temp',
    });

    const bad = async (frame: unknown, code: string, message?: RegExp) => {
      m.send(frame);
      const f = await m.next((x) => x.signal === 'error', `error for ${JSON.stringify(frame)}`);
      const payload = f.payload as { code: string; message: string };
      assert.equal(payload.code, code, JSON.stringify(f));
      if (message) assert.match(payload.message, message);
      return f;
    };
    await bad('not json', 'invalid_frame', /JSON/);
    await bad('[1, 2]', 'invalid_frame', /object/);
    await bad({ resource: 5 }, 'invalid_frame', /resource/);
    await bad({ resource: '' }, 'invalid_frame', /resource/);
    await bad({ resource: 'temp', interval: 'fast' }, 'invalid_frame', /interval/);
    await bad({ resource: 'temp', interval: -1 }, 'invalid_frame', /interval/);
    await bad({ resource: 'temp', interval: 0.001 }, 'invalid_frame', /at least/);
    await bad({ resource: 'temp', enabled: 'no' }, 'invalid_frame', /enabled/);
    await bad({ resource: 'temp', bogus: 1 }, 'invalid_frame', /unknown field "bogus"/);
    await bad({ resource: 'led', interval: 1, payload: 2 }, 'invalid_frame', /either/);
    await bad({ resource: 'temp', payload: 1 }, 'not_subscribed');
    await bad({ resource: 'temp', enabled: false }, 'not_subscribed');
    m.ws.send(Buffer.from([1, 2, 3]), { binary: true });
    await m.next(
      (x) => x.signal === 'error' && /binary/.test((x.payload as { message: string }).message),
      'binary',
    );
    m.send(JSON.stringify({ resource: 'x', pad: 'y'.repeat(server.config.maxFrameSize) }));
    await m.next(
      (x) => x.signal === 'error' && (x.payload as { code: string }).code === 'frame_too_large',
      'frame_too_large',
    );
    // An unknown resource: the device refuses the stream.
    m.send({ resource: 'nope' });
    const refused = await m.signal('error', 'nope');
    assert.equal((refused.payload as { code: string }).code, 'resource_not_found');
    // Still serving after all that.
    m.send({ resource: 'temp' });
    await m.signal('start', 'temp');
    await m.signal('data', 'temp');
    assert.equal(m.closed, undefined);
    await m.close();
    await until(() => server.hub.get('admin', 'd1')?.session.openStreams === 0, 'streams stopped');
  });

  test('auth on upgrade like REST: 401, 403 (another user, scoped tokens), 404, 400; call needs call access', async () => {
    let r = await rejection(Client.open(resourceUrl('temp')));
    assert.equal(r.status, 401);
    assert.match(r.body, /missing access token/);
    r = await rejection(Client.open(resourceUrl('temp'), 'not-a-token'));
    assert.equal(r.status, 401);
    r = await rejection(Client.open(`${resourceUrl('temp')}?authorization=garbage`));
    assert.equal(r.status, 401);

    await server.tokens.createUser('bob', 'pw-bob');
    const bob = await login('bob', 'pw-bob');
    r = await rejection(Client.open(resourceUrl('temp'), bob));
    assert.equal(r.status, 403);
    assert.match(r.body, /forbidden/);
    r = await rejection(Client.open(`${wsBase}/v3/users/admin/devices/d1/resources`, bob));
    assert.equal(r.status, 403);
    r = await rejection(Client.open(`${wsBase}/v2/users/admin/events`, bob));
    assert.equal(r.status, 403);

    r = await rejection(Client.open(`${wsBase}/v3/users/admin/devices/nosuch/resources/temp`, token));
    assert.equal(r.status, 404);
    assert.match(r.body, /device_not_found/);
    for (const q of ['?interval=abc', '?interval=0.01', '?interval=100000', '?other=1']) {
      r = await rejection(Client.open(resourceUrl('temp', q), token));
      assert.equal(r.status, 400, q);
    }
    // A plain GET of the events route says it is a WebSocket.
    const plain = await api('/v2/users/admin/events');
    assert.equal(plain.status, 426);

    // Token in the query string works as for REST.
    const viaQuery = await Client.open(resourceUrl('temp', `?authorization=${token}`));
    await viaQuery.signal('start');
    await viaQuery.close();

    // A read-only token limited to d1/temp: may stream temp, not send to it, not stream led.
    const created = await api('/v1/users/admin/tokens', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        name: 'ro',
        scope: { access: 'read', devices: { d1: { resources: ['temp'] } } },
      }),
    });
    assert.equal(created.status, 201);
    const ro = ((await created.json()) as { access_token: string }).access_token;
    r = await rejection(Client.open(resourceUrl('led'), ro));
    assert.equal(r.status, 403);
    const one = await Client.open(resourceUrl('temp'), ro);
    await one.signal('start');
    one.send({ payload: 1 });
    assert.equal(((await one.signal('error')).payload as { code: string }).code, 'forbidden');
    one.send({ resource: 'led', payload: 1 });
    assert.match(((await one.signal('error')).payload as { message: string }).message, /temp only/);
    await one.close();
    const many = await Client.open(`${wsBase}/v3/users/admin/devices/d1/resources`, ro);
    many.send({ resource: 'led' });
    assert.equal(((await many.signal('error', 'led')).payload as { code: string }).code, 'forbidden');
    many.send({ resource: 'temp' });
    await many.signal('start', 'temp');
    await many.close();
  });

  test('device leaves: stop signal (and events); returns: start and data again', async () => {
    const events = await Client.open(`${wsBase}/v2/users/admin/events`, token);
    events.send({ event: 'device_state_change', filters: { device: 'd1' } });
    assert.deepEqual(await events.signal('start'), {
      event: 'device_state_change',
      signal: 'start',
      payload: { filters: { device: 'd1' } },
    });
    events.send({ event: 'no_such_event' });
    assert.equal(((await events.signal('error')).payload as { code: string }).code, 'unknown_event');
    events.send({ event: 'device_state_change', filters: { colour: 'red' } });
    assert.match(((await events.signal('error')).payload as { message: string }).message, /unknown filter/);

    const s = await Client.open(resourceUrl('temp', '?interval=0.2'), token);
    await s.signal('start');
    await s.signal('data');

    proxy.refuse = true;
    proxy.cut();
    const stop = await s.signal('stop');
    assert.equal((stop.payload as { code: string }).code, 'device_offline');
    assert.match((stop.payload as { message: string }).message, /disconnected/);
    const left = await events.signal('data');
    assert.equal((left.payload as { device: string }).device, 'd1');
    assert.equal((left.payload as { connected: boolean }).connected, false);
    assert.equal(typeof (left.payload as { ts: number }).ts, 'number');
    const offline = await api('/v3/users/admin/devices/d1/resources/temp');
    assert.equal(offline.status, 404);
    assert.equal(((await offline.json()) as { error: { code: string } }).error.code, 'device_offline');
    // Sending while the device is away is refused with a clear error.
    s.send({ payload: 1 });
    assert.equal(((await s.signal('error')).payload as { code: string }).code, 'stream_not_open');

    const connectionsBefore = proxy.connections.length;
    proxy.refuse = false; // the SDK reconnects by itself
    await s.signal('start');
    await s.signal('data');
    const back = await events.signal('data');
    assert.deepEqual(
      { ...(back.payload as object), ts: 0 },
      { device: 'd1', connected: true, ts: 0, ip: '127.0.0.1' },
    );
    // On the new connection the device got its OK first, then the stream again.
    const fresh = proxy.connections[connectionsBefore] as DecodedMessage[];
    assert.equal(fresh[0]?.type, MessageType.OK);
    assert.deepEqual(
      fresh.filter((x) => x.type === MessageType.START_STREAM).map((x) => [x.resource, x.parameters]),
      [['temp', { interval: 200 }]],
    );
    await s.close();
    events.send({ event: 'device_state_change', enabled: false });
    await events.signal('stop');
    await events.close();
  });

  test('a consumer that does not read: its data frames are dropped and counted, memory stays bounded', async () => {
    const dropped = async () => {
      const text = await (await fetch(`${http}/metrics`)).text();
      return Number(/^iotmp_ws_messages_dropped_total (\d+)/m.exec(text)?.[1] ?? 'NaN');
    };
    const droppedBefore = await dropped();
    const slow = await Client.open(resourceUrl('blob'), token);
    await slow.signal('start');
    await slow.signal('data');
    slow.ws.pause();
    // 400 × 64 KiB ≈ 26 MB toward a consumer that reads nothing.
    const pushes = 400;
    let maxBuffered = 0;
    const serverSide = () => [...server.app.websocketServer.clients];
    for (let i = 0; i < pushes; i++) {
      await until(() => device.bufferedAmount < 256 * 1024, 'device send buffer');
      device.stream('blob');
      for (const c of serverSide()) maxBuffered = Math.max(maxBuffered, c.bufferedAmount);
    }
    await until(async () => (await dropped()) > droppedBefore, 'dropped data frames', 15_000);
    assert.ok(serverSide().length >= 1, 'the slow consumer stays connected');
    slow.ws.resume();
    // Every sample was either delivered or dropped and counted.
    const received = () => slow.frames.filter((f) => f.signal === 'data').length - 1;
    await until(
      async () => received() + (await dropped()) - droppedBefore === pushes,
      'delivered + dropped = pushed',
      15_000,
    );
    assert.ok(received() < pushes, `received ${received()} of ${pushes}`);
    // What waits for the consumer stays near the 1 MiB limit (plus one frame in flight).
    assert.ok(maxBuffered < (1 << 20) + 2 * (64 * 1024 + 64), `buffered up to ${maxBuffered} bytes`);
    await slow.close();
  });

  test('BoundedSender: drops data frames past the limit, cuts off past four times it', () => {
    const sent: string[] = [];
    let terminated = false;
    let drops = 0;
    const socket = {
      readyState: 1,
      bufferedAmount: 0,
      send: (d: string) => sent.push(d),
      terminate: () => {
        terminated = true;
      },
    } satisfies FrameSink;
    const out = new BoundedSender(socket, 1000, () => drops++);
    const data: ServerFrame = { resource: 'r', signal: 'data', payload: 1 };
    assert.equal(out.send(data), true);
    socket.bufferedAmount = 1000;
    assert.equal(out.send(data), false);
    assert.equal(drops, 1);
    assert.equal(out.send({ resource: 'r', signal: 'stop', payload: {} }), true, 'control frames still go');
    socket.bufferedAmount = 4000;
    assert.equal(out.send({ resource: 'r', signal: 'error', payload: {} }), false);
    assert.equal(terminated, true);
    assert.deepEqual(
      sent.map((s) => JSON.parse(s).signal),
      ['data', 'stop'],
    );
  });

  test("BoundedSender: a turn's frames go out in one write (the socket is corked until the event loop's check phase)", async () => {
    const events: string[] = [];
    const raw = { cork: () => events.push('cork'), uncork: () => events.push('uncork') };
    const socket = {
      readyState: 1,
      bufferedAmount: 0,
      send: (d: string) => events.push(`send ${JSON.parse(d).payload}`),
      terminate: () => {},
      _socket: raw,
    } satisfies FrameSink;
    const out = new BoundedSender(socket, 1000, () => {});
    for (let i = 0; i < 3; i++) out.send({ resource: 'r', signal: 'data', payload: i });
    assert.deepEqual(events, ['cork', 'send 0', 'send 1', 'send 2']);
    await new Promise((resolve) => setImmediate(resolve));
    assert.deepEqual(events.slice(4), ['uncork']);
    out.send({ resource: 'r', signal: 'data', payload: 3 });
    await new Promise((resolve) => setImmediate(resolve));
    assert.deepEqual(events.slice(5), ['cork', 'send 3', 'uncork']);
  });
});
