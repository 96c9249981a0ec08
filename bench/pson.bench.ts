/**
 * PSON benchmark: new (v1) and legacy (v0) PSON against JSON, msgpackr and cbor-x, encode and
 * decode, on four payloads. Run with `npm run bench` (or `node bench/dist/pson.bench.js` after
 * `npx tsc -b bench`).
 *
 * Options: --json <file> (also write the results as JSON), --ms <n> (measuring time per
 * benchmark, default 1000), --case <names> (only these payloads, comma-separated: sensor,
 * samples100, config, blob4k).
 *
 * The harness: each benchmark gets its own compiled loop (so no call site is shared between
 * codecs), warms up, sizes its batches to ~50 ms, then the benchmarks of a payload run one
 * batch each in turn for the measuring time; the result is the median batch rate. Every result
 * is kept and checked, so nothing is dead code.
 */
import { writeFileSync } from 'node:fs';
import os from 'node:os';
import { decode as psonDecode, encode as psonEncode } from '@iotmp/pson';
import { decode as cborDecode, encode as cborEncode } from 'cbor-x';
import { pack, unpack } from 'msgpackr';

// ---------------------------------------------------------------------------------------
// Options

function parseArgs(argv: string[]): { json?: string; ms: number; only?: string[] } {
  const out: { json?: string; ms: number; only?: string[] } = { ms: 1000 };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const next = argv[i + 1];
    if ((arg === '--json' || arg === '--ms' || arg === '--case') && next === undefined) {
      throw new Error(`${arg} needs a value`);
    }
    if (arg === '--json') out.json = argv[++i];
    else if (arg === '--ms') out.ms = Number(argv[++i]);
    else if (arg === '--case') out.only = argv[++i]?.split(',');
    else throw new Error(`unknown argument ${arg}`);
  }
  if (!(out.ms > 0)) throw new Error('--ms must be a positive number');
  return out;
}

const args = parseArgs(process.argv.slice(2));

// ---------------------------------------------------------------------------------------
// Payloads (deterministic: a seeded PRNG, so every run measures the same bytes)

function prng(seed: number): () => number {
  // mulberry32
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const rand = prng(0x1017);
const pick = <T>(items: readonly T[]): T => items[Math.floor(rand() * items.length)] as T;

const sensor = { temperature: 23.5, humidity: 60, pressure: 1013, label: 'outdoor' };

// Readings as a device would report them: one decimal for temperature, whole percent and hPa.
const samples100 = Array.from({ length: 100 }, () => ({
  temperature: Math.round((15 + rand() * 15) * 10) / 10,
  humidity: Math.round(35 + rand() * 50),
  pressure: Math.round(990 + rand() * 40),
  label: pick(['outdoor', 'indoor', 'garage', 'greenhouse', 'basement']),
}));

const config = {
  device: {
    id: 'dev-7f3a9c21',
    model: 'TH-200',
    firmware: '2.14.3',
    serial: 'SN0047113255',
    location: { site: 'Zaragoza plant 2', building: 'B', floor: 1, lat: 41.6488, lon: -0.8891 },
  },
  network: {
    wifi: { ssid: 'plant2-iot', security: 'wpa2', channel: 11, dhcp: true },
    mqtt: { host: 'broker.example.com', port: 8883, tls: true, keepAlive: 60, qos: 1 },
    ntp: ['0.pool.ntp.org', '1.pool.ntp.org'],
  },
  sensors: [
    { name: 'temperature', unit: 'C', interval: 30, offset: -0.3, enabled: true, range: [-40, 85] },
    { name: 'humidity', unit: '%', interval: 30, offset: 1.5, enabled: true, range: [0, 100] },
    { name: 'pressure', unit: 'hPa', interval: 300, offset: 0, enabled: true, range: [300, 1100] },
    { name: 'co2', unit: 'ppm', interval: 60, offset: 0, enabled: false, range: [400, 5000] },
  ],
  alarms: {
    highTemperature: { threshold: 35.5, hysteresis: 0.5, notify: ['ops@example.com'], enabled: true },
    lowBattery: { threshold: 3.3, hysteresis: 0.1, notify: ['ops@example.com'], enabled: true },
  },
  schedule: { reportEvery: 300, quietHours: [22, 6], timezone: 'Europe/Madrid' },
  features: { ota: true, remoteLog: false, debug: false, ledBlink: true },
  logLevel: 'info',
  tags: ['production', 'hvac', 'zone-3'],
};

const blob4k = new Uint8Array(4096);
for (let i = 0; i < blob4k.length; i++) blob4k[i] = Math.floor(rand() * 256);

interface Case {
  name: string;
  title: string;
  value: unknown;
}

const cases: Case[] = [
  { name: 'sensor', title: 'sensor sample', value: sensor },
  { name: 'samples100', title: '100 samples (array)', value: samples100 },
  { name: 'config', title: 'nested config (~1 KiB)', value: config },
  { name: 'blob4k', title: '4 KiB binary blob', value: blob4k },
];

// ---------------------------------------------------------------------------------------
// Codecs

interface Codec {
  name: string;
  encode(value: unknown): Uint8Array;
  decode(bytes: Uint8Array): unknown;
}

// JSON has no bytes type: the blob travels as a base64 string, as JSON APIs commonly do.
function toJsonable(value: unknown): unknown {
  return value instanceof Uint8Array ? Buffer.from(value).toString('base64') : value;
}

const V0 = { version: 0 } as const;

const codecs: Codec[] = [
  { name: 'PSON v1', encode: (v) => psonEncode(v), decode: (b) => psonDecode(b) },
  { name: 'PSON v0', encode: (v) => psonEncode(v, V0), decode: (b) => psonDecode(b, V0) },
  {
    name: 'JSON',
    encode: (v) => Buffer.from(JSON.stringify(v)),
    decode: (b) => JSON.parse((b as Buffer).toString()),
  },
  { name: 'msgpackr', encode: (v) => pack(v), decode: (b) => unpack(b) },
  { name: 'cbor-x', encode: (v) => cborEncode(v), decode: (b) => cborDecode(b) },
];

// ---------------------------------------------------------------------------------------
// Harness

type Loop = <T>(fn: (x: T) => unknown, input: T, n: number) => unknown;

/**
 * A fresh loop function per benchmark: with one shared loop, its call site would see every
 * codec, turn megamorphic and stop inlining, and later benchmarks would pay for earlier ones.
 */
function makeLoop(): Loop {
  return new Function(
    'fn',
    'input',
    'n',
    'let last; for (let i = 0; i < n; i++) last = fn(input); return last;',
  ) as Loop;
}

const BATCH_MS = 50;
const WARMUP_MS = 250;
const MIN_BATCHES = 5;

/** One thing to time: `fn(input)` in batches of `batch` calls. */
interface Bench<T = unknown> {
  fn: (x: T) => unknown;
  input: T;
  loop: Loop;
  batch: number;
  rates: number[];
  time: number;
  last: unknown;
}

function bench<T>(fn: (x: T) => unknown, input: T): Bench {
  return { fn, input, loop: makeLoop(), batch: 1, rates: [], time: 0, last: undefined } as Bench;
}

/** Warms up, doubling the batch until it is long enough to size batches of ~BATCH_MS. */
function warmUp(b: Bench): void {
  let n = 1;
  let elapsed = 0;
  let warmed = 0;
  while (warmed < WARMUP_MS) {
    const t0 = performance.now();
    b.last = b.loop(b.fn, b.input, n);
    elapsed = performance.now() - t0;
    warmed += elapsed;
    if (elapsed < BATCH_MS / 4) n *= 2;
  }
  b.batch = Math.max(1, Math.round((n / elapsed) * BATCH_MS));
}

/**
 * Times all benchmarks of one payload together, one batch of each in turn, until each has
 * run for the measuring time: on a shared machine, load changes then hit every codec alike
 * instead of whichever happened to run at the time.
 */
function runRoundRobin(benches: Bench[]): void {
  for (const b of benches) warmUp(b);
  const unfinished = (b: Bench) => b.time < args.ms || b.rates.length < MIN_BATCHES;
  while (benches.some(unfinished)) {
    for (const b of benches) {
      if (!unfinished(b)) continue;
      const t0 = performance.now();
      b.last = b.loop(b.fn, b.input, b.batch);
      const dt = performance.now() - t0;
      b.time += dt;
      b.rates.push((b.batch / dt) * 1000);
    }
  }
}

function median(xs: number[]): number {
  const sorted = [...xs].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] as number;
}

/** Structural equality that treats Buffer and Uint8Array with the same bytes as equal. */
function same(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (a instanceof Uint8Array && b instanceof Uint8Array) {
    return a.length === b.length && a.every((x, i) => x === b[i]);
  }
  if (Array.isArray(a) && Array.isArray(b)) {
    return a.length === b.length && a.every((x, i) => same(x, b[i]));
  }
  if (a !== null && b !== null && typeof a === 'object' && typeof b === 'object') {
    const ka = Object.keys(a);
    const kb = Object.keys(b);
    const ra = a as Record<string, unknown>;
    const rb = b as Record<string, unknown>;
    return ka.length === kb.length && ka.every((k) => Object.hasOwn(rb, k) && same(ra[k], rb[k]));
  }
  return false;
}

interface Result {
  case: string;
  codec: string;
  bytes: number;
  encodeOps: number;
  decodeOps: number;
  /** Decoding gives back the input exactly (legacy PSON rounds some floats to binary32). */
  exact: boolean;
}

const results: Result[] = [];

const cpus = os.cpus();
// The load average tells whether other work shared the machine (it skews absolute numbers;
// ratios, measured in turn, much less).
const loadAtStart = os.loadavg()[0] ?? 0;
console.log(`# PSON benchmark`);
console.log(
  `machine: ${cpus[0]?.model ?? 'unknown CPU'} × ${cpus.length}, Node.js ${process.version}, ` +
    `${os.platform()} ${os.arch()}, load average ${loadAtStart.toFixed(2)}`,
);
console.log(
  `harness: ${WARMUP_MS} ms warm-up, ${BATCH_MS} ms batches taken in turn for ${args.ms} ms each, median batch\n`,
);

for (const c of cases) {
  if (args.only !== undefined && !args.only.includes(c.name)) continue;
  const runs = codecs.map((codec) => {
    const input = codec.name === 'JSON' ? toJsonable(c.value) : c.value;
    // Decoders get a Buffer, as from a socket; a copy, since some encoders reuse their output memory.
    const bytes = Buffer.from(codec.encode(input));
    const back = codec.decode(bytes);
    const exact = same(back, input);
    if (!exact && !codec.name.startsWith('PSON v0')) {
      throw new Error(`${codec.name} does not round-trip the ${c.title}`);
    }
    return { codec, bytes, back, exact, enc: bench(codec.encode, input), dec: bench(codec.decode, bytes) };
  });
  runRoundRobin(runs.flatMap((r) => [r.enc, r.dec]));
  for (const r of runs) {
    const name = r.codec.name;
    if ((r.enc.last as Uint8Array).length !== r.bytes.length) throw new Error(`${name}: unstable output`);
    if (!same(r.dec.last, r.back)) throw new Error(`${name}: decoding changed between runs`);
    results.push({
      case: c.name,
      codec: name,
      bytes: r.bytes.length,
      encodeOps: median(r.enc.rates),
      decodeOps: median(r.dec.rates),
      exact: r.exact,
    });
  }
  process.stderr.write(`${c.name} `);
}
process.stderr.write('\n');

// ---------------------------------------------------------------------------------------
// Report

const fmtOps = (hz: number): string => Math.round(hz).toLocaleString('en-US');
const fmtRatio = (x: number): string => `${x.toFixed(2)}×`;

console.log('| payload | codec | size (B) | encode ops/s | × JSON | decode ops/s | × JSON |');
console.log('|---|---|---:|---:|---:|---:|---:|');
for (const c of cases) {
  const json = results.find((r) => r.case === c.name && r.codec === 'JSON');
  for (const r of results) {
    if (r.case !== c.name || json === undefined) continue;
    const note = r.exact ? '' : ' ¹';
    console.log(
      `| ${c.title} | ${r.codec}${note} | ${r.bytes} | ${fmtOps(r.encodeOps)} | ` +
        `${fmtRatio(r.encodeOps / json.encodeOps)} | ${fmtOps(r.decodeOps)} | ` +
        `${fmtRatio(r.decodeOps / json.decodeOps)} |`,
    );
  }
}
if (results.some((r) => r.case === 'blob4k')) {
  console.log('\nJSON carries the blob as a base64 string. msgpackr and cbor-x decode byte strings');
  console.log('as views into the input (no copy); PSON returns a copy.');
}
if (results.some((r) => !r.exact)) {
  console.log('¹ legacy PSON stores some floats as binary32 (lossy, as Protoson does).');
}

// Targets: PSON v1 on the sensor sample, encode and decode each >= JSON and >= 0.7x msgpackr.
const find = (codec: string) => results.find((r) => r.case === 'sensor' && r.codec === codec);
const v1 = find('PSON v1');
const json = find('JSON');
const mp = find('msgpackr');
let targets: Record<string, { ratio: number; ok: boolean }> | undefined;
if (v1 && json && mp) {
  const check = (ours: number, theirs: number, need: number) => ({
    ratio: ours / theirs,
    ok: ours >= need * theirs,
  });
  targets = {
    'encode >= JSON': check(v1.encodeOps, json.encodeOps, 1),
    'encode >= 0.7x msgpackr': check(v1.encodeOps, mp.encodeOps, 0.7),
    'decode >= JSON': check(v1.decodeOps, json.decodeOps, 1),
    'decode >= 0.7x msgpackr': check(v1.decodeOps, mp.decodeOps, 0.7),
  };
  const all = Object.values(targets).every((t) => t.ok);
  const detail = Object.entries(targets)
    .map(([k, t]) => `${k} ${t.ok ? 'yes' : 'NO'} (${fmtRatio(t.ratio)})`)
    .join('; ');
  console.log(`\nTargets (PSON v1, sensor sample): ${all ? 'MET' : 'NOT MET'} — ${detail}`);
}

if (args.json !== undefined) {
  const report = {
    machine: {
      cpu: cpus[0]?.model,
      cores: cpus.length,
      node: process.version,
      platform: os.platform(),
      loadAverage: loadAtStart,
    },
    harness: { warmupMs: WARMUP_MS, batchMs: BATCH_MS, measureMs: args.ms, statistic: 'median batch' },
    results,
    targets,
  };
  writeFileSync(args.json, `${JSON.stringify(report, null, 2)}\n`);
  console.log(`results written to ${args.json}`);
}
