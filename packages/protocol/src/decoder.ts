import { type DecodeOptions, decodeAt, PsonError, type PsonValue } from '@iotmp/pson';
import {
  DEFAULT_MAX_FRAME_SIZE,
  FieldId,
  isMessageType,
  MAX_STREAM_ID,
  type MessageType,
  messageTypeName,
  type ProtocolVersion,
  WireType,
} from './constants.js';
import { FrameError, FrameErrorCode } from './errors.js';
import type { DecodedMessage } from './message.js';

export interface FrameDecoderOptions {
  /** Largest frame body accepted, in bytes; larger frames are rejected from the header alone. Default 256 KiB. */
  maxFrameSize?: number;
  /** Maximum PSON nesting inside a field. Default 64. */
  maxDepth?: number;
  /** Strict PSON: reject non-minimal encodings and duplicate map keys. Default false. */
  strict?: boolean;
  /** What invalid UTF-8 in PSON strings does: 'error' (default, the frame is invalid) or 'replace'. */
  invalidUtf8?: 'error' | 'replace';
  /** PSON maps as plain objects (default) or `Map`s. */
  maps?: 'object' | 'map';
}

/** Receives what a {@link FrameDecoder} finds in the byte stream. */
export interface FrameHandler {
  /** A complete, valid message. */
  onMessage(message: DecodedMessage): void;
  /**
   * A complete frame that was skipped: unknown message type, unknown wire type, bad PSON,
   * bad stream id. The stream stays in sync. `error.streamId` is set when it was readable,
   * so the receiver can answer a broken request with ERROR.
   */
  onInvalidFrame?(error: FrameError): void;
}

// Frame body parsing is synchronous; its cursor lives in module state.
let cursor = 0;

const TRUNCATED = -1;
const OVERFLOW = -2;

/**
 * Reads a top-level varint (header or field) of at most 5 bytes / 32 bits at `cursor`.
 * Returns TRUNCATED if the input ends first, OVERFLOW if it does not fit in 32 bits.
 */
function readVarint32(bytes: Uint8Array, end: number): number {
  let result = 0;
  for (let i = 0; i < 4; i++) {
    if (cursor >= end) return TRUNCATED;
    const b = bytes[cursor++] as number;
    result |= (b & 0x7f) << (7 * i);
    if (b < 0x80) return result >>> 0;
  }
  if (cursor >= end) return TRUNCATED;
  const b = bytes[cursor++] as number;
  if (b > 0x0f) return OVERFLOW;
  return (result >>> 0) + b * 2 ** 28;
}

const psonV1Defaults: DecodeOptions = { version: 1 };
const psonV0Defaults: DecodeOptions = { version: 0 };

/**
 * Decodes the fields of one frame body `bytes[start, end)`. Unknown field ids are skipped;
 * the last of repeated fields wins. Throws a non-fatal FrameError for a malformed body.
 */
export function decodeBody(
  type: MessageType,
  bytes: Uint8Array,
  start: number,
  end: number,
  psonV1: DecodeOptions = psonV1Defaults,
  psonV0: DecodeOptions = psonV0Defaults,
): DecodedMessage {
  // Every key present from the start: one object shape for all decoded messages.
  const msg: DecodedMessage = {
    type,
    streamId: undefined,
    parameters: undefined,
    payload: undefined,
    resource: undefined,
    psonVersion: undefined,
  };
  let firstPsonVersion: ProtocolVersion | undefined;
  let payloadPsonVersion: ProtocolVersion | undefined;
  cursor = start;
  while (cursor < end) {
    const keyAt = cursor;
    const key = readVarint32(bytes, end);
    if (key < 0) throw badFieldVarint(key, type, msg, keyAt - start);
    const wireType = key & 7;
    const id = key >>> 3;
    let value: PsonValue;
    if (wireType === WireType.VARINT) {
      const valueAt = cursor;
      const n = readVarint32(bytes, end);
      if (n < 0) throw badFieldVarint(n, type, msg, valueAt - start);
      value = n;
    } else if (wireType === WireType.PSON || wireType === WireType.LEGACY_PSON) {
      const version: ProtocolVersion = wireType === WireType.PSON ? 1 : 0;
      try {
        const result = decodeAt(bytes, cursor, version === 1 ? psonV1 : psonV0, end);
        value = result.value;
        cursor = result.end;
      } catch (err) {
        if (!(err instanceof PsonError)) throw err;
        throw new FrameError(
          FrameErrorCode.INVALID_PSON,
          `${messageTypeName(type)} field ${id}: ${err.message}`,
          { fatal: false, offset: keyAt - start, messageType: type, streamId: msg.streamId, cause: err },
        );
      }
      if (id === FieldId.PAYLOAD) payloadPsonVersion = version;
      firstPsonVersion ??= version;
    } else {
      throw new FrameError(
        FrameErrorCode.UNKNOWN_WIRE_TYPE,
        `${messageTypeName(type)} field ${id} has unknown wire type ${wireType}; the rest of the body cannot be read`,
        { fatal: false, offset: keyAt - start, messageType: type, streamId: msg.streamId },
      );
    }
    switch (id) {
      case FieldId.STREAM_ID:
        if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > MAX_STREAM_ID) {
          throw new FrameError(
            FrameErrorCode.INVALID_STREAM_ID,
            `${messageTypeName(type)} stream id must be an integer in 0…${MAX_STREAM_ID}`,
            { fatal: false, offset: keyAt - start, messageType: type },
          );
        }
        msg.streamId = value;
        break;
      case FieldId.PARAMETERS:
        msg.parameters = value;
        break;
      case FieldId.PAYLOAD:
        msg.payload = value;
        break;
      case FieldId.RESOURCE:
        msg.resource = value;
        break;
      default:
        break; // unknown field ids are skipped (spec §3.4)
    }
  }
  msg.psonVersion = payloadPsonVersion ?? firstPsonVersion;
  return msg;
}

function badFieldVarint(result: number, type: number, msg: DecodedMessage, offset: number): FrameError {
  const name = messageTypeName(type);
  const details = { fatal: false, offset, messageType: type, streamId: msg.streamId };
  return result === OVERFLOW
    ? new FrameError(FrameErrorCode.VARINT_OVERFLOW, `${name} field varint longer than 32 bits`, details)
    : new FrameError(FrameErrorCode.TRUNCATED_FIELD, `${name} body ends inside a field`, details);
}

/**
 * Incremental frame decoder: push byte chunks of any size (one byte at a time works) and
 * it calls the handler for every complete frame. It never touches a socket.
 *
 * A frame that is fully inside one pushed chunk is decoded in place; a frame split across
 * chunks is assembled in a buffer of exactly its size, allocated only after the header
 * has passed the size limit. Fatal stream errors (oversized or unreadable header, type 0)
 * are thrown from {@link push}; after one, the decoder refuses further input.
 */
/** Longest frame header: two 5-byte varints. */
const HEADER_MAX = 10;

export class FrameDecoder {
  private readonly handler: FrameHandler;
  private readonly maxFrameSize: number;
  private readonly psonV1: DecodeOptions;
  private readonly psonV0: DecodeOptions;
  /** Bytes of a header split across chunks (at most 10: two 5-byte varints); allocated when needed. */
  private header: Uint8Array | null = null;
  private headerLength = 0;
  /** Body of a frame split across chunks, and how much of it has arrived. */
  private body: Uint8Array | null = null;
  private bodyFilled = 0;
  private bodyType = 0;
  private failure: FrameError | null = null;
  // Result of the last parseHeader call.
  private frameType = 0;
  private frameSize = 0;

  constructor(handler: FrameHandler, options?: FrameDecoderOptions) {
    this.handler = handler;
    const maxFrameSize = options?.maxFrameSize ?? DEFAULT_MAX_FRAME_SIZE;
    if (!Number.isInteger(maxFrameSize) || maxFrameSize < 0) {
      throw new RangeError(`maxFrameSize must be a non-negative integer, got ${String(maxFrameSize)}`);
    }
    this.maxFrameSize = maxFrameSize;
    if (
      options?.maxDepth === undefined &&
      options?.strict === undefined &&
      options?.invalidUtf8 === undefined &&
      options?.maps === undefined
    ) {
      // The common case shares two module-level objects instead of two per connection.
      this.psonV1 = psonV1Defaults;
      this.psonV0 = psonV0Defaults;
      return;
    }
    const pson = {
      maxDepth: options?.maxDepth,
      strict: options?.strict,
      invalidUtf8: options?.invalidUtf8,
      maps: options?.maps,
    };
    this.psonV1 = { ...pson, version: 1 };
    this.psonV0 = { ...pson, version: 0 };
  }

  /** Bytes held for an incomplete frame. */
  get bufferedBytes(): number {
    return this.headerLength + this.bodyFilled;
  }

  /** True between frames: no partial frame is held. */
  get idle(): boolean {
    return this.headerLength === 0 && this.body === null;
  }

  /**
   * Feeds received bytes. The chunk is read in place and not kept after the call returns,
   * except as copies, so the caller may reuse it.
   */
  push(chunk: Uint8Array): void {
    if (this.failure) {
      throw new FrameError(FrameErrorCode.DECODER_FAILED, `decoder stopped after: ${this.failure.message}`, {
        fatal: true,
      });
    }
    try {
      this.consume(chunk);
    } catch (err) {
      if (!this.failure) {
        // A handler threw mid-chunk: the rest of the chunk is lost, so the stream is out of sync.
        this.failure = new FrameError(
          FrameErrorCode.DECODER_FAILED,
          'a frame handler threw; decoder stopped',
          {
            fatal: true,
          },
        );
      }
      throw err;
    }
  }

  private consume(chunk: Uint8Array): void {
    const n = chunk.length;
    let p = 0;
    if (this.body !== null) {
      p = this.continueBody(chunk);
      if (this.body !== null) return;
    }
    if (this.headerLength > 0) {
      p = this.continueHeader(chunk, p);
      if (p < 0) return;
    }
    while (p < n) {
      // Fast path: both header varints are single bytes (every frame under 128 bytes).
      let bodyStart: number;
      const t = chunk[p] as number;
      if (p + 1 < n && t < 0x80 && (chunk[p + 1] as number) < 0x80) {
        this.frameType = t;
        this.frameSize = chunk[p + 1] as number;
        this.checkHeader(p);
        bodyStart = p + 2;
      } else {
        cursor = p;
        bodyStart = this.parseHeader(chunk, n);
        if (bodyStart < 0) {
          this.header ??= new Uint8Array(HEADER_MAX);
          this.header.set(chunk.subarray(p, n));
          this.headerLength = n - p;
          return;
        }
      }
      const bodyEnd = bodyStart + this.frameSize;
      if (bodyEnd <= n) {
        p = bodyEnd;
        this.deliver(this.frameType, chunk, bodyStart, bodyEnd);
      } else {
        this.startBody(chunk, bodyStart);
        return;
      }
    }
  }

  /** Parses a header at `cursor`; returns the body start, or -1 if the header is incomplete. */
  private parseHeader(bytes: Uint8Array, end: number): number {
    const at = cursor;
    const type = this.readHeaderVarint(bytes, end);
    if (type < 0) return -1;
    const size = this.readHeaderVarint(bytes, end);
    if (size < 0) return -1;
    this.frameType = type;
    this.frameSize = size;
    this.checkHeader(at);
    return cursor;
  }

  private readHeaderVarint(bytes: Uint8Array, end: number): number {
    const at = cursor;
    const n = readVarint32(bytes, end);
    if (n === OVERFLOW) {
      throw this.fail(
        new FrameError(FrameErrorCode.VARINT_OVERFLOW, 'frame header varint longer than 32 bits', {
          fatal: true,
          offset: at,
        }),
      );
    }
    return n;
  }

  private checkHeader(at: number): void {
    if (this.frameType === 0) {
      throw this.fail(
        new FrameError(
          FrameErrorCode.RESERVED_TYPE,
          'message type 0 is reserved: the peer is not speaking IOTMP',
          {
            fatal: true,
            offset: at,
            messageType: 0,
          },
        ),
      );
    }
    if (this.frameSize > this.maxFrameSize) {
      throw this.fail(
        new FrameError(
          FrameErrorCode.FRAME_TOO_LARGE,
          `${messageTypeName(this.frameType)} frame of ${this.frameSize} bytes exceeds the limit of ${this.maxFrameSize}`,
          { fatal: true, offset: at, messageType: this.frameType },
        ),
      );
    }
  }

  private fail(error: FrameError): FrameError {
    this.failure = error;
    this.body = null;
    this.headerLength = 0;
    return error;
  }

  /** Completes a header held from earlier chunks; returns the offset in `chunk` after it, or -1. */
  private continueHeader(chunk: Uint8Array, p: number): number {
    const held = this.headerLength;
    const header = this.header as Uint8Array;
    const take = Math.min(chunk.length - p, HEADER_MAX - held);
    const joined = new Uint8Array(held + take);
    joined.set(header.subarray(0, held));
    joined.set(chunk.subarray(p, p + take), held);
    cursor = 0;
    const bodyStart = this.parseHeader(joined, joined.length);
    if (bodyStart < 0) {
      header.set(joined);
      this.headerLength = joined.length;
      return -1;
    }
    this.headerLength = 0;
    const inChunk = p + bodyStart - held;
    if (inChunk + this.frameSize <= chunk.length) {
      const end = inChunk + this.frameSize;
      this.deliver(this.frameType, chunk, inChunk, end);
      return end;
    }
    this.startBody(chunk, inChunk);
    return -1;
  }

  private startBody(chunk: Uint8Array, bodyStart: number): void {
    const body = new Uint8Array(this.frameSize);
    body.set(chunk.subarray(bodyStart));
    this.body = body;
    this.bodyFilled = chunk.length - bodyStart;
    this.bodyType = this.frameType;
  }

  /** Adds bytes to a split body; returns the offset in `chunk` after what it used. */
  private continueBody(chunk: Uint8Array): number {
    const body = this.body as Uint8Array;
    const take = Math.min(body.length - this.bodyFilled, chunk.length);
    body.set(chunk.subarray(0, take), this.bodyFilled);
    this.bodyFilled += take;
    if (this.bodyFilled === body.length) {
      this.body = null;
      this.bodyFilled = 0;
      this.deliver(this.bodyType, body, 0, body.length);
    }
    return take;
  }

  private deliver(type: number, bytes: Uint8Array, start: number, end: number): void {
    if (!isMessageType(type)) {
      this.handler.onInvalidFrame?.(
        new FrameError(FrameErrorCode.UNKNOWN_TYPE, `unknown message type ${type} skipped`, {
          fatal: false,
          messageType: type,
        }),
      );
      return;
    }
    let msg: DecodedMessage;
    try {
      msg = decodeBody(type, bytes, start, end, this.psonV1, this.psonV0);
    } catch (err) {
      if (!(err instanceof FrameError)) throw err;
      this.handler.onInvalidFrame?.(err);
      return;
    }
    this.handler.onMessage(msg);
  }
}

/**
 * Decodes exactly one complete frame. Throws a FrameError if the bytes are not one whole,
 * valid frame.
 */
export function decodeMessage(frame: Uint8Array, options?: FrameDecoderOptions): DecodedMessage {
  const messages: DecodedMessage[] = [];
  let invalid: FrameError | undefined;
  const decoder = new FrameDecoder(
    {
      onMessage: (m) => messages.push(m),
      onInvalidFrame: (e) => {
        invalid = e;
      },
    },
    options,
  );
  decoder.push(frame);
  if (invalid) throw invalid;
  const msg = messages[0];
  if (messages.length !== 1 || msg === undefined || !decoder.idle) {
    throw new FrameError(
      FrameErrorCode.INVALID_MESSAGE,
      `expected exactly one complete frame, found ${messages.length}${decoder.idle ? '' : ' and an incomplete one'}`,
      { fatal: false },
    );
  }
  return msg;
}
