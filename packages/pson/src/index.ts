export { decode, decodeAt } from './decode.js';
export { encode, writePson } from './encode.js';
export { PsonError, PsonErrorCode } from './errors.js';
export {
  DEFAULT_MAX_DEPTH,
  type DecodeOptions,
  type DecodeResult,
  type EncodeOptions,
  type PsonObject,
  type PsonValue,
  type PsonVersion,
} from './types.js';
export { ByteWriter, varintSize } from './writer.js';
