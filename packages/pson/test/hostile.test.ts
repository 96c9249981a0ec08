// Hostile and malformed input for the PSON codec, both encodings (spec PSON.md §2.7, §3.5, §5).
// Every failure must be a PsonError with the exact stable `code` and the byte `offset` where
// decoding failed (-1 for encoding errors).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
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

const C = PsonErrorCode;
const VERSIONS: readonly PsonVersion[] = [1, 0];

// ---------------------------------------------------------------------------------------
// Helpers

/** Bytes from hex; whitespace is ignored. */
function h(hex: string): Uint8Array {
  const clean = hex.replace(/\s+/g, '');
  assert.equal(clean.length % 2, 0, `odd hex string ${hex}`);
  const out = new Uint8Array(clean.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = Number.parseInt(clean.slice(2 * i, 2 * i + 2), 16);
  return out;
}

function toHex(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');
}

/** Concatenates byte parts: arrays of numbers, Uint8Arrays, or hex strings. */
function cat(...parts: Array<number[] | Uint8Array | string>): Uint8Array {
  const chunks = parts.map((p) => (typeof p === 'string' ? h(p) : Uint8Array.from(p)));
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

function varint(n: number): number[] {
  const out: number[] = [];
  while (n >= 0x80) {
    out.push((n % 128) | 0x80);
    n = Math.floor(n / 128);
  }
  out.push(n);
  return out;
}

/** New-encoding header with an inline count or the 0x1f escape. */
function header1(type: number, n: number): number[] {
  return n < 31 ? [(type << 5) | n] : [(type << 5) | 31, ...varint(n)];
}

function rep(hex: string, times: number): string {
  return hex.repeat(times);
}

function describeOptions(o: DecodeOptions | undefined): string {
  return JSON.stringify(o ?? {});
}

/** Runs `fn` and checks that it throws a PsonError with `code` (and `offset`, when given). */
function expectPsonError(fn: () => unknown, code: PsonErrorCode, offset?: number, label = ''): PsonError {
  let result: unknown;
  try {
    result = fn();
  } catch (e) {
    if (!(e instanceof PsonError)) {
      assert.fail(`${label}: expected PsonError ${code}, got ${e instanceof Error ? e.stack : String(e)}`);
    }
    assert.equal(e.code, code, `${label}: wrong code (${e.message})`);
    if (offset !== undefined) assert.equal(e.offset, offset, `${label}: wrong offset (${e.message})`);
    return e;
  }
  assert.fail(`${label}: expected PsonError ${code}, but it returned ${String(result)}`);
}

function decodeFails(
  bytes: Uint8Array | string,
  options: DecodeOptions,
  code: PsonErrorCode,
  offset: number,
): PsonError {
  const b = typeof bytes === 'string' ? h(bytes) : bytes;
  return expectPsonError(
    () => decode(b, options),
    code,
    offset,
    `decode(${toHex(b).slice(0, 80)}, ${describeOptions(options)})`,
  );
}

function decodes(bytes: Uint8Array | string, options: DecodeOptions): PsonValue {
  const b = typeof bytes === 'string' ? h(bytes) : bytes;
  return decode(b, options);
}

// ---------------------------------------------------------------------------------------
// A small reference walk of (possibly cut) encodings: what must fail first, and where.
// Rules (§2.7, §3.5, §5): the input ending inside a header, a varint or a fixed-width float
// is TRUNCATED at the start of that header / varint / float value; a length or count that
// exceeds the bytes left is LENGTH_OUT_OF_RANGE at the value's header (for new-PSON maps a
// pair needs at least 2 bytes); inside a legacy container both become CONTAINER_OVERRUN.

interface Expected {
  code: PsonErrorCode;
  offset: number;
}

class Stop {
  constructor(readonly expected: Expected) {}
}

function oracleV1(b: Uint8Array): Expected | null {
  let p = 0;
  const at = (i: number): number => b[i] as number;
  function readVarint(): number {
    const start = p;
    let result = 0;
    for (let i = 0; ; i++) {
      if (p >= b.length) throw new Stop({ code: C.TRUNCATED, offset: start });
      const byte = at(p++);
      result += (byte & 0x7f) * 2 ** (7 * i);
      if (byte < 0x80) return result;
    }
  }
  function count(inline: number): number {
    return inline === 31 ? readVarint() : inline;
  }
  function sized(start: number, inline: number, perEntry: number): number {
    const n = count(inline);
    if (n * perEntry > b.length - p) throw new Stop({ code: C.LENGTH_OUT_OF_RANGE, offset: start });
    return n;
  }
  function value(): void {
    const start = p;
    if (p >= b.length) throw new Stop({ code: C.TRUNCATED, offset: start });
    const hd = at(p++);
    const type = hd >> 5;
    const inline = hd & 31;
    switch (type) {
      case 0:
      case 1:
        count(inline);
        return;
      case 2: {
        const width = inline === 0 ? 4 : 8;
        if (b.length - p < width) throw new Stop({ code: C.TRUNCATED, offset: start });
        p += width;
        return;
      }
      case 3:
        return;
      case 4:
      case 5: {
        const n = sized(start, inline, 1);
        p += n;
        return;
      }
      case 6: {
        const n = sized(start, inline, 2);
        for (let i = 0; i < n; i++) {
          const keyAt = p;
          if (p >= b.length) throw new Stop({ code: C.TRUNCATED, offset: keyAt });
          const keyHeader = at(p++);
          const keyLength = sized(keyAt, keyHeader & 31, 1);
          p += keyLength;
          value();
        }
        return;
      }
      default: {
        const n = sized(start, inline, 1);
        for (let i = 0; i < n; i++) value();
      }
    }
  }
  try {
    value();
  } catch (e) {
    if (e instanceof Stop) return e.expected;
    throw e;
  }
  return p === b.length ? null : { code: C.TRAILING_BYTES, offset: p };
}

function oracleV0(b: Uint8Array): Expected | null {
  let p = 0;
  let end = b.length;
  let inContainer = false;
  const short = (offset: number): Stop =>
    new Stop({ code: inContainer ? C.CONTAINER_OVERRUN : C.TRUNCATED, offset });
  function readVarint(): number {
    const start = p;
    let result = 0;
    for (let i = 0; ; i++) {
      if (p >= end) throw short(start);
      const byte = b[p++] as number;
      result += (byte & 0x7f) * 2 ** (7 * i);
      if (byte < 0x80) return result;
    }
  }
  function length(start: number): number {
    const n = readVarint();
    if (n > end - p) {
      throw new Stop({ code: inContainer ? C.CONTAINER_OVERRUN : C.LENGTH_OUT_OF_RANGE, offset: start });
    }
    return n;
  }
  function value(): void {
    const start = p;
    if (p >= end) throw short(start);
    const tag = b[p++] as number;
    switch (tag) {
      case 0x08:
      case 0x10:
        readVarint();
        return;
      case 0x1d:
      case 0x21: {
        const width = tag === 0x1d ? 4 : 8;
        if (end - p < width) throw short(start);
        p += width;
        return;
      }
      case 0x4a:
      case 0x5a: {
        const n = length(start);
        p += n;
        return;
      }
      case 0x6a:
      case 0x72: {
        const n = length(start);
        const outerEnd = end;
        const outerIn = inContainer;
        end = p + n;
        inContainer = true;
        while (p < end) {
          if (tag === 0x6a) {
            const keyAt = p;
            const keyLength = length(keyAt);
            p += keyLength;
          }
          value();
        }
        end = outerEnd;
        inContainer = outerIn;
        return;
      }
      default:
        return; // one-byte tags (the oracle only walks encoder output)
    }
  }
  try {
    value();
  } catch (e) {
    if (e instanceof Stop) return e.expected;
    throw e;
  }
  return p === b.length ? null : { code: C.TRAILING_BYTES, offset: p };
}

const oracle = (version: PsonVersion, b: Uint8Array): Expected | null =>
  version === 1 ? oracleV1(b) : oracleV0(b);

// ---------------------------------------------------------------------------------------

describe('hostile input: truncation', () => {
  const samples: Array<[string, unknown]> = [
    ['iot sample', { humidity: 60, label: 'outdoor', pressure: 1013, temperature: 23.5 }],
    ['mixed array', [1, 'a', true, null, 1.5, -2]],
    ['nested arrays', [[], [[]], [1, [2]]]],
    [
      'integers',
      [0, 1, 2, 30, 31, 127, 128, -1, -30, -31, -128, 2 ** 31, -(2 ** 31), 2n ** 64n - 1n, -(2n ** 63n)],
    ],
    ['floats', [0.1, 23.5, Number.NaN, Number.POSITIVE_INFINITY, 1e300, 5e-324]],
    ['strings', ['', 'a', 'ñ€😀', 'x'.repeat(31), 'y'.repeat(200)]],
    ['bytes', [new Uint8Array(0), Uint8Array.of(0xde, 0xad, 0xbe, 0xef), new Uint8Array(200).fill(7)]],
    ['31-entry map', Object.fromEntries(Array.from({ length: 31 }, (_, i) => [`k${i}`, i]))],
    ['40-element array', Array.from({ length: 40 }, (_, i) => i * 1000)],
    ['deep mixture', { a: { b: { c: [{ d: 'e' }, [new Uint8Array(3), { '': null }]] } }, z: false }],
    ['long keys', { ['k'.repeat(40)]: 'v'.repeat(130), ['é'.repeat(20)]: [1n << 60n] }],
    ['scalar max uint64', 2n ** 64n - 1n],
    ['scalar float64', 0.1],
    ['scalar long string', 'z'.repeat(130)],
  ];

  for (const version of VERSIONS) {
    for (const [name, value] of samples) {
      it(`v${version} ${name}: every cut fails with the expected code and offset`, () => {
        const full = encode(value, { version });
        assert.equal(oracle(version, full), null, 'the oracle accepts the full encoding');
        decode(full, { version }); // and so does the codec
        const seen = new Set<string>();
        for (let cut = 0; cut < full.length; cut++) {
          const part = full.slice(0, cut);
          const expected = oracle(version, part);
          assert.ok(expected, `cut ${cut} must be invalid`);
          // A cut of a complete top-level value is never a container overrun: the outermost
          // legacy container's byte length is checked against the input first.
          assert.ok(
            expected.code === C.TRUNCATED || expected.code === C.LENGTH_OUT_OF_RANGE,
            `cut ${cut}: ${expected.code}`,
          );
          assert.ok(expected.offset <= cut);
          seen.add(expected.code);
          const label = `v${version} ${name} cut at ${cut}/${full.length} (${toHex(part).slice(0, 60)})`;
          expectPsonError(() => decode(part, { version }), expected.code, expected.offset, label);
          expectPsonError(
            () => decode(part, { version, strict: true }),
            expected.code,
            expected.offset,
            `${label} strict`,
          );
          // The same cut inside a larger buffer, bounded by decodeAt's limit.
          const outer = cat([0xaa, 0xbb, 0xcc], full, [0xff, 0xff]);
          expectPsonError(
            () => decodeAt(outer, 3, { version }, 3 + cut),
            expected.code,
            expected.offset + 3,
            `${label} decodeAt`,
          );
        }
        assert.ok(seen.has(C.TRUNCATED), 'the empty cut at least is TRUNCATED');
      });
    }
  }

  it('hand-checked cut tables anchor the reference walk', () => {
    const T = C.TRUNCATED;
    const L = C.LENGTH_OUT_OF_RANGE;
    const tables: Array<[PsonVersion, string, Array<[PsonErrorCode, number]>]> = [
      // {"a":128}: count 1 needs 2 bytes; then the value's varint.
      [
        1,
        'c1 81 61 1f 80 01',
        [
          [T, 0],
          [L, 0],
          [L, 0],
          [T, 3],
          [T, 4],
          [T, 4],
        ],
      ],
      // "abc": the length is checked before the bytes are read.
      [
        1,
        '83 61 62 63',
        [
          [T, 0],
          [L, 0],
          [L, 0],
          [L, 0],
        ],
      ],
      // 23.5 binary32
      [
        1,
        '40 00 00 bc 41',
        [
          [T, 0],
          [T, 0],
          [T, 0],
          [T, 0],
          [T, 0],
        ],
      ],
      // [300]: the count needs a byte after the header; then the element's varint is cut
      [
        1,
        'e1 1f ac 02',
        [
          [T, 0],
          [L, 0],
          [T, 2],
          [T, 2],
        ],
      ],
      // legacy {"a":128}: only the outer length can be cut, all else is LENGTH_OUT_OF_RANGE
      [
        0,
        '6a 05 01 61 08 80 01',
        [
          [T, 0],
          [T, 1],
          [L, 0],
          [L, 0],
          [L, 0],
          [L, 0],
          [L, 0],
        ],
      ],
      [
        0,
        '08 80 80 01',
        [
          [T, 0],
          [T, 1],
          [T, 1],
          [T, 1],
        ],
      ],
      [
        0,
        '4a 03 61 62 63',
        [
          [T, 0],
          [T, 1],
          [L, 0],
          [L, 0],
          [L, 0],
        ],
      ],
      [
        0,
        '21 9a 99 99 99 99 99 b9 3f',
        [
          [T, 0],
          [T, 0],
          [T, 0],
          [T, 0],
          [T, 0],
          [T, 0],
          [T, 0],
          [T, 0],
          [T, 0],
        ],
      ],
    ];
    for (const [version, hex, expected] of tables) {
      const full = h(hex);
      assert.equal(expected.length, full.length);
      expected.forEach(([code, offset], cut) => {
        const part = full.slice(0, cut);
        assert.deepEqual(oracle(version, part), { code, offset }, `oracle v${version} ${hex} cut ${cut}`);
        decodeFails(part, { version }, code, offset);
      });
    }
  });
});

describe('hostile input: lengths and counts', () => {
  it('a string or bytes length larger than the input is LENGTH_OUT_OF_RANGE', () => {
    const v1: Array<[string, number]> = [
      ['85 61 62', 0],
      ['9f 80 01 61', 0],
      ['9f ff ff ff ff ff ff ff ff ff 01', 0], // 2^64-1 bytes
      ['a5 00 00', 0],
      ['bf c8 01 00', 0],
      ['e2 01 83 61', 2],
      ['c1 85 61 62 01', 1], // map key
      ['c2 81 61 01 9f 80 01 61 02', 4],
    ];
    for (const [hex, offset] of v1) decodeFails(hex, { version: 1 }, C.LENGTH_OUT_OF_RANGE, offset);
    const v0: Array<[string, number]> = [
      ['4a 05 61', 0],
      ['4a 80 01 61 62', 0],
      ['4a ff ff ff ff ff ff ff ff ff 01', 0],
      ['5a 80 01 00', 0],
      ['72 05 40', 0], // container byte length
      ['6a 80 80 80 80 80 20', 0],
    ];
    for (const [hex, offset] of v0) decodeFails(hex, { version: 0 }, C.LENGTH_OUT_OF_RANGE, offset);
  });

  it('a count of 2^40 in a 10-byte input is LENGTH_OUT_OF_RANGE, without a big allocation', () => {
    // 2^40 as a varint: 80 80 80 80 80 20
    const inputs: Array<[PsonVersion, string]> = [
      [1, 'ff 80 80 80 80 80 20 00 00 00'], // array
      [1, 'df 80 80 80 80 80 20 80 00 00'], // map
      [1, '9f 80 80 80 80 80 20 00 00 00'], // string
      [1, 'bf 80 80 80 80 80 20 00 00 00'], // bytes
      [0, '72 80 80 80 80 80 20 00 00 00'],
      [0, '6a 80 80 80 80 80 20 00 00 00'],
      [0, '4a 80 80 80 80 80 20 00 00 00'],
      [0, '5a 80 80 80 80 80 20 00 00 00'],
    ];
    for (const [version, hex] of inputs) {
      const b = h(hex);
      assert.equal(b.length, 10);
      const heapBefore = process.memoryUsage().heapUsed;
      const t0 = performance.now();
      for (let i = 0; i < 100; i++) decodeFails(b, { version }, C.LENGTH_OUT_OF_RANGE, 0);
      const ms = performance.now() - t0;
      const grown = process.memoryUsage().heapUsed - heapBefore;
      assert.ok(ms < 200, `100 rejections took ${ms.toFixed(1)} ms`);
      assert.ok(grown < 32 * 1024 * 1024, `heap grew by ${grown} bytes`);
    }
  });

  it('counts that fit the input but not the entries are LENGTH_OUT_OF_RANGE', () => {
    decodeFails('e5 00 00', { version: 1 }, C.LENGTH_OUT_OF_RANGE, 0);
    // 2 pairs need at least 4 bytes; only 3 are left
    decodeFails('c2 81 61 01', { version: 1 }, C.LENGTH_OUT_OF_RANGE, 0);
    decodeFails('ff ff ff ff ff ff ff ff ff ff 01', { version: 1 }, C.LENGTH_OUT_OF_RANGE, 0);
    decodeFails('df ff ff ff ff ff ff ff ff ff 01', { version: 1 }, C.LENGTH_OUT_OF_RANGE, 0);
  });
});

describe('hostile input: legacy container overrun', () => {
  // Each element runs past the end of its container. The container's own byte length fits
  // the input, so this is never truncation of the input.
  const cases: Array<[string, string, number]> = [
    ['a varint past the container', '72 01 08', 3],
    ['a string length past the container', '72 02 4a 05', 2],
    ['a float past the container', '72 03 1d 00 00', 2],
    ['a nested container past its parent', '72 02 72 05', 2],
    ['a map value missing', '6a 02 01 61', 4],
    ['a key length past the map', '6a 01 05', 2],
    ['a key varint past the map', '6a 01 80', 2],
  ];

  it('is CONTAINER_OVERRUN when more input follows the container', () => {
    for (const [name, hex, offset] of cases) {
      // Enough trailing bytes that every element would fit in the input.
      const b = cat(hex, '00 00 00 00 00 00 00 00');
      const e = decodeFails(b, { version: 0 }, C.CONTAINER_OVERRUN, offset);
      assert.ok(e.message.length > 0, name);
    }
  });

  // Found failing (codec at cb8c4a0 + working tree): decode tells overrun from truncation by
  // comparing the container's end with the input's end, so here it reports TRUNCATED or
  // LENGTH_OUT_OF_RANGE, which a streaming caller would read as "wait for more bytes".
  it('is CONTAINER_OVERRUN also when the container ends exactly at the end of the input', () => {
    // The container's declared length is present in full, so the input is not truncated:
    // the container is malformed, whatever follows it.
    // Collected so that a failure lists every case at once.
    const outcome = (hex: string): string => {
      try {
        decode(h(hex), { version: 0 });
        return `${hex}: no error`;
      } catch (e) {
        return e instanceof PsonError ? `${hex}: ${e.code} at ${e.offset}` : `${hex}: ${String(e)}`;
      }
    };
    assert.deepEqual(
      cases.map(([, hex]) => outcome(hex)),
      cases.map(([, hex, offset]) => `${hex}: ${C.CONTAINER_OVERRUN} at ${offset}`),
    );
  });

  it('is CONTAINER_OVERRUN inside a decodeAt limit too', () => {
    const b = cat('00 00', '72 02 4a 05', 'ff ff ff ff ff ff');
    expectPsonError(() => decodeAt(b, 2, { version: 0 }, 10), C.CONTAINER_OVERRUN, 4);
  });
});

describe('hostile input: varints', () => {
  const nines = rep('ff', 9);
  const v1Overflow: Array<[string, number]> = [
    [`1f ${rep('80', 10)} 01`, 1], // 11-byte varint
    [`1f ${rep('80', 12)} 00`, 1],
    [`1f ${nines} 02`, 1], // 10th byte > 1
    [`1f ${nines} 7f`, 1],
    [`1f ${rep('80', 9)} 02`, 1],
    [`3f ${nines} 03`, 1],
    [`9f ${rep('80', 10)} 01`, 1],
    [`bf ${nines} 02`, 1],
    [`ff ${nines} 02`, 1],
    [`df ${nines} 02`, 1],
    [`e1 1f ${nines} 02`, 2],
    [`c1 9f ${nines} 02`, 2], // key length
  ];
  const v0Overflow: Array<[string, number]> = [
    [`08 ${rep('80', 10)} 01`, 1],
    [`08 ${nines} 02`, 1],
    [`10 ${nines} 02`, 1],
    [`4a ${nines} 02`, 1],
    [`5a ${rep('80', 10)} 01`, 1],
    [`72 ${nines} 02`, 1],
    [`6a ${nines} 7f`, 1],
    [`6a 0b ${rep('80', 10)} 01`, 2], // key length inside a map
    [`72 0b 08 ${nines} 02`, 3],
  ];

  it('longer than 10 bytes or a 10th byte > 1 is VARINT_OVERFLOW', () => {
    for (const strict of [false, true]) {
      for (const [hex, offset] of v1Overflow)
        decodeFails(hex, { version: 1, strict }, C.VARINT_OVERFLOW, offset);
      for (const [hex, offset] of v0Overflow)
        decodeFails(hex, { version: 0, strict }, C.VARINT_OVERFLOW, offset);
    }
  });

  it('the largest 10-byte varint is 2^64-1', () => {
    assert.equal(decodes(`1f ${nines} 01`, { version: 1, strict: true }), 2n ** 64n - 1n);
    assert.equal(decodes(`08 ${nines} 01`, { version: 0, strict: true }), 2n ** 64n - 1n);
    assert.equal(decodes(`1f ${rep('80', 9)} 01`, { version: 1 }), 2n ** 63n);
  });

  it('a varint cut short is TRUNCATED at the start of the varint', () => {
    decodeFails(`1f ${rep('80', 9)}`, { version: 1 }, C.TRUNCATED, 1);
    decodeFails(`08 ${rep('ff', 5)}`, { version: 0 }, C.TRUNCATED, 1);
  });
});

describe('hostile input: invalid UTF-8', () => {
  const R = '\uFFFD';
  // [name, bytes, what 'replace' yields (WHATWG decoder: maximal subparts)]
  const bad: Array<[string, string, string]> = [
    ['overlong NUL (c0 80)', 'c0 80', R + R],
    ['overlong 2-byte (c1 bf)', 'c1 bf', R + R],
    ['overlong 3-byte (e0 80 80)', 'e0 80 80', R + R + R],
    ['overlong 3-byte (e0 9f bf)', 'e0 9f bf', R + R + R],
    ['overlong 4-byte (f0 80 80 80)', 'f0 80 80 80', R + R + R + R],
    ['overlong 4-byte (f0 8f bf bf)', 'f0 8f bf bf', R + R + R + R],
    ['lone continuation (80)', '80', R],
    ['lone continuation (bf)', 'bf', R],
    ['continuation between ASCII', '61 80 62', `a${R}b`],
    ['surrogate U+D800 (ed a0 80)', 'ed a0 80', R + R + R],
    ['surrogate U+DFFF (ed bf bf)', 'ed bf bf', R + R + R],
    ['CESU-8 surrogate pair', 'ed a0 bd ed b8 80', R.repeat(6)],
    ['truncated 2-byte (c3)', 'c3', R],
    ['truncated 3-byte (e2 82)', 'e2 82', R],
    ['truncated 4-byte (f0 9f 98)', 'f0 9f 98', R],
    ['truncated 3-byte after ASCII', '61 e2 82', `a${R}`],
    ['truncated 2-byte before ASCII', '61 c3 62', `a${R}b`],
    ['above U+10FFFF (f4 90 80 80)', 'f4 90 80 80', R + R + R + R],
    ['f5 lead byte', 'f5 80 80 80', R + R + R + R],
    ['ff byte', 'ff', R],
    ['fe byte', 'fe', R],
  ];
  const longPrefix = '61'.repeat(40); // > 32 bytes: the uncached path

  /** [what, bytes, offset of the failing string] for a string payload in every position. */
  function placements(version: PsonVersion, payload: Uint8Array): Array<[string, Uint8Array, number]> {
    const n = payload.length;
    if (version === 1) {
      return [
        ['string', cat(header1(4, n), payload), 0],
        ['string in array', cat('e2 01', header1(4, n), payload), 2],
        ['map key', cat('c1', header1(4, n), payload, '01'), 1],
        ['second map key', cat('c2 81 61 01', header1(4, n), payload, '02'), 4],
      ];
    }
    const str = cat('4a', varint(n), payload);
    const inArray = cat('40', str);
    const pair = cat(varint(n), payload, '40');
    const pair2 = cat('01 61 40', pair);
    return [
      ['string', str, 0],
      ['string in array', cat('72', varint(inArray.length), inArray), 1 + varint(inArray.length).length + 1],
      ['map key', cat('6a', varint(pair.length), pair), 1 + varint(pair.length).length],
      ['second map key', cat('6a', varint(pair2.length), pair2), 1 + varint(pair2.length).length + 3],
    ];
  }

  for (const version of VERSIONS) {
    it(`v${version}: rejected with INVALID_UTF8 in strings and map keys`, () => {
      for (const [name, hex] of bad) {
        for (const payload of [h(hex), cat(longPrefix, hex)]) {
          for (const [where, bytes, offset] of placements(version, payload)) {
            for (const strict of [false, true]) {
              expectPsonError(
                () => decode(bytes, { version, strict }),
                C.INVALID_UTF8,
                offset,
                `v${version} ${name} as ${where} (${payload.length} bytes)`,
              );
            }
          }
        }
      }
    });

    it(`v${version}: invalidUtf8 'replace' yields U+FFFD`, () => {
      for (const [name, hex, replaced] of bad) {
        for (const [prefix, payload] of [
          ['', h(hex)],
          ['a'.repeat(40), cat(longPrefix, hex)],
        ] as const) {
          const want = prefix + replaced;
          const [s, inArray, key, key2] = placements(version, payload).map(([, b]) =>
            decode(b, { version, invalidUtf8: 'replace' }),
          );
          assert.equal(s, want, `${name} as string`);
          assert.deepEqual(inArray, [1, want], `${name} in array`);
          assert.deepEqual(key, { [want]: 1 }, `${name} as key`);
          assert.deepEqual(key2, { a: 1, [want]: version === 1 ? 2 : 1 }, `${name} as second key`);
          // The lossy result is not cached: the same bytes still fail without 'replace'.
          expectPsonError(
            () => decode(placements(version, payload)[0]?.[1] as Uint8Array, { version }),
            C.INVALID_UTF8,
            0,
          );
        }
      }
    });
  }

  it('boundary code points and a leading BOM are valid', () => {
    const good: Array<[string, string]> = [
      ['ef bb bf', '\uFEFF'],
      ['ef bb bf 61', '\uFEFFa'],
      ['ed 9f bf', '\uD7FF'],
      ['ee 80 80', '\uE000'],
      ['ef bf bf', '\uFFFF'],
      ['f4 8f bf bf', '\u{10FFFF}'],
      ['f0 90 80 80', '\u{10000}'],
      ['c2 80', '\u0080'],
      ['df bf', '\u07FF'],
      ['e0 a0 80', '\u0800'],
      ['00', '\u0000'],
    ];
    for (const [hex, s] of good) {
      const payload = h(hex);
      assert.equal(decode(cat(header1(4, payload.length), payload)), s, hex);
      assert.equal(decode(cat('4a', varint(payload.length), payload), { version: 0 }), s, hex);
      assert.equal(toHex(encode(s)), toHex(cat(header1(4, payload.length), payload)));
    }
  });
});

// ---------------------------------------------------------------------------------------
// Nesting

function nestedValue(kind: 'array' | 'map', levels: number): PsonValue {
  let v: PsonValue = kind === 'array' ? [] : {};
  for (let i = 1; i < levels; i++) v = kind === 'array' ? [v] : { '': v };
  return v;
}

/** `levels` nested containers (each holding the next; maps under the key ""), innermost empty. */
function nestedV1(kind: 'array' | 'map', levels: number): Uint8Array {
  const unit = kind === 'array' ? [0xe1] : [0xc1, 0x80];
  const out = new Uint8Array(unit.length * (levels - 1) + 1);
  for (let i = 0; i < levels - 1; i++) out.set(unit, i * unit.length);
  out[out.length - 1] = kind === 'array' ? 0xe0 : 0xc0;
  return out;
}

/** Legacy nesting, plus the offset of every container's tag (outermost first). */
function nestedV0(kind: 'array' | 'map', levels: number): { bytes: Uint8Array; offsets: number[] } {
  const tag = kind === 'array' ? 0x72 : 0x6a;
  const keyBytes = kind === 'array' ? 0 : 1; // the bare empty key "" is one byte, 00
  const segments: number[][] = []; // innermost first
  let size = 2; // innermost: tag 00
  segments.push([tag, 0]);
  for (let i = 1; i < levels; i++) {
    const content = keyBytes + size;
    const seg = [tag, ...varint(content), ...(keyBytes ? [0] : [])];
    segments.push(seg);
    size = seg.length + size;
  }
  segments.reverse();
  const bytes = new Uint8Array(size);
  const offsets: number[] = [];
  let at = 0;
  for (const seg of segments) {
    offsets.push(at);
    bytes.set(seg, at);
    at += seg.length;
  }
  return { bytes, offsets };
}

function nested(
  version: PsonVersion,
  kind: 'array' | 'map',
  levels: number,
): { bytes: Uint8Array; offsetOf: (level: number) => number } {
  if (version === 1) {
    const step = kind === 'array' ? 1 : 2;
    return { bytes: nestedV1(kind, levels), offsetOf: (level) => level * step };
  }
  const { bytes, offsets } = nestedV0(kind, levels);
  return { bytes, offsetOf: (level) => offsets[level] as number };
}

describe('hostile input: nesting depth', () => {
  for (const version of VERSIONS) {
    for (const kind of ['array', 'map'] as const) {
      it(`v${version} ${kind}s: 64 levels decode, 65 are DEPTH_EXCEEDED`, () => {
        const ok = nested(version, kind, 64);
        assert.deepEqual(decode(ok.bytes, { version }), nestedValue(kind, 64));
        assert.deepEqual(toHex(encode(nestedValue(kind, 64), { version })), toHex(ok.bytes));
        const deep = nested(version, kind, 65);
        decodeFails(deep.bytes, { version }, C.DEPTH_EXCEEDED, deep.offsetOf(64));
        decodeFails(deep.bytes, { version, strict: true }, C.DEPTH_EXCEEDED, deep.offsetOf(64));
        assert.deepEqual(decode(deep.bytes, { version, maxDepth: 65 }), nestedValue(kind, 65));
      });

      it(`v${version} ${kind}s: a custom maxDepth is respected`, () => {
        for (const maxDepth of [0, 1, 3, 100]) {
          if (maxDepth > 0) {
            const ok = nested(version, kind, maxDepth);
            assert.deepEqual(decode(ok.bytes, { version, maxDepth }), nestedValue(kind, maxDepth));
          }
          const deep = nested(version, kind, maxDepth + 1);
          decodeFails(deep.bytes, { version, maxDepth }, C.DEPTH_EXCEEDED, deep.offsetOf(maxDepth));
        }
        // Scalars have no depth.
        assert.equal(decode(version === 1 ? h('05') : h('08 05'), { version, maxDepth: 0 }), 5);
      });

      it(`v${version} ${kind}s: 100,000 levels fail fast with DEPTH_EXCEEDED, not a stack overflow`, () => {
        const deep = nested(version, kind, 100_000);
        const t0 = performance.now();
        decodeFails(deep.bytes, { version }, C.DEPTH_EXCEEDED, deep.offsetOf(64));
        assert.ok(performance.now() - t0 < 100);
      });
    }

    it(`v${version}: depth counts arrays and maps together`, () => {
      // [{"": [{"": …}]}] alternating, 65 levels
      let v: PsonValue = [];
      for (let i = 1; i < 65; i++) v = i % 2 ? { '': v } : [v];
      const bytes = encode(v, { version, maxDepth: 65 });
      expectPsonError(() => decode(bytes, { version }), C.DEPTH_EXCEEDED);
      assert.deepEqual(decode(bytes, { version, maxDepth: 65 }), v);
    });

    it(`v${version}: encode stops at maxDepth (default 64)`, () => {
      encode(nestedValue('array', 64), { version });
      expectPsonError(() => encode(nestedValue('array', 65), { version }), C.DEPTH_EXCEEDED, -1);
      expectPsonError(() => encode(nestedValue('map', 65), { version }), C.DEPTH_EXCEEDED, -1);
      expectPsonError(() => encode(nestedValue('map', 4), { version, maxDepth: 3 }), C.DEPTH_EXCEEDED, -1);
      encode(nestedValue('map', 3), { version, maxDepth: 3 });
    });

    // Found failing: the encoder checks the depth before every object, leaves (bytes, Date)
    // included, while the decoder counts containers only.
    it(`v${version}: a value that decodes at the maximum depth can be encoded again`, () => {
      // 64 nested arrays whose innermost holds a byte string (a leaf, not a container).
      let v: PsonValue = [Uint8Array.of(1, 2)];
      for (let i = 1; i < 64; i++) v = [v];
      const bytes = encode(v, { version, maxDepth: 65 });
      const decoded = decode(bytes, { version });
      assert.deepEqual(decoded, v);
      assert.equal(toHex(encode(decoded, { version })), toHex(bytes));
    });
  }
});

// ---------------------------------------------------------------------------------------

describe('hostile input: unknown types, keys, integer range, trailing bytes', () => {
  it('v1 headers 0x42-0x5f and 0x63-0x7f are UNKNOWN_TYPE', () => {
    const padding = rep('00', 16);
    for (let b = 0x42; b <= 0x7f; b++) {
      if (b >= 0x60 && b <= 0x62) continue;
      const hx = b.toString(16);
      decodeFails(`${hx} ${padding}`, { version: 1 }, C.UNKNOWN_TYPE, 0);
      decodeFails(hx, { version: 1 }, C.UNKNOWN_TYPE, 0);
      decodeFails(`e2 01 ${hx} ${padding}`, { version: 1 }, C.UNKNOWN_TYPE, 2);
      decodeFails(`c1 81 61 ${hx} ${padding}`, { version: 1 }, C.UNKNOWN_TYPE, 3);
    }
  });

  it('legacy tags other than the 16 canonical ones are UNKNOWN_TYPE', () => {
    const known = new Set([
      0x00, 0x08, 0x10, 0x1d, 0x21, 0x28, 0x30, 0x38, 0x40, 0x4a, 0x50, 0x5a, 0x60, 0x6a, 0x72, 0x78,
    ]);
    const padding = rep('00', 16);
    let unknown = 0;
    for (let b = 0; b < 256; b++) {
      if (known.has(b)) continue;
      unknown++;
      const hx = b.toString(16).padStart(2, '0');
      decodeFails(`${hx} ${padding}`, { version: 0 }, C.UNKNOWN_TYPE, 0);
      decodeFails(hx, { version: 0 }, C.UNKNOWN_TYPE, 0);
      decodeFails(`72 12 40 ${hx} ${padding}`, { version: 0 }, C.UNKNOWN_TYPE, 3);
      decodeFails(`6a 13 01 61 ${hx} ${padding}`, { version: 0 }, C.UNKNOWN_TYPE, 4);
    }
    assert.equal(unknown, 240);
  });

  it('v1 map keys that are not strings are INVALID_KEY', () => {
    const keys = [
      '01',
      '1f 80 01',
      '21',
      '40 00 00 00 00',
      '60',
      '61',
      '62',
      'a1 61',
      'a0',
      'c0',
      'e0',
      'e1 80',
      '41 00 00 00 00 00 00 00 00',
    ];
    for (const key of keys) {
      decodeFails(`c1 ${key} 01`, { version: 1 }, C.INVALID_KEY, 1);
      decodeFails(`c2 81 61 01 ${key} 02`, { version: 1 }, C.INVALID_KEY, 4);
      decodeFails(`e1 c1 ${key} 01`, { version: 1 }, C.INVALID_KEY, 2);
      decodeFails(`c1 ${key} 01`, { version: 1, maps: 'map' }, C.INVALID_KEY, 1);
    }
  });

  it('negative magnitudes above 2^63 are INTEGER_RANGE; -2^63 itself is fine', () => {
    const above = `81 ${rep('80', 8)} 01`; // 2^63 + 1
    const max = `${rep('ff', 9)} 01`; // 2^64 - 1
    for (const m of [above, max]) {
      decodeFails(`3f ${m}`, { version: 1 }, C.INTEGER_RANGE, 0);
      decodeFails(`e2 00 3f ${m}`, { version: 1 }, C.INTEGER_RANGE, 2);
      decodeFails(`10 ${m}`, { version: 0 }, C.INTEGER_RANGE, 0);
      decodeFails(`72 0b 10 ${m}`, { version: 0 }, C.INTEGER_RANGE, 2);
    }
    assert.equal(decode(h(`3f ${rep('80', 9)} 01`)), -(2n ** 63n));
    assert.equal(decode(h(`10 ${rep('80', 9)} 01`), { version: 0 }), -(2n ** 63n));
    // just outside the safe range: bigint, never rounded
    assert.equal(decode(h('3f 80 80 80 80 80 80 80 10')), -(2n ** 53n));
    assert.equal(decode(h('3f ff ff ff ff ff ff ff 0f')), -(2 ** 53 - 1));
  });

  it('bytes after the value are TRAILING_BYTES (decodeAt just stops)', () => {
    const cases: Array<[PsonVersion, string, number]> = [
      [1, '00 00', 1],
      [1, 'e0 e0', 1],
      [1, '81 61 00', 2],
      [1, '62 ff', 1],
      [1, 'c1 81 61 01 c0', 4],
      [0, '38 38', 1],
      [0, '00 00', 1],
      [0, '72 00 00', 2],
      [0, '6a 03 01 61 40 ff', 5],
    ];
    for (const [version, hex, offset] of cases) {
      decodeFails(hex, { version }, C.TRAILING_BYTES, offset);
      assert.equal(decodeAt(h(hex), 0, { version }).end, offset);
    }
  });

  it('empty input is TRUNCATED at 0', () => {
    for (const version of VERSIONS) decodeFails(new Uint8Array(0), { version }, C.TRUNCATED, 0);
  });

  it('an unknown version is INVALID_OPTION', () => {
    expectPsonError(() => decode(h('00'), { version: 2 as PsonVersion }), C.INVALID_OPTION);
    expectPsonError(() => encode(0, { version: 2 as PsonVersion }), C.INVALID_OPTION);
  });
});

describe('strict mode', () => {
  // [hex, the lenient value, offset of the strict failure]
  const nonMinimalV1: Array<[string, PsonValue, number]> = [
    ['1f 05', 5, 0],
    ['1f 00', 0, 0],
    ['1f 1e', 30, 0],
    ['3f 05', -5, 0],
    ['3f 1e', -30, 0],
    ['9f 01 61', 'a', 0],
    ['bf 01 00', Uint8Array.of(0), 0],
    ['df 01 81 61 01', { a: 1 }, 0],
    ['ff 01 00', [0], 0],
    ['c1 9f 01 61 01', { a: 1 }, 1], // key length escape
    ['1f 9f 00', 31, 1], // over-long varint
    ['1f ff 80 00', 127, 1],
    [`1f ${rep('80', 9)} 00`, 0, 1],
    [`1f ${rep('ff', 8)} 80 00`, 2n ** 56n - 1n, 1],
    ['3f a0 80 00', -32, 1],
    [`9f a0 00 ${rep('61', 32)}`, 'a'.repeat(32), 1],
    ['e1 1f 05', [5], 1],
  ];
  const nonMinimalV0: Array<[string, PsonValue, number]> = [
    ['08 00', 0, 0],
    ['08 01', 1, 0],
    ['10 00', 0, 0],
    ['08 82 00', 2, 1],
    ['10 80 80 00', 0, 1],
    ['4a 00', '', 0],
    ['5a 00', new Uint8Array(0), 0],
    ['72 80 00', [], 1],
    ['6a 80 00', {}, 1],
    ['4a 81 00 61', 'a', 1],
    ['6a 04 81 00 61 40', { a: 1 }, 2], // bare key length
    ['72 02 08 01', [1], 2],
  ];

  for (const [version, cases] of [
    [1, nonMinimalV1],
    [0, nonMinimalV0],
  ] as const) {
    it(`v${version}: non-minimal encodings are NON_MINIMAL in strict mode and accepted otherwise`, () => {
      for (const [hex, value, offset] of cases) {
        decodeFails(hex, { version, strict: true }, C.NON_MINIMAL, offset);
        const lenient = decodes(hex, { version });
        assert.deepEqual(lenient, value, hex);
        if (typeof lenient === 'number') assert.ok(!Object.is(lenient, -0), `${hex} must not decode as -0`);
        // The encoder writes the minimal form, which strict mode accepts.
        const minimal = encode(value, { version });
        assert.ok(minimal.length < h(hex).length, `${hex} re-encodes shorter`);
        assert.deepEqual(decode(minimal, { version, strict: true }), value);
      }
    });
  }

  it('minimal escapes and varints are accepted in strict mode', () => {
    assert.equal(decodes('1f 1f', { strict: true }), 31);
    assert.equal(decodes('1f 80 01', { strict: true }), 128);
    assert.equal(decodes('3f 1f', { strict: true }), -31);
    assert.equal(decodes('08 02', { version: 0, strict: true }), 2);
    assert.equal(decodes('10 01', { version: 0, strict: true }), -1);
    assert.equal(decodes(`9f 1f ${rep('62', 31)}`, { strict: true }), 'b'.repeat(31));
  });

  it('duplicate keys: DUPLICATE_KEY in strict mode, last one wins otherwise', () => {
    const cases: Array<[PsonVersion, string, number]> = [
      [1, 'c2 81 61 01 81 61 02', 4],
      [1, 'c3 81 61 01 81 62 03 81 61 02', 7],
      [0, '6a 07 01 61 40 01 61 08 02', 5],
      [0, '6a 0b 01 61 40 01 62 08 03 01 61 08 02', 9],
    ];
    for (const [version, hex, offset] of cases) {
      decodeFails(hex, { version, strict: true }, C.DUPLICATE_KEY, offset);
      decodeFails(hex, { version, strict: true, maps: 'map' }, C.DUPLICATE_KEY, offset);
      const obj = decodes(hex, { version }) as Record<string, PsonValue>;
      assert.equal(obj.a, 2);
      const map = decodes(hex, { version, maps: 'map' });
      assert.ok(map instanceof Map);
      assert.equal(map.get('a'), 2);
      assert.equal(map.size, Object.keys(obj).length);
    }
    // A duplicated "__proto__" is a duplicate too.
    const proto = '89 5f 5f 70 72 6f 74 6f 5f 5f';
    decodeFails(`c2 ${proto} 01 ${proto} 02`, { strict: true }, C.DUPLICATE_KEY, 12);
    const last = decodes(`c2 ${proto} 01 ${proto} 02`, {}) as Record<string, PsonValue>;
    assert.equal(Object.getOwnPropertyDescriptor(last, '__proto__')?.value, 2);
    assert.equal(Object.getPrototypeOf(last), Object.prototype);
  });
});

describe('"__proto__" keys', () => {
  const protoKey = '89 5f 5f 70 72 6f 74 6f 5f 5f'; // "__proto__" with its v1 header
  const polluted = 'c1 88 70 6f 6c 6c 75 74 65 64 61'; // {"polluted": true}

  function checkOwnProto(out: PsonValue, value: PsonValue): void {
    assert.ok(out !== null && typeof out === 'object' && !(out instanceof Map));
    assert.equal(Object.getPrototypeOf(out), Object.prototype, 'the prototype is unchanged');
    assert.ok(Object.hasOwn(out, '__proto__'), 'own property');
    assert.ok(Object.prototype.propertyIsEnumerable.call(out, '__proto__'), 'enumerable');
    assert.deepEqual(Object.keys(out), ['__proto__']);
    assert.deepEqual(Object.getOwnPropertyDescriptor(out, '__proto__')?.value, value);
    assert.equal((out as Record<string, unknown>).polluted, undefined);
    assert.equal(({} as Record<string, unknown>).polluted, undefined, 'Object.prototype untouched');
  }

  for (const version of VERSIONS) {
    it(`v${version}: becomes an own enumerable property, never the prototype`, () => {
      const bytes =
        version === 1
          ? h(`c1 ${protoKey} ${polluted}`)
          : encode(new Map([['__proto__', { polluted: true }]]), { version: 0 });
      if (version === 0) assert.equal(toHex(bytes), '6a16095f5f70726f746f5f5f6a0a08706f6c6c7574656428');
      for (const strict of [false, true]) {
        const out = decode(bytes, { version, strict });
        checkOwnProto(out, { polluted: true });
        // encodes back to the same bytes
        assert.equal(toHex(encode(out, { version })), toHex(bytes));
        const asMap = decode(bytes, { version, strict, maps: 'map' });
        assert.ok(asMap instanceof Map);
        assert.deepEqual([...asMap.keys()], ['__proto__']);
        assert.ok(asMap.get('__proto__') instanceof Map);
      }
      // Other values under "__proto__": null, an array, a number.
      for (const v of [null, [1, 2], 7] as PsonValue[]) {
        const b = encode(new Map([['__proto__', v]]), { version });
        checkOwnProto(decode(b, { version }), v);
      }
      // Nested
      const nestedOut = decode(encode({ a: new Map([['__proto__', { x: 1 }]]) }, { version }), {
        version,
      }) as Record<string, PsonValue>;
      checkOwnProto(nestedOut.a as PsonValue, { x: 1 });
    });
  }

  it('an own "__proto__" member is encoded as a key', () => {
    const obj = JSON.parse('{"__proto__": 1, "b": 2}') as Record<string, unknown>;
    assert.equal(toHex(encode(obj)), `c2${protoKey.replace(/ /g, '')}01816202`);
  });
});

// ---------------------------------------------------------------------------------------
// Encoding

describe('encoding: unsupported values and ranges', () => {
  for (const version of VERSIONS) {
    it(`v${version}: functions and symbols are UNSUPPORTED_VALUE`, () => {
      const fn = () => 1;
      const values: unknown[] = [
        fn,
        Symbol('s'),
        [1, fn],
        [Symbol.iterator],
        { a: fn },
        { a: 1, b: Symbol('s') },
        new Map([['f', fn]]),
        new Map<unknown, unknown>([[1, 'x']]),
        new Map<unknown, unknown>([[Symbol('k'), 'x']]),
        { deep: [{ x: [fn] }] },
      ];
      for (const [i, v] of values.entries()) {
        expectPsonError(() => encode(v, { version }), C.UNSUPPORTED_VALUE, -1, `#${i}`);
      }
    });

    it(`v${version}: circular values are DEPTH_EXCEEDED`, () => {
      const obj: Record<string, unknown> = { a: 1 };
      obj.self = obj;
      const arr: unknown[] = [1];
      arr.push(arr);
      const map = new Map<string, unknown>();
      map.set('m', map);
      const a: Record<string, unknown> = {};
      const b: Record<string, unknown> = { a };
      a.b = [b];
      for (const v of [obj, arr, map, a]) expectPsonError(() => encode(v, { version }), C.DEPTH_EXCEEDED, -1);
    });

    // Found failing: toJSON results are written at the same depth, so this recurses until
    // the stack overflows (RangeError).
    it(`v${version}: a toJSON that returns its own object is a cycle too (PsonError, not a stack overflow)`, () => {
      const selfish: { toJSON(): unknown } = { toJSON: () => selfish };
      expectPsonError(() => encode(selfish, { version }), C.DEPTH_EXCEEDED, -1);
      const endless = (): object => ({ toJSON: endless });
      expectPsonError(() => encode(endless(), { version }), C.DEPTH_EXCEEDED, -1);
    });

    it(`v${version}: bigints outside -2^63 … 2^64-1 are INTEGER_RANGE`, () => {
      for (const v of [2n ** 64n, -(2n ** 63n) - 1n, 2n ** 100n, -(2n ** 64n)]) {
        expectPsonError(() => encode(v, { version }), C.INTEGER_RANGE, -1, String(v));
        expectPsonError(() => encode([0, { k: v }], { version }), C.INTEGER_RANGE, -1, String(v));
      }
      const max = encode(2n ** 64n - 1n, { version });
      const min = encode(-(2n ** 63n), { version });
      assert.equal(toHex(max), version === 1 ? `1f${rep('ff', 9)}01` : `08${rep('ff', 9)}01`);
      assert.equal(toHex(min), version === 1 ? `3f${rep('80', 9)}01` : `10${rep('80', 9)}01`);
      assert.equal(decode(max, { version }), 2n ** 64n - 1n);
      assert.equal(decode(min, { version }), -(2n ** 63n));
    });
  }

  // Found failing: encode() shares one module-level ByteWriter, so a nested encode() resets it.
  it('the encoder can be called from inside a toJSON method', () => {
    const inner = {
      toJSON(): unknown {
        encode('x'.repeat(10)); // e.g. to log or cache an encoding
        return 1;
      },
    };
    for (const version of VERSIONS) {
      assert.equal(toHex(encode([inner, 2], { version })), toHex(encode([1, 2], { version })));
      assert.equal(
        toHex(encode({ a: inner, b: 'c' }, { version })),
        toHex(encode({ a: 1, b: 'c' }, { version })),
      );
    }
  });

  it('lone surrogates are written as U+FFFD (short and long strings, values and keys)', () => {
    assert.equal(toHex(encode('\uD800')), '83efbfbd');
    assert.equal(toHex(encode('a\uDC00b')), '8561efbfbd62');
    assert.equal(toHex(encode('\uD83D', { version: 0 })), '4a03efbfbd');
    const long = `${'a'.repeat(70)}\uD800`;
    assert.equal(decode(encode(long)), `${'a'.repeat(70)}\uFFFD`);
    assert.deepEqual(decode(encode({ 'k\uDFFF': 1 })), { 'k\uFFFD': 1 });
  });
});

describe('encoding: JavaScript value mapping', () => {
  it('Map keeps its key order (objects put index-like keys first)', () => {
    const m = new Map<string, number>([
      ['b', 1],
      ['a', 2],
      ['1', 3],
    ]);
    assert.equal(toHex(encode(m)), 'c3816201816102813103');
    assert.equal(toHex(encode(m, { version: 0 })), '6a0b0162400161080201310803');
    assert.equal(toHex(encode({ b: 1, a: 2, '1': 3 })), 'c3813103816201816102');
  });

  it("decode with maps: 'map' returns Maps with the exact key order", () => {
    const cases: Array<[PsonVersion, string]> = [
      [1, 'c3 81 62 01 81 61 02 81 31 03'],
      [0, '6a 0b 01 62 40 01 61 08 02 01 31 08 03'],
    ];
    for (const [version, hex] of cases) {
      const m = decode(h(hex), { version, maps: 'map' });
      assert.ok(m instanceof Map);
      assert.deepEqual(
        [...m.entries()],
        [
          ['b', 1],
          ['a', 2],
          ['1', 3],
        ],
      );
      assert.equal(toHex(encode(m, { version })), hex.replace(/ /g, ''));
      // nested maps (inside maps and arrays) are Maps too
      const nestedMap = decode(encode({ x: [{ z: 1, y: 2 }] }, { version }), { version, maps: 'map' });
      assert.ok(nestedMap instanceof Map);
      const inner = (nestedMap.get('x') as PsonValue[])[0];
      assert.ok(inner instanceof Map);
      assert.deepEqual([...inner.keys()], ['z', 'y']);
      // default: plain objects
      const obj = decode(h(hex), { version });
      assert.equal(Object.getPrototypeOf(obj), Object.prototype);
      assert.deepEqual(Object.keys(obj as object), ['1', 'b', 'a']);
    }
  });

  it('Buffer, DataView, ArrayBuffer and other views are bytes', () => {
    const ab = new ArrayBuffer(8);
    new Uint8Array(ab).set([0, 1, 2, 3, 4, 5, 6, 7]);
    const pooled = Buffer.from('hello'); // usually a slice of a larger pool (byteOffset ≠ 0)
    const cases: Array<[unknown, string]> = [
      [Buffer.from([1, 2, 3]), '010203'],
      [pooled, '68656c6c6f'],
      [new DataView(ab, 2, 3), '020304'],
      [ab, '0001020304050607'],
      [new Uint8Array(ab, 5), '050607'],
      [new Uint16Array(ab, 2, 1), '0203'],
      [new ArrayBuffer(0), ''],
      [Buffer.alloc(0), ''],
    ];
    for (const [value, payload] of cases) {
      const n = payload.length / 2;
      assert.equal(toHex(encode(value)), toHex(cat(header1(5, n), payload)));
      assert.equal(
        toHex(encode(value, { version: 0 })),
        n === 0 ? '60' : toHex(cat('5a', varint(n), payload)),
      );
      const back = decode(encode([value]));
      assert.deepEqual(back, [h(payload)]);
      assert.equal(Object.getPrototypeOf((back as PsonValue[])[0]), Uint8Array.prototype);
    }
  });

  it('Date (and any toJSON) is encoded as its toJSON result', () => {
    const d = new Date(Date.UTC(2024, 1, 29, 12, 34, 56, 789));
    for (const version of VERSIONS) {
      assert.equal(toHex(encode(d, { version })), toHex(encode('2024-02-29T12:34:56.789Z', { version })));
      assert.deepEqual(decode(encode({ at: d }, { version }), { version }), {
        at: '2024-02-29T12:34:56.789Z',
      });
      assert.equal(toHex(encode({ toJSON: () => [1, 2] }, { version })), toHex(encode([1, 2], { version })));
      assert.equal(toHex(encode(new Date(Number.NaN), { version })), toHex(encode(null, { version })));
    }
  });

  it('undefined object members are left out', () => {
    assert.equal(toHex(encode({ a: undefined, b: 1 })), 'c1816201');
    assert.equal(toHex(encode({ a: undefined, b: 1 }, { version: 0 })), '6a03016240');
    assert.equal(toHex(encode({ a: undefined })), 'c0');
    assert.equal(toHex(encode({ a: undefined }, { version: 0 })), '6a00');
    // Around the 31-entry escape: the count is the number of members written.
    for (const [keys, header] of [
      [31, 'de'],
      [32, 'df1f'],
      [33, 'df1f'],
    ] as const) {
      const obj: Record<string, unknown> = {};
      for (let i = 0; i < keys; i++) obj[`k${i}`] = i === 5 || (keys === 33 && i === 7) ? undefined : i;
      const written = keys === 33 ? keys - 2 : keys - 1;
      for (const version of VERSIONS) {
        const b = encode(obj, { version });
        if (version === 1) assert.equal(toHex(b.subarray(0, header.length / 2)), header);
        const back = decode(b, { version, strict: true }) as Record<string, PsonValue>;
        assert.equal(Object.keys(back).length, written);
        assert.ok(!('k5' in back));
      }
    }
  });

  it('undefined elsewhere is null (v1) or the legacy "empty" value 0x78 (v0)', () => {
    assert.equal(toHex(encode([undefined, 1])), 'e26201');
    assert.equal(toHex(encode([undefined, 1], { version: 0 })), '72027840');
    assert.equal(toHex(encode(undefined)), '62');
    assert.equal(toHex(encode(undefined, { version: 0 })), '78');
    // sparse arrays: holes are undefined
    const sparse: unknown[] = new Array(2);
    sparse[1] = 1;
    assert.equal(toHex(encode(sparse)), 'e26201');
    assert.deepEqual(decode(h('72 02 78 40'), { version: 0 }), [null, 1]);
    assert.equal(decode(h('78'), { version: 0 }), null);
  });

  it('-0 is written as integer 0 and header 0x20 reads as +0', () => {
    assert.equal(toHex(encode(-0)), '00');
    assert.equal(toHex(encode(-0, { version: 0 })), '38');
    assert.ok(Object.is(decode(h('20')), 0));
  });

  it('legacyLossyFloats: false keeps binary64 values exact', () => {
    const lossy = encode(0.1, { version: 0 });
    assert.equal(toHex(lossy), '1dcdcccc3d');
    assert.equal(decode(lossy, { version: 0 }), 0.10000000149011612);
    const exact = encode(0.1, { version: 0, legacyLossyFloats: false });
    assert.equal(toHex(exact), '219a9999999999b93f');
    assert.equal(decode(exact, { version: 0 }), 0.1);
    const cases: Array<[number, string]> = [
      [23.5, '1d0000bc41'], // exact binary32 stays binary32
      [3.14, '211f85eb51b81e0940'],
      [5e-324, '210100000000000000'],
      [Number.NaN, '21000000000000f87f'],
      [Number.POSITIVE_INFINITY, '21000000000000f07f'],
      [Number.NEGATIVE_INFINITY, '21000000000000f0ff'],
      [5, '0805'],
    ];
    for (const [v, hex] of cases) {
      const b = encode(v, { version: 0, legacyLossyFloats: false });
      assert.equal(toHex(b), hex, String(v));
      assert.ok(Object.is(decode(b, { version: 0 }), v));
    }
    // The option does not touch the new encoding.
    assert.equal(toHex(encode(0.1, { version: 1, legacyLossyFloats: true })), '419a9999999999b93f');
  });
});
