// Standalone fuzz run of the PSON decoder (both encodings). Not a *.test.ts file, so `npm test`
// skips it; build with `npx tsc -b packages/pson`, then
//
//   node packages/pson/dist/test/fuzz.js [count=1000000] [seed]
//
// Inputs: random bytes and mutations (bit flips, byte changes, insertions, deletions,
// truncation, repeats) of encodings of random values, each decoded as new and as legacy
// PSON with a random option set. Checks: only a value or a PsonError (with a decoding code
// and an in-range offset) comes out; whatever decodes encodes again and decodes (strictly)
// to the same value, and that re-encoding is a fixed point; no input takes more than
// SLOW_MS; Object.prototype is never touched. Exits 1 on any failure, printing the input hex.
//
// Under `node --test` (NODE_TEST_CONTEXT set) without a count it does a short smoke run.
import {
  type DecodeOptions,
  decode,
  encode,
  PsonError,
  PsonErrorCode,
  type PsonValue,
  type PsonVersion,
} from '../src/index.js';

const SLOW_MS = 50;
const PROGRESS_EVERY = 100_000;
const MAX_REPORTED_FAILURES = 20;

const smoke = process.env.NODE_TEST_CONTEXT !== undefined && process.argv[2] === undefined;
const count = process.argv[2] !== undefined ? Number(process.argv[2]) : smoke ? 20_000 : 1_000_000;
const seed =
  process.argv[3] !== undefined ? Number(process.argv[3]) >>> 0 : (Date.now() ^ (process.pid << 16)) >>> 0;
if (!Number.isSafeInteger(count) || count < 0 || !Number.isFinite(seed)) {
  console.error('usage: node fuzz.js [count] [seed]');
  process.exit(2);
}

// ---------------------------------------------------------------------------------------
// Deterministic PRNG (sfc32), so a seed reproduces a run.

let a = 0x9e3779b9;
let b = 0x243f6a88;
let c = 0xb7e15162;
let d = seed | 0;
function next(): number {
  a |= 0;
  b |= 0;
  c |= 0;
  d |= 0;
  const t = (((a + b) | 0) + d) | 0;
  d = (d + 1) | 0;
  a = b ^ (b >>> 9);
  b = (c + (c << 3)) | 0;
  c = (c << 21) | (c >>> 11);
  c = (c + t) | 0;
  return t >>> 0;
}
for (let i = 0; i < 16; i++) next();

/** 0 … n-1 */
function int(n: number): number {
  return next() % n;
}
function chance(p: number): boolean {
  return next() / 0x1_0000_0000 < p;
}
function pick<T>(items: readonly T[]): T {
  return items[int(items.length)] as T;
}

// ---------------------------------------------------------------------------------------
// Random values

const INTERESTING_INTS = [
  0,
  1,
  2,
  30,
  31,
  127,
  128,
  255,
  16383,
  16384,
  2 ** 31,
  2 ** 32,
  2 ** 53 - 1,
  -1,
  -30,
  -31,
  -128,
];
const INTERESTING_BIGS = [2n ** 53n, 2n ** 63n - 1n, 2n ** 63n, 2n ** 64n - 1n, -(2n ** 53n), -(2n ** 63n)];
const KEYS = [
  '__proto__',
  'constructor',
  'toString',
  '',
  'a',
  'b',
  '0',
  '1',
  '42',
  'temperature',
  '\uFEFF',
  'ñ',
];
const f64 = new Float64Array(1);
const f64Bytes = new Uint8Array(f64.buffer);

function randomString(maxLength: number): string {
  const n = int(maxLength + 1);
  let s = '';
  const alphabet = int(4);
  for (let i = 0; i < n; i++) {
    if (alphabet === 0) s += String.fromCharCode(0x61 + int(26));
    else if (alphabet === 1) s += String.fromCharCode(int(0x80));
    else {
      // any code point except surrogate halves
      let cp = chance(0.5) ? int(0x800) : int(0x110000);
      if (cp >= 0xd800 && cp <= 0xdfff) cp = 0xfffd;
      s += String.fromCodePoint(cp);
    }
  }
  return s;
}

function randomBytes(maxLength: number): Uint8Array {
  const out = new Uint8Array(int(maxLength + 1));
  for (let i = 0; i < out.length; i++) out[i] = int(256);
  return out;
}

function randomLeaf(): unknown {
  switch (int(12)) {
    case 0:
      return null;
    case 1:
      return chance(0.5);
    case 2:
      return int(61) - 30;
    case 3:
      return pick(INTERESTING_INTS);
    case 4:
      return (chance(0.5) ? 1 : -1) * Math.floor((next() / 0x1_0000_0000) * Number.MAX_SAFE_INTEGER);
    case 5:
      return pick(INTERESTING_BIGS);
    case 6: {
      for (let i = 0; i < 8; i++) f64Bytes[i] = int(256);
      return f64[0];
    }
    case 7:
      return Math.fround((next() / 0x1_0000) * (chance(0.5) ? 1 : -1));
    case 8:
      return pick([
        0.1,
        23.5,
        1.5,
        -0,
        Number.NaN,
        Number.POSITIVE_INFINITY,
        Number.NEGATIVE_INFINITY,
        5e-324,
        1e20,
      ]);
    case 9:
      return randomString(chance(0.9) ? 8 : 80);
    case 10:
      return randomBytes(chance(0.9) ? 8 : 80);
    default:
      return pick(KEYS);
  }
}

function randomValue(depth: number): unknown {
  const r = depth >= 4 ? 0 : int(10);
  if (r < 6) return randomLeaf();
  const n = chance(0.05) ? 29 + int(6) : int(5);
  if (r < 8) {
    const arr: unknown[] = [];
    for (let i = 0; i < n; i++) arr.push(randomValue(depth + 1));
    return arr;
  }
  const entries: Array<[string, unknown]> = [];
  for (let i = 0; i < n; i++)
    entries.push([chance(0.3) ? pick(KEYS) : randomString(6), randomValue(depth + 1)]);
  if (chance(0.3)) return new Map(entries);
  const obj: Record<string, unknown> = {};
  for (const [k, v] of entries) {
    Object.defineProperty(obj, k, { value: v, enumerable: true, writable: true, configurable: true });
  }
  return obj;
}

// ---------------------------------------------------------------------------------------
// Random and mutated inputs

const INTERESTING_BYTES = [
  0x00, 0x01, 0x1f, 0x20, 0x3f, 0x40, 0x41, 0x60, 0x61, 0x62, 0x80, 0x81, 0x9f, 0xa1, 0xbf, 0xc1, 0xdf, 0xe1,
  0xff, 0x08, 0x10, 0x1d, 0x21, 0x28, 0x4a, 0x50, 0x5a, 0x6a, 0x72, 0x78, 0xc3, 0xed, 0xf0,
];

function hostileBytes(): Uint8Array {
  const out = new Uint8Array(int(65));
  const biased = chance(0.5);
  for (let i = 0; i < out.length; i++) out[i] = biased && chance(0.6) ? pick(INTERESTING_BYTES) : int(256);
  return out;
}

function mutate(input: Uint8Array): Uint8Array {
  const bytes = Array.from(input);
  const rounds = chance(0.6) ? 1 : 2 + int(3);
  for (let r = 0; r < rounds; r++) {
    const i = int(bytes.length + 1);
    switch (int(7)) {
      case 0:
        if (i < bytes.length) bytes[i] = (bytes[i] as number) ^ (1 << int(8));
        break;
      case 1:
        if (i < bytes.length) bytes[i] = chance(0.5) ? int(256) : pick(INTERESTING_BYTES);
        break;
      case 2:
        bytes.splice(i, 0, chance(0.5) ? int(256) : pick(INTERESTING_BYTES));
        break;
      case 3:
        bytes.splice(i, 1 + int(3));
        break;
      case 4:
        bytes.length = i;
        break;
      case 5:
        bytes.splice(i, 0, ...bytes.slice(i, i + 1 + int(8)));
        break;
      default:
        if (i < bytes.length) bytes[i] = ((bytes[i] as number) + (chance(0.5) ? 1 : 255)) & 0xff;
    }
  }
  return Uint8Array.from(bytes);
}

const OPTION_SETS: readonly DecodeOptions[] = [
  {},
  {},
  { strict: true },
  { maps: 'map' },
  { invalidUtf8: 'replace' },
  { maxDepth: 2 },
  { strict: true, maps: 'map', invalidUtf8: 'replace' },
];

// ---------------------------------------------------------------------------------------
// Checks

const DECODE_CODES = new Set<string>([
  PsonErrorCode.TRUNCATED,
  PsonErrorCode.LENGTH_OUT_OF_RANGE,
  PsonErrorCode.VARINT_OVERFLOW,
  PsonErrorCode.INVALID_UTF8,
  PsonErrorCode.DEPTH_EXCEEDED,
  PsonErrorCode.UNKNOWN_TYPE,
  PsonErrorCode.INVALID_KEY,
  PsonErrorCode.INTEGER_RANGE,
  PsonErrorCode.NON_MINIMAL,
  PsonErrorCode.DUPLICATE_KEY,
  PsonErrorCode.CONTAINER_OVERRUN,
  PsonErrorCode.TRAILING_BYTES,
]);

/** Deep equality of decoded values; integers compare by value across number/bigint, -0 == 0. */
function same(x: unknown, y: unknown): boolean {
  if (typeof x === 'number' || typeof x === 'bigint') {
    if (typeof y !== 'number' && typeof y !== 'bigint') return false;
    if (typeof x === 'number' && typeof y === 'number')
      return x === y || (Number.isNaN(x) && Number.isNaN(y));
    if (typeof x === 'number' && !Number.isInteger(x)) return false;
    if (typeof y === 'number' && !Number.isInteger(y)) return false;
    return BigInt(x) === BigInt(y);
  }
  if (x instanceof Uint8Array) {
    if (!(y instanceof Uint8Array) || x.length !== y.length) return false;
    for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return false;
    return true;
  }
  if (Array.isArray(x)) {
    if (!Array.isArray(y) || x.length !== y.length) return false;
    for (let i = 0; i < x.length; i++) if (!same(x[i], y[i])) return false;
    return true;
  }
  if (x instanceof Map) {
    if (!(y instanceof Map) || x.size !== y.size) return false;
    const ye = [...y];
    let i = 0;
    for (const [k, v] of x) {
      const e = ye[i++];
      if (e === undefined || e[0] !== k || !same(v, e[1])) return false;
    }
    return true;
  }
  if (x !== null && typeof x === 'object') {
    if (
      y === null ||
      typeof y !== 'object' ||
      Array.isArray(y) ||
      y instanceof Map ||
      y instanceof Uint8Array
    ) {
      return false;
    }
    const xk = Object.keys(x);
    const yk = Object.keys(y);
    if (xk.length !== yk.length) return false;
    for (let i = 0; i < xk.length; i++) {
      const k = xk[i] as string;
      if (yk[i] !== k) return false;
      if (!same((x as Record<string, unknown>)[k], (y as Record<string, unknown>)[k])) return false;
    }
    return true;
  }
  return x === y;
}

/** Every decoded map must be a Map or a plain object whose prototype is Object.prototype. */
function prototypesIntact(v: unknown): boolean {
  if (Array.isArray(v)) return v.every(prototypesIntact);
  if (v instanceof Map) return [...v.values()].every(prototypesIntact);
  if (v !== null && typeof v === 'object' && !(v instanceof Uint8Array)) {
    if (Object.getPrototypeOf(v) !== Object.prototype) return false;
    return Object.keys(v).every((k) =>
      prototypesIntact(Object.getOwnPropertyDescriptor(v, k)?.value as unknown),
    );
  }
  return true;
}

function hex(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('hex');
}

type Outcome = { ok: true; value: PsonValue } | { ok: false; code: string };

/** Decodes and checks one input; returns the outcome, or throws an Error describing the failure. */
function check(bytes: Uint8Array, version: PsonVersion, options: DecodeOptions): Outcome {
  let value: PsonValue;
  try {
    value = decode(bytes, { ...options, version });
  } catch (e) {
    if (!(e instanceof PsonError)) {
      throw new Error(
        `decode threw a non-PsonError: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`,
      );
    }
    if (!DECODE_CODES.has(e.code)) throw new Error(`decode threw an unexpected code ${e.code}`);
    if (!(e.offset >= 0 && e.offset <= bytes.length)) {
      throw new Error(`error offset ${e.offset} outside the ${bytes.length}-byte input (${e.code})`);
    }
    return { ok: false, code: e.code };
  }
  if (!prototypesIntact(value)) throw new Error('a decoded object has a changed prototype');
  let again: Uint8Array;
  try {
    again = encode(value, { version, legacyLossyFloats: false });
  } catch (e) {
    throw new Error(`the decoded value does not encode again: ${e instanceof Error ? e.message : String(e)}`);
  }
  let value2: PsonValue;
  try {
    value2 = decode(again, { version, strict: true, maps: options.maps ?? 'object' });
  } catch (e) {
    throw new Error(
      `re-encoded bytes ${hex(again)} do not decode (strict): ${e instanceof Error ? e.message : String(e)}`,
    );
  }
  if (!same(value, value2))
    throw new Error(`decode→encode→decode changed the value (re-encoded as ${hex(again)})`);
  const third = encode(value2, { version, legacyLossyFloats: false });
  if (hex(third) !== hex(again))
    throw new Error(`re-encoding is not stable: ${hex(again)} then ${hex(third)}`);
  return { ok: true, value };
}

// ---------------------------------------------------------------------------------------
// Run

const protoNames = Object.getOwnPropertyNames(Object.prototype).sort().join();
const codes = new Map<string, number>();
let decoded = 0;
let failures = 0;
let slowest = 0;
let slowestHex = '';
let slowestCase: [Uint8Array, PsonVersion, DecodeOptions] | undefined;
let done = 0;
const start = performance.now();

function fail(i: number, bytes: Uint8Array, version: PsonVersion, options: DecodeOptions, why: string): void {
  failures++;
  if (failures <= MAX_REPORTED_FAILURES) {
    console.error(
      `FAIL input #${i} v${version} options ${JSON.stringify(options)}\n  hex: ${hex(bytes)}\n  ${why}`,
    );
  }
}

for (let i = 0; i < count && failures < 100; i++) {
  done = i + 1;
  const version: PsonVersion = (i & 1) === 0 ? 1 : 0;
  const options = pick(OPTION_SETS);
  let bytes: Uint8Array;
  if (chance(0.25)) {
    bytes = hostileBytes();
  } else {
    const value = randomValue(0);
    const valid = encode(value, { version, legacyLossyFloats: chance(0.5) });
    bytes = chance(0.05) ? valid : mutate(valid);
  }
  let t0 = performance.now();
  let outcome: Outcome;
  try {
    outcome = check(bytes, version, options);
    let ms = performance.now() - t0;
    if (ms > SLOW_MS) {
      // Once more, to tell a slow input from a GC pause.
      t0 = performance.now();
      check(bytes, version, options);
      ms = performance.now() - t0;
      if (ms > SLOW_MS) fail(i, bytes, version, options, `took ${ms.toFixed(1)} ms (limit ${SLOW_MS} ms)`);
    }
    if (ms > slowest) {
      slowest = ms;
      slowestHex = hex(bytes);
      slowestCase = [bytes, version, options];
    }
  } catch (e) {
    fail(i, bytes, version, options, e instanceof Error ? e.message : String(e));
    continue;
  }
  if (outcome.ok) decoded++;
  else codes.set(outcome.code, (codes.get(outcome.code) ?? 0) + 1);

  if ((i + 1) % PROGRESS_EVERY === 0) {
    const s = ((performance.now() - start) / 1000).toFixed(1);
    console.log(
      `fuzz: ${i + 1}/${count} inputs, ${s} s, ${decoded} decoded, slowest ${slowest.toFixed(2)} ms, ${failures} failure(s)`,
    );
  }
}

if (Object.getOwnPropertyNames(Object.prototype).sort().join() !== protoNames) {
  failures++;
  console.error('FAIL: Object.prototype was modified during the run');
}

const seconds = ((performance.now() - start) / 1000).toFixed(1);
// The slowest single measurement is usually a GC pause or a compile: time that input again.
let retimed = 0;
if (slowestCase) {
  const [bytes, version, options] = slowestCase;
  const t0 = performance.now();
  for (let i = 0; i < 10; i++) check(bytes, version, options);
  retimed = (performance.now() - t0) / 10;
}
const byCode = [...codes]
  .sort((x, y) => y[1] - x[1])
  .map(([code, n]) => `${code.replace('PSON_ERR_', '')} ${n}`)
  .join(', ');
console.log(
  `fuzz ${failures === 0 ? 'passed' : 'FAILED'}: ${done} inputs in ${seconds} s (seed ${seed}${smoke ? ', smoke run' : ''}): ` +
    `${decoded} decoded, errors: ${byCode || 'none'}; slowest input ${slowest.toFixed(2)} ms ` +
    `(${slowestHex.slice(0, 40)}${slowestHex.length > 40 ? '…' : ''}, ${retimed.toFixed(3)} ms when timed again); ` +
    `${failures} failure(s)`,
);
process.exitCode = failures === 0 ? 0 : 1;
