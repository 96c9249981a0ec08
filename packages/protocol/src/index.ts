export {
  DEFAULT_MAX_FRAME_SIZE,
  FieldId,
  isMessageType,
  MAX_FIELD_VARINT,
  MAX_STREAM_ID,
  MessageType,
  messageTypeName,
  type ProtocolVersion,
  WireType,
} from './constants.js';
export {
  decodeBody,
  decodeMessage,
  FrameDecoder,
  type FrameDecoderOptions,
  type FrameHandler,
} from './decoder.js';
export {
  type EncodeMessageOptions,
  encodeFrame,
  encodeMessage,
  legacyFieldOrder,
  writeMessage,
} from './encoder.js';
export { FrameError, FrameErrorCode, IotmpError } from './errors.js';
export type { DecodedMessage, FrameField, Message } from './message.js';
export * from './session/index.js';
