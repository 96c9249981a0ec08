import { ByteWriter, type EncodeOptions, varintSize, writePson } from '@iotmp/pson';
import {
  FieldId,
  isMessageType,
  MAX_FIELD_VARINT,
  MAX_STREAM_ID,
  MessageType,
  type ProtocolVersion,
  WireType,
} from './constants.js';
import { FrameError, FrameErrorCode } from './errors.js';
import type { FrameField, Message } from './message.js';

export interface EncodeMessageOptions {
  /** Protocol version: 1 (default) writes PSON fields with wire type 2, 0 legacy PSON with wire type 1. */
  version?: ProtocolVersion;
  /** Refuse to produce a frame whose body exceeds this many bytes (the peer's limit). */
  maxFrameSize?: number;
  /**
   * Field order, by id (default ascending: 1 stream id, 2 parameters, 3 payload, 4 resource).
   * Order carries no meaning; {@link legacyFieldOrder} gives the legacy client's order for
   * byte-identical pv 0 frames.
   */
  fieldOrder?: readonly number[];
}

const ASCENDING = [FieldId.STREAM_ID, FieldId.PARAMETERS, FieldId.PAYLOAD, FieldId.RESOURCE] as const;

/**
 * The order in which the legacy (pv 0) IOTMP-Linux client inserts fields, per kind of
 * message, as its frames in the reference vectors show. A numeric resource marks a server
 * resource (RUN code, START_STREAM on events).
 */
export function legacyFieldOrder(msg: Message): readonly number[] {
  const numericResource =
    typeof msg.resource === 'number' || (msg.resource === undefined && typeof msg.payload === 'number');
  switch (msg.type) {
    case MessageType.CONNECT:
      return [2, 3, 1];
    case MessageType.RUN:
      return numericResource ? [4, 2, 3, 1] : [1, 4, 2, 3];
    case MessageType.START_STREAM:
      return numericResource ? [3, 2, 1, 4] : [1, 2, 3, 4];
    case MessageType.STREAM_DATA:
      return [3, 1, 2, 4];
    default:
      return ASCENDING;
  }
}

const psonV1: EncodeOptions = { version: 1 };
const psonV0: EncodeOptions = { version: 0 };

function invalid(message: string): FrameError {
  return new FrameError(FrameErrorCode.INVALID_MESSAGE, message, { fatal: false });
}

/**
 * Reserves a one-byte type and a one-byte size, lets `writeBody` fill the body, then
 * patches the header (shifting the body in the rare case the size needs more bytes).
 * Writing straight into the connection's buffer this way needs no second copy.
 */
function writeFramed(
  w: ByteWriter,
  type: number,
  maxFrameSize: number | undefined,
  writeBody: () => void,
): void {
  const typeSize = varintSize(type);
  const start = w.pos;
  w.ensure(typeSize + 1);
  w.varint(type);
  const sizeAt = w.pos;
  w.pos++;
  const bodyStart = w.pos;
  writeBody();
  const size = w.pos - bodyStart;
  if (maxFrameSize !== undefined && size > maxFrameSize) {
    w.pos = start;
    throw new FrameError(
      FrameErrorCode.FRAME_TOO_LARGE,
      `message body of ${size} bytes exceeds the limit of ${maxFrameSize}; send large data in chunks over a stream`,
      { fatal: false, messageType: type },
    );
  }
  w.patchLength(sizeAt);
}

/** A field value by the references' rule: unsigned 32-bit integers as varints, the rest as PSON. */
function writeField(w: ByteWriter, id: number, value: unknown, version: ProtocolVersion): void {
  if (typeof value === 'number' && Number.isInteger(value) && value >= 0 && value <= MAX_FIELD_VARINT) {
    w.u8((id << 3) | WireType.VARINT);
    w.varint(value);
    return;
  }
  if (version === 1) {
    w.u8((id << 3) | WireType.PSON);
    writePson(w, value, psonV1);
  } else {
    w.u8((id << 3) | WireType.LEGACY_PSON);
    writePson(w, value, psonV0);
  }
}

function checkStreamId(streamId: unknown): asserts streamId is number {
  if (
    typeof streamId !== 'number' ||
    !Number.isInteger(streamId) ||
    streamId < 0 ||
    streamId > MAX_STREAM_ID
  ) {
    throw invalid(`stream id must be an integer in 0…${MAX_STREAM_ID}, got ${String(streamId)}`);
  }
}

/**
 * Appends one framed message to `w`, fields in ascending id order (the canonical order the
 * embedded reference client uses). For writers that batch several frames into one write.
 */
export function writeMessage(w: ByteWriter, msg: Message, options?: EncodeMessageOptions): void {
  const type = msg.type;
  if (!isMessageType(type)) throw invalid(`unknown message type ${String(type)}`);
  const version = options?.version ?? 1;
  if (version !== 0 && version !== 1) throw invalid(`unknown protocol version ${String(version)}`);
  const { streamId, parameters, payload, resource } = msg;
  if (streamId !== undefined) checkStreamId(streamId);
  const start = w.pos;
  try {
    const order = options?.fieldOrder ?? ASCENDING;
    writeFramed(w, type, options?.maxFrameSize, () => {
      for (const id of order) {
        if (id === FieldId.STREAM_ID) {
          if (streamId !== undefined) {
            w.u8((FieldId.STREAM_ID << 3) | WireType.VARINT);
            w.varint(streamId);
          }
        } else if (id === FieldId.PARAMETERS) {
          if (parameters !== undefined) writeField(w, id, parameters, version);
        } else if (id === FieldId.PAYLOAD) {
          if (payload !== undefined) writeField(w, id, payload, version);
        } else if (id === FieldId.RESOURCE) {
          if (resource !== undefined) writeField(w, id, resource, version);
        }
      }
    });
  } catch (err) {
    w.pos = start; // leave the writer as it was: a failed message must not half-appear
    throw err;
  }
}

const shared = new ByteWriter(4096);

/** Encodes one message as a complete frame. */
export function encodeMessage(msg: Message, options?: EncodeMessageOptions): Uint8Array {
  shared.pos = 0;
  writeMessage(shared, msg, options);
  return takeShared();
}

/**
 * Encodes a frame from fields given in order, each with its wire type: for reproducing a
 * peer's exact bytes (field order, wire type choice) and for field ids IOTMP does not name.
 * Varint fields take a non-negative integer below 2^32; PSON fields any PSON value.
 */
export function encodeFrame(type: number, fields: readonly FrameField[]): Uint8Array {
  if (!Number.isInteger(type) || type < 0 || type > MAX_FIELD_VARINT) {
    throw invalid(`message type must be an integer in 0…2^32-1, got ${String(type)}`);
  }
  shared.pos = 0;
  writeFramed(shared, type, undefined, () => {
    for (const field of fields) {
      const { id, wireType, value } = field;
      if (!Number.isInteger(id) || id < 0 || id > 0x1fff_ffff) throw invalid(`bad field id ${String(id)}`);
      writeKey(id, wireType);
      if (wireType === WireType.VARINT) {
        if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > MAX_FIELD_VARINT) {
          throw invalid(
            `field ${id}: a varint field takes an integer in 0…2^32-1, got ${String(value)} (send other numbers as PSON)`,
          );
        }
        shared.varint(value);
      } else if (wireType === WireType.LEGACY_PSON || wireType === WireType.PSON) {
        writePson(shared, value, wireType === WireType.PSON ? psonV1 : psonV0);
      } else {
        throw invalid(`field ${id}: unknown wire type ${String(wireType)}`);
      }
    }
  });
  return takeShared();
}

function writeKey(id: number, wireType: number): void {
  shared.varint(id * 8 + wireType);
}

function takeShared(): Uint8Array {
  const out = shared.copyFrom(0);
  if (shared.buf.length > 1 << 20) {
    shared.buf = new Uint8Array(4096);
    shared.view = new DataView(shared.buf.buffer);
  }
  return out;
}
