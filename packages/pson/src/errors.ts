/**
 * Stable, machine-readable error codes. Callers branch on `code`, never on the message text.
 */
export const PsonErrorCode = {
  /** The input ended inside a value. */
  TRUNCATED: 'PSON_ERR_TRUNCATED',
  /** A length or count prefix claims more than the remaining input can hold. */
  LENGTH_OUT_OF_RANGE: 'PSON_ERR_LENGTH_OUT_OF_RANGE',
  /** A varint is longer than 10 bytes or does not fit in 64 bits. */
  VARINT_OVERFLOW: 'PSON_ERR_VARINT_OVERFLOW',
  /** A string (or map key) is not valid UTF-8. */
  INVALID_UTF8: 'PSON_ERR_INVALID_UTF8',
  /** Containers nested deeper than `maxDepth`. */
  DEPTH_EXCEEDED: 'PSON_ERR_DEPTH_EXCEEDED',
  /** A header byte or legacy tag that no PSON type uses. */
  UNKNOWN_TYPE: 'PSON_ERR_UNKNOWN_TYPE',
  /** A map key that is not a string (new encoding). */
  INVALID_KEY: 'PSON_ERR_INVALID_KEY',
  /** An integer outside the range PSON peers can represent (magnitudes above 2^63 for negatives, above 2^64-1 otherwise). */
  INTEGER_RANGE: 'PSON_ERR_INTEGER_RANGE',
  /** Strict mode: a value written in a longer form than needed. */
  NON_MINIMAL: 'PSON_ERR_NON_MINIMAL',
  /** Strict mode: a map repeats a key. */
  DUPLICATE_KEY: 'PSON_ERR_DUPLICATE_KEY',
  /** Legacy encoding: an element runs past the end of its container. */
  CONTAINER_OVERRUN: 'PSON_ERR_CONTAINER_OVERRUN',
  /** `decode` of a whole buffer found bytes after the value. */
  TRAILING_BYTES: 'PSON_ERR_TRAILING_BYTES',
  /** Encoding: a JavaScript value PSON cannot represent (function, symbol, …). */
  UNSUPPORTED_VALUE: 'PSON_ERR_UNSUPPORTED_VALUE',
  /** An option outside its allowed values. */
  INVALID_OPTION: 'PSON_ERR_INVALID_OPTION',
} as const;

export type PsonErrorCode = (typeof PsonErrorCode)[keyof typeof PsonErrorCode];

/**
 * The only error the codec throws for bad input or unsupported values.
 * `offset` is the byte offset in the input where decoding failed (-1 when encoding).
 */
export class PsonError extends Error {
  override readonly name = 'PsonError';
  readonly code: PsonErrorCode;
  readonly offset: number;

  constructor(code: PsonErrorCode, message: string, offset = -1) {
    super(offset >= 0 ? `${message} (at byte ${offset})` : message);
    this.code = code;
    this.offset = offset;
  }
}
