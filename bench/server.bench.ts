/**
 * Server benchmark (issue 4, section 6): the real server process (`node
 * packages/server/dist/src/main.js`, free ports, a temporary data directory) against
 * simulated devices (bench/sim-devices.ts, in child processes) and this process as the HTTP
 * client (undici) and WebSocket consumer.
 *
 *   node bench/dist/server.bench.js [--json file] [--profile dir] [--seconds 5] [--runs 3]
 *     [--devices 10000] [--rest-devices 100] [--stream-devices 1000] [--stream-via fleet|sockets] [--sims 2]
 *     [--http-client undici|raw|both] [--shared-source-address]
 *     [--server-flag <node flag>]... [--server-main path/to/main.js] [--no-inspect] [--keep]
 *     [--cases logins,rest,stream]   (logins = first and repeat logins and the memory case)
 *
 * Cases, each bounded in time (REST, repeat login and streaming are measured `--runs` times
 * and the median run is reported, with the spread):
 * 1. REST call → device → response: GET …/resources/sample over 100 connected devices,
 *    concurrency 1 and 100 (undici Pool, keep-alive): calls/s, p50/p99.
 * 2. connect + auth: first login (the credential is not cached: one scrypt per device) and
 *    repeat login (every device disconnects and logs in again: cached verifier), 100 in flight.
 * 3. memory per idle connected device: server RSS (/proc/<pid>/status VmRSS) and V8 heap
 *    before and after connecting all devices (10,000), each time after a forced GC.
 * 4. STREAM_DATA from 1,000 devices to one WebSocket consumer (the events API's
 *    `device_resource_stream` on every device's sample resource; `--stream-via sockets`: one
 *    resource WebSocket per device instead): messages/s delivered, closed loop (devices send
 *    what the consumer has received plus a window).
 *
 * Devices are created through the REST API, which hashes each credential with scrypt
 * (N = 2^15: ~0.1–0.5 s of a core each on this machine, so 10,000 would take 10–40 minutes).
 * Only `--rest-devices` (default 100: the REST case's devices) are created that way; the rest
 * are written into the server's database with a low-cost hash of the same format (see
 * seedDevices), which changes nothing for a connected device or a cached repeat login.
 *
 * Every simulated device connects from its own loopback source address (127.1.x.y), as
 * devices on the Internet do; --shared-source-address puts each simulator's devices behind one
 * address instead (as behind a NAT), where per-address login throttling applies to all of them.
 *
 * The server runs with --inspect on a free local port (disable with --no-inspect): the
 * benchmark uses that session to force GC before memory readings and, with --profile, to
 * record a CPU profile of each measured window (written to the directory, summarized here).
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Pool } from 'undici';
import { openFleetConsumer } from './peers-iotmp.js';
import {
  type CpuProfile,
  Inspector,
  machineCpuMs,
  note,
  openFilesLimit,
  type ProfileSummary,
  percentile,
  processCpuMs,
  procStatusKb,
  RawHttpConnection,
  RestClient,
  SEED_SCRYPT,
  type ServerProcess,
  SimProcess,
  StreamConsumer,
  seedDevices,
  sleep,
  startServerProcess,
  summarizeProfile,
} from './server-harness.js';
import { BENCH_USER, deviceName, SAMPLE, SAMPLE_RESOURCE } from './sim-protocol.js';

const { values: args } = parseArgs({
  options: {
    json: { type: 'string' },
    profile: { type: 'string' },
    seconds: { type: 'string', default: '5' },
    runs: { type: 'string', default: '3' },
    devices: { type: 'string', default: '10000' },
    'rest-devices': { type: 'string', default: '100' },
    'stream-devices': { type: 'string', default: '1000' },
    'stream-via': { type: 'string', default: 'fleet' },
    sims: { type: 'string', default: '2' },
    'http-client': { type: 'string', default: 'undici' },
    'server-flag': { type: 'string', multiple: true, default: [] },
    'server-main': { type: 'string' },
    cases: { type: 'string', default: 'logins,rest,stream' },
    'no-inspect': { type: 'boolean', default: false },
    'shared-source-address': { type: 'boolean', default: false },
    keep: { type: 'boolean', default: false },
  },
});

const SECONDS = Number(args.seconds);
/** Measured windows per case (REST, repeat login, streaming); the median is reported. */
const RUNS = Math.max(1, Number(args.runs));
const DEVICES = Number(args.devices);
const REST_DEVICES = Math.min(Number(args['rest-devices']), DEVICES);
const STREAM_DEVICES = Math.min(Number(args['stream-devices']), DEVICES);
const REST_CALL_DEVICES = Math.min(100, DEVICES);
const SIMS = Math.max(1, Number(args.sims));
const CASES = new Set(String(args.cases).split(','));
type HttpClientKind = 'undici' | 'raw';
const HTTP_CLIENTS: HttpClientKind[] =
  args['http-client'] === 'both' ? ['undici', 'raw'] : [args['http-client'] === 'raw' ? 'raw' : 'undici'];
const IN_FLIGHT_LOGINS = 100;
/** STREAM_DATA frames a streaming device may have on the way to the consumer. */
const STREAM_WINDOW_PER_SOCKET = 16;
/**
 * fleet: one events WebSocket subscribed to `device_resource_stream` on every device's sample
 * resource; sockets: one resource WebSocket per device (in one consumer process).
 */
const STREAM_VIA = args['stream-via'] === 'sockets' ? 'sockets' : 'fleet';
/**
 * Frames on the way per device. One events socket carries every device's frames, so its
 * window stays well under the server's 1 MiB per-consumer send buffer (2 × 1,000 × ~150 bytes).
 */
const STREAM_WINDOW_PER_DEVICE = STREAM_VIA === 'fleet' ? 2 : STREAM_WINDOW_PER_SOCKET;

const TARGETS = {
  restCallsPerSecond: 20_000,
  repeatLoginsPerSecond: 5_000,
  bytesPerIdleDevice: 4096,
  streamMessagesPerSecond: 60_000,
};

const fmt = (n: number, digits = 0) =>
  Number.isFinite(n)
    ? n.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits })
    : 'n/a';
const us = (ms: number) => (Number.isFinite(ms) ? `${fmt(ms * 1000)} µs` : '');
const msText = (ms: number) => (Number.isFinite(ms) ? `${fmt(ms, ms < 10 ? 1 : 0)} ms` : '');
const pct = (p: number) => (Number.isFinite(p) ? `${fmt(p)} %` : '');

/** The median of `runs` by `value` (the lower middle one for an even count), and the spread. */
function median<T>(runs: T[], value: (r: T) => number): { median: T; values: number[] } {
  const sorted = [...runs].sort((a, b) => value(a) - value(b));
  return { median: sorted[Math.floor((sorted.length - 1) / 2)] as T, values: runs.map(value) };
}

function spread(values: number[]): string {
  if (values.length < 2) return '';
  return ` (median of ${values.length}: ${fmt(Math.min(...values))}–${fmt(Math.max(...values))})`;
}

interface CpuFigures {
  elapsedMs: number;
  /** % of one core. */
  serverCpuPct: number;
  generatorCpuPct: number;
  /** Other processes on the machine meanwhile (other users' work). */
  otherCpuPct: number;
  /** Interrupt time (irq + softirq: loopback networking) and steal (other guests), machine-wide. */
  interruptCpuPct: number;
  stealCpuPct: number;
}

interface Row {
  name: string;
  result: string;
  p50?: string;
  p99?: string;
  cpu?: CpuFigures;
}

interface Ctx {
  server: ServerProcess;
  rest: RestClient;
  sims: SimProcess[];
  inspector: Inspector | undefined;
  profileDir: string | undefined;
  profiles: Array<{ name: string; file: string; summary: ProfileSummary }>;
  /** Windows already profiled (only the first run of each case is). */
  profiled: Set<string>;
}

async function generatorCpuMs(ctx: Ctx): Promise<number> {
  const own = process.cpuUsage();
  let ms = (own.user + own.system) / 1000;
  for (const s of await Promise.all(ctx.sims.map((sim) => sim.stats())))
    ms += (s.cpuUserUs + s.cpuSystemUs) / 1000;
  return ms;
}

/**
 * A measured window: CPU of the server and of the load generator (this process and the
 * simulators), and with --profile a CPU profile of the server.
 */
async function beginWindow(ctx: Ctx, name: string): Promise<() => Promise<CpuFigures>> {
  const profiling = ctx.profileDir !== undefined && ctx.inspector !== undefined && !ctx.profiled.has(name);
  if (profiling) {
    ctx.profiled.add(name);
    await ctx.inspector?.startProfile();
  }
  const g0 = await generatorCpuMs(ctx);
  const s0 = processCpuMs(ctx.server.pid);
  const m0 = machineCpuMs();
  const t0 = performance.now();
  return async () => {
    const elapsedMs = performance.now() - t0;
    const s1 = processCpuMs(ctx.server.pid);
    const m1 = machineCpuMs();
    const g1 = await generatorCpuMs(ctx);
    if (profiling && ctx.inspector && ctx.profileDir) {
      const profile: CpuProfile = await ctx.inspector.stopProfile();
      const file = join(ctx.profileDir, `server-${name}.cpuprofile`);
      writeFileSync(file, JSON.stringify(profile));
      ctx.profiles.push({ name, file, summary: summarizeProfile(profile) });
    }
    const serverCpuPct = ((s1 - s0) * 100) / elapsedMs;
    const generatorCpuPct = ((g1 - g0) * 100) / elapsedMs;
    const share = (ms: number) => (ms * 100) / elapsedMs;
    return {
      elapsedMs,
      serverCpuPct,
      generatorCpuPct,
      otherCpuPct: Math.max(0, share(m1.processes - m0.processes) - serverCpuPct - generatorCpuPct),
      interruptCpuPct: share(m1.interrupts - m0.interrupts),
      stealCpuPct: share(m1.steal - m0.steal),
    };
  };
}

// --- device logins ----------------------------------------------------------------------

interface LoginResult {
  attempted: number;
  ok: number;
  failed: number;
  skipped: number;
  elapsedMs: number;
  perSecond: number;
  p50ms: number;
  p99ms: number;
  errors: string[];
  cpu: CpuFigures | undefined;
}

/** Logs devices in through the simulators, `IN_FLIGHT_LOGINS` pending at once in total. */
async function login(
  ctx: Ctx,
  indices: number[],
  label: string,
  options: { deadlineMs: number; timeoutMs: number; window?: string },
): Promise<LoginResult> {
  const parts: number[][] = ctx.sims.map(() => []);
  for (const i of indices) parts[i % ctx.sims.length]?.push(i);
  const inFlight = Math.ceil(IN_FLIGHT_LOGINS / ctx.sims.length);
  const ticker = setInterval(() => {
    const done = ctx.sims.reduce((a, s) => a + s.progress, 0);
    note(`  ${label}: ${fmt(done)} / ${fmt(indices.length)} logged in`);
  }, 5000);
  const end = options.window ? await beginWindow(ctx, options.window) : undefined;
  const t0 = performance.now();
  const results = await Promise.all(
    ctx.sims.map((sim, k) =>
      sim.connect(parts[k] as number[], inFlight, options.timeoutMs, options.deadlineMs),
    ),
  );
  const elapsedMs = performance.now() - t0;
  const cpu = end ? await end() : undefined;
  clearInterval(ticker);
  const latencies = results.flatMap((r) => r.latenciesMs).sort((a, b) => a - b);
  const ok = results.reduce((a, r) => a + r.ok, 0);
  return {
    attempted: indices.length,
    ok,
    failed: results.reduce((a, r) => a + r.failed, 0),
    skipped: results.reduce((a, r) => a + r.skipped, 0),
    elapsedMs,
    perSecond: (ok * 1000) / elapsedMs,
    p50ms: percentile(latencies, 0.5),
    p99ms: percentile(latencies, 0.99),
    errors: results.flatMap((r) => r.errors),
    cpu,
  };
}

function checkLogins(r: LoginResult, label: string): void {
  if (r.failed > 0 || r.skipped > 0)
    note(
      `  ${label}: ${r.failed} failed, ${r.skipped} not attempted (deadline)${r.errors.length ? `; e.g. ${r.errors.join('; ')}` : ''}`,
    );
}

async function disconnectAll(ctx: Ctx): Promise<void> {
  await Promise.all(ctx.sims.map((s) => s.disconnect()));
  const deadline = performance.now() + 60_000;
  while ((await ctx.rest.connectedDevices()) > 0) {
    if (performance.now() > deadline) throw new Error('devices still connected 60 s after disconnecting');
    await sleep(100);
  }
}

// --- memory -----------------------------------------------------------------------------

interface MemorySample {
  rssKb: number;
  heapUsed: number;
  external: number;
  /** Forced GC before reading (inspector), or not. */
  gc: boolean;
}

async function memorySample(ctx: Ctx): Promise<MemorySample> {
  if (ctx.inspector) {
    await ctx.inspector.gc();
    await sleep(300);
    const m = await ctx.inspector.memoryUsage();
    return {
      rssKb: procStatusKb(ctx.server.pid, 'VmRSS'),
      heapUsed: m.heapUsed,
      external: m.external,
      gc: true,
    };
  }
  return {
    rssKb: procStatusKb(ctx.server.pid, 'VmRSS'),
    heapUsed: await ctx.rest.metric('nodejs_heap_size_used_bytes'),
    external: await ctx.rest.metric('nodejs_external_memory_bytes'),
    gc: false,
  };
}

// --- REST calls -------------------------------------------------------------------------

interface RestResult {
  client: HttpClientKind;
  /** calls/s of every run; the other figures are the median run's. */
  runs: number[];
  concurrency: number;
  calls: number;
  callsPerSecond: number;
  p50ms: number;
  p99ms: number;
  errors: number;
  firstError: string | undefined;
  cpu: CpuFigures;
}

/** A GET on one of `paths` with the given client: status and body. */
type Caller = (path: number) => Promise<{ status: number; body: string }>;

async function restCalls(
  ctx: Ctx,
  client: HttpClientKind,
  concurrency: number,
  devices: number[],
): Promise<RestResult> {
  const paths = devices.map(
    (i) => `/v3/users/${BENCH_USER}/devices/${deviceName(i)}/resources/${SAMPLE_RESOURCE}`,
  );
  // One caller per worker: undici shares a Pool of `concurrency` connections; the raw client
  // gives each worker its own keep-alive connection.
  let callers: Caller[];
  let close: () => Promise<void>;
  if (client === 'undici') {
    const pool = new Pool(ctx.server.origin, { connections: concurrency, pipelining: 1 });
    const headers = { authorization: `Bearer ${ctx.rest.token}` };
    const call: Caller = async (k) => {
      const { statusCode, body } = await pool.request({ method: 'GET', path: paths[k] as string, headers });
      return { status: statusCode, body: await body.text() };
    };
    callers = Array.from({ length: concurrency }, () => call);
    close = () => pool.close();
  } else {
    const requests = paths.map((path) =>
      Buffer.from(
        `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${ctx.server.httpPort}\r\nAuthorization: Bearer ${ctx.rest.token}\r\n\r\n`,
      ),
    );
    const conns = await Promise.all(
      Array.from({ length: concurrency }, () => RawHttpConnection.connect(ctx.server.httpPort)),
    );
    callers = conns.map((c) => (k: number) => c.request(requests[k] as Buffer));
    close = async () => {
      for (const c of conns) c.close();
    };
  }
  const expected = JSON.stringify(SAMPLE);
  let next = 0;
  let errors = 0;
  let firstError: string | undefined;
  const run = async (ms: number, latencies: number[] | undefined) => {
    const deadline = performance.now() + ms;
    const worker = async (call: Caller) => {
      while (performance.now() < deadline) {
        const k = next++ % paths.length;
        const t0 = performance.now();
        const { status, body } = await call(k);
        latencies?.push(performance.now() - t0);
        if (status !== 200 || body !== expected) {
          errors++;
          firstError ??= `${paths[k]}: ${status} ${body.slice(0, 200)}`;
        }
      }
    };
    await Promise.all(callers.map(worker));
  };
  await run(1500, undefined); // warm-up: connections, JIT
  errors = 0;
  const results: Omit<RestResult, 'runs'>[] = [];
  for (let r = 0; r < RUNS; r++) {
    const latencies: number[] = [];
    const errorsBefore = errors;
    const end = await beginWindow(ctx, `rest-${client}-c${concurrency}`);
    await run(SECONDS * 1000, latencies);
    const cpu = await end();
    latencies.sort((a, b) => a - b);
    results.push({
      client,
      concurrency,
      calls: latencies.length,
      callsPerSecond: (latencies.length * 1000) / cpu.elapsedMs,
      p50ms: percentile(latencies, 0.5),
      p99ms: percentile(latencies, 0.99),
      errors: errors - errorsBefore,
      firstError,
      cpu,
    });
  }
  await close();
  const m = median(results, (r) => r.callsPerSecond);
  return { ...m.median, errors, runs: m.values };
}

// --- streaming --------------------------------------------------------------------------

interface StreamResult {
  /** messages/s of every run; the other figures are the median run's. */
  runs: number[];
  devices: number;
  sockets: number;
  messages: number;
  messagesPerSecond: number;
  dropped: number;
  verifiedSockets: number;
  problems: string[];
  problemCount: number;
  cpu: CpuFigures;
}

/** What the streaming case reads from its consumer, whichever way it subscribed. */
interface StreamReader {
  total(): number;
  /** Delivered per simulator (undefined: only the total is known). */
  delivered(k: number): number | undefined;
  verified(): number;
  problems(): string[];
  problemCount(): number;
  close(): void;
}

async function openStreamReader(ctx: Ctx, indices: number[]): Promise<StreamReader> {
  const token = encodeURIComponent(ctx.rest.token);
  if (STREAM_VIA === 'fleet') {
    const c = await openFleetConsumer(
      ctx.server.httpPort,
      `/v2/users/${BENCH_USER}/events?authorization=${token}`,
      SAMPLE_RESOURCE,
      indices.length,
    );
    return {
      total: () => c.delivered,
      delivered: () => undefined,
      verified: () => (c.verified ? 1 : 0),
      problems: () => c.problems,
      problemCount: () => c.problemCount,
      close: () => c.close(),
    };
  }
  const consumer = new StreamConsumer(ctx.server.httpPort, ctx.sims.length);
  await consumer.open(
    indices.map((i) => ({
      path: `/v3/users/${BENCH_USER}/devices/${deviceName(i)}/resources/${SAMPLE_RESOURCE}?authorization=${token}`,
      group: i % ctx.sims.length,
    })),
    50,
  );
  const startDeadline = performance.now() + 60_000;
  while (consumer.started < indices.length) {
    if (performance.now() > startDeadline)
      throw new Error(
        `only ${consumer.started} of ${indices.length} WebSocket streams started within 60 s; ${consumer.problems.join('; ')}`,
      );
    await sleep(50);
  }
  return {
    total: () => consumer.total,
    delivered: (k) => consumer.delivered[k] as number,
    verified: () => consumer.verified,
    problems: () => consumer.problems,
    problemCount: () => consumer.problemCount,
    close: () => consumer.close(),
  };
}

async function streaming(ctx: Ctx, indices: number[]): Promise<StreamResult> {
  const consumer = await openStreamReader(ctx, indices);
  const dropped0 = await ctx.rest.metric('iotmp_ws_messages_dropped_total');
  // Closed loop: each simulator may have `window` frames on the way (sent, not yet received).
  const windows = ctx.sims.map(
    (_, k) => STREAM_WINDOW_PER_DEVICE * indices.filter((i) => i % ctx.sims.length === k).length,
  );
  const granted = ctx.sims.map(() => 0);
  // One events socket cannot tell which simulator a frame came from: each simulator's share of
  // the total, in proportion to its devices, bounds the same total in flight.
  const totalWindow = windows.reduce((a, b) => a + b, 0);
  const deliveredBy = (k: number) =>
    consumer.delivered(k) ?? (consumer.total() * (windows[k] as number)) / totalWindow;
  const grant = () => {
    ctx.sims.forEach((sim, k) => {
      const w = windows[k] as number;
      const room = Math.floor(w - ((granted[k] as number) - deliveredBy(k)));
      if (room >= w / 4) {
        sim.send({ op: 'credit', n: room });
        granted[k] = (granted[k] as number) + room;
      }
    });
  };
  grant();
  const timer = setInterval(grant, 2);
  await sleep(2000); // warm-up
  const measured: Array<{ messages: number; messagesPerSecond: number; cpu: CpuFigures }> = [];
  for (let r = 0; r < RUNS; r++) {
    const m0 = consumer.total();
    const end = await beginWindow(ctx, 'stream');
    await sleep(SECONDS * 1000);
    const m1 = consumer.total();
    const cpu = await end();
    measured.push({ messages: m1 - m0, messagesPerSecond: ((m1 - m0) * 1000) / cpu.elapsedMs, cpu });
  }
  clearInterval(timer);
  for (const sim of ctx.sims) sim.send({ op: 'stop-stream' });
  const dropped1 = await ctx.rest.metric('iotmp_ws_messages_dropped_total');
  consumer.close();
  const m = median(measured, (w) => w.messagesPerSecond);
  return {
    runs: m.values,
    devices: indices.length,
    sockets: STREAM_VIA === 'fleet' ? 1 : indices.length,
    ...m.median,
    dropped: dropped1 - dropped0,
    verifiedSockets: consumer.verified(),
    problems: consumer.problems(),
    problemCount: consumer.problemCount(),
  };
}

// --- the cases --------------------------------------------------------------------------

const range = (from: number, to: number) =>
  Array.from({ length: Math.max(0, to - from) }, (_, k) => from + k);

interface LoginCases {
  memory: {
    connected: number;
    before: MemorySample;
    after: MemorySample;
    rssPerDevice: number;
    heapPerDevice: number;
    externalPerDevice: number;
  };
  repeat: LoginResult & { runs: number[] };
}

/**
 * First logins (the REST-created devices: scrypt each; then the seeded ones), memory per idle
 * device once all are connected, then repeat logins (everybody out, everybody back in).
 */
async function loginCases(
  ctx: Ctx,
  rows: Row[],
  json: Record<string, unknown>,
  seeded: number[],
): Promise<LoginCases> {
  await sleep(1000);
  const before = await memorySample(ctx);
  note('first login of the REST-created devices (scrypt per device)…');
  const firstKdf = await login(ctx, range(0, REST_DEVICES), 'first login (scrypt)', {
    deadlineMs: 600_000,
    timeoutMs: 600_000,
    window: 'first-login',
  });
  checkLogins(firstKdf, 'first login (scrypt)');
  rows.push({
    name: `first login, credential not cached (scrypt N=2^15), ${fmt(firstKdf.ok)} devices, ${IN_FLIGHT_LOGINS} in flight`,
    result: `${fmt(firstKdf.perSecond, 1)} logins/s`,
    p50: msText(firstKdf.p50ms),
    p99: msText(firstKdf.p99ms),
    ...(firstKdf.cpu ? { cpu: firstKdf.cpu } : {}),
  });
  let firstSeeded: LoginResult | undefined;
  if (seeded.length > 0) {
    note(`first login of the ${fmt(seeded.length)} seeded devices…`);
    firstSeeded = await login(ctx, seeded, 'first login (seeded)', {
      deadlineMs: 300_000,
      timeoutMs: 60_000,
      window: 'first-login-seeded',
    });
    checkLogins(firstSeeded, 'first login (seeded)');
    rows.push({
      name: `first login, seeded low-cost hash (N=${SEED_SCRYPT.N}: the login path without the KDF), ${fmt(firstSeeded.ok)} devices`,
      result: `${fmt(firstSeeded.perSecond)} logins/s`,
      p50: msText(firstSeeded.p50ms),
      p99: msText(firstSeeded.p99ms),
      ...(firstSeeded.cpu ? { cpu: firstSeeded.cpu } : {}),
    });
  }
  const connected = await ctx.rest.connectedDevices();
  await sleep(2000);
  const after = await memorySample(ctx);
  const memory = {
    connected,
    before,
    after,
    rssPerDevice: ((after.rssKb - before.rssKb) * 1024) / connected,
    heapPerDevice: (after.heapUsed - before.heapUsed) / connected,
    externalPerDevice: (after.external - before.external) / connected,
  };
  rows.push({
    name: `memory per idle connected device, ${fmt(connected)} devices`,
    result: `${fmt(memory.rssPerDevice / 1024, 2)} KB RSS (V8 heap ${fmt(memory.heapPerDevice / 1024, 2)} KB, external ${fmt(memory.externalPerDevice / 1024, 2)} KB)`,
  });

  const repeats: LoginResult[] = [];
  for (let r = 0; r < RUNS; r++) {
    note(`repeat login ${r + 1}/${RUNS}: disconnecting every device, then ${fmt(DEVICES)} log in again…`);
    await disconnectAll(ctx);
    const result = await login(ctx, range(0, DEVICES), 'repeat login', {
      deadlineMs: 60_000,
      timeoutMs: 30_000,
      window: 'repeat-login',
    });
    checkLogins(result, 'repeat login');
    repeats.push(result);
  }
  const repeatRuns = median(repeats, (r) => r.perSecond);
  const repeat = { ...repeatRuns.median, runs: repeatRuns.values };
  rows.push({
    name: `repeat login (disconnect, log in again: cached verifier), ${fmt(repeat.ok)} devices, ${IN_FLIGHT_LOGINS} in flight`,
    result: `${fmt(repeat.perSecond)} logins/s${spread(repeat.runs)}`,
    p50: msText(repeat.p50ms),
    p99: msText(repeat.p99ms),
    ...(repeat.cpu ? { cpu: repeat.cpu } : {}),
  });
  json.logins = { firstKdf, firstSeeded, repeat };
  json.memory = memory;
  await disconnectAll(ctx);
  return { memory, repeat };
}

/** REST calls over 100 connected devices, concurrency 1 and 100, per HTTP client. */
async function restCases(ctx: Ctx, rows: Row[], json: Record<string, unknown>): Promise<RestResult[]> {
  note(`REST calls: ${REST_CALL_DEVICES} devices…`);
  const devices = range(0, REST_CALL_DEVICES);
  checkLogins(
    await login(ctx, devices, 'REST devices', { deadlineMs: 600_000, timeoutMs: 600_000 }),
    'REST devices',
  );
  const results: RestResult[] = [];
  for (const client of HTTP_CLIENTS)
    for (const c of [1, 100]) {
      const r = await restCalls(ctx, client, c, devices);
      if (r.errors > 0) note(`  ${client}, concurrency ${c}: ${r.errors} bad answers, e.g. ${r.firstError}`);
      results.push(r);
      rows.push({
        name: `REST call → device → response, concurrency ${c}, ${REST_CALL_DEVICES} devices (${client === 'undici' ? 'undici Pool' : 'minimal HTTP client'})`,
        result: `${fmt(r.callsPerSecond)} calls/s${spread(r.runs)}${r.errors ? ` (${fmt(r.errors)} errors)` : ''}`,
        p50: us(r.p50ms),
        p99: us(r.p99ms),
        cpu: r.cpu,
      });
    }
  json.rest = results;
  await disconnectAll(ctx);
  return results;
}

/** STREAM_DATA from STREAM_DEVICES devices to one WebSocket consumer. */
async function streamCase(ctx: Ctx, rows: Row[], json: Record<string, unknown>): Promise<StreamResult> {
  note(
    `streaming: ${STREAM_DEVICES} devices, ${STREAM_VIA === 'fleet' ? 'one events WebSocket (device_resource_stream)' : 'one WebSocket per device resource'}…`,
  );
  const devices = range(0, STREAM_DEVICES);
  checkLogins(
    await login(ctx, devices, 'stream devices', { deadlineMs: 600_000, timeoutMs: 600_000 }),
    'stream devices',
  );
  const stream = await streaming(ctx, devices);
  if (stream.problemCount > 0)
    note(`  stream: ${stream.problemCount} unexpected frames, e.g. ${stream.problems.join(' | ')}`);
  rows.push({
    name: `STREAM_DATA ${fmt(stream.devices)} devices → 1 consumer (${stream.sockets === 1 ? '1 WebSocket, device_resource_stream' : `${fmt(stream.sockets)} WebSockets`}), delivered`,
    result: `${fmt(stream.messagesPerSecond)} messages/s${spread(stream.runs)}${stream.dropped ? ` (${fmt(stream.dropped)} dropped)` : ''}`,
    cpu: stream.cpu,
  });
  json.stream = stream;
  await disconnectAll(ctx);
  return stream;
}

// --- main -------------------------------------------------------------------------------

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
  console.log('# IOTMP server benchmark');
  console.log(
    `machine: ${machine.cpu}, ${machine.cores} cores, ${machine.memoryGb} GB RAM, node ${machine.node}, load average at start ${machine.loadAverageAtStart.join(' ')}`,
  );
  const dataDir = mkdtempSync(join(tmpdir(), 'iotmp-server-bench-'));
  const profileDir = args.profile;
  if (profileDir) mkdirSync(profileDir, { recursive: true });
  const nodeFlags = [
    ...(args['no-inspect'] ? [] : ['--inspect=127.0.0.1:0']),
    ...(args['server-flag'] ?? []),
  ];
  const mainJs =
    args['server-main'] ?? fileURLToPath(new URL('../../packages/server/dist/src/main.js', import.meta.url));
  const adminPassword = `bench-${Math.random().toString(36).slice(2)}`;
  const tStart = performance.now();

  // The server holds its database exclusively: devices beyond the REST-created ones are
  // seeded between a first start (which creates the schema and the user) and the measured one.
  const seeded = range(REST_DEVICES, DEVICES);
  if (seeded.length > 0) {
    const first = await startServerProcess({
      mainJs,
      dataDir,
      adminPassword,
      logFile: join(dataDir, 'server-init.log'),
      nodeFlags: [],
      openFiles: 1024,
    });
    await first.stop();
    seedDevices(join(dataDir, 'iotmp.db'), seeded);
  }
  const server = await startServerProcess({
    mainJs,
    dataDir,
    adminPassword,
    logFile: join(dataDir, 'server.log'),
    nodeFlags,
    openFiles: 65_536,
  });
  const serverFiles = openFilesLimit(server.pid);
  const ownFiles = openFilesLimit('self');
  console.log(
    `server: node ${nodeFlags.join(' ')} ${args['server-main'] ?? 'packages/server/dist/src/main.js'} (pid ${server.pid}), TCP devices on ${server.tcpPort}, HTTP on ${server.httpPort}, data in ${dataDir}; open files: server ${serverFiles}, generator ${ownFiles}`,
  );
  console.log(
    `load generator: ${SIMS} simulator processes (one socket per device, pre-encoded frames, ${args['shared-source-address'] ? 'one source address per simulator' : 'one loopback source address per device'}) + this process (undici Pool, WebSocket consumer); everything shares the same cores`,
  );
  if (serverFiles < DEVICES + 1000)
    note(`warning: the server may open ${DEVICES} device sockets but its open-files limit is ${serverFiles}`);

  const rest = new RestClient(server.origin);
  const sims = Array.from({ length: SIMS }, (_, k) => new SimProcess(k));
  let inspector: Inspector | undefined;
  if (server.inspectorUrl) inspector = await Inspector.connect(server.inspectorUrl);
  else if (!args['no-inspect'])
    note('warning: no inspector URL from the server; memory is read without a forced GC');
  const ctx: Ctx = { server, rest, sims, inspector, profileDir, profiles: [], profiled: new Set() };
  const rows: Row[] = [];
  const json: Record<string, unknown> = { machine };

  try {
    await rest.login(BENCH_USER, adminPassword);
    // Each device from its own loopback source address, as devices on the Internet (or, with
    // --shared-source-address, all devices of a simulator from one address, as behind a NAT).
    await Promise.all(
      sims.map((s, k) =>
        s.init('127.0.0.1', server.tcpPort, args['shared-source-address'] ? `127.0.0.${11 + k}` : null),
      ),
    );

    // --- devices: REST (scrypt each) and seeded
    note(
      `creating ${REST_DEVICES} devices through POST /v1/users/${BENCH_USER}/devices (scrypt each, 8 at a time)…`,
    );
    const tCreate = performance.now();
    let lastNote = 0;
    await rest.createDevices(range(0, REST_DEVICES), 8, (done) => {
      if (performance.now() - lastNote > 5000 || done === REST_DEVICES) {
        lastNote = performance.now();
        note(`  created ${done} / ${REST_DEVICES}`);
      }
    });
    const createMs = performance.now() - tCreate;
    json.setup = {
      restCreated: REST_DEVICES,
      restCreateSeconds: createMs / 1000,
      restCreatePerSecond: (REST_DEVICES * 1000) / createMs,
      seeded: seeded.length,
      seedHash: `scrypt N=${SEED_SCRYPT.N} r=${SEED_SCRYPT.r} p=${SEED_SCRYPT.p}`,
    };
    console.log(
      `devices: ${fmt(REST_DEVICES)} created through REST in ${fmt(createMs / 1000, 1)} s (${fmt((REST_DEVICES * 1000) / createMs, 1)}/s, scrypt N=2^15 each), ${fmt(seeded.length)} seeded into the database with a low-cost hash (N=${SEED_SCRYPT.N})`,
    );

    let logins: LoginCases | undefined;
    if (CASES.has('logins')) logins = await loginCases(ctx, rows, json, seeded);
    let restResults: RestResult[] | undefined;
    if (CASES.has('rest')) restResults = await restCases(ctx, rows, json);
    let stream: StreamResult | undefined;
    if (CASES.has('stream')) stream = await streamCase(ctx, rows, json);

    // --- report
    const elapsedS = (performance.now() - tStart) / 1000;
    machine.loadAverageAtEnd = loadavg().map((l) => Number(l.toFixed(2)));
    console.log('');
    console.log(
      '| case | result | p50 | p99 | server CPU | load generator CPU | other processes | softirq | steal |',
    );
    console.log('|---|---:|---:|---:|---:|---:|---:|---:|---:|');
    for (const r of rows) {
      const c = r.cpu;
      const cols = c
        ? [c.serverCpuPct, c.generatorCpuPct, c.otherCpuPct, c.interruptCpuPct, c.stealCpuPct].map(pct)
        : ['', '', '', '', ''];
      console.log(`| ${r.name} | ${r.result} | ${r.p50 ?? ''} | ${r.p99 ?? ''} | ${cols.join(' | ')} |`);
    }
    console.log('');
    console.log(
      `CPU: % of one core over the measured window (${machine.cores} cores = ${machine.cores * 100} %), from /proc: the server process; the load generator (this process and the simulators); other processes on the machine meanwhile; interrupt time (irq + softirq, where loopback networking runs); steal (other guests of the hypervisor).`,
    );
    if (logins) {
      const { before, after, connected } = logins.memory;
      console.log(
        `memory: server VmRSS ${fmt(before.rssKb / 1024, 1)} MB → ${fmt(after.rssKb / 1024, 1)} MB, V8 heap used ${fmt(before.heapUsed / 2 ** 20, 1)} MB → ${fmt(after.heapUsed / 2 ** 20, 1)} MB, ${before.gc ? 'each after a forced GC' : 'no forced GC (no inspector)'}, ${fmt(connected)} devices connected.`,
      );
    }
    if (stream)
      console.log(
        `stream: ${fmt(stream.messages)} messages in the median ${fmt(stream.cpu.elapsedMs / 1000, 1)} s window, after a 2 s warm-up; window ${STREAM_WINDOW_PER_DEVICE} frames per device; sample content checked on ${fmt(stream.verifiedSockets)} sockets; ${fmt(stream.dropped)} dropped by the server.`,
      );
    console.log(
      `load average at end: ${machine.loadAverageAtEnd.join(' ')}; total run time ${fmt(elapsedS)} s (of which device creation through REST ${fmt(createMs / 1000)} s).`,
    );

    const targets: Array<{ target: string; value: number; met: boolean; shown: string }> = [];
    const c100 = restResults?.find((r) => r.concurrency === 100);
    if (c100)
      targets.push({
        target: `REST calls at concurrency 100 >= ${fmt(TARGETS.restCallsPerSecond)}/s (${c100.client === 'undici' ? 'undici' : 'minimal'} client)`,
        value: c100.callsPerSecond,
        met: c100.callsPerSecond >= TARGETS.restCallsPerSecond && c100.errors === 0,
        shown: `${fmt(c100.callsPerSecond)} calls/s`,
      });
    if (logins) {
      const { repeat, memory } = logins;
      const memoryAtFull = memory.connected >= 10_000;
      targets.push(
        {
          target: `repeat logins >= ${fmt(TARGETS.repeatLoginsPerSecond)}/s`,
          value: repeat.perSecond,
          met: repeat.perSecond >= TARGETS.repeatLoginsPerSecond && repeat.failed === 0,
          shown: `${fmt(repeat.perSecond)} logins/s`,
        },
        {
          target: `memory per idle device <= 4 KB (${TARGETS.bytesPerIdleDevice} bytes) at 10,000 devices`,
          value: memory.rssPerDevice,
          met: memory.rssPerDevice <= TARGETS.bytesPerIdleDevice && memoryAtFull,
          shown: `${fmt(memory.rssPerDevice)} bytes RSS at ${fmt(memory.connected)} devices${memoryAtFull ? '' : ' (not at 10,000: not comparable)'}`,
        },
      );
    }
    if (stream)
      targets.push({
        target: `STREAM_DATA delivered >= ${fmt(TARGETS.streamMessagesPerSecond)} messages/s`,
        value: stream.messagesPerSecond,
        met: stream.messagesPerSecond >= TARGETS.streamMessagesPerSecond,
        shown: `${fmt(stream.messagesPerSecond)} messages/s`,
      });
    console.log('');
    for (const t of targets) console.log(`target ${t.target}: ${t.met ? 'MET' : 'NOT MET'} (${t.shown})`);
    json.targets = targets;
    json.runSeconds = elapsedS;

    if (ctx.profiles.length > 0) {
      console.log('\n## Server CPU profiles (self time)');
      for (const p of ctx.profiles) {
        console.log(`\n### ${p.name} (${fmt(p.summary.totalMs)} ms, ${p.file})`);
        console.log(p.summary.areas.map((a) => `${a.area} ${fmt(a.selfPct, 1)} %`).join(', '));
        for (const f of p.summary.functions)
          console.log(`- ${fmt(f.selfPct, 1)} % ${f.name}${f.location ? ` (${f.location})` : ''}`);
      }
      json.profiles = ctx.profiles;
    }
    if (args.json) writeFileSync(args.json, JSON.stringify(json, null, 2));
  } finally {
    inspector?.close();
    for (const s of sims) s.kill();
    await rest.close().catch(() => undefined);
    const code = await server.stop();
    if (code !== 0) note(`the server exited with ${code}; its log: ${server.logFile}`);
    if (!args.keep && code === 0) rmSync(dataDir, { recursive: true, force: true });
    else note(`data directory and server log kept in ${dataDir}`);
  }
}

main().then(
  () => setTimeout(() => process.exit(0), 100).unref(),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
