import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * Where the shared specification lives: `IOTMP_SPEC_DIR`, else the `shared/spec` folder
 * beside the repository (the layout of developer machines and CI).
 */
export function specDir(): string {
  const fromEnv = process.env.IOTMP_SPEC_DIR;
  if (fromEnv) return resolve(fromEnv);
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const candidate = join(dir, '..', 'shared', 'spec');
    if (existsSync(join(candidate, 'vectors'))) return candidate;
    const parent = dirname(dir);
    if (parent === dir) break;
    dir = parent;
  }
  throw new Error(
    'cannot find shared/spec/vectors beside the repository; set IOTMP_SPEC_DIR to the spec folder',
  );
}

/** Marker for the legacy "empty" value in vectors (`{"$legacy_empty": true}`). */
export const LEGACY_EMPTY = Symbol('legacy_empty');

/**
 * Converts the vectors' JSON conventions into JavaScript values: `{"$int": "…"}` → bigint,
 * `{"$double": "NaN"}` → number, `{"$bytes": "hex"}` → Uint8Array,
 * `{"$legacy_empty": true}` → {@link LEGACY_EMPTY}.
 */
export function fromVectorJson(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(fromVectorJson);
  if (v !== null && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    const keys = Object.keys(o);
    if (keys.length === 1) {
      if (typeof o.$int === 'string') return BigInt(o.$int);
      if (typeof o.$double === 'string') return Number(o.$double);
      if (typeof o.$bytes === 'string') return hexToBytes(o.$bytes);
      if (o.$legacy_empty === true) return LEGACY_EMPTY;
    }
    const out: Record<string, unknown> = {};
    for (const k of keys) out[k] = fromVectorJson(o[k]);
    return out;
  }
  return v;
}

export function hexToBytes(hex: string): Uint8Array {
  if (hex.length % 2 !== 0 || /[^0-9a-f]/i.test(hex)) throw new Error(`bad hex string: ${hex}`);
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = Number.parseInt(hex.slice(i * 2, i * 2 + 2), 16);
  return out;
}

export function bytesToHex(bytes: Uint8Array): string {
  let s = '';
  for (const b of bytes) s += b.toString(16).padStart(2, '0');
  return s;
}

export interface PsonVector {
  name: string;
  pv: 0 | 1;
  /** The value in JavaScript form (see {@link fromVectorJson}). */
  value: unknown;
  hex: string;
  /** Present where decoding `hex` does not give back `value` (legacy lossy floats). */
  decoded?: unknown;
  /** IOTMP-Linux's sorted-key form, where it differs. */
  hexSortedKeys?: string;
  note?: string;
}

export function loadPsonVectors(): PsonVector[] {
  const file = JSON.parse(readFileSync(join(specDir(), 'vectors', 'pson.json'), 'utf8')) as {
    vectors: Array<Record<string, unknown>>;
  };
  return file.vectors.map((v) => {
    const out: PsonVector = {
      name: v.name as string,
      pv: v.pv as 0 | 1,
      value: fromVectorJson(v.value),
      hex: v.hex as string,
    };
    if ('decoded' in v) out.decoded = fromVectorJson(v.decoded);
    if (typeof v.hex_sorted_keys === 'string') out.hexSortedKeys = v.hex_sorted_keys;
    if (typeof v.note === 'string') out.note = v.note;
    return out;
  });
}

export interface FrameVectorField {
  id: number;
  name: string;
  wireType: number;
  /** The field value in JavaScript form. */
  value: unknown;
}

export interface FrameVector {
  name: string;
  pv: 0 | 1;
  type: string;
  typeCode: number;
  /** Fields in the order they appear in `hex`. */
  fields: FrameVectorField[];
  hex: string;
  /** Other producers' byte strings for the same message (field order variants). */
  variants: Record<string, string>;
  note?: string;
}

export function loadFrameVectors(): FrameVector[] {
  const file = JSON.parse(readFileSync(join(specDir(), 'vectors', 'iotmp.json'), 'utf8')) as {
    vectors: Array<Record<string, unknown>>;
  };
  return file.vectors.map((v) => {
    const value = v.value as { type: string; type_code: number; fields: Array<Record<string, unknown>> };
    const variants: Record<string, string> = {};
    for (const [k, hex] of Object.entries(v)) {
      if (k.startsWith('hex_') && typeof hex === 'string') variants[k.slice(4)] = hex;
    }
    const out: FrameVector = {
      name: v.name as string,
      pv: v.pv as 0 | 1,
      type: value.type,
      typeCode: value.type_code,
      fields: value.fields.map((f) => ({
        id: f.id as number,
        name: f.name as string,
        wireType: f.wire_type as number,
        value: fromVectorJson(f.value),
      })),
      hex: v.hex as string,
      variants,
    };
    if (typeof v.note === 'string') out.note = v.note;
    return out;
  });
}
