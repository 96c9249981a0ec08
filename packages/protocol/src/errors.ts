import type { PsonError } from '@iotmp/pson';

/** Base class of every error this package throws; branch on `code` or `instanceof`. */
export class IotmpError extends Error {
  override name = 'IotmpError';
  readonly code: string;

  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }
}

export const FrameErrorCode = {
  /** Header announces a body larger than `maxFrameSize` (fatal: rejected before buffering). */
  FRAME_TOO_LARGE: 'IOTMP_ERR_FRAME_TOO_LARGE',
  /** A header varint longer than 5 bytes / 32 bits (fatal), or a field varint that is (frame skipped). */
  VARINT_OVERFLOW: 'IOTMP_ERR_VARINT_OVERFLOW',
  /** Message type 0, which is reserved (fatal: the peer is not speaking IOTMP or lost sync). */
  RESERVED_TYPE: 'IOTMP_ERR_RESERVED_TYPE',
  /** A message type IOTMP does not define (frame skipped, as the spec requires). */
  UNKNOWN_TYPE: 'IOTMP_ERR_UNKNOWN_TYPE',
  /** The body ends inside a field key or varint value (frame skipped). */
  TRUNCATED_FIELD: 'IOTMP_ERR_TRUNCATED_FIELD',
  /** A field with wire type 3–7: the rest of the body is unreadable (frame skipped). */
  UNKNOWN_WIRE_TYPE: 'IOTMP_ERR_UNKNOWN_WIRE_TYPE',
  /** A PSON field that does not decode; `cause` is the PsonError (frame skipped). */
  INVALID_PSON: 'IOTMP_ERR_INVALID_PSON',
  /** A stream id that is not an integer in 0…65535 (frame skipped). */
  INVALID_STREAM_ID: 'IOTMP_ERR_INVALID_STREAM_ID',
  /** Encoding: a message that cannot be put on the wire (bad type, stream id or field). */
  INVALID_MESSAGE: 'IOTMP_ERR_INVALID_MESSAGE',
  /** The decoder already failed fatally; create a new one for a new connection. */
  DECODER_FAILED: 'IOTMP_ERR_DECODER_FAILED',
} as const;

export type FrameErrorCode = (typeof FrameErrorCode)[keyof typeof FrameErrorCode];

/**
 * A frame-level problem. `fatal` errors mean the byte stream can no longer be followed and
 * the connection must be closed; the others concern one complete frame, which is skipped.
 */
export class FrameError extends IotmpError {
  override name = 'FrameError';
  declare readonly code: FrameErrorCode;
  readonly fatal: boolean;
  /** Offset of the problem within the frame (or within the pushed chunk for header errors). */
  readonly offset: number;
  /** Type of the frame concerned, when its header was read. */
  readonly messageType: number | undefined;
  /** Stream id of the frame concerned, when it could be read before the problem. */
  readonly streamId: number | undefined;

  constructor(
    code: FrameErrorCode,
    message: string,
    details: {
      fatal: boolean;
      offset?: number;
      messageType?: number | undefined;
      streamId?: number | undefined;
      cause?: PsonError;
    },
  ) {
    super(code, message, details.cause ? { cause: details.cause } : undefined);
    this.fatal = details.fatal;
    this.offset = details.offset ?? -1;
    this.messageType = details.messageType;
    this.streamId = details.streamId;
  }
}
