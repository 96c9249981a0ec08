import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  type DecodedMessage,
  FrameDecoder,
  ManualClock,
  MemoryTransport,
  MessageType,
  ResourceRegistry,
  Session,
  type Transport,
} from '@iotmp/protocol';
import type { PsonValue } from '@iotmp/pson';
import {
  SharedStreams,
  type StreamFailure,
  type StreamSource,
  type StreamStop,
  type StreamSubscription,
} from '../src/streams/shared-streams.js';

/** Runs event-loop turns until `cond` holds (bounded: fails after `turns`). */
async function until(cond: () => boolean, what: string, turns = 5000): Promise<void> {
  for (let i = 0; i < turns; i++) {
    if (cond()) return;
    await new Promise((r) => setImmediate(r));
  }
  assert.fail(`timed out waiting for ${what}`);
}

/** Lets every queued microtask/delivery run (the transports are in-memory). */
async function settle(): Promise<void> {
  for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
}

/** A transport that also decodes what passes through it to the device. */
function tap(inner: Transport, seen: DecodedMessage[]): Transport {
  const decoder = new FrameDecoder({ onMessage: (m) => seen.push(m) });
  return {
    write: (bytes) => inner.write(bytes),
    get bufferedAmount() {
      return inner.bufferedAmount;
    },
    close: () => inner.close(),
    destroy: () => inner.destroy(),
    attach: (handler) =>
      inner.attach({
        onData: (chunk) => {
          decoder.push(chunk);
          handler.onData(chunk);
        },
        onClose: (err) => handler.onClose(err),
      }),
    remoteAddress: inner.remoteAddress,
  };
}

type Change = { username: string; device: string; connected: boolean; reason?: string };

class FakeHub implements StreamSource {
  live: { session: Session } | undefined;
  private readonly listeners = new Set<(c: Change) => void>();
  get(username: string, device: string) {
    return username === 'u' && device === 'd' ? this.live : undefined;
  }
  onStateChange(listener: (c: Change) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
  emit(c: Change): void {
    for (const l of this.listeners) l(c);
  }
}

/** A device (client session) logged in to a server session over an in-memory pair. */
class Rig {
  readonly deviceClock = new ManualClock();
  readonly resources = new ResourceRegistry();
  /** Messages the device received. */
  readonly received: DecodedMessage[] = [];
  device!: Session;
  server!: Session;
  samples = 0;
  inputs: PsonValue[] = [];
  state: PsonValue = 0;

  constructor() {
    this.resources.add('temp', { output: () => this.samples++ });
    this.resources.add('led', {
      input: (v) => {
        this.inputs.push(v as PsonValue);
        this.state = v as PsonValue;
      },
      output: () => this.state,
    });
  }

  /** Creates the sessions; `login()` completes the CONNECT. */
  prepare(): Session {
    const [a, b] = MemoryTransport.pair();
    this.server = new Session({
      role: 'server',
      transport: b,
      clock: this.deviceClock,
      authenticate: () => true,
    });
    this.device = new Session({
      role: 'client',
      transport: tap(a, this.received),
      clock: this.deviceClock,
      resources: this.resources,
    });
    this.server.start();
    return this.server;
  }

  async login(): Promise<void> {
    await this.device.connect({ username: 'u', deviceId: 'd', credential: 'c' });
    await until(() => this.server.state === 'open', 'server session open');
  }

  starts(): Array<PsonValue | undefined> {
    return this.received.filter((m) => m.type === MessageType.START_STREAM).map((m) => m.parameters);
  }

  stops(): number {
    return this.received.filter((m) => m.type === MessageType.STOP_STREAM).length;
  }

  /** Streams the device serves right now. */
  get deviceStreams(): number {
    return this.device.openStreams;
  }
}

interface Recorder {
  data: Array<{ value: PsonValue | undefined; ts: number }>;
  starts: number;
  stops: StreamStop[];
  errors: StreamFailure[];
  sub: StreamSubscription;
}

function record(
  streams: SharedStreams,
  resource: string,
  intervalMs: number | undefined,
  username = 'u',
): Recorder {
  const r = { data: [], starts: 0, stops: [], errors: [] } as unknown as Recorder;
  r.sub = streams.subscribe(username, 'd', resource, intervalMs, {
    onStart: () => r.starts++,
    onData: (value, ts) => r.data.push({ value, ts }),
    onStop: (stop) => r.stops.push(stop),
    onError: (failure) => r.errors.push(failure),
  });
  return r;
}

async function setup() {
  const rig = new Rig();
  const hub = new FakeHub();
  hub.live = { session: rig.prepare() };
  await rig.login();
  const clock = new ManualClock(1_000_000);
  const streams = new SharedStreams({ source: hub, clock });
  return { rig, hub, clock, streams };
}

describe('SharedStreams', () => {
  test('one device stream at the GCD; each subscriber at its own interval, robust to jitter', async () => {
    const { rig, clock, streams } = await setup();
    const a = record(streams, 'temp', 4000);
    await until(() => a.data.length === 1, 'first sample for A');
    assert.equal(a.starts, 1);
    assert.deepEqual(rig.starts(), [{ interval: 4000 }]);

    const b = record(streams, 'temp', 6000);
    await until(() => b.data.length === 1, 'first sample for B');
    // Re-opened at gcd(4000, 6000): STOP_STREAM of the old stream, START_STREAM at 2000 ms.
    assert.deepEqual(rig.starts(), [{ interval: 4000 }, { interval: 2000 }]);
    assert.equal(rig.stops(), 1);
    assert.equal(rig.deviceStreams, 1, 'one device stream shared by both');
    assert.deepEqual(streams.info('u', 'd', 'temp'), {
      subscribers: 2,
      deviceIntervalMs: 2000,
      state: 'open',
    });
    assert.deepEqual(
      a.data.map((d) => d.value),
      [0],
    );
    assert.deepEqual(
      b.data.map((d) => d.value),
      [1],
    );

    // The device samples every 2000 ms (device clock); the server sees them with jitter.
    const jitter = [350, -400, 120, -250, 400, -300, 0, 380, -390, 200, -150, 90];
    let delivered = rig.samples;
    let offset = 0;
    for (const j of jitter) {
      clock.advance(2000 + j - offset);
      offset = j;
      rig.deviceClock.advance(2000);
      await until(() => rig.samples > delivered, 'device sample');
      delivered = rig.samples;
      await settle();
    }
    // Samples 2…13 at nominal 2 s steps: A (4 s) gets every second, B (6 s) every third.
    assert.deepEqual(
      a.data.map((d) => d.value),
      [0, 3, 5, 7, 9, 11, 13],
    );
    assert.deepEqual(
      b.data.map((d) => d.value),
      [1, 4, 7, 10, 13],
    );
    assert.equal(rig.starts().length, 2, 'no re-open while the intervals stay');

    // A subscriber without interval gets every sample; the device interval does not change.
    const c = record(streams, 'temp', undefined);
    await until(() => c.starts === 1, 'start for C');
    for (let i = 0; i < 3; i++) {
      clock.advance(2000);
      rig.deviceClock.advance(2000);
      await until(() => rig.samples > delivered, 'device sample');
      delivered = rig.samples;
      await settle();
    }
    assert.deepEqual(
      c.data.map((d) => d.value),
      [14, 15, 16],
    );
    assert.equal(rig.starts().length, 2);

    a.sub.close();
    b.sub.close();
    await settle();
    // Only the event subscriber is left: re-opened without an interval (device events).
    assert.deepEqual(rig.starts().at(-1), undefined);
    assert.equal(rig.starts().length, 3);
    c.sub.close();
    await until(() => rig.deviceStreams === 0, 'device stream stopped');
    assert.equal(streams.size, 0);
    assert.equal(rig.stops(), 3);
    streams.close();
  });

  test('jittered samples keep each subscriber on its nominal schedule (no drift)', async () => {
    const { rig, clock, streams } = await setup();
    const a = record(streams, 'temp', 10_000);
    const b = record(streams, 'temp', 5000);
    await until(() => a.data.length === 1 && b.data.length === 1, 'first samples');
    assert.deepEqual(rig.starts().at(-1), { interval: 5000 });
    // 40 samples, each seen up to ±1.2 s (< a quarter of 5 s) off its nominal time.
    let delivered = rig.samples;
    let offset = 0;
    for (let i = 1; i <= 40; i++) {
      const j = Math.round(Math.sin(i * 2.3) * 1200);
      clock.advance(5000 + j - offset);
      offset = j;
      rig.deviceClock.advance(5000);
      await until(() => rig.samples > delivered, 'device sample');
      delivered = rig.samples;
      await settle();
    }
    assert.equal(b.data.length, 41, 'B (5 s) gets every sample');
    assert.equal(a.data.length, 21, 'A (10 s) gets every second sample');
    // Both joined together: one stream at 5 s from the start, samples 0 (echo), 1, 2, …
    assert.equal(rig.starts().length, 1);
    assert.deepEqual(
      a.data.map((d) => d.value),
      Array.from({ length: 21 }, (_, i) => 2 * i),
    );
    streams.close();
    await until(() => rig.deviceStreams === 0, 'device stream stopped');
  });

  test('event subscribers get device pushes; interval changes re-open at the new GCD', async () => {
    const { rig, streams } = await setup();
    const ev = record(streams, 'temp', 0);
    await until(() => ev.data.length === 1, 'echo');
    assert.deepEqual(rig.starts(), [undefined], 'no interval: the device streams its own events');
    rig.device.stream('temp', 'pushed-1');
    rig.device.stream('temp', 'pushed-2');
    await until(() => ev.data.length === 3, 'pushed events');
    assert.deepEqual(
      ev.data.slice(1).map((d) => d.value),
      ['pushed-1', 'pushed-2'],
    );

    const a = record(streams, 'temp', 4000);
    const b = record(streams, 'temp', 6000);
    await until(() => rig.starts().length >= 2 && streams.info('u', 'd', 'temp')?.state === 'open', 'open');
    await settle();
    assert.deepEqual(rig.starts().at(-1), { interval: 2000 });
    b.sub.setInterval(8000);
    await settle();
    assert.deepEqual(rig.starts().at(-1), { interval: 4000 });
    const n = rig.starts().length;
    b.sub.close();
    await settle();
    assert.equal(rig.starts().length, n, 'GCD unchanged (4000): no re-open');
    assert.equal(rig.deviceStreams, 1);
    a.sub.close();
    ev.sub.close();
    await until(() => rig.deviceStreams === 0, 'stopped');
    assert.equal(streams.size, 0);
    streams.close();
  });

  test('device leaves: stop with a reason; returns: start again (only after its login OK), data resumes', async () => {
    const { rig, hub, clock, streams } = await setup();
    const a = record(streams, 'temp', 4000);
    await until(() => a.data.length === 1, 'first sample');
    assert.equal(a.starts, 1);

    rig.device.close();
    await until(() => rig.server.state === 'closed', 'server session closed');
    hub.live = undefined;
    hub.emit({ username: 'u', device: 'd', connected: false, reason: 'connection closed by peer' });
    await settle();
    assert.equal(a.stops.length, 1, 'exactly one stop signal');
    assert.equal(a.stops[0]?.code, 'device_offline');
    assert.match(a.stops[0]?.message ?? '', /disconnected/);
    assert.equal(a.sub.started, false);

    // Someone subscribing while the device is away is told so at once.
    const late = record(streams, 'temp', 2000);
    await settle();
    assert.equal(late.stops.length, 1);
    assert.equal(late.starts, 0);

    // The device returns. The hub reports the login before the session's OK went out:
    // nothing may be sent to the device before that OK.
    const rig2 = new Rig();
    rig2.samples = 100;
    hub.live = { session: rig2.prepare() };
    hub.emit({ username: 'u', device: 'd', connected: true });
    await settle();
    clock.advance(10); // login poll: the session is not open yet
    await settle();
    assert.equal(rig2.received.length, 0);
    await rig2.login();
    clock.advance(10);
    await until(() => a.starts === 2 && late.starts === 1, 'start signals after the return');
    await until(() => a.data.length === 2 && late.data.length === 1, 'data after the return');
    assert.equal(rig2.received[0]?.type, MessageType.OK, 'the OK of CONNECT comes first');
    assert.deepEqual(rig2.starts(), [{ interval: 2000 }]);
    assert.equal(a.data[1]?.value, 100);
    streams.close();
    await until(() => rig2.deviceStreams === 0, 'stopped');
  });

  test('a new login replacing the session moves the stream to it', async () => {
    const { rig, hub, clock, streams } = await setup();
    const a = record(streams, 'temp', 0);
    await until(() => a.data.length === 1, 'first sample');
    const rig2 = new Rig();
    rig2.samples = 50;
    hub.live = { session: rig2.prepare() };
    await rig2.login();
    rig.server.close(); // the hub closes the replaced session
    await settle();
    clock.advance(10);
    await until(() => a.data.length === 2, 'data from the new session');
    assert.equal(a.data[1]?.value, 50);
    assert.equal(a.stops.length, 1);
    assert.equal(a.starts, 2);
    streams.close();
  });

  test('client data goes to the device as STREAM_DATA and its new state is streamed back', async () => {
    const { rig, streams } = await setup();
    const a = record(streams, 'led', 0);
    await until(() => a.data.length === 1, 'echo');
    a.sub.send(true);
    await until(() => a.data.length === 2, 'echo of the new state');
    assert.deepEqual(rig.inputs, [true]);
    assert.equal(a.data[1]?.value, true);
    const data = rig.received.filter((m) => m.type === MessageType.STREAM_DATA);
    assert.deepEqual(
      data.map((m) => m.payload),
      [true],
    );
    a.sub.close();
    assert.throws(() => a.sub.send(1), /not open/);
    streams.close();
  });

  test('an unknown resource fails every subscriber and leaves nothing behind', async () => {
    const { rig, streams } = await setup();
    const a = record(streams, 'nope', 1000);
    const b = record(streams, 'nope', 0);
    await until(() => a.errors.length === 1 && b.errors.length === 1, 'errors');
    assert.equal(a.errors[0]?.code, 'resource_not_found');
    assert.equal(a.sub.active, false);
    assert.equal(streams.size, 0);
    assert.equal(rig.deviceStreams, 0);
    streams.close();
  });

  test('the device ending the stream stops subscribers; a new subscriber re-opens it', async () => {
    const { rig, streams } = await setup();
    const a = record(streams, 'temp', 0);
    await until(() => a.data.length === 1, 'echo');
    rig.device.endStream('temp');
    await until(() => a.stops.length === 1, 'stop');
    assert.equal(a.stops[0]?.code, 'stream_ended');
    const b = record(streams, 'temp', 0);
    await until(() => a.starts === 2 && b.starts === 1, 'restarted');
    assert.equal(rig.deviceStreams, 1);
    streams.close();
  });

  test('a GCD below the floor falls back to the smallest interval', async () => {
    const { rig, streams } = await setup();
    record(streams, 'temp', 1000);
    record(streams, 'temp', 1001);
    await until(() => streams.info('u', 'd', 'temp')?.state === 'open', 'open');
    await settle();
    assert.deepEqual(rig.starts().at(-1), { interval: 1000 });
    streams.close();
  });
});
