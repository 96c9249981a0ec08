import type { PsonValue } from '@iotmp/pson';

/** How binary nested in a payload is written as JSON. */
export type BinaryAsJson = (bytes: Uint8Array) => unknown;

/** Base64 text: the REST API's form. */
export const binaryAsBase64: BinaryAsJson = (bytes) =>
  Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64');

/** `{"bytes": [0-255, …]}`: the WebSockets' form, as Thinger.io writes it (its tools decode it). */
export const binaryAsByteList: BinaryAsJson = (bytes) => ({ bytes: Array.from(bytes) });

/**
 * A PSON value as JSON: bigints become numbers when exact, else decimal strings; non-finite
 * numbers null; Maps objects; binary nested in a structure as `binary` says (top-level binary
 * is sent as application/octet-stream by the REST caller).
 */
export function psonToJson(value: PsonValue | undefined, binary: BinaryAsJson = binaryAsBase64): unknown {
  if (value === undefined || value === null) return null;
  switch (typeof value) {
    case 'bigint':
      return value >= BigInt(Number.MIN_SAFE_INTEGER) && value <= BigInt(Number.MAX_SAFE_INTEGER)
        ? Number(value)
        : value.toString();
    case 'number':
      return Number.isFinite(value) ? value : null;
    case 'string':
    case 'boolean':
      return value;
    default:
      break;
  }
  if (value instanceof Uint8Array) return binary(value);
  if (Array.isArray(value)) return value.map((v) => psonToJson(v, binary));
  const out: Record<string, unknown> = {};
  const entries = value instanceof Map ? [...value] : Object.entries(value);
  for (const [k, v] of entries) {
    const name = String(k);
    const converted = psonToJson(v as PsonValue, binary);
    // A "__proto__" key is data, not the prototype.
    if (name === '__proto__')
      Object.defineProperty(out, name, {
        value: converted,
        enumerable: true,
        writable: true,
        configurable: true,
      });
    else out[name] = converted;
  }
  return out;
}

/** JSON from a request body, as a PSON value (JSON is a subset). */
export function jsonToPson(value: unknown): PsonValue {
  return value as PsonValue;
}
