/**
 * Peer benchmark (issue 7): our server against two MQTT brokers, Mosquitto (the Debian
 * package) and Aedes (Node.js), side by side in the same run on the same machine, and against
 * the Node.js floor: the least any Node.js server can do for our wire exchange.
 *
 *   npm run bench:peers -- [--quick] [--seconds 5] [--runs 3] [--cases telemetry,rpc,memory,connect]
 *     [--peers mosquitto,aedes,iotmp,floor] [--devices-max 10000] [--json .bench-results/peers.json]
 *     [--generators 2] [--window 1000] [--iotmp-telemetry topic|fleet|resource|all] [--profile dir]
 *     [--server-flag <node flag>]... [--server-main path/to/main.js] [--mosquitto /usr/sbin/mosquitto]
 *     [--no-inspect] [--keep]
 *
 * Each system runs in its own process (Mosquitto: a private instance on a free loopback port,
 * `persistence false`; Aedes: bench/peers-aedes.ts; ours: packages/server with default
 * settings, SQLite storage; the floor: bench/peers-floor.ts, plain node:net + node:http + ws with
 * pre-encoded frames, no framework, protocol engine, storage or authentication, driven exactly
 * as ours). One load generator for all of them: this process (the
 * application: telemetry consumer, command caller) and `--generators` device processes
 * (bench/peers-devices.ts: one socket per device from its own loopback address, pre-encoded
 * packets), with a protocol adapter per system (MQTT 3.1.1 by hand; IOTMP). Cases, each
 * bounded in time and measured `--runs` times (median, min–max):
 * 1. telemetry: N devices (1, 100, 1,000) send {"temperature":23.5,"humidity":60}, one
 *    consumer receives everything. MQTT: PUBLISH QoS 0 to dev/<i>/telemetry, one subscriber
 *    on dev/+/telemetry. IOTMP: each device streams STREAM_DATA on a stream it opened
 *    (device_topic_publish, scope publish, dev/<i>/telemetry); one WebSocket on the events API
 *    subscribed to dev/+/telemetry (`--iotmp-telemetry resource`: the server opens a stream on
 *    each device's resource for one WebSocket per device instead). Closed loop: at most
 *    `--window` messages in flight (sent, not yet received). Delivered msgs/s, server CPU,
 *    msgs per server-CPU-second, losses (sent − received once drained).
 *    `--iotmp-telemetry fleet`: the events WebSocket subscribes to `device_resource_stream` on
 *    the devices' telemetry resource instead; the server opens a stream on every device and
 *    the devices stream on it (no interval: the device's own events).
 * 2. command round trip over 100 devices, concurrency 1 and 100. MQTT: PUBLISH to dev/<i>/cmd
 *    with a correlation id, the device answers on dev/<i>/resp, the application (one
 *    connection, subscribed to dev/+/resp) matches the id. IOTMP: REST GET …/resources/sample
 *    → RUN → OK → HTTP answer (one keep-alive connection per concurrent caller, a minimal
 *    client). calls/s, p50/p90/p99.
 * 3. idle memory: server RSS per connected device at 1,000 and `--devices-max` devices (MQTT
 *    devices subscribed to their command topic); Node.js systems after a forced GC.
 * 4. connect rate: 1,000 devices, 100 in flight, connect + authenticate (CONNECT → CONNACK;
 *    ours CONNECT → OK on a cached verifier, i.e. repeat logins), after warm-up rounds; a run is
 *    as many rounds (connect all, then disconnect all) as fill `--seconds` × 0.4 of connecting.
 * The report shows iotmp over the floor per case, and what the floor reaches against each goal:
 * whether a goal is within reach of any Node.js server on this machine.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir, totalmem } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Generators } from './peers-generator.js';
import { EventsConsumer, openFleetConsumer } from './peers-iotmp.js';
import { digitsAt, encodePublish, MqttClient } from './peers-mqtt.js';
import {
  COMMAND_ID_PREFIX,
  COMMAND_SUFFIX,
  commandTopic,
  RESPONSE_FILTER,
  RESPONSE_SUFFIX,
  TELEMETRY_FILTER,
} from './peers-protocol.js';
import {
  type FloorSystem,
  type IotmpSystem,
  mosquittoVersion,
  PEER_IDS,
  PEER_NAMES,
  type PeerId,
  type PeerSystem,
  startAedes,
  startFloor,
  startIotmp,
  startMosquitto,
} from './peers-systems.js';
import {
  machineCpuMs,
  note,
  type ProfileSummary,
  percentile,
  processCpuMs,
  RawHttpConnection,
  StreamConsumer,
  sleep,
  summarizeProfile,
} from './server-harness.js';
import { BENCH_USER, deviceName, SAMPLE, SAMPLE_RESOURCE } from './sim-protocol.js';

const { values: args } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    seconds: { type: 'string' },
    runs: { type: 'string' },
    cases: { type: 'string', default: 'telemetry,rpc,memory,connect' },
    peers: { type: 'string', default: 'mosquitto,aedes,iotmp,floor' },
    'devices-max': { type: 'string' },
    json: { type: 'string', default: '.bench-results/peers.json' },
    generators: { type: 'string', default: '2' },
    window: { type: 'string', default: '1000' },
    'iotmp-telemetry': { type: 'string', default: 'fleet' },
    profile: { type: 'string' },
    'server-flag': { type: 'string', multiple: true, default: [] },
    'server-main': { type: 'string' },
    mosquitto: { type: 'string', default: '/usr/sbin/mosquitto' },
    'no-inspect': { type: 'boolean', default: false },
    keep: { type: 'boolean', default: false },
  },
});

const QUICK = args.quick === true;
const SECONDS = Number(args.seconds ?? (QUICK ? 2 : 5));
const RUNS = Math.max(1, Number(args.runs ?? (QUICK ? 1 : 3)));
const DEVICES_MAX = Number(args['devices-max'] ?? (QUICK ? 2000 : 10_000));
const WARM_UP_MS = QUICK ? 1000 : 2000;
const CASES = new Set(String(args.cases).split(','));
const PEERS = String(args.peers)
  .split(',')
  .filter((p): p is PeerId => (PEER_IDS as readonly string[]).includes(p));
const GENERATORS = Math.max(1, Number(args.generators));
/** Telemetry messages in flight (sent by devices, not yet received by the consumer), in total. */
const WINDOW = Math.max(16, Number(args.window));
type IotmpTelemetry = 'topic' | 'fleet' | 'resource';
const IOTMP_TELEMETRY: IotmpTelemetry[] =
  args['iotmp-telemetry'] === 'all'
    ? ['topic', 'fleet', 'resource']
    : String(args['iotmp-telemetry'])
        .split(',')
        .filter((m): m is IotmpTelemetry => ['topic', 'fleet', 'resource'].includes(m));
const TELEMETRY_DEVICES = [1, 100, 1000].filter((n) => n <= DEVICES_MAX);
const RPC_DEVICES = Math.min(100, DEVICES_MAX);
const RPC_CONCURRENCY = [1, 100];
const MEMORY_POINTS = [...new Set([1000, DEVICES_MAX])].filter((n) => n <= DEVICES_MAX);
const CONNECT_DEVICES = Math.min(1000, DEVICES_MAX);
const IN_FLIGHT = 100;
/** Connecting time per connect-rate run: rounds of CONNECT_DEVICES until it is filled. */
const CONNECT_WINDOW_MS = Math.max(500, SECONDS * 400);
/** A call with no answer this long after its window is counted as lost. */
const CALL_GRACE_MS = 10_000;

const GOALS = {
  telemetryVsMosquitto: 1.5,
  rpcCallsVsMosquitto: 2,
  rpcP99VsMosquitto: 0.5,
  bytesPerIdleDevice: 4096,
  connectVsMosquitto: 1,
};

const fmt = (n: number | undefined, digits = 0) =>
  n !== undefined && Number.isFinite(n)
    ? n.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits })
    : '';
const range = (from: number, to: number) =>
  Array.from({ length: Math.max(0, to - from) }, (_, k) => from + k);
const msText = (ms: number | undefined) =>
  ms === undefined || !Number.isFinite(ms)
    ? ''
    : ms < 1
      ? `${fmt(ms * 1000)} µs`
      : `${fmt(ms, ms < 10 ? 2 : 1)} ms`;

// --- measured windows -------------------------------------------------------------------------

interface CpuFigures {
  elapsedMs: number;
  /** % of one core. */
  serverCpuPct: number;
  serverCpuMs: number;
  generatorCpuPct: number;
  /** Other processes on the machine meanwhile (other users' work). */
  otherCpuPct: number;
  /** irq + softirq (loopback networking), machine-wide. */
  interruptCpuPct: number;
  stealCpuPct: number;
}

interface Ctx {
  sys: PeerSystem;
  gens: Generators;
  profiles: Array<{ name: string; file: string; summary: ProfileSummary }>;
  profiled: Set<string>;
}

async function generatorCpuMs(ctx: Ctx): Promise<number> {
  const own = process.cpuUsage();
  const s = await ctx.gens.stats();
  return (own.user + own.system + s.cpuUserUs + s.cpuSystemUs) / 1000;
}

/** Starts a measured window; the returned function ends it with the CPU figures. */
/** Several measured windows as one: CPU shares weighted by each window's length. */
function mergeCpu(windows: CpuFigures[]): CpuFigures {
  const elapsedMs = windows.reduce((a, w) => a + w.elapsedMs, 0);
  const weighted = (pick: (w: CpuFigures) => number) =>
    windows.reduce((a, w) => a + pick(w) * w.elapsedMs, 0) / elapsedMs;
  return {
    elapsedMs,
    serverCpuPct: weighted((w) => w.serverCpuPct),
    serverCpuMs: windows.reduce((a, w) => a + w.serverCpuMs, 0),
    generatorCpuPct: weighted((w) => w.generatorCpuPct),
    otherCpuPct: weighted((w) => w.otherCpuPct),
    interruptCpuPct: weighted((w) => w.interruptCpuPct),
    stealCpuPct: weighted((w) => w.stealCpuPct),
  };
}

async function beginWindow(ctx: Ctx, name: string): Promise<() => Promise<CpuFigures>> {
  const iotmp = ctx.sys.id === 'iotmp' ? (ctx.sys as IotmpSystem) : undefined;
  const profiling = args.profile !== undefined && iotmp?.inspector !== undefined && !ctx.profiled.has(name);
  if (profiling) {
    ctx.profiled.add(name);
    await iotmp?.inspector?.startProfile();
  }
  const g0 = await generatorCpuMs(ctx);
  const s0 = processCpuMs(ctx.sys.pid);
  const m0 = machineCpuMs();
  const t0 = performance.now();
  return async () => {
    const elapsedMs = performance.now() - t0;
    const s1 = processCpuMs(ctx.sys.pid);
    const m1 = machineCpuMs();
    const g1 = await generatorCpuMs(ctx);
    if (profiling && iotmp?.inspector && args.profile) {
      const profile = await iotmp.inspector.stopProfile();
      const file = join(args.profile, `iotmp-${name}.cpuprofile`);
      writeFileSync(file, JSON.stringify(profile));
      ctx.profiles.push({ name, file, summary: summarizeProfile(profile) });
    }
    const share = (ms: number) => (ms * 100) / elapsedMs;
    const serverCpuPct = share(s1 - s0);
    const generatorCpuPct = share(g1 - g0);
    return {
      elapsedMs,
      serverCpuPct,
      serverCpuMs: s1 - s0,
      generatorCpuPct,
      otherCpuPct: Math.max(0, share(m1.processes - m0.processes) - serverCpuPct - generatorCpuPct),
      interruptCpuPct: share(m1.interrupts - m0.interrupts),
      stealCpuPct: share(m1.steal - m0.steal),
    };
  };
}

// --- results ------------------------------------------------------------------------------------

type CaseKey = string;

interface Measurement {
  value: number;
  p50ms?: number;
  p90ms?: number;
  p99ms?: number;
  /** Messages (or calls) per second of server CPU time. */
  perCpuSecond?: number;
  cpu?: CpuFigures;
}

interface Row {
  key: CaseKey;
  caseName: string;
  peer: PeerId;
  unit: string;
  higherIsBetter: boolean;
  runs: Measurement[];
  median: Measurement;
  min: number;
  max: number;
  losses?: number;
  errors?: number;
  note?: string;
}

function makeRow(
  key: CaseKey,
  caseName: string,
  peer: PeerId,
  unit: string,
  higherIsBetter: boolean,
  runs: Measurement[],
  extra: Partial<Pick<Row, 'losses' | 'errors' | 'note'>> = {},
): Row {
  const sorted = [...runs].sort((a, b) => a.value - b.value);
  const median = sorted[Math.floor((sorted.length - 1) / 2)] as Measurement;
  return {
    key,
    caseName,
    peer,
    unit,
    higherIsBetter,
    runs,
    median,
    min: (sorted[0] as Measurement).value,
    max: (sorted[sorted.length - 1] as Measurement).value,
    ...extra,
  };
}

// --- connections ----------------------------------------------------------------------------

async function disconnectAll(ctx: Ctx): Promise<void> {
  await ctx.gens.disconnect();
  const deadline = performance.now() + 60_000;
  for (;;) {
    const n = await ctx.sys.connectedDevices();
    if (n === undefined) {
      await sleep(500); // Mosquitto does not say; give it time to close its side
      return;
    }
    if (n === 0) return;
    if (performance.now() > deadline)
      throw new Error(`${n} devices still connected 60 s after disconnecting`);
    await sleep(100);
  }
}

async function connectOrThrow(ctx: Ctx, indices: number[], subscribe: boolean, label: string): Promise<void> {
  const r = await ctx.gens.connect(indices, {
    inFlight: IN_FLIGHT,
    subscribe,
    timeoutMs: 60_000,
    deadlineMs: 300_000,
  });
  if (r.failed > 0 || r.skipped > 0)
    throw new Error(
      `${label}: ${r.failed} of ${indices.length} devices failed to connect, ${r.skipped} not attempted; e.g. ${r.errors.join('; ')}`,
    );
}

// --- case 1: telemetry --------------------------------------------------------------------------

interface Consumer {
  delivered(): number;
  problems(): string[];
  close(): void;
}

async function mqttConsumer(port: number): Promise<Consumer> {
  const client = await MqttClient.connect(port, 'bench-consumer');
  await client.subscribe(TELEMETRY_FILTER);
  const expected = Buffer.from(JSON.stringify(SAMPLE));
  let delivered = 0;
  let checked = false;
  const problems: string[] = [];
  client.onPublish = (buf, topicStart, topicEnd, payloadStart, end) => {
    delivered++;
    if (!checked) {
      checked = true;
      const topic = buf.toString('utf8', topicStart, topicEnd);
      if (
        !/^dev\/\d+\/telemetry$/.test(topic) ||
        buf.compare(expected, 0, expected.length, payloadStart, end) !== 0
      )
        problems.push(`unexpected message on ${topic}: ${buf.toString('utf8', payloadStart, end)}`);
    }
  };
  return { delivered: () => delivered, problems: () => problems, close: () => client.close() };
}

async function iotmpConsumer(sys: IotmpSystem, mode: IotmpTelemetry, devices: number[]): Promise<Consumer> {
  const token = encodeURIComponent(sys.rest.token);
  if (mode === 'fleet') {
    const c = await openFleetConsumer(
      sys.server.httpPort,
      `/v2/users/${BENCH_USER}/events?authorization=${token}`,
      SAMPLE_RESOURCE,
      devices.length,
    );
    return { delivered: () => c.delivered, problems: () => c.problems, close: () => c.close() };
  }
  if (mode === 'topic') {
    const c = await EventsConsumer.open(
      sys.server.httpPort,
      `/v2/users/${BENCH_USER}/events?authorization=${token}`,
      {
        event: 'device_topic_publish',
        filters: { topic: TELEMETRY_FILTER },
      },
    );
    return { delivered: () => c.delivered, problems: () => c.problems, close: () => c.close() };
  }
  const c = new StreamConsumer(sys.server.httpPort, 1);
  await c.open(
    devices.map((i) => ({
      path: `/v3/users/${BENCH_USER}/devices/${deviceName(i)}/resources/${SAMPLE_RESOURCE}?authorization=${token}`,
      group: 0,
    })),
    50,
  );
  const deadline = performance.now() + 60_000;
  while (c.started < devices.length) {
    if (performance.now() > deadline)
      throw new Error(
        `only ${c.started} of ${devices.length} resource streams started within 60 s; ${c.problems.join('; ')}`,
      );
    await sleep(20);
  }
  return { delivered: () => c.total, problems: () => c.problems, close: () => c.close() };
}

/** The floor's WebSocket consumer: the same subscription as ours (the floor checks nothing). */
async function floorConsumer(sys: FloorSystem): Promise<Consumer> {
  const c = await EventsConsumer.open(sys.httpPort, `/v2/users/${BENCH_USER}/events`, {
    event: 'device_topic_publish',
    filters: { topic: TELEMETRY_FILTER },
  });
  return { delivered: () => c.delivered, problems: () => c.problems, close: () => c.close() };
}

async function telemetryCase(ctx: Ctx, n: number, mode: IotmpTelemetry | undefined): Promise<Row> {
  const { sys, gens } = ctx;
  const devices = range(0, n);
  const modeText =
    mode === undefined
      ? ''
      : mode === 'topic'
        ? ' (topic, 1 WebSocket)'
        : mode === 'fleet'
          ? ' (device_resource_stream, 1 WebSocket)'
          : ` (resource streams, ${n} WebSocket${n === 1 ? '' : 's'})`;
  note(`${sys.label}: telemetry, ${n} device${n === 1 ? '' : 's'}${modeText}…`);
  await connectOrThrow(ctx, devices, false, 'telemetry devices');
  const consumer =
    sys.id === 'iotmp'
      ? await iotmpConsumer(sys as IotmpSystem, mode ?? 'topic', devices)
      : sys.id === 'floor'
        ? await floorConsumer(sys as FloorSystem)
        : await mqttConsumer(sys.devicePort);
  if (mode !== 'resource' && mode !== 'fleet') {
    const s = await gens.openStreams(30_000);
    if (s.failed > 0)
      throw new Error(`${s.failed} devices could not open their stream: ${s.errors.join('; ')}`);
  }
  const publishing = (await gens.stats()).publishing;
  if (publishing !== n) throw new Error(`${publishing} of ${n} devices ready to publish`);
  const iotmp = sys.id === 'iotmp' ? (sys as IotmpSystem) : undefined;
  const dropped0 = iotmp ? await iotmp.rest.metric('iotmp_ws_messages_dropped_total') : 0;
  const sent0 = (await gens.stats()).telemetrySent;
  const delivered0 = consumer.delivered();
  let granted = 0;
  const grant = () => {
    const room = WINDOW - (granted - (consumer.delivered() - delivered0));
    if (room >= WINDOW / 4) granted += gens.credit(room);
  };
  grant();
  const timer = setInterval(grant, 2);
  await sleep(WARM_UP_MS);
  const runs: Measurement[] = [];
  for (let r = 0; r < RUNS; r++) {
    const m0 = consumer.delivered();
    const end = await beginWindow(ctx, `telemetry-${n}`);
    await sleep(SECONDS * 1000);
    const m1 = consumer.delivered();
    const cpu = await end();
    runs.push({
      value: ((m1 - m0) * 1000) / cpu.elapsedMs,
      perCpuSecond: cpu.serverCpuMs > 0 ? ((m1 - m0) * 1000) / cpu.serverCpuMs : Number.NaN,
      cpu,
    });
  }
  clearInterval(timer);
  gens.stopTelemetry();
  // Drain: wait until nothing more arrives, then compare what was sent with what was received.
  let last = -1;
  const drainDeadline = performance.now() + 5000;
  while (consumer.delivered() !== last && performance.now() < drainDeadline) {
    last = consumer.delivered();
    await sleep(300);
  }
  const sent = (await gens.stats()).telemetrySent - sent0;
  const received = consumer.delivered() - delivered0;
  const dropped = iotmp ? (await iotmp.rest.metric('iotmp_ws_messages_dropped_total')) - dropped0 : undefined;
  const problems = [...consumer.problems()];
  if (problems.length > 0) note(`  consumer problems: ${problems.join(' | ')}`);
  consumer.close();
  await disconnectAll(ctx);
  const notes = [`${fmt(sent)} sent, ${fmt(received)} received`];
  if (dropped) notes.push(`${fmt(dropped)} dropped by the server (slow consumer)`);
  if (problems.length > 0) notes.push(`consumer: ${problems[0]}`);
  return makeRow(
    `telemetry-${n}`,
    `telemetry, ${fmt(n)} device${n === 1 ? '' : 's'} → 1 consumer${modeText}`,
    sys.id,
    'msgs/s',
    true,
    runs,
    { losses: Math.max(0, sent - received), note: notes.join('; ') },
  );
}

// --- case 2: command round trips --------------------------------------------------------------

interface Caller {
  call(device: number): Promise<boolean>;
  /** Fails whatever is still waiting (the window is over and its grace too). */
  abort(): void;
  close(): Promise<void>;
}

async function mqttCaller(port: number): Promise<Caller> {
  const app = await MqttClient.connect(port, 'bench-app');
  await app.subscribe(RESPONSE_FILTER);
  const idPrefix = Buffer.from(COMMAND_ID_PREFIX);
  const tail = Buffer.from(RESPONSE_SUFFIX);
  const pending = new Map<number, (ok: boolean) => void>();
  let nextId = 1;
  app.onPublish = (buf, _topicStart, _topicEnd, payloadStart, end) => {
    if (buf.compare(idPrefix, 0, idPrefix.length, payloadStart, payloadStart + idPrefix.length) !== 0) return;
    const id = digitsAt(buf, payloadStart + idPrefix.length, end);
    const done = pending.get(id.value);
    if (!done) return;
    pending.delete(id.value);
    done(buf.compare(tail, 0, tail.length, id.end, end) === 0);
  };
  return {
    call(device) {
      return new Promise((resolve) => {
        const id = nextId++;
        pending.set(id, resolve);
        app.write(encodePublish(commandTopic(device), `${COMMAND_ID_PREFIX}${id}${COMMAND_SUFFIX}`));
      });
    },
    abort() {
      for (const done of pending.values()) done(false);
      pending.clear();
    },
    async close() {
      app.close();
    },
  };
}

/** REST GET …/resources/sample on `port` (ours, or the floor, which ignores the token). */
async function httpCaller(
  port: number,
  token: string,
  devices: number,
  concurrency: number,
): Promise<Caller> {
  const requests = range(0, devices).map((i) =>
    Buffer.from(
      `GET /v3/users/${BENCH_USER}/devices/${deviceName(i)}/resources/${SAMPLE_RESOURCE} HTTP/1.1\r\n` +
        `Host: 127.0.0.1:${port}\r\nAuthorization: Bearer ${token}\r\n\r\n`,
    ),
  );
  const expected = JSON.stringify(SAMPLE);
  const conns = await Promise.all(range(0, concurrency).map(() => RawHttpConnection.connect(port)));
  const idle = [...conns];
  return {
    async call(device) {
      const c = idle.pop();
      if (!c) throw new Error('more calls in flight than connections');
      try {
        const r = await c.request(requests[device] as Buffer);
        return r.status === 200 && r.body === expected;
      } catch {
        return false;
      } finally {
        idle.push(c);
      }
    },
    abort() {
      for (const c of conns) c.close();
    },
    async close() {
      for (const c of conns) c.close();
    },
  };
}

async function rpcCase(ctx: Ctx, concurrency: number): Promise<Row> {
  const { sys } = ctx;
  note(`${sys.label}: command round trips, concurrency ${concurrency}, ${RPC_DEVICES} devices…`);
  const caller =
    sys.id === 'iotmp'
      ? await httpCaller(
          (sys as IotmpSystem).server.httpPort,
          (sys as IotmpSystem).rest.token,
          RPC_DEVICES,
          concurrency,
        )
      : sys.id === 'floor'
        ? await httpCaller((sys as FloorSystem).httpPort, 'floor', RPC_DEVICES, concurrency)
        : await mqttCaller(sys.devicePort);
  let next = 0;
  let errors = 0;
  let lost = false;
  const run = async (ms: number, latencies: number[] | undefined) => {
    const deadline = performance.now() + ms;
    const worker = async () => {
      while (performance.now() < deadline && !lost) {
        const device = next++ % RPC_DEVICES;
        const t0 = performance.now();
        const ok = await caller.call(device);
        if (ok) latencies?.push(performance.now() - t0);
        else errors++;
      }
    };
    const all = Promise.all(range(0, concurrency).map(worker));
    const grace = sleep(ms + CALL_GRACE_MS).then(() => 'late' as const);
    if ((await Promise.race([all, grace])) === 'late') {
      lost = true;
      caller.abort();
      await all;
    }
  };
  try {
    await run(WARM_UP_MS, undefined);
    errors = 0;
    const runs: Measurement[] = [];
    for (let r = 0; r < RUNS && !lost; r++) {
      const latencies: number[] = [];
      const end = await beginWindow(ctx, `rpc-c${concurrency}`);
      await run(SECONDS * 1000, latencies);
      const cpu = await end();
      latencies.sort((a, b) => a - b);
      runs.push({
        value: (latencies.length * 1000) / cpu.elapsedMs,
        p50ms: percentile(latencies, 0.5),
        p90ms: percentile(latencies, 0.9),
        p99ms: percentile(latencies, 0.99),
        perCpuSecond: cpu.serverCpuMs > 0 ? (latencies.length * 1000) / cpu.serverCpuMs : Number.NaN,
        cpu,
      });
    }
    if (lost) note(`  calls without an answer ${CALL_GRACE_MS / 1000} s after the window: stopped`);
    return makeRow(
      `rpc-c${concurrency}`,
      `command round trip, concurrency ${concurrency}, ${RPC_DEVICES} devices`,
      sys.id,
      'calls/s',
      true,
      runs,
      { errors },
    );
  } finally {
    await caller.close();
  }
}

// --- case 3: idle memory ----------------------------------------------------------------------

async function memoryCase(ctx: Ctx): Promise<Row[]> {
  const { sys, gens } = ctx;
  await sleep(1000);
  const base = await sys.memory();
  const rows: Row[] = [];
  let connected = 0;
  for (const point of MEMORY_POINTS) {
    note(`${sys.label}: idle memory, connecting up to ${fmt(point)} devices…`);
    await connectOrThrow(ctx, range(connected, point), true, 'memory devices');
    connected = point;
    await sleep(2000);
    const m = await sys.memory();
    const counted = (await gens.stats()).connected;
    const systemCount = await sys.connectedDevices();
    if (counted !== point || (systemCount !== undefined && systemCount !== point))
      note(
        `  ${counted} devices connected by the generator, ${systemCount ?? '?'} by the system (expected ${point})`,
      );
    const perDeviceKb = ((m.rssKb - base.rssKb) * 1024) / counted / 1024;
    rows.push(
      makeRow(
        `memory-${point}`,
        `idle memory per connected device, ${fmt(point)} devices`,
        sys.id,
        'KB/device',
        false,
        [{ value: perDeviceKb }],
        {
          note: `RSS ${fmt(base.rssKb / 1024, 1)} → ${fmt(m.rssKb / 1024, 1)} MB${m.gc ? ' (after forced GC)' : ''}${m.heapUsed !== undefined && base.heapUsed !== undefined ? `, V8 heap ${fmt((m.heapUsed - base.heapUsed) / counted / 1024, 2)} KB/device` : ''}`,
        },
      ),
    );
  }
  await disconnectAll(ctx);
  return rows;
}

// --- case 4: connect rate -----------------------------------------------------------------------

async function connectCase(ctx: Ctx): Promise<Row> {
  const { sys, gens } = ctx;
  const devices = range(0, CONNECT_DEVICES);
  note(`${sys.label}: connect rate, ${fmt(CONNECT_DEVICES)} devices, ${IN_FLIGHT} in flight…`);
  // Warm-up rounds, not measured: JIT on both sides (the first rounds are much slower), and
  // ours verifies the seeded hash on the first login; later ones hit the cached verifier, as
  // devices that reconnect do.
  const warmUpEnd = performance.now() + WARM_UP_MS;
  for (let round = 0; round < 3 || performance.now() < warmUpEnd; round++) {
    await connectOrThrow(ctx, devices, false, 'connect warm-up');
    await disconnectAll(ctx);
  }
  const runs: Measurement[] = [];
  let failed = 0;
  for (let r = 0; r < RUNS; r++) {
    // One round (1,000 connects) takes ~0.1 s: a run is as many rounds as fill CONNECT_WINDOW_MS
    // of connecting (disconnects between rounds are not counted), so that runs compare.
    const rounds: Array<{
      ok: number;
      elapsedMs: number;
      p50: number;
      p90: number;
      p99: number;
      cpu: CpuFigures;
    }> = [];
    let connectingMs = 0;
    while (connectingMs < CONNECT_WINDOW_MS) {
      const end = await beginWindow(ctx, 'connect');
      const c = await gens.connect(devices, {
        inFlight: IN_FLIGHT,
        subscribe: false,
        timeoutMs: 30_000,
        deadlineMs: 60_000,
      });
      const cpu = await end();
      failed += c.failed + c.skipped;
      if (c.failed > 0) note(`  ${c.failed} failed, e.g. ${c.errors.join('; ')}`);
      rounds.push({ ok: c.ok, elapsedMs: c.elapsedMs, p50: c.p50ms, p90: c.p90ms, p99: c.p99ms, cpu });
      connectingMs += c.elapsedMs;
      await disconnectAll(ctx);
    }
    const ok = rounds.reduce((a, x) => a + x.ok, 0);
    const cpu = mergeCpu(rounds.map((x) => x.cpu));
    const mid = (pick: (x: (typeof rounds)[number]) => number) =>
      rounds.map(pick).sort((a, b) => a - b)[rounds.length >> 1] as number;
    runs.push({
      value: (ok * 1000) / connectingMs,
      // Percentiles: the median round's (each round has its own 1,000 latencies).
      p50ms: mid((x) => x.p50),
      p90ms: mid((x) => x.p90),
      p99ms: mid((x) => x.p99),
      perCpuSecond: cpu.serverCpuMs > 0 ? (ok * 1000) / cpu.serverCpuMs : Number.NaN,
      cpu,
    });
  }
  return makeRow(
    'connect',
    `connect + authenticate, ${fmt(CONNECT_DEVICES)} devices, ${IN_FLIGHT} in flight${sys.id === 'iotmp' ? ' (repeat logins)' : sys.id === 'floor' ? ' (no authentication)' : ''}`,
    sys.id,
    'connects/s',
    true,
    runs,
    { errors: failed },
  );
}

// --- one system -------------------------------------------------------------------------------

async function startSystem(peer: PeerId, workDir: string): Promise<PeerSystem> {
  switch (peer) {
    case 'mosquitto':
      return startMosquitto(workDir, args.mosquitto);
    case 'aedes':
      return startAedes();
    case 'floor':
      return startFloor();
    case 'iotmp': {
      const dataDir = join(workDir, 'iotmp-data');
      mkdirSync(dataDir, { recursive: true });
      return startIotmp({
        mainJs:
          args['server-main'] ??
          fileURLToPath(new URL('../../packages/server/dist/src/main.js', import.meta.url)),
        dataDir,
        seed: Math.max(DEVICES_MAX, CONNECT_DEVICES, RPC_DEVICES, ...TELEMETRY_DEVICES),
        inspect: !args['no-inspect'],
        extraNodeFlags: args['server-flag'] ?? [],
      });
    }
  }
}

async function benchSystem(
  peer: PeerId,
  workDir: string,
  rows: Row[],
  systems: Record<string, unknown>[],
): Promise<void> {
  const sys = await startSystem(peer, workDir);
  note(`${sys.label}: pid ${sys.pid}, devices on 127.0.0.1:${sys.devicePort}`);
  systems.push({ id: sys.id, label: sys.label, pid: sys.pid, how: sys.how });
  const gens = new Generators(GENERATORS);
  const ctx: Ctx = { sys, gens, profiles: [], profiled: new Set() };
  try {
    await gens.init(sys.protocol, sys.devicePort);
    if (CASES.has('memory')) rows.push(...(await memoryCase(ctx)));
    if (CASES.has('connect')) rows.push(await connectCase(ctx));
    if (CASES.has('telemetry'))
      for (const n of TELEMETRY_DEVICES)
        if (sys.id === 'iotmp')
          for (const mode of IOTMP_TELEMETRY) rows.push(await telemetryCase(ctx, n, mode));
        else if (sys.id === 'floor') rows.push(await telemetryCase(ctx, n, 'topic'));
        else rows.push(await telemetryCase(ctx, n, undefined));
    if (CASES.has('rpc')) {
      await connectOrThrow(ctx, range(0, RPC_DEVICES), true, 'command devices');
      for (const c of RPC_CONCURRENCY) rows.push(await rpcCase(ctx, c));
      await disconnectAll(ctx);
    }
  } finally {
    await gens.stop();
    await sys.stop();
  }
  if (ctx.profiles.length > 0) {
    console.log(`\n## ${sys.label}: CPU profiles of the measured windows (self time)`);
    for (const p of ctx.profiles) {
      console.log(`\n### ${p.name} (${fmt(p.summary.totalMs)} ms, ${p.file})`);
      console.log(p.summary.areas.map((a) => `${a.area} ${fmt(a.selfPct, 1)} %`).join(', '));
      for (const f of p.summary.functions)
        console.log(`- ${fmt(f.selfPct, 1)} % ${f.name}${f.location ? ` (${f.location})` : ''}`);
    }
    systems[systems.length - 1] = { ...systems[systems.length - 1], profiles: ctx.profiles };
  }
}

// --- report -----------------------------------------------------------------------------------

function resultText(row: Row, value: number): string {
  if (row.unit === 'KB/device') return `${fmt(value, 2)} KB/device`;
  return `${fmt(value)} ${row.unit}`;
}

function ratio(ours: Row | undefined, theirs: Row | undefined): number | undefined {
  if (!ours || !theirs || !(theirs.median.value > 0)) return undefined;
  return ours.median.value / theirs.median.value;
}

interface Goal {
  goal: string;
  met: boolean;
  shown: string;
}

/** What the Node.js floor reaches against one goal (`reachable`: the floor meets it). */
interface FloorGoal {
  goal: string;
  target: string;
  floor: string;
  /** The same as numbers, in `unit` (round trips: calls/s; p99 in the strings only). */
  targetValue: number;
  floorValue: number;
  unit: string;
  reachable: boolean;
  /** iotmp's median over the floor's. */
  iotmpOverFloor: number | undefined;
}

interface FloorReport {
  /** iotmp's median over the floor's, per case both ran. */
  ratios: Array<{ key: CaseKey; caseName: string; unit: string; iotmpOverFloor: number }>;
  goals: FloorGoal[];
}

function report(rows: Row[]): { goals: Goal[]; floor: FloorReport } {
  const byKey = (key: CaseKey, peer: PeerId) => rows.find((r) => r.key === key && r.peer === peer);
  const pct = (p: number | undefined) => (p === undefined || !Number.isFinite(p) ? '' : `${fmt(p)} %`);
  const ratioText = (r: number | undefined, row: Row) => {
    if (r === undefined) return '';
    // "better" marks for the reader: throughput higher is better, memory lower is better.
    return `${fmt(r, 2)}×`.concat(row.higherIsBetter ? '' : ' (lower is better)');
  };
  console.log(
    '| case | system | result (median) | min–max | p50 | p90 | p99 | server CPU | msgs or calls per server-CPU-s | losses / errors | load generator CPU | other processes CPU | vs Mosquitto | vs Aedes | iotmp / floor |',
  );
  console.log('|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  const floorRatios: FloorReport['ratios'] = [];
  for (const row of rows) {
    const m = row.median;
    const spread =
      row.runs.length > 1
        ? `${fmt(row.min, row.unit === 'KB/device' ? 2 : 0)}–${fmt(row.max, row.unit === 'KB/device' ? 2 : 0)}`
        : '';
    const lossText = [
      row.losses !== undefined ? `${fmt(row.losses)} lost` : '',
      row.errors ? `${fmt(row.errors)} errors` : '',
    ]
      .filter(Boolean)
      .join(', ');
    // Ours and the floor against the brokers; ours against the floor.
    const isNode = row.peer === 'iotmp' || row.peer === 'floor';
    const vsMosquitto = isNode ? ratioText(ratio(row, byKey(row.key, 'mosquitto')), row) : '';
    const vsAedes = isNode ? ratioText(ratio(row, byKey(row.key, 'aedes')), row) : '';
    const overFloor = row.peer === 'iotmp' ? ratio(row, byKey(row.key, 'floor')) : undefined;
    if (overFloor !== undefined)
      floorRatios.push({ key: row.key, caseName: row.caseName, unit: row.unit, iotmpOverFloor: overFloor });
    console.log(
      `| ${row.caseName} | ${PEER_NAMES[row.peer]} | ${resultText(row, m.value)} | ${spread} | ${msText(m.p50ms)} | ${msText(m.p90ms)} | ${msText(m.p99ms)} | ${pct(m.cpu?.serverCpuPct)} | ${fmt(m.perCpuSecond)} | ${lossText || (row.losses === 0 ? '0' : '')} | ${pct(m.cpu?.generatorCpuPct)} | ${pct(m.cpu?.otherCpuPct)} | ${vsMosquitto} | ${vsAedes} | ${ratioText(overFloor, row)} |`,
    );
  }
  console.log('');
  for (const row of rows)
    if (row.note) console.log(`- ${row.caseName}, ${PEER_NAMES[row.peer]}: ${row.note}`);
  const goals: Goal[] = [];
  const t1000 = [byKey('telemetry-1000', 'iotmp'), byKey('telemetry-1000', 'mosquitto')] as const;
  if (t1000[0] && t1000[1]) {
    const r = t1000[0].median.value / t1000[1].median.value;
    goals.push({
      goal: `telemetry at 1,000 devices >= ${GOALS.telemetryVsMosquitto}× Mosquitto`,
      met: r >= GOALS.telemetryVsMosquitto && t1000[0].losses === 0,
      shown: `${fmt(r, 2)}× (${fmt(t1000[0].median.value)} vs ${fmt(t1000[1].median.value)} msgs/s, ${fmt(t1000[0].losses)} lost)`,
    });
  }
  const rpc = [byKey('rpc-c100', 'iotmp'), byKey('rpc-c100', 'mosquitto')] as const;
  if (rpc[0] && rpc[1]) {
    const calls = rpc[0].median.value / rpc[1].median.value;
    const p99 = (rpc[0].median.p99ms ?? Number.NaN) / (rpc[1].median.p99ms ?? Number.NaN);
    goals.push({
      goal: `command round trips at concurrency 100 >= ${GOALS.rpcCallsVsMosquitto}× Mosquitto's calls/s, p99 <= ${GOALS.rpcP99VsMosquitto}× its p99`,
      met: calls >= GOALS.rpcCallsVsMosquitto && p99 <= GOALS.rpcP99VsMosquitto && !rpc[0].errors,
      shown: `${fmt(calls, 2)}× calls/s (${fmt(rpc[0].median.value)} vs ${fmt(rpc[1].median.value)}), p99 ${fmt(p99, 2)}× (${msText(rpc[0].median.p99ms)} vs ${msText(rpc[1].median.p99ms)})`,
    });
  }
  const mem = byKey(`memory-${DEVICES_MAX}`, 'iotmp');
  if (mem) {
    const bytes = mem.median.value * 1024;
    goals.push({
      goal: `idle memory <= 4 KB per device (at ${fmt(DEVICES_MAX)} devices${DEVICES_MAX < 10_000 ? '; the goal is at 10,000' : ''})`,
      met: bytes <= GOALS.bytesPerIdleDevice && DEVICES_MAX >= 10_000,
      shown: `${fmt(bytes)} bytes RSS per device`,
    });
  }
  const con = [byKey('connect', 'iotmp'), byKey('connect', 'mosquitto')] as const;
  if (con[0] && con[1]) {
    const r = con[0].median.value / con[1].median.value;
    goals.push({
      goal: `connect rate >= Mosquitto's`,
      met: r >= GOALS.connectVsMosquitto && !con[0].errors,
      shown: `${fmt(r, 2)}× (${fmt(con[0].median.value)} vs ${fmt(con[1].median.value)} connects/s)`,
    });
  }
  return { goals, floor: { ratios: floorRatios, goals: floorGoals(byKey) } };
}

/** What the floor reaches against each goal: is the goal within reach of a Node.js server? */
function floorGoals(byKey: (key: CaseKey, peer: PeerId) => Row | undefined): FloorGoal[] {
  const out: FloorGoal[] = [];
  const over = (key: CaseKey) => ratio(byKey(key, 'iotmp'), byKey(key, 'floor'));
  const t = [byKey('telemetry-1000', 'floor'), byKey('telemetry-1000', 'mosquitto')] as const;
  if (t[0] && t[1]) {
    const target = GOALS.telemetryVsMosquitto * t[1].median.value;
    out.push({
      goal: 'telemetry at 1,000 devices',
      target: `${GOALS.telemetryVsMosquitto}× Mosquitto = ${fmt(target)} msgs/s`,
      floor: `${fmt(t[0].median.value)} msgs/s, ${fmt(t[0].losses)} lost`,
      targetValue: target,
      floorValue: t[0].median.value,
      unit: 'msgs/s',
      reachable: t[0].median.value >= target && t[0].losses === 0,
      iotmpOverFloor: over('telemetry-1000'),
    });
  }
  const rpc = [byKey('rpc-c100', 'floor'), byKey('rpc-c100', 'mosquitto')] as const;
  if (rpc[0] && rpc[1]) {
    const calls = GOALS.rpcCallsVsMosquitto * rpc[1].median.value;
    const p99 = GOALS.rpcP99VsMosquitto * (rpc[1].median.p99ms ?? Number.NaN);
    out.push({
      goal: 'round trips at concurrency 100',
      target: `${GOALS.rpcCallsVsMosquitto}× Mosquitto = ${fmt(calls)} calls/s, p99 <= ${msText(p99)}`,
      floor: `${fmt(rpc[0].median.value)} calls/s, p99 ${msText(rpc[0].median.p99ms)}`,
      targetValue: calls,
      floorValue: rpc[0].median.value,
      unit: 'calls/s',
      reachable:
        rpc[0].median.value >= calls &&
        (rpc[0].median.p99ms ?? Number.POSITIVE_INFINITY) <= p99 &&
        !rpc[0].errors,
      iotmpOverFloor: over('rpc-c100'),
    });
  }
  // Memory has no floor line: the floor is not built to be small per socket (ours is smaller).
  const con = [byKey('connect', 'floor'), byKey('connect', 'mosquitto')] as const;
  if (con[0] && con[1]) {
    const target = GOALS.connectVsMosquitto * con[1].median.value;
    out.push({
      goal: 'connect rate',
      target: `${GOALS.connectVsMosquitto}× Mosquitto = ${fmt(target)} connects/s`,
      floor: `${fmt(con[0].median.value)} connects/s`,
      targetValue: target,
      floorValue: con[0].median.value,
      unit: 'connects/s',
      reachable: con[0].median.value >= target && !con[0].errors,
      iotmpOverFloor: over('connect'),
    });
  }
  return out;
}

// --- main -------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const cpu = cpus();
  const machine = {
    cpu: cpu[0]?.model ?? 'unknown',
    cores: cpu.length,
    memoryGb: Math.round(totalmem() / 2 ** 30),
    node: process.version,
    loadAverageAtStart: loadavg().map((l) => Number(l.toFixed(2))),
    loadAverageAtEnd: [] as number[],
  };
  const config = {
    quick: QUICK,
    seconds: SECONDS,
    runs: RUNS,
    cases: [...CASES],
    peers: PEERS,
    devicesMax: DEVICES_MAX,
    generators: GENERATORS,
    window: WINDOW,
    iotmpTelemetry: IOTMP_TELEMETRY,
    mosquitto: `${args.mosquitto} (${mosquittoVersion(args.mosquitto)})`,
  };
  console.log(`# Peer benchmark: ${PEERS.map((p) => PEER_NAMES[p]).join(' vs ')}`);
  console.log(
    `machine: ${machine.cpu}, ${machine.cores} cores, ${machine.memoryGb} GB RAM, node ${machine.node}; load average at start ${machine.loadAverageAtStart.join(' ')}`,
  );
  console.log(
    `settings: ${RUNS} run(s) of ${SECONDS} s per case after ${WARM_UP_MS / 1000} s of warm-up; ${GENERATORS} device generator processes + this process (consumer, caller); telemetry window ${fmt(WINDOW)} messages in flight; memory at ${MEMORY_POINTS.map((p) => fmt(p)).join(' and ')} devices${QUICK ? ' (--quick)' : ''}`,
  );
  if (args.profile) mkdirSync(args.profile, { recursive: true });
  const workDir = mkdtempSync(join(tmpdir(), 'iotmp-peers-bench-'));
  const rows: Row[] = [];
  const systems: Record<string, unknown>[] = [];
  const tStart = performance.now();
  let failure: unknown;
  try {
    for (const peer of PEERS) {
      try {
        await benchSystem(peer, workDir, rows, systems);
      } catch (err) {
        failure ??= err;
        note(`${peer}: ${(err as Error).stack ?? String(err)}`);
      }
    }
  } finally {
    if (!args.keep && failure === undefined) rmSync(workDir, { recursive: true, force: true });
    else note(`work directory (configs, logs, our server's data) kept in ${workDir}`);
  }
  machine.loadAverageAtEnd = loadavg().map((l) => Number(l.toFixed(2)));
  console.log('');
  for (const s of systems) console.log(`- ${String(s.label)}: ${String(s.how)}`);
  console.log('');
  const { goals, floor } = report(rows);
  console.log('');
  console.log(
    `CPU: % of one core over the measured window (${machine.cores} cores = ${machine.cores * 100} %), from /proc. "other processes" is what the rest of the machine used meanwhile (not the system under test, not the load generator). Ratios: "vs Mosquitto" and "vs Aedes" are the row's median (iotmp or the Node.js floor) over the broker's, "iotmp / floor" iotmp's median over the floor's (memory: lower is better).`,
  );
  console.log(
    `load average at start ${machine.loadAverageAtStart.join(' ')}, at end ${machine.loadAverageAtEnd.join(' ')}; total run time ${fmt((performance.now() - tStart) / 1000)} s.`,
  );
  console.log('');
  for (const g of goals) console.log(`goal ${g.goal}: ${g.met ? 'MET' : 'NOT MET'} — ${g.shown}`);
  for (const g of floor.goals)
    console.log(
      `${g.goal}: goal ${g.target}; Node.js floor ${g.floor} (${g.reachable ? 'the floor meets it' : 'the floor falls short: out of reach of a Node.js server here'})${g.iotmpOverFloor !== undefined ? `; iotmp at ${fmt(g.iotmpOverFloor, 2)}× the floor` : ''}`,
    );
  if (args.json) {
    mkdirSync(dirname(args.json), { recursive: true });
    writeFileSync(args.json, JSON.stringify({ machine, config, systems, rows, goals, floor }, null, 2));
    note(`JSON written to ${args.json}`);
  }
  if (failure !== undefined) throw failure;
}

main().then(
  () => setTimeout(() => process.exit(0), 100).unref(),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
