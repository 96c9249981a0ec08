import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { bytesToHex, hexToBytes, LEGACY_EMPTY, loadPsonVectors } from '@iotmp/spec-vectors';
import { decode, decodeAt, encode } from '../src/index.js';

const vectors = loadPsonVectors();

/** What decoding gives back: the legacy "empty" value reads as null, -0 as 0. */
function expectedDecoded(v: unknown): unknown {
  if (v === LEGACY_EMPTY) return null;
  if (Object.is(v, -0)) return 0;
  if (Array.isArray(v)) return v.map(expectedDecoded);
  if (v !== null && typeof v === 'object' && !(v instanceof Uint8Array)) {
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, expectedDecoded(x)]));
  }
  return v;
}

function toEncodable(v: unknown): unknown {
  return v === LEGACY_EMPTY ? undefined : v;
}

describe('PSON reference vectors', () => {
  it('covers both encodings', () => {
    assert.ok(vectors.filter((v) => v.pv === 1).length >= 90);
    assert.ok(vectors.filter((v) => v.pv === 0).length >= 90);
  });

  for (const v of vectors) {
    describe(`pv${v.pv} ${v.name}`, () => {
      it('encodes to the reference bytes', () => {
        assert.equal(bytesToHex(encode(toEncodable(v.value), { version: v.pv })), v.hex);
      });
      it('decodes the reference bytes', () => {
        const expected = expectedDecoded(v.decoded !== undefined ? v.decoded : v.value);
        assert.deepStrictEqual(decode(hexToBytes(v.hex), { version: v.pv }), expected);
      });
      if (v.hexSortedKeys) {
        it('decodes the sorted-key variant to the same value', () => {
          const sorted = v.hexSortedKeys as string;
          assert.deepStrictEqual(decode(hexToBytes(sorted), { version: v.pv }), expectedDecoded(v.value));
        });
      }
      it('decodes in place inside a larger buffer', () => {
        const inner = hexToBytes(v.hex);
        const outer = new Uint8Array(inner.length + 4);
        outer.set(inner, 3);
        outer[3 + inner.length] = 0xff;
        const { value, end } = decodeAt(outer, 3, { version: v.pv });
        assert.equal(end, 3 + inner.length);
        assert.deepStrictEqual(value, expectedDecoded(v.decoded !== undefined ? v.decoded : v.value));
      });
    });
  }
});
