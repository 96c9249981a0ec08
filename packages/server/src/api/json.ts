import type { PsonValue } from '@iotmp/pson';

/**
 * A PSON value as JSON: bigints become numbers when exact, else decimal strings; binary
 * nested in a structure becomes base64 (top-level binary is sent as application/octet-stream
 * by the caller); Maps become objects.
 */
export function psonToJson(value: PsonValue | undefined): unknown {
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
  if (value instanceof Uint8Array)
    return Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString('base64');
  if (Array.isArray(value)) return value.map(psonToJson);
  if (value instanceof Map) return Object.fromEntries([...value].map(([k, v]) => [k, psonToJson(v)]));
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) {
    if (k === '__proto__')
      Object.defineProperty(out, k, {
        value: psonToJson(v),
        enumerable: true,
        writable: true,
        configurable: true,
      });
    else out[k] = psonToJson(v);
  }
  return out;
}

/** JSON from a request body, as a PSON value (JSON is a subset). */
export function jsonToPson(value: unknown): PsonValue {
  return value as PsonValue;
}
