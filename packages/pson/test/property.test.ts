// Property-based tests of the PSON codec (both encodings) with fast-check.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import {
  type DecodeOptions,
  decode,
  decodeAt,
  encode,
  PsonError,
  PsonErrorCode,
  type PsonValue,
  type PsonVersion,
} from '../src/index.js';

const NUM_RUNS = 10_000;
/** Per-input time limit for decoding hostile bytes (checked twice before failing, to skip GC pauses). */
const SLOW_MS = 50;

const MAX_U64 = 2n ** 64n - 1n;
const MIN_I64 = -(2n ** 63n);
const TWO_63 = 2 ** 63;

// ---------------------------------------------------------------------------------------
// Value model

function objectFrom(entries: Array<[string, unknown]>): Record<string, unknown> {
  const obj: Record<string, unknown> = {};
  // defineProperty: "__proto__" must be an own member, as the decoder makes it.
  for (const [k, v] of entries) {
    Object.defineProperty(obj, k, { value: v, enumerable: true, writable: true, configurable: true });
  }
  return obj;
}

const key = fc.oneof(
  { weight: 4, arbitrary: fc.string({ unit: 'binary', maxLength: 10 }) },
  { weight: 2, arbitrary: fc.string({ unit: 'grapheme-ascii', maxLength: 6 }) },
  {
    weight: 1,
    arbitrary: fc.constantFrom(
      '__proto__',
      'constructor',
      'toString',
      'hasOwnProperty',
      '',
      '0',
      '1',
      '42',
      '4294967295',
      '-1',
      '\uFEFF',
    ),
  },
);

const bigOutsideSafe = fc.oneof(
  fc.bigInt({ min: 2n ** 53n, max: MAX_U64 }),
  fc.bigInt({ min: MIN_I64, max: -(2n ** 53n) }),
  fc.constantFrom(MAX_U64, MIN_I64, 2n ** 53n, -(2n ** 53n), 2n ** 63n, 2n ** 63n - 1n),
);

const leaf: fc.Arbitrary<unknown> = fc.oneof(
  fc.constant(null),
  fc.boolean(),
  fc.integer({ min: -40, max: 40 }),
  fc.maxSafeInteger(),
  fc.constantFrom(Number.MAX_SAFE_INTEGER, -Number.MAX_SAFE_INTEGER, 2 ** 31, -(2 ** 31), 127, 128, -31),
  bigOutsideSafe,
  fc.double(),
  fc.float(),
  fc.string({ unit: 'binary', maxLength: 12 }),
  fc.string({ unit: 'binary', minLength: 11, maxLength: 90 }),
  fc.string({ unit: 'grapheme-ascii', maxLength: 40 }),
  fc.uint8Array({ maxLength: 40 }),
);

/** Nested values with plain objects (or Maps) for maps. */
function valueArbitrary(maps: 'object' | 'map'): fc.Arbitrary<unknown> {
  const makeMap = (entries: Array<[string, unknown]>): unknown =>
    maps === 'map' ? new Map(entries) : objectFrom(entries);
  const { value } = fc.letrec<{ value: unknown }>((tie) => ({
    value: fc.oneof(
      { depthSize: 'small', maxDepth: 4 },
      { weight: 4, arbitrary: leaf },
      { weight: 2, arbitrary: fc.array(tie('value'), { maxLength: 6 }) },
      { weight: 2, arbitrary: fc.array(fc.tuple(key, tie('value')), { maxLength: 6 }).map(makeMap) },
      // Around the 31-entry escape of the new encoding.
      { weight: 1, arbitrary: fc.array(leaf, { minLength: 29, maxLength: 34 }) },
      {
        weight: 1,
        arbitrary: fc.array(fc.tuple(key, leaf), { minLength: 29, maxLength: 34 }).map(makeMap),
      },
    ),
  }));
  return value;
}

const objectValues = valueArbitrary('object');
const mapValues = valueArbitrary('map');

/**
 * What decoding returns for `v`: integers come back as numbers within the safe range and
 * bigints outside it (an integral double in the int64 range is written as an integer);
 * -0 comes back as 0.
 */
function expected(v: unknown): unknown {
  if (typeof v === 'number') {
    if (Object.is(v, -0)) return 0;
    if (Number.isInteger(v) && !Number.isSafeInteger(v) && v >= -TWO_63 && v < TWO_63) return BigInt(v);
    return v;
  }
  if (typeof v === 'bigint') {
    return v >= -BigInt(Number.MAX_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
  }
  if (Array.isArray(v)) return v.map(expected);
  if (v instanceof Map) return new Map([...v].map(([k, x]) => [k, expected(x)]));
  if (v !== null && typeof v === 'object' && !(v instanceof Uint8Array)) {
    return objectFrom(Object.entries(v).map(([k, x]) => [k, expected(x)]));
  }
  return v;
}

/**
 * A structure that deepStrictEqual compares in full, Map key order included, with every
 * integer as a bigint (so decode→encode→decode may turn 2^60 the double into 2^60n).
 */
function canon(v: unknown): unknown {
  if (typeof v === 'number') return Number.isInteger(v) ? BigInt(v) : v;
  if (Array.isArray(v)) return v.map(canon);
  if (v instanceof Map) return { map: [...v].map(([k, x]) => [k, canon(x)]) };
  if (v !== null && typeof v === 'object' && !(v instanceof Uint8Array)) {
    return { object: Object.keys(v).map((k) => [k, canon((v as Record<string, unknown>)[k])]) };
  }
  return v;
}

function toHex(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');
}

/** Encoder options per version: for v0 without the lossy binary32 rule, so floats are exact. */
const exact = (version: PsonVersion) => ({ version, legacyLossyFloats: false });

// ---------------------------------------------------------------------------------------
// Hostile bytes

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

const decodeOptionSets: readonly DecodeOptions[] = [
  {},
  { strict: true },
  { invalidUtf8: 'replace', maps: 'map' },
  { maxDepth: 3 },
];

function tryDecode(bytes: Uint8Array, options: DecodeOptions): { value?: PsonValue; error?: PsonError } {
  try {
    return { value: decode(bytes, options) };
  } catch (e) {
    if (!(e instanceof PsonError)) {
      assert.fail(
        `decode(${toHex(bytes)}, ${JSON.stringify(options)}) threw a non-PsonError: ${e instanceof Error ? e.stack : String(e)}`,
      );
    }
    return { error: e };
  }
}

/**
 * Decodes hostile `bytes`: a value or a PsonError with a decoding code and an offset inside
 * the input, quickly; whatever decodes must encode again and decode to the same value.
 */
function checkHostile(bytes: Uint8Array, version: PsonVersion, extra: DecodeOptions): void {
  const options: DecodeOptions = { ...extra, version };
  let t0 = performance.now();
  let outcome = tryDecode(bytes, options);
  if (performance.now() - t0 > SLOW_MS) {
    t0 = performance.now();
    outcome = tryDecode(bytes, options);
    const ms = performance.now() - t0;
    assert.ok(ms <= SLOW_MS, `decode(${toHex(bytes)}, ${JSON.stringify(options)}) took ${ms.toFixed(1)} ms`);
  }
  const { value, error } = outcome;
  if (error) {
    assert.ok(DECODE_CODES.has(error.code), `unexpected code ${error.code}`);
    assert.ok(error.offset >= 0 && error.offset <= bytes.length, `offset ${error.offset} of ${bytes.length}`);
    return;
  }
  // decode → encode → decode is stable (strict: the encoder writes minimal forms only).
  const again = encode(value, exact(version));
  const value2 = decode(again, { version, strict: true, maps: options.maps ?? 'object' });
  assert.deepStrictEqual(canon(value2), canon(value), toHex(bytes));
  assert.equal(toHex(encode(value2, exact(version))), toHex(again), toHex(bytes));
}

const interestingByte = fc.oneof(
  fc.integer({ min: 0, max: 255 }),
  fc.constantFrom(
    // new PSON headers around the type boundaries and escapes
    0x00,
    0x01,
    0x1f,
    0x20,
    0x3f,
    0x40,
    0x41,
    0x60,
    0x61,
    0x62,
    0x81,
    0x9f,
    0xa1,
    0xbf,
    0xc1,
    0xdf,
    0xe1,
    0xff,
    // legacy tags
    0x08,
    0x10,
    0x1d,
    0x21,
    0x28,
    0x4a,
    0x50,
    0x5a,
    0x6a,
    0x72,
    0x78,
    // varint continuation and UTF-8 leads
    0x80,
    0xc3,
    0xed,
    0xf0,
  ),
);

const hostileBytes = fc.oneof(
  fc.uint8Array({ maxLength: 64 }),
  fc.array(interestingByte, { maxLength: 64 }).map((a) => Uint8Array.from(a)),
);

type Mutation = {
  kind: 'flip' | 'set' | 'insert' | 'delete' | 'truncate' | 'repeat';
  at: number;
  byte: number;
};

const mutation: fc.Arbitrary<Mutation> = fc.record({
  kind: fc.constantFrom('flip', 'set', 'insert', 'delete', 'truncate', 'repeat'),
  at: fc.nat(),
  byte: fc.integer({ min: 0, max: 255 }),
});

function mutate(input: Uint8Array, mutations: readonly Mutation[]): Uint8Array {
  const b = Array.from(input);
  for (const m of mutations) {
    const i = m.at % (b.length + 1);
    switch (m.kind) {
      case 'flip':
        if (i < b.length) b[i] = (b[i] as number) ^ (1 << (m.byte & 7));
        break;
      case 'set':
        if (i < b.length) b[i] = m.byte;
        break;
      case 'insert':
        b.splice(i, 0, m.byte);
        break;
      case 'delete':
        b.splice(i, 1);
        break;
      case 'truncate':
        b.length = i;
        break;
      case 'repeat':
        b.splice(i, 0, ...b.slice(i, i + 1 + (m.byte & 7)));
        break;
    }
  }
  return Uint8Array.from(b);
}

// ---------------------------------------------------------------------------------------

describe('PSON properties', () => {
  for (const version of [1, 0] as const) {
    it(`v${version}: decode(encode(v)) deep-equals v`, () => {
      fc.assert(
        fc.property(objectValues, (v) => {
          const bytes = encode(v, exact(version));
          const want = expected(v);
          assert.deepStrictEqual(decode(bytes, { version }), want);
          // The encoder writes only minimal forms without duplicate keys: strict accepts it,
          // and re-encoding the decoded value gives the same bytes.
          const strict = decode(bytes, { version, strict: true });
          assert.deepStrictEqual(strict, want);
          assert.equal(toHex(encode(strict, exact(version))), toHex(bytes));
          // In place inside a larger buffer.
          const outer = new Uint8Array(bytes.length + 5);
          outer.set(bytes, 2);
          const at = decodeAt(outer, 2, { version }, 2 + bytes.length);
          assert.equal(at.end, 2 + bytes.length);
          assert.deepStrictEqual(at.value, want);
        }),
        { numRuns: NUM_RUNS },
      );
    });

    it(`v${version}: Maps keep their exact key order through encode and decode(maps: 'map')`, () => {
      fc.assert(
        fc.property(mapValues, (v) => {
          const bytes = encode(v, exact(version));
          const back = decode(bytes, { version, maps: 'map' });
          assert.deepStrictEqual(canon(back), canon(expected(v)));
          assert.equal(toHex(encode(back, exact(version))), toHex(bytes));
        }),
        { numRuns: NUM_RUNS },
      );
    });
  }

  it('random bytes decode to a value or a PsonError, quickly (both versions, several option sets)', () => {
    fc.assert(
      fc.property(hostileBytes, (bytes) => {
        for (const version of [1, 0] as const) {
          for (const options of decodeOptionSets) checkHostile(bytes, version, options);
        }
      }),
      { numRuns: NUM_RUNS },
    );
  });

  it('mutated valid encodings decode to a value or a PsonError, quickly (both versions)', () => {
    fc.assert(
      fc.property(
        objectValues,
        fc.constantFrom<PsonVersion>(1, 0),
        fc.array(mutation, { minLength: 1, maxLength: 4 }),
        (v, version, mutations) => {
          const bytes = mutate(encode(v, { version }), mutations);
          for (const options of decodeOptionSets) checkHostile(bytes, version, options);
        },
      ),
      { numRuns: NUM_RUNS },
    );
  });
});
