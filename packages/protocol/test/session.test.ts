import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { PsonValue } from '@iotmp/pson';
import { bytesToHex, hexToBytes, loadFrameVectors } from '@iotmp/spec-vectors';
import {
  AuthError,
  ClosedError,
  type ConnectInfo,
  type DecodedMessage,
  decodeMessage,
  encodeFrame,
  FrameDecoder,
  ManualClock,
  MemoryTransport,
  type Message,
  MessageType,
  RequestError,
  ResourceError,
  ResourceKind,
  ResourceRegistry,
  Session,
  type SessionError,
  SessionErrorCode,
  type SessionOptions,
  TimeoutError,
} from '../src/index.js';
import { plain } from './helpers.js';

/** Lets every queued microtask and I/O callback run (delivery on the memory transport). */
const turn = () => new Promise<void>((resolve) => setImmediate(resolve));
async function turns(n = 5): Promise<void> {
  for (let i = 0; i < n; i++) await turn();
}

/** Records the frames one side writes. */
function tap(transport: MemoryTransport): DecodedMessage[] {
  const frames: DecodedMessage[] = [];
  const decoder = new FrameDecoder({ onMessage: (m) => frames.push(m) });
  const write = transport.write.bind(transport);
  transport.write = (bytes: Uint8Array) => {
    decoder.push(bytes);
    write(bytes);
  };
  return frames;
}

/** Records the raw bytes one side writes. */
function tapBytes(transport: MemoryTransport): Uint8Array[] {
  const writes: Uint8Array[] = [];
  const write = transport.write.bind(transport);
  transport.write = (bytes: Uint8Array) => {
    writes.push(bytes);
    write(bytes);
  };
  return writes;
}

interface Pair {
  device: Session;
  server: Session;
  clock: ManualClock;
  deviceTransport: MemoryTransport;
  serverTransport: MemoryTransport;
  deviceSent: DecodedMessage[];
  serverSent: DecodedMessage[];
  logins: ConnectInfo[];
  closed: { device?: SessionError | undefined; server?: SessionError | undefined };
}

function makePair(
  deviceOptions: Partial<SessionOptions> = {},
  serverOptions: Partial<SessionOptions> = {},
): Pair {
  const clock = new ManualClock(1_000_000);
  const [deviceTransport, serverTransport] = MemoryTransport.pair();
  const deviceSent = tap(deviceTransport);
  const serverSent = tap(serverTransport);
  const logins: ConnectInfo[] = [];
  const closed: Pair['closed'] = {};
  const device = new Session({
    role: 'client',
    transport: deviceTransport,
    clock,
    onClose: (e) => {
      closed.device = e;
    },
    ...deviceOptions,
  });
  const server = new Session({
    role: 'server',
    transport: serverTransport,
    clock,
    authenticate: (info) => {
      logins.push(info);
      return info.credential === 'secret';
    },
    onClose: (e) => {
      closed.server = e;
    },
    ...serverOptions,
  });
  server.start();
  return { device, server, clock, deviceTransport, serverTransport, deviceSent, serverSent, logins, closed };
}

async function connected(
  deviceOptions: Partial<SessionOptions> = {},
  serverOptions: Partial<SessionOptions> = {},
) {
  const pair = makePair(deviceOptions, serverOptions);
  await pair.device.connect({ username: 'user1', deviceId: 'sensor1', credential: 'secret' });
  await turns();
  return pair;
}

function sensorResources(): ResourceRegistry {
  const r = new ResourceRegistry();
  let led = false;
  r.add('temperature', { output: () => ({ celsius: 22.5, humidity: 60 }) });
  r.add('led', {
    input: (v) => {
      led = (v as { state: boolean }).state;
    },
  });
  r.add('ledState', { output: () => led });
  r.add('sum', {
    input: true,
    output: (v) => ({ result: (v as { a: number }).a + (v as { b: number }).b }),
  });
  r.add('gpio/:pin', { output: (_v, call) => Number(call.params.pin) * 10 });
  r.add('fs/*path', { output: (_v, call) => call.params.path ?? null });
  r.add('reboot', { run: () => undefined });
  r.add('slow', { output: async () => 'late' });
  r.add('broken', {
    output: () => {
      throw new ResourceError(503, 'sensor offline');
    },
  });
  r.add('crash', {
    output: () => {
      throw new Error('boom');
    },
  });
  r.add('binary', { output: () => new Uint8Array([1, 2, 3]) });
  return r;
}

describe('session: login', () => {
  for (const version of [1, 0] as const) {
    it(`pv${version}: CONNECT → OK, server learns credentials and version`, async () => {
      const p = await connected({ version });
      assert.equal(p.device.state, 'open');
      assert.equal(p.server.state, 'open');
      assert.equal(p.server.version, version);
      assert.deepEqual(
        p.logins.map((l) => [l.username, l.deviceId, l.credential, l.version, l.keepAliveSeconds]),
        [['user1', 'sensor1', 'secret', version, 60]],
      );
      // The server's first frame is the OK (spec Appendix C).
      assert.equal(p.serverSent[0]?.type, MessageType.OK);
      assert.equal(p.serverSent[0]?.streamId, p.deviceSent[0]?.streamId);
    });
  }

  it('CONNECT bytes are the reference bytes in both versions (stream id aside)', async () => {
    const vectors = loadFrameVectors();
    for (const version of [1, 0] as const) {
      const [deviceTransport, serverTransport] = MemoryTransport.pair();
      const writes = tapBytes(deviceTransport);
      const server = new Session({ role: 'server', transport: serverTransport, authenticate: () => true });
      server.start();
      const device = new Session({ role: 'client', transport: deviceTransport, version });
      const creds =
        version === 1
          ? { username: 'user1', deviceId: 'sensor1', credential: 'secret123' }
          : { username: 'username', deviceId: 'device', credential: 'password' };
      await device.connect(creds);
      const v = vectors.find((x) => x.pv === version && x.name === 'connect');
      assert.ok(v);
      const sid = decodeMessage(writes[0] as Uint8Array).streamId as number;
      const expected = encodeFrame(
        v.typeCode,
        v.fields.map((f) => ({
          id: f.id,
          wireType: f.wireType as 0 | 1 | 2,
          value: f.id === 1 ? sid : f.value,
        })),
      );
      assert.equal(bytesToHex(writes[0] as Uint8Array), bytesToHex(expected));
      device.close();
    }
  });

  it('bad credentials: typed AuthError with the reason, then both sides close', async () => {
    const p = makePair();
    await assert.rejects(p.device.connect({ username: 'u', deviceId: 'd', credential: 'wrong' }), (err) => {
      assert.ok(err instanceof AuthError);
      assert.equal(err.reason, 2);
      return true;
    });
    await turns();
    assert.equal(p.device.state, 'closed');
    assert.equal(p.server.state, 'closed');
    assert.deepEqual(plain(p.serverSent[0] as DecodedMessage), {
      type: MessageType.ERROR,
      streamId: p.deviceSent[0]?.streamId,
      parameters: 2,
    });
  });

  it('an authenticator that throws refuses the login and the server stays up', async () => {
    const p = makePair(
      {},
      {
        authenticate: () => {
          throw new Error('db down');
        },
      },
    );
    await assert.rejects(p.device.connect({ username: 'u', deviceId: 'd', credential: 'x' }), AuthError);
  });

  it('async authenticator; a keep-alive parameter is honoured and an invalid one refused', async () => {
    const p = await connected({ keepAliveSeconds: 30 }, { authenticate: async () => true });
    assert.equal(p.server.connectInfo?.keepAliveSeconds, 30);
    const bad = makePair({ keepAliveSeconds: 5000 }, { authenticate: () => true });
    await assert.rejects(bad.device.connect({ username: 'u', deviceId: 'd', credential: 'x' }), (e) => {
      assert.ok(e instanceof AuthError);
      assert.equal(e.reason, 3);
      return true;
    });
  });

  it('server: anything before CONNECT closes the connection', async () => {
    const [a, b] = MemoryTransport.pair();
    let closed: SessionError | undefined;
    const server = new Session({
      role: 'server',
      transport: b,
      authenticate: () => true,
      onClose: (e) => (closed = e),
    });
    server.start();
    a.attach({ onData: () => {}, onClose: () => {} });
    a.write(hexToBytes('060f0842228b74656d7065726174757265')); // RUN
    await turns();
    assert.equal(server.state, 'closed');
    assert.equal(closed?.code, SessionErrorCode.PROTOCOL);
  });

  it('server: garbage bytes close the connection with a reason', async () => {
    const [a, b] = MemoryTransport.pair();
    let closed: SessionError | undefined;
    const server = new Session({
      role: 'server',
      transport: b,
      authenticate: () => true,
      onClose: (e) => (closed = e),
    });
    server.start();
    a.attach({ onData: () => {}, onClose: () => {} });
    a.write(hexToBytes('0000ffffffffff'));
    await turns();
    assert.equal(closed?.code, SessionErrorCode.PROTOCOL);
  });

  it('server: no CONNECT within the connect timeout closes', async () => {
    const clock = new ManualClock();
    const [, b] = MemoryTransport.pair();
    let closed: SessionError | undefined;
    const server = new Session({
      role: 'server',
      transport: b,
      clock,
      connectTimeoutMs: 10_000,
      authenticate: () => true,
      onClose: (e) => (closed = e),
    });
    server.start();
    clock.advance(9_999);
    assert.equal(server.state, 'connecting');
    clock.advance(1);
    assert.equal(closed?.code, SessionErrorCode.PROTOCOL);
  });

  it('a second CONNECT on an open session is answered ERROR and changes nothing', async () => {
    const p = await connected();
    const answer = p.device.request({ type: MessageType.CONNECT, payload: ['a', 'b', 'secret'] });
    await assert.rejects(answer, RequestError);
    assert.equal(p.server.state, 'open');
    assert.equal(p.logins.length, 1);
  });
});

describe('session: RUN and DESCRIBE', () => {
  for (const version of [1, 0] as const) {
    it(`pv${version}: every resource kind, path patterns, errors`, async () => {
      const p = await connected({ version, resources: sensorResources() });
      const s = p.server;
      assert.deepEqual(await s.run('temperature'), { celsius: 22.5, humidity: 60 });
      assert.equal(await s.run('led', { state: true }), undefined);
      assert.equal(await s.run('ledState'), true);
      assert.deepEqual(await s.run('sum', { a: 2, b: 3 }), { result: 5 });
      assert.equal(await s.run('gpio/7'), 70);
      assert.equal(await s.run(['gpio', '8']), 80, 'path as an array of segments');
      assert.equal(await s.run('fs/var/log/syslog'), 'var/log/syslog');
      assert.equal(await s.run('reboot'), undefined);
      assert.equal(await s.run('slow'), 'late');
      assert.deepEqual(await s.run('binary'), new Uint8Array([1, 2, 3]));
      await assert.rejects(s.run('nope'), (e) => {
        assert.ok(e instanceof RequestError);
        assert.equal(e.returnCode, undefined);
        assert.equal(e.payload, undefined);
        return true;
      });
      await assert.rejects(s.run('broken'), (e) => {
        assert.ok(e instanceof RequestError);
        assert.equal(e.returnCode, 503);
        assert.deepEqual(e.payload, { error: 'sensor offline' });
        return true;
      });
      await assert.rejects(s.run('crash'), (e) => e instanceof RequestError && e.message.includes('boom'));
      await assert.rejects(s.run(43317), RequestError, 'numeric ids of device resources are not resolved');
    });

    it(`pv${version}: DESCRIBE all and one`, async () => {
      const p = await connected({ version, resources: sensorResources() });
      const api = (await p.server.describe()) as Record<string, { fn: number }>;
      assert.deepEqual(api.temperature, { fn: ResourceKind.OUTPUT });
      assert.deepEqual(api.led, { fn: ResourceKind.INPUT });
      assert.deepEqual(api.sum, { fn: ResourceKind.INPUT_OUTPUT });
      assert.deepEqual(api.reboot, { fn: ResourceKind.RUN });
      assert.deepEqual(api['gpio/:pin'], { fn: ResourceKind.OUTPUT });
      assert.deepEqual(await p.server.describe('temperature'), { out: { celsius: 22.5, humidity: 60 } });
      await p.server.run('sum', { a: 1, b: 1 });
      assert.deepEqual(await p.server.describe('sum'), { in: { a: 1, b: 1 } });
      await assert.rejects(p.server.describe('nope'), RequestError);
      if (version === 0) {
        // Legacy: the DESCRIBE resource travels in field 3.
        const d = p.serverSent.find((m) => m.type === MessageType.DESCRIBE && m.payload === 'temperature');
        assert.ok(d, 'DESCRIBE with the resource in field 3');
      }
    });
  }

  it('RUN without a stream id runs the resource and sends no answer', async () => {
    let got: PsonValue | undefined;
    const r = new ResourceRegistry();
    r.add('led', {
      input: (v) => {
        got = v ?? null;
      },
    });
    const p = await connected({ resources: r });
    const before = p.deviceSent.length;
    p.server.runNoReply('led', { state: true });
    await turns();
    assert.deepEqual(got, { state: true });
    assert.equal(p.deviceSent.length, before, 'no OK for an id-less RUN');
  });

  it('an OK/ERROR for an unknown or zero stream id is ignored', async () => {
    const warnings: string[] = [];
    const p = await connected({}, { onWarning: (m) => warnings.push(m) });
    p.deviceTransport.write(hexToBytes('01020800')); // OK sid 0 (what references send to id-less RUN)
    p.deviceTransport.write(hexToBytes('01030881')); // malformed: body ends inside varint
    p.deviceTransport.write(hexToBytes('0103089d1f')); // OK for sid 3997 nobody waits for
    await turns();
    assert.equal(p.server.state, 'open');
    assert.ok(warnings.some((w) => w.includes('unknown stream id')));
  });

  it('a return code set by the handler travels in OK PARAMETERS', async () => {
    const r = new ResourceRegistry();
    r.add('create', {
      input: true,
      output: (_v, call) => {
        call.returnCode = 201;
        return 'made';
      },
    });
    const p = await connected({ resources: r });
    const reply = await p.server.request({ type: MessageType.RUN, resource: 'create', payload: 1 });
    assert.deepEqual(reply, { payload: 'made', parameters: 201 });
  });

  it('an output too large for one frame answers ERROR instead of breaking the stream', async () => {
    const r = new ResourceRegistry();
    r.add('huge', { output: () => new Uint8Array(300 * 1024) });
    r.add('ok', { output: () => 1 });
    const p = await connected({ resources: r });
    await assert.rejects(p.server.run('huge'), (e) => e instanceof RequestError && /exceeds/.test(e.message));
    assert.equal(await p.server.run('ok'), 1);
  });
});

describe('session: requests', () => {
  it('stream ids are unique among calls in flight and never 0', async () => {
    const r = new ResourceRegistry();
    const resolvers: Array<() => void> = [];
    r.add('wait', { output: () => new Promise<number>((res) => resolvers.push(() => res(1))) });
    const p = await connected({ resources: r });
    const calls = Array.from({ length: 300 }, () => p.server.run('wait'));
    await turns();
    const ids = p.serverSent.filter((m) => m.type === MessageType.RUN).map((m) => m.streamId);
    assert.equal(new Set(ids).size, 300);
    assert.ok(ids.every((id) => id !== undefined && id > 0 && id <= 65535));
    for (const r of resolvers) r();
    assert.deepEqual(await Promise.all(calls), new Array(300).fill(1));
  });

  it('per-call timeout on the injected clock, no sleeping', async () => {
    const r = new ResourceRegistry();
    r.add('never', { output: () => new Promise(() => {}) });
    const p = await connected({ resources: r });
    const call = p.server.run('never', undefined, { timeoutMs: 5000 });
    await turns();
    p.clock.advance(4999);
    await turns();
    p.clock.advance(1);
    await assert.rejects(call, TimeoutError);
    assert.equal(p.server.pendingRequests, 0);
  });

  it('AbortSignal cancels a call', async () => {
    const r = new ResourceRegistry();
    r.add('never', { output: () => new Promise(() => {}) });
    const p = await connected({ resources: r });
    const ac = new AbortController();
    const call = p.server.run('never', undefined, { signal: ac.signal });
    ac.abort();
    await assert.rejects(call, { code: SessionErrorCode.ABORTED });
    await assert.rejects(p.server.run('never', undefined, { signal: ac.signal }), {
      code: SessionErrorCode.ABORTED,
    });
  });

  it('a pending-call limit is enforced', async () => {
    const r = new ResourceRegistry();
    r.add('never', { output: () => new Promise(() => {}) });
    const p = await connected({ resources: r }, { maxPendingRequests: 2 });
    void p.server.run('never').catch(() => {});
    void p.server.run('never').catch(() => {});
    await assert.rejects(p.server.run('never'), { code: SessionErrorCode.TOO_MANY_REQUESTS });
  });

  it('closing rejects everything pending with ClosedError', async () => {
    const r = new ResourceRegistry();
    r.add('never', { output: () => new Promise(() => {}) });
    const p = await connected({ resources: r });
    const call = p.server.run('never');
    p.device.close();
    await assert.rejects(call, ClosedError);
    await turns();
    assert.equal(p.server.state, 'closed');
    assert.equal(p.closed.device, undefined, 'a requested close has no error');
  });
});

describe('session: streams', () => {
  it('interval stream: OK, first value at once, then one per interval; STOP ends it', async () => {
    let n = 0;
    const r = new ResourceRegistry();
    r.add('counter', { output: () => ++n });
    const p = await connected({ resources: r });
    const got: PsonValue[] = [];
    const stream = await p.server.openStream(
      'counter',
      { intervalMs: 1000 },
      { onData: (v) => got.push(v ?? null) },
    );
    await turns();
    assert.deepEqual(got, [1], 'first value right after OK');
    p.clock.advance(1000);
    await turns();
    p.clock.advance(1000);
    await turns();
    assert.deepEqual(got, [1, 2, 3]);
    await stream.stop();
    p.clock.advance(5000);
    await turns();
    assert.deepEqual(got, [1, 2, 3]);
    assert.equal(p.device.openStreams, 0);
  });

  it('event stream: device.stream() sends only when someone listens', async () => {
    let reads = 0;
    const r = new ResourceRegistry();
    r.add('button', {
      output: () => {
        reads++;
        return 'pressed';
      },
      streamEcho: false,
    });
    const p = await connected({ resources: r });
    assert.equal(p.device.stream('button'), 0);
    assert.equal(reads, 0, 'output not even computed without listeners');
    const got: PsonValue[] = [];
    await p.server.openStream('button', {}, { onData: (v) => got.push(v ?? null) });
    await turns();
    assert.deepEqual(got, []);
    assert.equal(await p.device.stream('button'), 1);
    assert.equal(p.device.stream('button', 'explicit'), 1);
    await turns();
    assert.deepEqual(got, ['pressed', 'explicit']);
  });

  it('STREAM_DATA to a served stream runs its input and echoes the new state', async () => {
    let level = 0;
    const r = new ResourceRegistry();
    r.add('dimmer', {
      input: (v) => {
        level = v as number;
      },
      output: () => level,
    });
    const p = await connected({ resources: r });
    const got: PsonValue[] = [];
    const stream = await p.server.openStream('dimmer', {}, { onData: (v) => got.push(v ?? null) });
    stream.send(40);
    await turns();
    assert.equal(level, 40);
    assert.deepEqual(got, [0, 40]);
  });

  it('many concurrent streams, and the device stopping one itself', async () => {
    const r = new ResourceRegistry();
    r.add('s/:i', { output: (_v, c) => Number(c.params.i) });
    const p = await connected({ resources: r });
    const got = new Map<number, PsonValue[]>();
    let ended = 0;
    const streams = await Promise.all(
      Array.from({ length: 50 }, (_, i) =>
        p.server.openStream(
          `s/${i}`,
          { intervalMs: 100 },
          {
            onData: (v) => got.set(i, [...(got.get(i) ?? []), v ?? null]),
            onClose: () => void ended++,
          },
        ),
      ),
    );
    await turns();
    p.clock.advance(100);
    await turns();
    for (let i = 0; i < 50; i++) assert.deepEqual(got.get(i), [i, i]);
    assert.equal(new Set(streams.map((s) => s.streamId)).size, 50);
    p.device.close();
    await turns();
    assert.equal(ended, 50);
  });

  it('pv0: START_STREAM carries the resource in field 3 and data carries the output marker', async () => {
    const r = new ResourceRegistry();
    r.add('temperature', { output: () => 23.5 });
    const p = await connected({ version: 0, resources: r });
    const got: PsonValue[] = [];
    await p.server.openStream('temperature', { intervalMs: 5000 }, { onData: (v) => got.push(v ?? null) });
    await turns();
    const start = p.serverSent.find((m) => m.type === MessageType.START_STREAM);
    assert.equal(start?.payload, 'temperature');
    assert.equal(start?.resource, undefined);
    assert.deepEqual(start?.parameters, { interval: 5000 });
    const data = p.deviceSent.find((m) => m.type === MessageType.STREAM_DATA);
    assert.equal(data?.parameters, 2);
    assert.deepEqual(got, [23.5]);
  });

  it('the device can end a stream the server opened', async () => {
    const r = new ResourceRegistry();
    r.add('terminal/:session', { output: () => 'ready' });
    const p = await connected({ resources: r });
    let ended = false;
    await p.server.openStream(
      'terminal/1',
      {},
      {
        onData: () => {},
        onClose: () => {
          ended = true;
        },
      },
    );
    assert.equal(p.device.endStream('terminal/:session'), 1);
    await turns();
    assert.equal(ended, true);
    assert.equal(p.device.openStreams, 0);
    assert.equal(p.server.openStreams, 0);
  });

  it('STREAM_DATA for an unknown stream and STOP_STREAM for an unknown id are harmless', async () => {
    const p = await connected();
    const stop = p.server.request({ type: MessageType.STOP_STREAM });
    p.serverTransport.write(hexToBytes('0a0508e9071a01')); // STREAM_DATA sid 1001
    await assert.rejects(stop, (e) => e instanceof RequestError && e.returnCode === 404);
    assert.equal(p.device.state, 'open');
  });

  it('a START_STREAM with a 1 ms interval is clamped (no busy loop)', async () => {
    let n = 0;
    const r = new ResourceRegistry();
    r.add('c', { output: () => ++n });
    const p = await connected({ resources: r });
    await p.server.openStream('c', { intervalMs: 1 }, { onData: () => {} });
    await turns();
    p.clock.advance(100);
    await turns(20);
    assert.ok(n <= 12, `sampled ${n} times in 100 ms`);
  });
});

describe('session: server resources and subscriptions', () => {
  it('device → server calls in both layouts and versions', async () => {
    for (const version of [1, 0] as const) {
      const calls: unknown[] = [];
      const p = await connected(
        { version },
        {
          onServerCall: (call) => {
            calls.push(call);
            if (call.code === 1) return { threshold: 42 };
            if (call.code === 7) throw new ResourceError(404, 'no such lock');
            return undefined;
          },
        },
      );
      assert.deepEqual(await p.device.callServer(1, 'config'), { threshold: 42 });
      p.device.callServerNoReply(5, 'sensor_data', { t: 1 });
      await assert.rejects(
        p.device.callServer(7, 'sync1', { lock: 'x' }),
        (e) => e instanceof RequestError && e.returnCode === 404,
      );
      // The embedded layout: PARAMETERS = code, RESOURCE = identifier.
      const embedded = p.device.request({ type: MessageType.RUN, parameters: 5, resource: 'b2', payload: 3 });
      assert.deepEqual(await embedded, { payload: undefined, parameters: undefined });
      await turns();
      assert.deepEqual(calls, [
        { code: 1, identifier: 'config', data: undefined, wantsReply: true },
        { code: 5, identifier: 'sensor_data', data: { t: 1 }, wantsReply: false },
        { code: 7, identifier: 'sync1', data: { lock: 'x' }, wantsReply: true },
        { code: 5, identifier: 'b2', data: 3, wantsReply: true },
      ]);
      const fireAndForget = p.deviceSent.find((m) => m.type === MessageType.RUN && m.streamId === undefined);
      assert.ok(fireAndForget, 'fire-and-forget RUN carries no stream id');
    }
  });

  it('server calls still being answered past the limit stop reading from the peer until half are done', async () => {
    const waiting: Array<() => void> = [];
    let taken = 0;
    const p = await connected(
      {},
      {
        maxServerCallsInFlight: 8,
        onServerCall: () => {
          taken++;
          return new Promise<undefined>((resolve) => waiting.push(() => resolve(undefined)));
        },
      },
    );
    // Fire-and-forget writes, one per turn (one chunk each): the server must stop at 8.
    for (let i = 0; i < 20; i++) {
      p.device.callServerNoReply(5, 'b', { i });
      await turns(2);
    }
    assert.equal(waiting.length, 8, 'calls taken while 8 were unanswered');
    // 3 answered: 5 still in flight, above half (4): still paused.
    for (const done of waiting.splice(0, 3)) done();
    await turns();
    assert.equal(waiting.length, 5);
    // One more: 4 in flight = half, reading resumes and the queued calls arrive (up to the limit again).
    waiting.shift()?.();
    await turns(10);
    assert.equal(waiting.length, 8);
    while (waiting.length > 0) {
      for (const done of waiting.splice(0)) done();
      await turns(10);
    }
    assert.equal(taken, 20, 'every call was served in the end');
    assert.equal(p.server.state, 'open', 'the connection stays up');
  });

  it('subscriptions: OK carries the current value, events flow, data flows back, STOP ends it', async () => {
    for (const version of [1, 0] as const) {
      let send: ((v: PsonValue) => void) | undefined;
      const published: PsonValue[] = [];
      let closedSubs = 0;
      const p = await connected(
        { version },
        {
          onSubscribe: (sub) => {
            const params = sub.parameters as { event: string };
            if (params.event === 'nope') throw new ResourceError(400, 'unknown event');
            send = sub.send;
            return {
              initial: 'current',
              onData: (v) => void published.push(v ?? null),
              onClose: () => void closedSubs++,
            };
          },
        },
      );
      const got: PsonValue[] = [];
      const sub = await p.device.subscribe(
        { event: 'device_property_update', filters: { property: 'config' }, current: true },
        { onData: (v) => got.push(v ?? null) },
      );
      send?.({ threshold: 1 });
      sub.send('published');
      await turns();
      assert.deepEqual(got, ['current', { threshold: 1 }]);
      assert.deepEqual(published, ['published']);
      const start = p.deviceSent.find((m) => m.type === MessageType.START_STREAM) as Message;
      if (version === 1) assert.equal(start.resource, 8);
      else assert.equal(start.payload, 8, 'pv0 puts code 8 in field 3');
      await sub.stop();
      assert.equal(closedSubs, 1);
      await assert.rejects(p.device.subscribe({ event: 'nope' }, { onData: () => {} }), RequestError);
    }
  });
});

describe('session: keep-alive and limits', () => {
  it('client sends KEEP_ALIVE every ka seconds; the server echoes at once', async () => {
    const p = await connected({ keepAliveSeconds: 60 });
    p.clock.advance(60_000);
    await turns();
    assert.equal(p.deviceSent.filter((m) => m.type === MessageType.KEEP_ALIVE).length, 1);
    assert.equal(p.serverSent.filter((m) => m.type === MessageType.KEEP_ALIVE).length, 1);
    p.clock.advance(60_000);
    await turns();
    assert.equal(p.deviceSent.filter((m) => m.type === MessageType.KEEP_ALIVE).length, 2);
    assert.equal(p.server.state, 'open');
  });

  it('a silent peer is closed after ka × 1.15 plus the margin', async () => {
    const p = await connected({ keepAliveSeconds: 60 });
    p.deviceTransport.pause(); // the device hears nothing; the server hears nothing either:
    p.serverTransport.pause();
    p.clock.advance(60 * 1150 + 5000 - 1);
    assert.equal(p.server.state, 'open');
    p.clock.advance(60_000);
    assert.equal(p.server.state, 'closed');
    assert.equal(p.closed.server?.code, SessionErrorCode.KEEPALIVE_TIMEOUT);
  });

  it('a peer that stops reading is closed as a slow reader, memory bounded', async () => {
    const r = new ResourceRegistry();
    r.add('blob', { output: () => new Uint8Array(64 * 1024) });
    const p = await connected({ resources: r, maxOutgoingBytes: 512 * 1024 });
    const stream = await p.server.openStream('blob', { intervalMs: 100 }, { onData: () => {} });
    assert.ok(stream);
    p.serverTransport.pause(); // from now on the server does not read what the device sends
    for (let i = 0; i < 20 && p.device.state === 'open'; i++) {
      p.clock.advance(100);
      await turns();
    }
    assert.equal(p.device.state, 'closed');
    assert.equal(p.closed.device?.code, SessionErrorCode.SLOW_PEER);
  });

  it('malformed frames: ERROR for a readable request, closed after too many', async () => {
    const p = await connected({}, { maxInvalidFrames: 3 });
    const bad = hexToBytes('060408091baa'); // RUN sid 9, unknown wire type
    p.deviceTransport.write(bad);
    await turns();
    const err = p.serverSent.find((m) => m.type === MessageType.ERROR && m.streamId === 9);
    assert.ok(err, 'answered ERROR');
    assert.equal(err?.parameters, 400);
    for (let i = 0; i < 3; i++) p.deviceTransport.write(bad);
    await turns();
    assert.equal(p.server.state, 'closed');
    assert.equal(p.closed.server?.code, SessionErrorCode.PROTOCOL);
  });

  it('an oversized frame from the peer closes the connection before it is buffered', async () => {
    const p = await connected({}, { maxFrameSize: 1024 });
    // STREAM_DATA announcing 256 KiB + 1, written past the test's own frame tap.
    MemoryTransport.prototype.write.call(p.deviceTransport, hexToBytes('0a818010'));
    await turns();
    assert.equal(p.server.state, 'closed');
    assert.equal(p.closed.server?.code, SessionErrorCode.PROTOCOL);
    assert.match(p.closed.server?.message ?? '', /exceeds the limit/);
  });

  it('DISCONNECT from the peer closes the session', async () => {
    const p = await connected();
    p.server.close();
    await turns();
    assert.equal(p.device.state, 'closed');
    assert.ok(p.serverSent.some((m) => m.type === MessageType.DISCONNECT));
  });
});
