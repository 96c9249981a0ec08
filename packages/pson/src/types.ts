/**
 * A value PSON can carry.
 *
 * - integers within ±(2^53−1) are `number`; integers outside that range are `bigint`
 *   (never silently rounded);
 * - floating-point values are `number` (the encoder picks binary32 or binary64 per the
 *   rules of each encoding);
 * - binary data is `Uint8Array` (a Node.js `Buffer` works too when encoding);
 * - maps are plain objects, or `Map<string, PsonValue>` when key order must be exact.
 */
export type PsonValue =
  | null
  | boolean
  | number
  | bigint
  | string
  | Uint8Array
  | PsonValue[]
  | PsonObject
  | Map<string, PsonValue>;

export interface PsonObject {
  [key: string]: PsonValue;
}

/** 1 = new PSON (IOTMP wire type 2), 0 = legacy Protoson (IOTMP wire type 1). */
export type PsonVersion = 0 | 1;

export interface EncodeOptions {
  /** Which encoding to produce. Default 1 (new PSON). */
  version?: PsonVersion;
  /**
   * Legacy encoding only: store a non-integral number as binary32 whenever it is within
   * 1e-5 of its binary32 rounding, exactly as Protoson does (lossy: 0.1 reads back as
   * 0.10000000149011612). Default true, for byte compatibility with legacy peers; false
   * picks binary32 only when it is exact.
   */
  legacyLossyFloats?: boolean;
  /** Maximum container nesting; deeper (or circular) values fail with DEPTH_EXCEEDED. Default 64. */
  maxDepth?: number;
}

export interface DecodeOptions {
  /** Which encoding to read. Default 1 (new PSON). */
  version?: PsonVersion;
  /** Maximum container nesting. Default 64. */
  maxDepth?: number;
  /**
   * Strict mode rejects non-minimal encodings (over-long varints, the length escape used
   * for a small value, a legacy integer tag holding 0 or 1) and duplicate map keys.
   * Default false: such input is accepted as the reference decoders accept it, and the last
   * duplicate key wins.
   */
  strict?: boolean;
  /** What invalid UTF-8 in a string does: 'error' (default) or 'replace' with U+FFFD. */
  invalidUtf8?: 'error' | 'replace';
  /** How maps are returned: 'object' (default, plain objects) or 'map' (`Map`, exact key order). */
  maps?: 'object' | 'map';
}

/** Result of {@link decodeAt}: the value and the offset just past it. */
export interface DecodeResult {
  value: PsonValue;
  end: number;
}

export const DEFAULT_MAX_DEPTH = 64;
