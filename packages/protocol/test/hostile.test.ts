import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { hexToBytes } from '@iotmp/spec-vectors';
import fc from 'fast-check';
import {
  DEFAULT_MAX_FRAME_SIZE,
  decodeMessage,
  encodeFrame,
  encodeMessage,
  FrameDecoder,
  FrameError,
  FrameErrorCode,
  type Message,
  MessageType,
} from '../src/index.js';
import { collect, concat, plain } from './helpers.js';

const keepAlive = hexToBytes('0500');
const ok = encodeMessage({ type: MessageType.OK, streamId: 7 });

function fatal(chunks: Uint8Array[], code: string, options?: { maxFrameSize?: number }): FrameError {
  let caught: unknown;
  try {
    collect(chunks, options);
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof FrameError, `expected a FrameError, got ${String(caught)}`);
  assert.equal(caught.code, code);
  assert.equal(caught.fatal, true);
  return caught;
}

describe('frame limits', () => {
  it('rejects an oversized frame from its header alone, before any body byte arrives', () => {
    const messages: unknown[] = [];
    const decoder = new FrameDecoder({ onMessage: (m) => messages.push(m) });
    // RUN announcing 256 KiB + 1 bytes: 06 81 80 10
    assert.throws(() => decoder.push(hexToBytes('06818010')), {
      code: FrameErrorCode.FRAME_TOO_LARGE,
      fatal: true,
      messageType: MessageType.RUN,
    });
    assert.equal(decoder.bufferedBytes, 0, 'nothing of the body was buffered');
    assert.throws(() => decoder.push(keepAlive), { code: FrameErrorCode.DECODER_FAILED });
    assert.equal(messages.length, 0);
  });

  it('accepts a frame of exactly the maximum size, delivered in many chunks', () => {
    const payload = new Uint8Array(DEFAULT_MAX_FRAME_SIZE - 16).fill(0xab);
    let frame = encodeMessage({ type: MessageType.STREAM_DATA, streamId: 1, payload });
    // Pad with an unknown field (id 9, PSON bytes) to reach exactly the limit.
    const body = frame.length - 4; // 0a + 3-byte size
    const pad = DEFAULT_MAX_FRAME_SIZE - body;
    assert.ok(pad > 2 && pad < 33);
    frame = encodeFrame(MessageType.STREAM_DATA, [
      { id: 1, wireType: 0, value: 1 },
      { id: 3, wireType: 2, value: payload },
      { id: 9, wireType: 2, value: new Uint8Array(pad - 2) }, // key + header + bytes
    ]);
    assert.equal(frame.length - 4, DEFAULT_MAX_FRAME_SIZE);
    const chunks: Uint8Array[] = [];
    for (let i = 0; i < frame.length; i += 1000) chunks.push(frame.subarray(i, i + 1000));
    const { messages } = collect(chunks);
    assert.equal(messages.length, 1);
    assert.deepEqual(messages[0]?.payload, payload);
    fatal([frame], FrameErrorCode.FRAME_TOO_LARGE, { maxFrameSize: DEFAULT_MAX_FRAME_SIZE - 1 });
  });

  it('honours a configured maxFrameSize', () => {
    const frame = encodeMessage({ type: MessageType.RUN, streamId: 1, resource: 'x'.repeat(100) });
    fatal([frame], FrameErrorCode.FRAME_TOO_LARGE, { maxFrameSize: 64 });
    assert.equal(collect([frame], { maxFrameSize: frame.length }).messages.length, 1);
  });

  it('fails on header varints longer than 32 bits', () => {
    fatal([hexToBytes('06ffffffff7f')], FrameErrorCode.VARINT_OVERFLOW); // size of 5 bytes > 2^32
    fatal([hexToBytes('ffffffffff0100')], FrameErrorCode.VARINT_OVERFLOW); // 6-byte type
    // The same, one byte at a time.
    fatal(
      [...hexToBytes('06ffffffff7f')].map((b) => Uint8Array.of(b)),
      FrameErrorCode.VARINT_OVERFLOW,
    );
  });

  it('fails on the reserved message type 0', () => {
    const err = fatal([keepAlive, hexToBytes('0000')], FrameErrorCode.RESERVED_TYPE);
    assert.equal(err.messageType, 0);
  });
});

describe('malformed frames are skipped, the stream stays in sync', () => {
  it('skips an unknown message type and decodes what follows', () => {
    const { messages, invalid } = collect([concat([hexToBytes('0b03010203'), hexToBytes('7f00'), ok])]);
    assert.deepEqual(
      invalid.map((e) => [e.code, e.messageType, e.fatal]),
      [
        [FrameErrorCode.UNKNOWN_TYPE, 0x0b, false],
        [FrameErrorCode.UNKNOWN_TYPE, 0x7f, false],
      ],
    );
    assert.deepEqual(messages.map(plain), [{ type: MessageType.OK, streamId: 7 }]);
  });

  it('skips a frame with an unknown wire type, reporting the stream id read before it', () => {
    // RUN sid 5, then field 3 with wire type 3.
    const { messages, invalid } = collect([concat([hexToBytes('060408051baa'), ok])]);
    assert.equal(invalid[0]?.code, FrameErrorCode.UNKNOWN_WIRE_TYPE);
    assert.equal(invalid[0]?.streamId, 5);
    assert.equal(invalid[0]?.messageType, MessageType.RUN);
    assert.equal(messages.length, 1);
  });

  it('skips a frame whose PSON does not decode, with the PsonError as cause', () => {
    // RUN sid 5, PAYLOAD = string of 5 bytes with only 2 present.
    const { messages, invalid } = collect([concat([hexToBytes('060608051a856162'), ok])]);
    assert.equal(invalid[0]?.code, FrameErrorCode.INVALID_PSON);
    assert.equal((invalid[0]?.cause as { code?: string } | undefined)?.code, 'PSON_ERR_LENGTH_OUT_OF_RANGE');
    assert.equal(invalid[0]?.streamId, 5);
    assert.equal(messages.length, 1);
  });

  it('skips a frame with invalid UTF-8 in a string field', () => {
    const { invalid } = collect([hexToBytes('06052283c3282a')]);
    assert.equal((invalid[0]?.cause as { code?: string } | undefined)?.code, 'PSON_ERR_INVALID_UTF8');
  });

  it('skips a frame with PSON nested deeper than the limit', () => {
    const deep = new Uint8Array(70).fill(0xe1); // 70 nested one-element arrays
    const frame = concat([hexToBytes('0648'), hexToBytes('1a'), deep, hexToBytes('00')]);
    assert.equal(
      (collect([frame]).invalid[0]?.cause as { code?: string } | undefined)?.code,
      'PSON_ERR_DEPTH_EXCEEDED',
    );
    assert.equal(collect([frame], { maxDepth: 100 }).messages.length, 1);
  });

  it('skips a frame whose body ends inside a field', () => {
    assert.equal(collect([hexToBytes('060108')]).invalid[0]?.code, FrameErrorCode.TRUNCATED_FIELD);
    assert.equal(collect([hexToBytes('060188')]).invalid[0]?.code, FrameErrorCode.TRUNCATED_FIELD);
  });

  it('skips a frame whose field varint exceeds 32 bits', () => {
    const { invalid } = collect([hexToBytes('0606088080808010')]);
    assert.equal(invalid[0]?.code, FrameErrorCode.VARINT_OVERFLOW);
  });

  it('rejects stream ids outside 16 bits, in either wire type', () => {
    assert.equal(collect([hexToBytes('010408808004')]).invalid[0]?.code, FrameErrorCode.INVALID_STREAM_ID);
    assert.equal(collect([hexToBytes('01020a61')]).invalid[0]?.code, FrameErrorCode.INVALID_STREAM_ID);
    // A PSON-encoded stream id within range is accepted (any field may use either wire type).
    assert.equal(decodeMessage(hexToBytes('01020a05')).streamId, 5);
  });

  it('skips unknown field ids of every readable wire type, including multi-byte keys', () => {
    // RUN sid 1, field 5 varint 7, field 9 PSON "x", field 20 legacy PSON true, RESOURCE "a"
    const frame = encodeFrame(MessageType.RUN, [
      { id: 1, wireType: 0, value: 1 },
      { id: 5, wireType: 0, value: 7 },
      { id: 9, wireType: 2, value: 'x' },
      { id: 20, wireType: 1, value: true },
      { id: 0, wireType: 0, value: 3 },
      { id: 4, wireType: 2, value: 'a' },
    ]);
    assert.deepEqual(plain(decodeMessage(frame)), {
      type: MessageType.RUN,
      streamId: 1,
      resource: 'a',
      psonVersion: 1,
    });
  });

  it('keeps the last of repeated fields', () => {
    const frame = encodeFrame(MessageType.RUN, [
      { id: 4, wireType: 2, value: 'first' },
      { id: 4, wireType: 2, value: 'second' },
    ]);
    assert.equal(decodeMessage(frame).resource, 'second');
  });

  it('reads a resource or payload in either PSON wire type on the same connection', () => {
    const frame = encodeFrame(MessageType.RUN, [
      { id: 3, wireType: 1, value: { a: 1 } },
      { id: 4, wireType: 2, value: 'r' },
    ]);
    const msg = decodeMessage(frame);
    assert.deepEqual(msg.payload, { a: 1 });
    assert.equal(msg.psonVersion, 0, 'the payload decides');
  });

  it('stops for good when a handler throws, instead of losing sync silently', () => {
    const decoder = new FrameDecoder({
      onMessage: () => {
        throw new Error('handler bug');
      },
    });
    assert.throws(() => decoder.push(concat([ok, ok])), /handler bug/);
    assert.throws(() => decoder.push(ok), { code: FrameErrorCode.DECODER_FAILED });
  });

  it('decodeMessage wants exactly one whole frame', () => {
    assert.throws(() => decodeMessage(concat([ok, ok])), { code: FrameErrorCode.INVALID_MESSAGE });
    assert.throws(() => decodeMessage(ok.subarray(0, 3)), { code: FrameErrorCode.INVALID_MESSAGE });
  });
});

describe('encoding refuses what cannot go on the wire', () => {
  it('bad type, stream id, protocol version', () => {
    assert.throws(() => encodeMessage({ type: 0 as never }), { code: FrameErrorCode.INVALID_MESSAGE });
    assert.throws(() => encodeMessage({ type: 11 as never }), { code: FrameErrorCode.INVALID_MESSAGE });
    assert.throws(() => encodeMessage({ type: MessageType.RUN, streamId: 65536 }), {
      code: FrameErrorCode.INVALID_MESSAGE,
    });
    assert.throws(() => encodeMessage({ type: MessageType.RUN, streamId: 1.5 }), {
      code: FrameErrorCode.INVALID_MESSAGE,
    });
    assert.throws(() => encodeMessage({ type: MessageType.RUN }, { version: 2 as never }), {
      code: FrameErrorCode.INVALID_MESSAGE,
    });
  });

  it('a body over the peer limit, without leaving half a frame behind', () => {
    const msg: Message = { type: MessageType.STREAM_DATA, streamId: 1, payload: new Uint8Array(5000) };
    assert.throws(() => encodeMessage(msg, { maxFrameSize: 4096 }), { code: FrameErrorCode.FRAME_TOO_LARGE });
    // The shared output buffer is clean afterwards.
    assert.deepEqual(encodeMessage({ type: MessageType.OK, streamId: 7 }), ok);
  });

  it('negative numbers and floats in fields go as PSON, never as varints', () => {
    for (const version of [0, 1] as const) {
      for (const payload of [-5, 23.5, 2 ** 40, -(2 ** 50), 2n ** 63n]) {
        const msg = decodeMessage(
          encodeMessage({ type: MessageType.RUN, streamId: 3, payload }, { version }),
        );
        assert.equal(msg.payload, payload);
        assert.equal(msg.psonVersion, version);
      }
    }
  });
});

describe('property: any message survives encoding, decoding and any split', () => {
  const value = fc.letrec((tie) => ({
    value: fc.oneof(
      { depthSize: 'small', withCrossShrink: true },
      fc.constant(null),
      fc.boolean(),
      fc.integer({ min: -1_000_000, max: 2 ** 33 }),
      fc
        .float({ noNaN: true, noDefaultInfinity: true })
        // -0 reads back as 0, integral floats beyond 2^53 as bigint (the value model)
        .filter((d) => !Object.is(d, -0) && !(Number.isInteger(d) && Math.abs(d) > Number.MAX_SAFE_INTEGER)),
      fc.string({ unit: 'binary', maxLength: 40 }),
      fc.uint8Array({ maxLength: 40 }),
      fc.array(tie('value'), { maxLength: 5 }),
      fc.dictionary(fc.string({ maxLength: 8 }), tie('value'), { maxKeys: 5, noNullPrototype: true }),
    ),
  })).value;

  const message = fc.record(
    {
      type: fc.integer({ min: 1, max: 10 }),
      streamId: fc.integer({ min: 0, max: 65535 }),
      parameters: value,
      payload: value,
      resource: fc.oneof(
        fc.string({ maxLength: 30 }),
        fc.array(fc.string({ maxLength: 8 }), { maxLength: 4 }),
        fc.nat(),
      ),
    },
    { requiredKeys: ['type'] },
  ) as fc.Arbitrary<Message>;

  for (const version of [0, 1] as const) {
    it(`protocol version ${version}`, () => {
      fc.assert(
        fc.property(
          fc.array(message, { minLength: 1, maxLength: 4 }),
          fc.array(fc.nat(), { maxLength: 6 }),
          (msgs, cuts) => {
            const stream = concat(msgs.map((m) => encodeMessage(m, { version })));
            const points = [...new Set(cuts.map((c) => c % (stream.length + 1)))].sort((a, b) => a - b);
            const chunks: Uint8Array[] = [];
            let prev = 0;
            for (const p of points) {
              chunks.push(stream.subarray(prev, p));
              prev = p;
            }
            chunks.push(stream.subarray(prev));
            const { messages, invalid } = collect(chunks);
            assert.equal(invalid.length, 0);
            assert.deepStrictEqual(
              messages.map((m) => {
                const { psonVersion: _, ...rest } = plain(m);
                return rest;
              }),
              msgs.map((m) => plain(m)),
            );
          },
        ),
        { numRuns: 10_000 },
      );
    });
  }
});

describe('property: garbage never breaks the decoder', () => {
  it('random bytes yield messages, skipped frames or one fatal FrameError, nothing else', () => {
    fc.assert(
      fc.property(fc.array(fc.uint8Array({ maxLength: 64 }), { maxLength: 8 }), (chunks) => {
        const decoder = new FrameDecoder(
          {
            onMessage: () => {},
            onInvalidFrame: (e) => assert.ok(e instanceof FrameError && !e.fatal),
          },
          { maxFrameSize: 1024 },
        );
        for (const c of chunks) {
          try {
            decoder.push(c);
          } catch (err) {
            assert.ok(err instanceof FrameError && err.fatal, String(err));
            return;
          }
        }
        assert.ok(decoder.bufferedBytes <= 1024 + 10, 'buffering bounded by the frame limit');
      }),
      { numRuns: 20_000 },
    );
  });

  it('mutated valid streams: same guarantee', () => {
    const base = concat([
      encodeMessage({ type: MessageType.RUN, streamId: 9, resource: 'led', payload: { state: true } }),
      encodeMessage({
        type: MessageType.STREAM_DATA,
        streamId: 2,
        payload: [1, 2.5, 'x', new Uint8Array(3)],
      }),
      encodeMessage({ type: MessageType.KEEP_ALIVE }),
    ]);
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 4 }),
        (edits) => {
          const bytes = base.slice();
          for (const [at, b] of edits) bytes[at % bytes.length] = b;
          try {
            collect([bytes], { maxFrameSize: 4096 });
          } catch (err) {
            assert.ok(err instanceof FrameError && err.fatal, String(err));
          }
        },
      ),
      { numRuns: 20_000 },
    );
  });
});
