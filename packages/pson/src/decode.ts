import { PsonError, PsonErrorCode } from './errors.js';
import {
  DEFAULT_MAX_DEPTH,
  type DecodeOptions,
  type DecodeResult,
  type PsonObject,
  type PsonValue,
} from './types.js';

// Decoding is synchronous and calls no user code, so the cursor lives in module state:
// cheaper than threading an object through every recursive call.
let buf: Uint8Array = new Uint8Array(0);
let pos = 0;
/** End of the region being read: the input end, or (legacy) the current container's end. */
let end = 0;
/**
 * Legacy containers open around the cursor. Inside one, running out of bytes is a malformed
 * container (its declared length is all there), not a truncated input.
 */
let openV0 = 0;
let maxDepth = DEFAULT_MAX_DEPTH;
let strict = false;
let replaceInvalidUtf8 = false;
let asMap = false;

const fatalUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
const lenientUtf8 = new TextDecoder('utf-8', { fatal: false, ignoreBOM: true });

// Scratch views for reading little-endian floats without a DataView per input: the bytes go
// in as int32 words (one store instead of four) and come out as a float.
const scratch = new ArrayBuffer(8);
const scratchI32 = new Int32Array(scratch);
const scratchF32 = new Float32Array(scratch);
const scratchF64 = new Float64Array(scratch);
const littleEndian = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

const TWO_63 = 2n ** 63n;

function setup(bytes: Uint8Array, offset: number, options: DecodeOptions | undefined): void {
  if (!(bytes instanceof Uint8Array)) {
    throw new PsonError(PsonErrorCode.INVALID_OPTION, 'PSON input must be a Uint8Array');
  }
  if (!Number.isInteger(offset) || offset < 0 || offset > bytes.length) {
    throw new PsonError(PsonErrorCode.INVALID_OPTION, `offset ${offset} is outside the input`);
  }
  buf = bytes;
  pos = offset;
  end = bytes.length;
  openV0 = 0;
  maxDepth = options?.maxDepth ?? DEFAULT_MAX_DEPTH;
  strict = options?.strict ?? false;
  replaceInvalidUtf8 = options?.invalidUtf8 === 'replace';
  asMap = options?.maps === 'map';
}

function release(): void {
  // Do not keep the caller's buffer reachable from module state.
  buf = EMPTY;
}
const EMPTY = new Uint8Array(0);

/**
 * Decodes one PSON value starting at `offset`, reading no further than `limit` (default:
 * the end of `bytes`), and returns it with the offset just past it. For PSON embedded in
 * a larger buffer (IOTMP frames).
 */
export function decodeAt(
  bytes: Uint8Array,
  offset: number,
  options?: DecodeOptions,
  limit?: number,
): DecodeResult {
  setup(bytes, offset, options);
  if (limit !== undefined) {
    if (!Number.isInteger(limit) || limit < offset || limit > bytes.length) {
      throw new PsonError(PsonErrorCode.INVALID_OPTION, `limit ${limit} is outside the input`);
    }
    end = limit;
  }
  try {
    const value = (options?.version ?? 1) === 1 ? readV1(0) : readV0Checked(options, 0);
    return { value, end: pos };
  } finally {
    release();
  }
}

/** Decodes a buffer that holds exactly one PSON value. */
export function decode(bytes: Uint8Array, options?: DecodeOptions): PsonValue {
  setup(bytes, 0, options);
  try {
    const value = (options?.version ?? 1) === 1 ? readV1(0) : readV0Checked(options, 0);
    if (pos !== end) {
      throw new PsonError(
        PsonErrorCode.TRAILING_BYTES,
        `${end - pos} byte(s) after the end of the PSON value`,
        pos,
      );
    }
    return value;
  } finally {
    release();
  }
}

function readV0Checked(options: DecodeOptions | undefined, depth: number): PsonValue {
  if (options?.version !== 0) {
    throw new PsonError(PsonErrorCode.INVALID_OPTION, `unknown PSON version ${String(options?.version)}`);
  }
  return readV0(depth);
}

function truncated(at: number): PsonError {
  if (openV0 > 0) {
    return new PsonError(PsonErrorCode.CONTAINER_OVERRUN, 'element runs past the end of its container', at);
  }
  return new PsonError(PsonErrorCode.TRUNCATED, 'input ends inside a PSON value', at);
}

function lengthOutOfRange(n: number | bigint, at: number): PsonError {
  return new PsonError(
    PsonErrorCode.LENGTH_OUT_OF_RANGE,
    `length ${n} is larger than the ${end - pos} byte(s) left`,
    at,
  );
}

/**
 * Reads an unsigned varint of up to 10 bytes / 64 bits. Values up to 2^53−1 come back as
 * numbers, larger ones as bigints.
 */
function readVarint(): number | bigint {
  const start = pos;
  let result = 0;
  let scale = 1;
  for (let i = 0; i < 7; i++) {
    if (pos >= end) throw truncated(start);
    const b = buf[pos++] as number;
    result += (b & 0x7f) * scale;
    if (b < 0x80) {
      if (strict && b === 0 && i > 0) throw nonMinimal(start);
      return result;
    }
    scale *= 128;
  }
  // More than 49 bits: finish in bigint arithmetic.
  let big = BigInt(result);
  let shift = 49n;
  for (let i = 7; i < 10; i++) {
    if (pos >= end) throw truncated(start);
    const b = buf[pos++] as number;
    if (i === 9 && b > 1) {
      throw new PsonError(PsonErrorCode.VARINT_OVERFLOW, 'varint does not fit in 64 bits', start);
    }
    big |= BigInt(b & 0x7f) << shift;
    if (b < 0x80) {
      if (strict && b === 0) throw nonMinimal(start);
      return big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big;
    }
    shift += 7n;
  }
  throw new PsonError(PsonErrorCode.VARINT_OVERFLOW, 'varint longer than 10 bytes', start);
}

function nonMinimal(at: number): PsonError {
  return new PsonError(PsonErrorCode.NON_MINIMAL, 'non-minimal encoding (strict mode)', at);
}

function readFloat32(at: number): number {
  if (end - pos < 4) throw truncated(at);
  if (littleEndian) {
    scratchI32[0] = word(buf, pos);
    pos += 4;
    return scratchF32[0] as number;
  }
  const v = new DataView(buf.buffer, buf.byteOffset + pos, 4).getFloat32(0, true);
  pos += 4;
  return v;
}

function readFloat64(at: number): number {
  if (end - pos < 8) throw truncated(at);
  if (littleEndian) {
    scratchI32[0] = word(buf, pos);
    scratchI32[1] = word(buf, pos + 4);
    pos += 8;
    return scratchF64[0] as number;
  }
  const v = new DataView(buf.buffer, buf.byteOffset + pos, 8).getFloat64(0, true);
  pos += 8;
  return v;
}

// Short strings (map keys above all) repeat from message to message, and building a string
// from bytes costs far more than comparing a few bytes (a fresh key also costs the property
// store that follows a string-table lookup). So recent strings of up to 32 bytes are kept in
// a fixed-size cache (4096 entries, a few hundred KiB at most), 2 ways per set so that two
// strings that hash alike do not evict each other on every message. An entry is summarised
// by its length and up to three 4-byte words (the first, the last and, above 8 bytes, a
// middle one), which together cover every byte of a string of up to 12 bytes; longer entries
// also keep their bytes to compare the rest. A hit is always an exact match, and only
// strings decoded without loss are cached, so a hit returns exactly what decoding would.
const MAX_CACHED = 32;
const SET_BITS = 11;
const WAYS = 2 << SET_BITS;
const cacheStrings: string[] = new Array<string>(WAYS).fill('');
const cacheLengths = new Uint8Array(WAYS); // 0: an empty way (the empty string is never looked up)
const cacheWords = new Int32Array(WAYS * 3);
const cacheBytes = new Uint8Array(WAYS * MAX_CACHED);

/** Reads `n` bytes of UTF-8 (bounds already checked). */
function readUtf8(n: number, at: number): string {
  const start = pos;
  const stop = start + n;
  pos = stop;
  if (n > MAX_CACHED) return readUtf8Slow(start, at);
  if (n === 0) return '';
  const b = buf; // a local: module variables cost a load on every use
  let w0: number;
  let w1 = 0;
  let w2 = 0;
  if (n >= 4) {
    w0 = word(b, start);
    if (n > 8) w1 = word(b, start + (n >> 1) - 2); // first and last word overlap up to 8 bytes
    w2 = word(b, stop - 4);
  } else {
    w0 = (b[start] as number) | ((b[start + (n >> 1)] as number) << 8) | ((b[stop - 1] as number) << 16);
  }
  let hash = Math.imul(n ^ w0, 0x9e3779b1);
  hash = Math.imul(hash ^ w1, 0x9e3779b1);
  hash = Math.imul(hash ^ w2, 0x9e3779b1);
  const way0 = (hash >>> (32 - SET_BITS)) << 1; // the top bits mix all the input
  const way1 = way0 + 1;
  if (cached(way0, n, w0, w1, w2, start)) return cacheStrings[way0] as string;
  if (cached(way1, n, w0, w1, w2, start)) return cacheStrings[way1] as string;

  // A miss: decode the string, then cache it.
  let s: string | undefined;
  for (let i = start; i < stop; i++) {
    if ((b[i] as number) >= 0x80) {
      s = readUtf8Slow(start, at);
      if (replaceInvalidUtf8) return s; // perhaps lossy: never cache
      break;
    }
  }
  if (s === undefined) s = String.fromCharCode.apply(null, b.subarray(start, stop) as unknown as number[]);
  // The newcomer takes way 0, the previous way-0 entry moves to way 1.
  const previous = cacheLengths[way0] as number;
  cacheStrings[way1] = cacheStrings[way0] as string;
  cacheLengths[way1] = previous;
  cacheWords.copyWithin(way1 * 3, way0 * 3, way0 * 3 + 3);
  if (previous > 12) {
    cacheBytes.copyWithin(way1 * MAX_CACHED, way0 * MAX_CACHED, way0 * MAX_CACHED + previous);
  }
  cacheStrings[way0] = s;
  cacheLengths[way0] = n;
  cacheWords[way0 * 3] = w0;
  cacheWords[way0 * 3 + 1] = w1;
  cacheWords[way0 * 3 + 2] = w2;
  if (n > 12) cacheBytes.set(b.subarray(start, stop), way0 * MAX_CACHED);
  return s;
}

/** Four bytes as one little-endian int32. */
function word(b: Uint8Array, i: number): number {
  return (
    (b[i] as number) |
    ((b[i + 1] as number) << 8) |
    ((b[i + 2] as number) << 16) |
    ((b[i + 3] as number) << 24)
  );
}

/** Whether cache entry `way` holds the `n` input bytes at `start` (summarised by w0…w2). */
function cached(way: number, n: number, w0: number, w1: number, w2: number, start: number): boolean {
  const k = way * 3;
  if (
    cacheLengths[way] !== n ||
    cacheWords[k] !== w0 ||
    cacheWords[k + 1] !== w1 ||
    cacheWords[k + 2] !== w2
  ) {
    return false;
  }
  if (n <= 12) return true; // the three words cover every byte
  const base = way * MAX_CACHED;
  for (let i = 4; i < n - 4; i++) if (cacheBytes[base + i] !== buf[start + i]) return false;
  return true;
}

function readUtf8Slow(start: number, at: number): string {
  const bytes = buf.subarray(start, pos);
  if (replaceInvalidUtf8) return lenientUtf8.decode(bytes);
  try {
    return fatalUtf8.decode(bytes);
  } catch {
    throw new PsonError(PsonErrorCode.INVALID_UTF8, 'string is not valid UTF-8', at);
  }
}

/** A copy of the next `n` bytes (bounds already checked), always a plain Uint8Array. */
function readBytes(n: number): Uint8Array {
  const out = new Uint8Array(n);
  out.set(buf.subarray(pos, pos + n));
  pos += n;
  return out;
}

function setMember(obj: PsonObject, key: string, value: PsonValue, at: number): void {
  if (strict && Object.hasOwn(obj, key)) {
    throw new PsonError(PsonErrorCode.DUPLICATE_KEY, `duplicate map key ${JSON.stringify(key)}`, at);
  }
  if (key === '__proto__') {
    // A plain assignment would replace the object's prototype.
    Object.defineProperty(obj, key, { value, enumerable: true, writable: true, configurable: true });
  } else {
    obj[key] = value;
  }
}

function setMapEntry(map: Map<string, PsonValue>, key: string, value: PsonValue, at: number): void {
  if (strict && map.has(key)) {
    throw new PsonError(PsonErrorCode.DUPLICATE_KEY, `duplicate map key ${JSON.stringify(key)}`, at);
  }
  if (map.has(key)) map.delete(key); // last one wins, in the position it was last written
  map.set(key, value);
}

function tooDeep(at: number): PsonError {
  return new PsonError(PsonErrorCode.DEPTH_EXCEEDED, `containers nested deeper than ${maxDepth}`, at);
}

// ---------------------------------------------------------------------------------------
// New PSON (version 1)

/** Reads a header's count: the inline 0…30, or the varint after the 0x1f escape. */
function readCountV1(inline: number, at: number): number | bigint {
  if (inline !== 31) return inline;
  const n = readVarint();
  if (strict && n < 31) throw nonMinimal(at);
  return n;
}

/** A length or element count, checked against what is left before anything is allocated. */
function readSizeV1(inline: number, at: number, minBytesEach: number): number {
  const n = readCountV1(inline, at);
  if (typeof n === 'bigint' || n * minBytesEach > end - pos) throw lengthOutOfRange(n, at);
  return n;
}

function readV1(depth: number): PsonValue {
  const at = pos;
  if (pos >= end) throw truncated(at);
  const header = buf[pos++] as number;
  const inline = header & 0x1f;
  switch (header >> 5) {
    case 0:
      return readCountV1(inline, at);
    case 1: {
      const magnitude = readCountV1(inline, at);
      if (typeof magnitude === 'bigint') {
        if (magnitude > TWO_63) {
          throw new PsonError(PsonErrorCode.INTEGER_RANGE, 'negative integer below -2^63', at);
        }
        return -magnitude;
      }
      return magnitude === 0 ? 0 : -magnitude;
    }
    case 2:
      if (inline === 0) return readFloat32(at);
      if (inline === 1) return readFloat64(at);
      throw new PsonError(PsonErrorCode.UNKNOWN_TYPE, `invalid float header 0x${hex(header)}`, at);
    case 3:
      if (inline === 0) return false;
      if (inline === 1) return true;
      if (inline === 2) return null;
      throw new PsonError(PsonErrorCode.UNKNOWN_TYPE, `invalid header 0x${hex(header)}`, at);
    case 4:
      return readUtf8(readSizeV1(inline, at, 1), at);
    case 5: {
      return readBytes(readSizeV1(inline, at, 1));
    }
    case 6:
      return readMapV1(inline, at, depth);
    default:
      return readArrayV1(inline, at, depth);
  }
}

/** A map key: a string value with its own header. */
function readKeyV1(): string {
  const at = pos;
  if (pos >= end) throw truncated(at);
  const header = buf[pos++] as number;
  if (header < 0x9f && header >= 0x80) {
    // Inline length, the usual case: skip the count helpers.
    const n = header & 0x1f;
    if (n > end - pos) throw lengthOutOfRange(n, at);
    return readUtf8(n, at);
  }
  if (header !== 0x9f) {
    throw new PsonError(PsonErrorCode.INVALID_KEY, `map key is not a string (header 0x${hex(header)})`, at);
  }
  return readUtf8(readSizeV1(31, at, 1), at);
}

function readMapV1(inline: number, at: number, depth: number): PsonValue {
  if (depth >= maxDepth) throw tooDeep(at);
  const n = readSizeV1(inline, at, 2);
  if (asMap) {
    const map = new Map<string, PsonValue>();
    for (let i = 0; i < n; i++) {
      const keyAt = pos;
      const key = readKeyV1();
      setMapEntry(map, key, readV1(depth + 1), keyAt);
    }
    return map;
  }
  const obj: PsonObject = {};
  for (let i = 0; i < n; i++) {
    const keyAt = pos;
    const key = readKeyV1();
    const value = readV1(depth + 1);
    // The plain store is the hot path; strict mode and "__proto__" take the careful one.
    if (strict || key === '__proto__') setMember(obj, key, value, keyAt);
    else obj[key] = value;
  }
  return obj;
}

function readArrayV1(inline: number, at: number, depth: number): PsonValue {
  if (depth >= maxDepth) throw tooDeep(at);
  const n = readSizeV1(inline, at, 1);
  const arr: PsonValue[] = [];
  for (let i = 0; i < n; i++) arr.push(readV1(depth + 1));
  return arr;
}

// ---------------------------------------------------------------------------------------
// Legacy PSON (version 0, Protoson)

/** A legacy length prefix, checked against what is left of the current region. */
function readLengthV0(at: number): number {
  const n = readVarint();
  if (typeof n === 'bigint' || n > end - pos) {
    if (openV0 > 0) {
      throw new PsonError(
        PsonErrorCode.CONTAINER_OVERRUN,
        `length ${n} runs past the end of its container`,
        at,
      );
    }
    throw lengthOutOfRange(n, at);
  }
  return n;
}

function readV0(depth: number): PsonValue {
  const at = pos;
  if (pos >= end) throw truncated(at);
  const tag = buf[pos++] as number;
  switch (tag) {
    case 0x00: // null
    case 0x78: // "empty": created, never assigned
      return null;
    case 0x08: {
      const n = readVarint();
      if (strict && typeof n === 'number' && n < 2) throw nonMinimal(at);
      return n;
    }
    case 0x10: {
      const magnitude = readVarint();
      if (typeof magnitude === 'bigint') {
        if (magnitude > TWO_63) {
          throw new PsonError(PsonErrorCode.INTEGER_RANGE, 'negative integer below -2^63', at);
        }
        return -magnitude;
      }
      if (strict && magnitude === 0) throw nonMinimal(at);
      return magnitude === 0 ? 0 : -magnitude;
    }
    case 0x1d:
      return readFloat32(at);
    case 0x21:
      return readFloat64(at);
    case 0x28:
      return true;
    case 0x30:
      return false;
    case 0x38:
      return 0;
    case 0x40:
      return 1;
    case 0x4a: {
      const n = readLengthV0(at);
      if (strict && n === 0) throw nonMinimal(at);
      return readUtf8(n, at);
    }
    case 0x50:
      return '';
    case 0x5a: {
      const n = readLengthV0(at);
      if (strict && n === 0) throw nonMinimal(at);
      return readBytes(n);
    }
    case 0x60:
      return new Uint8Array(0);
    case 0x6a:
      return readMapV0(at, depth);
    case 0x72:
      return readArrayV0(at, depth);
    default:
      throw new PsonError(PsonErrorCode.UNKNOWN_TYPE, `unknown legacy PSON tag 0x${hex(tag)}`, at);
  }
}

function readMapV0(at: number, depth: number): PsonValue {
  if (depth >= maxDepth) throw tooDeep(at);
  const n = readLengthV0(at);
  const outerEnd = end;
  end = pos + n;
  openV0++;
  const map = asMap ? new Map<string, PsonValue>() : undefined;
  const obj: PsonObject = {};
  while (pos < end) {
    const keyAt = pos;
    const key = readUtf8(readLengthV0(keyAt), keyAt);
    const value = readV0(depth + 1);
    if (map) setMapEntry(map, key, value, keyAt);
    else setMember(obj, key, value, keyAt);
  }
  end = outerEnd;
  openV0--;
  return map ?? obj;
}

function readArrayV0(at: number, depth: number): PsonValue {
  if (depth >= maxDepth) throw tooDeep(at);
  const n = readLengthV0(at);
  const outerEnd = end;
  end = pos + n;
  openV0++;
  const arr: PsonValue[] = [];
  while (pos < end) arr.push(readV0(depth + 1));
  end = outerEnd;
  openV0--;
  return arr;
}

function hex(b: number): string {
  return b.toString(16).padStart(2, '0');
}
