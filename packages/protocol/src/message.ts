import type { PsonValue } from '@iotmp/pson';
import type { MessageType, ProtocolVersion } from './constants.js';

/**
 * One IOTMP message. Every field is optional on the wire; which ones a type uses is in
 * spec §5–§11. Field values are PSON values; a non-negative integer below 2^32 travels as a
 * varint, everything else as PSON of the connection's protocol version.
 */
export interface Message {
  type: MessageType;
  /** 1…65535; absent (or 0) means "no stream id" (fire-and-forget, keep-alive, …). */
  streamId?: number;
  parameters?: PsonValue;
  payload?: PsonValue;
  /** A string path, an array of path segments, or a number (server resources). */
  resource?: PsonValue;
}

/** A message as decoded from the wire. */
export interface DecodedMessage extends Message {
  /**
   * The protocol version its PSON fields used (wire type 2 → 1, wire type 1 → 0), from the
   * payload if it was PSON, else from the first PSON field; absent when every field was a
   * varint. The server reads a connection's version from the CONNECT payload this way.
   */
  psonVersion?: ProtocolVersion;
}

/** One field with an explicit wire type, for {@link encodeFrame}. */
export interface FrameField {
  id: number;
  wireType: 0 | 1 | 2;
  value: unknown;
}
