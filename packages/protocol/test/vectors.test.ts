import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { bytesToHex, type FrameVector, hexToBytes, loadFrameVectors } from '@iotmp/spec-vectors';
import {
  decodeMessage,
  encodeFrame,
  encodeMessage,
  FrameErrorCode,
  type FrameField,
  legacyFieldOrder,
  MessageType,
} from '../src/index.js';
import { collect, messageOf, plain } from './helpers.js';

const vectors = loadFrameVectors();

/**
 * Frames the legacy client produced with numbers it should not have put in varint fields
 * (spec §3.4, §15 #12). Their bytes cannot mean what the client was given, so each has its
 * own defined outcome instead of "decodes to the described message".
 */
const quirks: Record<string, (v: FrameVector) => void> = {
  // LNX0 truncates 23.5 to the varint 23: the bytes say 23, and that is what we read.
  'pv0 run_payload_float_quirk': (v) => {
    const msg = decodeMessage(hexToBytes(v.hex));
    assert.deepEqual(plain(msg), {
      type: MessageType.RUN,
      streamId: 3,
      resource: 'threshold',
      payload: 23,
      psonVersion: 0,
    });
  },
  // A 10-byte varint for -5: every reference decoder rejects it, so do we (frame skipped).
  'pv0 run_payload_negative_quirk': (v) => {
    const { messages, invalid } = collect([hexToBytes(v.hex)]);
    assert.equal(messages.length, 0);
    assert.equal(invalid[0]?.code, FrameErrorCode.VARINT_OVERFLOW);
    assert.equal(invalid[0]?.streamId, 3, 'the stream id read before the bad field is reported');
  },
  // IOTMP-Linux clamps -1 to 0: we read 0; IOTMP-Embedded's 10-byte form is rejected.
  'pv1 negative_field_edge': (v) => {
    assert.deepEqual(plain(decodeMessage(hexToBytes(v.hex))), {
      type: MessageType.OK,
      streamId: 9,
      parameters: 0,
    });
    const { messages, invalid } = collect([hexToBytes(v.variants.iotmp_embedded as string)]);
    assert.equal(messages.length, 0);
    assert.equal(invalid[0]?.code, FrameErrorCode.VARINT_OVERFLOW);
  },
};

function fieldsOf(v: FrameVector): FrameField[] {
  return v.fields.map((f) => ({ id: f.id, wireType: f.wireType as 0 | 1 | 2, value: f.value }));
}

function expectedDecoded(v: FrameVector): Record<string, unknown> {
  const expected = plain(messageOf(v));
  if (v.fields.some((f) => f.wireType !== 0)) expected.psonVersion = v.pv;
  return expected;
}

describe('IOTMP frame vectors', () => {
  it('covers every message type in both protocol versions', () => {
    const types = new Set(vectors.map((v) => v.typeCode));
    for (const code of Object.values(MessageType)) assert.ok(types.has(code), `type ${code} has a vector`);
    assert.ok(vectors.some((v) => v.pv === 0));
  });

  for (const v of vectors) {
    const name = `pv${v.pv} ${v.name}`;
    const quirk = quirks[name];
    if (quirk) {
      it(`${name}: defined outcome for a malformed reference frame`, () => quirk(v));
      it(`${name}: our encoders refuse to produce it`, () => {
        assert.throws(() => encodeFrame(v.typeCode, fieldsOf(v)), { code: FrameErrorCode.INVALID_MESSAGE });
      });
      continue;
    }
    describe(name, () => {
      it('decodes to the described message', () => {
        assert.deepStrictEqual(plain(decodeMessage(hexToBytes(v.hex))), expectedDecoded(v));
      });
      it('re-encodes to the reference bytes from its fields in order', () => {
        assert.equal(bytesToHex(encodeFrame(v.typeCode, fieldsOf(v))), v.hex);
      });
      if (v.pv === 1) {
        it('encodeMessage gives the canonical (ascending field id) bytes', () => {
          assert.equal(bytesToHex(encodeMessage(messageOf(v), { version: 1 })), v.hex);
        });
      } else {
        it('encodeMessage with the legacy field order gives the legacy client bytes', () => {
          const msg = messageOf(v);
          assert.equal(
            bytesToHex(encodeMessage(msg, { version: 0, fieldOrder: legacyFieldOrder(msg) })),
            v.hex,
          );
        });
        it('encodeMessage (canonical order) round-trips in protocol version 0', () => {
          const bytes = encodeMessage(messageOf(v), { version: 0 });
          assert.equal(bytes.length, hexToBytes(v.hex).length, 'same size, only the field order differs');
          assert.deepStrictEqual(plain(decodeMessage(bytes)), expectedDecoded(v));
        });
      }
      for (const [producer, hex] of Object.entries(v.variants)) {
        it(`decodes the ${producer} field-order variant to the same message`, () => {
          assert.deepStrictEqual(plain(decodeMessage(hexToBytes(hex))), expectedDecoded(v));
        });
      }
    });
  }

  it('CONNECT tells the protocol version by the wire type of its payload', () => {
    const pv1 = vectors.find((v) => v.pv === 1 && v.name === 'connect') as FrameVector;
    const pv0 = vectors.find((v) => v.pv === 0 && v.name === 'connect') as FrameVector;
    assert.equal(decodeMessage(hexToBytes(pv1.hex)).psonVersion, 1);
    assert.equal(decodeMessage(hexToBytes(pv1.variants.iotmp_linux as string)).psonVersion, 1);
    assert.equal(decodeMessage(hexToBytes(pv0.hex)).psonVersion, 0);
  });

  it('the reference client CONNECT seen on the wire (Appendix C) decodes', () => {
    const bytes = hexToBytes('03141ae3847573657283646576847061737308e78a01');
    assert.deepStrictEqual(plain(decodeMessage(bytes)), {
      type: MessageType.CONNECT,
      streamId: 17767,
      payload: ['user', 'dev', 'pass'],
      psonVersion: 1,
    });
  });
});

describe('split frames', () => {
  const frames: Uint8Array[] = [];
  for (const v of vectors) {
    if (quirks[`pv${v.pv} ${v.name}`]) continue;
    frames.push(hexToBytes(v.hex), ...Object.values(v.variants).map(hexToBytes));
  }

  it('every vector cut at every byte position decodes identically', () => {
    let cuts = 0;
    for (const frame of frames) {
      const whole = plain(decodeMessage(frame));
      for (let cut = 0; cut <= frame.length; cut++) {
        const { messages, invalid } = collect([frame.subarray(0, cut), frame.subarray(cut)]);
        assert.equal(invalid.length, 0);
        assert.equal(messages.length, 1, `cut at ${cut} of ${bytesToHex(frame)}`);
        assert.deepStrictEqual(plain(messages[0] as object as never), whole);
        cuts++;
      }
    }
    assert.ok(cuts > 1000);
  });

  it('every vector pushed one byte at a time decodes identically', () => {
    for (const frame of frames) {
      const bytes = [...frame].map((b) => Uint8Array.of(b));
      const { messages } = collect(bytes);
      assert.equal(messages.length, 1);
      assert.deepStrictEqual(plain(messages[0] as never), plain(decodeMessage(frame)));
    }
  });

  it('all vectors back to back, cut in three at every pair of positions of a window, decode in order', () => {
    const stream = new Uint8Array(frames.reduce((n, f) => n + f.length, 0));
    let at = 0;
    for (const f of frames) {
      stream.set(f, at);
      at += f.length;
    }
    const expected = frames.map((f) => plain(decodeMessage(f)));
    for (let a = 0; a < 64; a++) {
      for (let b = a; b < a + 200 && b <= stream.length; b += 7) {
        const { messages } = collect([stream.subarray(0, a), stream.subarray(a, b), stream.subarray(b)]);
        assert.deepStrictEqual(messages.map(plain), expected);
      }
    }
  });
});
