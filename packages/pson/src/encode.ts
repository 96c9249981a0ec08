import { PsonError, PsonErrorCode } from './errors.js';
import { DEFAULT_MAX_DEPTH, type EncodeOptions } from './types.js';
import { ByteWriter, varintSize, writeUtf8 } from './writer.js';

const TWO_63 = 2 ** 63;
const hasOwn = Object.prototype.hasOwnProperty;
const MAX_U64 = 0xffff_ffff_ffff_ffffn;
const MIN_I64 = -(2n ** 63n);

// New PSON header types, already shifted into the top three bits.
const T_UINT = 0x00;
const T_NEG = 0x20;
const T_STR = 0x80;
const T_BYTES = 0xa0;
const T_MAP = 0xc0;
const T_ARRAY = 0xe0;

// Legacy (Protoson) tag bytes.
const L_NULL = 0x00;
const L_POS = 0x08;
const L_NEG = 0x10;
const L_F32 = 0x1d;
const L_F64 = 0x21;
const L_TRUE = 0x28;
const L_FALSE = 0x30;
const L_ZERO = 0x38;
const L_ONE = 0x40;
const L_STR = 0x4a;
const L_STR_EMPTY = 0x50;
const L_BYTES = 0x5a;
const L_BYTES_EMPTY = 0x60;
const L_MAP = 0x6a;
const L_ARRAY = 0x72;
const L_EMPTY = 0x78;

/**
 * Writes one PSON value into `w`. Exposed for codecs that embed PSON in a larger buffer
 * (IOTMP frames); most callers want {@link encode}.
 */
export function writePson(w: ByteWriter, value: unknown, options?: EncodeOptions): void {
  // The options travel as plain arguments: nothing to allocate per call.
  if (options === undefined) {
    writeV1(w, value, 0, DEFAULT_MAX_DEPTH);
    return;
  }
  const maxDepth = options.maxDepth ?? DEFAULT_MAX_DEPTH;
  const version = options.version ?? 1;
  if (version === 1) writeV1(w, value, 0, maxDepth);
  else if (version === 0) writeV0(w, value, 0, maxDepth, options.legacyLossyFloats ?? true);
  else throw new PsonError(PsonErrorCode.INVALID_OPTION, `unknown PSON version ${String(version)}`);
}

const shared = new ByteWriter();
let sharedInUse = false;

/**
 * Encodes `value` as PSON. Accepts null, booleans, numbers, bigints, strings, Uint8Array
 * (or any ArrayBufferView / ArrayBuffer) for bytes, arrays, plain objects and Maps with
 * string keys; objects with a `toJSON` method are encoded as its result (as JSON does).
 * Object members whose value is `undefined` are left out; `undefined` elsewhere is null
 * (new PSON) or the legacy "empty" value (legacy PSON).
 */
export function encode(value: unknown, options?: EncodeOptions): Uint8Array {
  if (sharedInUse) {
    // Called from a toJSON method during another encode: the shared writer is taken.
    const w = new ByteWriter(256);
    writePson(w, value, options);
    return w.copyFrom(0);
  }
  sharedInUse = true;
  try {
    shared.pos = 0;
    writePson(shared, value, options);
    const out = shared.copyFrom(0);
    // Do not keep a huge scratch buffer alive after a one-off large encode.
    if (shared.buf.length > 1 << 20) {
      shared.buf = new Uint8Array(8192);
      shared.view = new DataView(shared.buf.buffer);
    }
    return out;
  } finally {
    sharedInUse = false;
  }
}

function unsupported(value: unknown): PsonError {
  const what = typeof value === 'object' ? (value?.constructor?.name ?? 'object') : typeof value;
  return new PsonError(PsonErrorCode.UNSUPPORTED_VALUE, `PSON cannot encode a value of type ${what}`);
}

function tooDeep(maxDepth: number): PsonError {
  return new PsonError(
    PsonErrorCode.DEPTH_EXCEEDED,
    `value nested deeper than ${maxDepth} levels (or circular); raise maxDepth if this is intended`,
  );
}

function asBytes(value: object): Uint8Array | undefined {
  if (value instanceof Uint8Array) return value;
  if (ArrayBuffer.isView(value)) return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  if (value instanceof ArrayBuffer) return new Uint8Array(value);
  return undefined;
}

function hasToJSON(value: object): value is { toJSON(): unknown } {
  return typeof (value as { toJSON?: unknown }).toJSON === 'function';
}

// ---------------------------------------------------------------------------------------
// New PSON (version 1)

/** Header byte with an inline count, or the escape followed by a varint. */
function headerV1(w: ByteWriter, type: number, n: number): void {
  if (n < 31) {
    w.u8(type | n);
  } else {
    w.u8(type | 31);
    w.varint(n);
  }
}

function writeNumberV1(w: ByteWriter, v: number): void {
  if (Number.isInteger(v)) {
    if (v >= 0) {
      if (v < 31) {
        w.u8(v); // also -0
        return;
      }
      if (v <= Number.MAX_SAFE_INTEGER) {
        w.u8(T_UINT | 31);
        w.varint(v);
        return;
      }
      if (v < TWO_63) {
        w.u8(T_UINT | 31);
        w.varintBig(BigInt(v));
        return;
      }
    } else {
      if (v > -31) {
        w.u8(T_NEG | -v);
        return;
      }
      if (v >= -Number.MAX_SAFE_INTEGER) {
        w.u8(T_NEG | 31);
        w.varint(-v);
        return;
      }
      if (v >= -TWO_63) {
        w.u8(T_NEG | 31);
        w.varintBig(BigInt(-v));
        return;
      }
    }
  }
  // The reference encoders: binary32 when the value survives the round trip (±Infinity
  // does), binary64 otherwise (NaN never compares equal, so it lands here).
  if (Math.fround(v) === v) {
    w.u8(0x40);
    w.f32(v);
  } else {
    w.u8(0x41);
    w.f64(v);
  }
}

function writeBigIntV1(w: ByteWriter, v: bigint): void {
  if (v >= 0n) {
    if (v > MAX_U64) throw rangeError(v);
    if (v < 31n) {
      w.u8(Number(v));
    } else {
      w.u8(T_UINT | 31);
      w.varintBig(v);
    }
  } else {
    if (v < MIN_I64) throw rangeError(v);
    const magnitude = -v;
    if (magnitude < 31n) {
      w.u8(T_NEG | Number(magnitude));
    } else {
      w.u8(T_NEG | 31);
      w.varintBig(magnitude);
    }
  }
}

function rangeError(v: bigint): PsonError {
  return new PsonError(PsonErrorCode.INTEGER_RANGE, `integer ${v} is outside the PSON range -2^63 … 2^64-1`);
}

/** A string value (type 4) or a map key: header with the UTF-8 byte length, then the bytes. */
function writeStringV1(w: ByteWriter, s: string): void {
  const len = s.length;
  // Room for the longest UTF-8 (3 bytes per UTF-16 unit) after a header sized for the
  // shortest (1 byte per unit): the header then only moves when non-ASCII text pushes the
  // byte length past a header boundary, which ASCII never does.
  const reserved = len < 31 ? 1 : 1 + varintSize(len);
  w.ensure(reserved + 1 + len * 3); // + 1: the header grows by one byte at most
  const at = w.pos;
  const n = writeUtf8(w.buf, at + reserved, s);
  if (n < 31) {
    w.buf[at] = T_STR | n;
    w.pos = at + 1 + n;
    return;
  }
  const used = 1 + varintSize(n);
  if (used !== reserved) w.buf.copyWithin(at + used, at + reserved, at + reserved + n);
  headerV1(w, T_STR, n);
  w.pos = at + used + n;
}

function writeV1(w: ByteWriter, v: unknown, depth: number, maxDepth: number): void {
  switch (typeof v) {
    case 'number':
      writeNumberV1(w, v);
      return;
    case 'string':
      writeStringV1(w, v);
      return;
    case 'boolean':
      w.u8(v ? 0x61 : 0x60);
      return;
    case 'bigint':
      writeBigIntV1(w, v);
      return;
    case 'undefined':
      w.u8(0x62);
      return;
    case 'object':
      break;
    default:
      throw unsupported(v);
  }
  if (v === null) {
    w.u8(0x62);
    return;
  }
  // Containers count against maxDepth, leaves (bytes) do not, as when decoding. A toJSON
  // result counts as one level down, so that a toJSON returning itself (or another object
  // with a toJSON) ends in DEPTH_EXCEEDED rather than a stack overflow.
  if (Array.isArray(v)) {
    if (depth >= maxDepth) throw tooDeep(maxDepth);
    const n = v.length;
    headerV1(w, T_ARRAY, n);
    for (let i = 0; i < n; i++) writeV1(w, v[i], depth + 1, maxDepth);
    return;
  }
  const bytes = asBytes(v);
  if (bytes !== undefined) {
    headerV1(w, T_BYTES, bytes.length);
    w.bytes(bytes);
    return;
  }
  if (depth >= maxDepth) throw tooDeep(maxDepth);
  if (v instanceof Map) {
    headerV1(w, T_MAP, v.size);
    for (const [key, value] of v) {
      if (typeof key !== 'string') throw unsupported(key);
      writeStringV1(w, key);
      writeV1(w, value, depth + 1, maxDepth);
    }
    return;
  }
  if (hasToJSON(v)) {
    writeV1(w, v.toJSON(), depth + 1, maxDepth);
    return;
  }
  writeObjectV1(w, v as Record<string, unknown>, depth, maxDepth);
}

function writeObjectV1(w: ByteWriter, obj: Record<string, unknown>, depth: number, maxDepth: number): void {
  // One header byte, patched once the members are written (undefined ones are left out).
  // More than 30 members need a longer header: the members then move up to make room.
  const headerAt = w.pos;
  w.u8(T_MAP);
  const start = w.pos;
  let written = 0;
  // for-in rather than Object.keys: V8 reads the values through the enumeration cache
  // instead of a lookup per key. It also walks the prototype chain, hence the own check
  // (hasOwnProperty.call, which V8 folds inside for-in; Object.hasOwn it does not).
  for (const key in obj) {
    if (!hasOwn.call(obj, key)) continue;
    const value = obj[key];
    if (value === undefined) continue;
    writeStringV1(w, key);
    writeV1(w, value, depth + 1, maxDepth);
    written++;
  }
  if (written < 31) {
    w.buf[headerAt] = T_MAP | written;
    return;
  }
  const extra = varintSize(written);
  w.ensure(extra);
  w.buf.copyWithin(start + extra, start, w.pos);
  const end = w.pos + extra;
  w.pos = headerAt;
  headerV1(w, T_MAP, written);
  w.pos = end;
}

// ---------------------------------------------------------------------------------------
// Legacy PSON (version 0, Protoson)

function writeNumberV0(w: ByteWriter, v: number, lossy: boolean): void {
  if (Number.isInteger(v) && v >= -TWO_63 && v < TWO_63) {
    if (v === 0) w.u8(L_ZERO);
    else if (v === 1) w.u8(L_ONE);
    else if (v > 0) {
      w.u8(L_POS);
      if (v <= Number.MAX_SAFE_INTEGER) w.varint(v);
      else w.varintBig(BigInt(v));
    } else {
      w.u8(L_NEG);
      if (v >= -Number.MAX_SAFE_INTEGER) w.varint(-v);
      else w.varintBig(BigInt(-v));
    }
    return;
  }
  // Protoson's rule: binary32 whenever it is within 1e-5 (lossy). NaN and ±Infinity fail
  // the comparison and become binary64. The exact variant keeps every value intact.
  const f = Math.fround(v);
  const useF32 = lossy ? Math.abs(v - f) <= 0.00001 : Number.isFinite(v) && f === v;
  if (useF32) {
    w.u8(L_F32);
    w.f32(v);
  } else {
    w.u8(L_F64);
    w.f64(v);
  }
}

function writeBigIntV0(w: ByteWriter, v: bigint): void {
  if (v > MAX_U64 || v < MIN_I64) throw rangeError(v);
  if (v === 0n) w.u8(L_ZERO);
  else if (v === 1n) w.u8(L_ONE);
  else if (v > 0n) {
    w.u8(L_POS);
    w.varintBig(v);
  } else {
    w.u8(L_NEG);
    w.varintBig(-v);
  }
}

/** A varint byte length followed by the UTF-8 bytes (legacy strings and bare map keys). */
function writeLengthPrefixedUtf8(w: ByteWriter, s: string): void {
  // As in writeStringV1: the length prefix is sized for ASCII and moves only when needed.
  const reserved = varintSize(s.length);
  w.ensure(reserved + 1 + s.length * 3); // + 1: the prefix grows by one byte at most
  const at = w.pos;
  const n = writeUtf8(w.buf, at + reserved, s);
  const used = varintSize(n);
  if (used !== reserved) w.buf.copyWithin(at + used, at + reserved, at + reserved + n);
  w.varint(n);
  w.pos = at + used + n;
}

function writeStringV0(w: ByteWriter, s: string): void {
  if (s.length === 0) {
    w.u8(L_STR_EMPTY);
    return;
  }
  w.u8(L_STR);
  writeLengthPrefixedUtf8(w, s);
}

// Legacy containers are prefixed with the byte length of their contents: one byte is
// reserved (most are shorter than 128 bytes) and ByteWriter.patchLength fills it in.

function writeV0(w: ByteWriter, v: unknown, depth: number, maxDepth: number, lossy: boolean): void {
  switch (typeof v) {
    case 'number':
      writeNumberV0(w, v, lossy);
      return;
    case 'string':
      writeStringV0(w, v);
      return;
    case 'boolean':
      w.u8(v ? L_TRUE : L_FALSE);
      return;
    case 'bigint':
      writeBigIntV0(w, v);
      return;
    case 'undefined':
      w.u8(L_EMPTY);
      return;
    case 'object':
      break;
    default:
      throw unsupported(v);
  }
  if (v === null) {
    w.u8(L_NULL);
    return;
  }
  // Depth as in writeV1.
  if (Array.isArray(v)) {
    if (depth >= maxDepth) throw tooDeep(maxDepth);
    w.u8(L_ARRAY);
    const lengthAt = w.pos;
    w.u8(0);
    for (let i = 0; i < v.length; i++) writeV0(w, v[i], depth + 1, maxDepth, lossy);
    w.patchLength(lengthAt);
    return;
  }
  const bytes = asBytes(v);
  if (bytes !== undefined) {
    if (bytes.length === 0) {
      w.u8(L_BYTES_EMPTY);
      return;
    }
    w.u8(L_BYTES);
    w.varint(bytes.length);
    w.bytes(bytes);
    return;
  }
  if (depth >= maxDepth) throw tooDeep(maxDepth);
  if (hasToJSON(v) && !(v instanceof Map)) {
    writeV0(w, v.toJSON(), depth + 1, maxDepth, lossy);
    return;
  }
  w.u8(L_MAP);
  const lengthAt = w.pos;
  w.u8(0);
  if (v instanceof Map) {
    for (const [key, value] of v) {
      if (typeof key !== 'string') throw unsupported(key);
      writeLengthPrefixedUtf8(w, key);
      writeV0(w, value, depth + 1, maxDepth, lossy);
    }
  } else {
    const obj = v as Record<string, unknown>;
    for (const key in obj) {
      if (!hasOwn.call(obj, key)) continue; // as in writeObjectV1
      const value = obj[key];
      if (value === undefined) continue;
      writeLengthPrefixedUtf8(w, key);
      writeV0(w, value, depth + 1, maxDepth, lossy);
    }
  }
  w.patchLength(lengthAt);
}
