import { ID_PATTERN } from '../api/context.js';
import type { Db } from './database.js';

/*
 * Device properties: named JSON values stored per device (configuration, last state, …),
 * read and written by the REST API and by the device itself (codes 1 and 2). Rows go with
 * their device (foreign key, ON DELETE CASCADE). Every change is reported through
 * `onChange` after it is committed.
 */

export interface PropertyRecord {
  property: string;
  value: unknown;
  createdTs: number;
  modifiedTs: number;
}

export interface PropertyChange {
  device: string;
  property: string;
  /** The new value; null when deleted. */
  value: unknown;
  deleted?: true;
}

/** A refused property operation: HTTP-like status, stable code, message for the caller. */
export class PropertyError extends Error {
  override name = 'PropertyError';
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export interface PropertyStoreOptions {
  /** Largest value, as JSON text (default 64 KiB). */
  maxValueBytes?: number;
  /** Properties per device (default 1000). */
  maxPerDevice?: number;
  /** Nesting of arrays and objects in a value (default 32). */
  maxDepth?: number;
  /** Called after every committed change. */
  onChange?: (username: string, change: PropertyChange) => void;
}

export const DEFAULT_MAX_PROPERTY_BYTES = 64 * 1024;
const PROPERTY_RE = new RegExp(ID_PATTERN);

interface Row {
  property: string;
  value: string;
  created_at: number;
  updated_at: number;
}

function toRecord(row: Row): PropertyRecord {
  return {
    property: row.property,
    value: JSON.parse(row.value) as unknown,
    createdTs: row.created_at,
    modifiedTs: row.updated_at,
  };
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** True when `value` nests deeper than `max` (stops looking as soon as it does). */
function tooDeep(value: unknown, max: number): boolean {
  if (typeof value !== 'object' || value === null) return false;
  if (max === 0) return true;
  for (const v of Array.isArray(value) ? value : Object.values(value)) {
    if (tooDeep(v, max - 1)) return true;
  }
  return false;
}

/** RFC 7396 JSON merge patch: objects merge key by key, null deletes, anything else replaces. */
export function mergePatch(target: unknown, patch: unknown): unknown {
  if (!isObject(patch)) return patch;
  const out: Record<string, unknown> = isObject(target) ? { ...target } : {};
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else
      Object.defineProperty(out, k, {
        value: mergePatch(out[k], v),
        enumerable: true,
        writable: true,
        configurable: true,
      });
  }
  return out;
}

export class PropertyStore {
  private readonly st;
  private readonly maxValueBytes: number;
  private readonly maxPerDevice: number;
  private readonly maxDepth: number;

  constructor(
    private readonly db: Db,
    private readonly options: PropertyStoreOptions = {},
  ) {
    this.maxValueBytes = options.maxValueBytes ?? DEFAULT_MAX_PROPERTY_BYTES;
    this.maxPerDevice = options.maxPerDevice ?? 1000;
    this.maxDepth = options.maxDepth ?? 32;
    this.st = {
      list: db.prepare(
        'SELECT property, value, created_at, updated_at FROM device_properties WHERE username = ? AND device = ? ORDER BY property',
      ),
      get: db.prepare(
        'SELECT property, value, created_at, updated_at FROM device_properties WHERE username = ? AND device = ? AND property = ?',
      ),
      count: db.prepare('SELECT count(*) AS n FROM device_properties WHERE username = ? AND device = ?'),
      insert: db.prepare(
        'INSERT INTO device_properties (username, device, property, value, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)',
      ),
      update: db.prepare(
        'UPDATE device_properties SET value = ?, updated_at = ? WHERE username = ? AND device = ? AND property = ?',
      ),
      delete: db.prepare('DELETE FROM device_properties WHERE username = ? AND device = ? AND property = ?'),
    };
  }

  list(username: string, device: string): PropertyRecord[] {
    return (this.st.list.all(username, device) as Row[]).map(toRecord);
  }

  get(username: string, device: string, property: string): PropertyRecord | undefined {
    const row = this.st.get.get(username, device, property) as Row | undefined;
    return row && toRecord(row);
  }

  /** The value as stored JSON text, or a PropertyError saying why it cannot be stored. */
  private encode(property: string, value: unknown): string {
    if (typeof property !== 'string' || !PROPERTY_RE.test(property))
      throw new PropertyError(
        400,
        'invalid_property',
        'a property id is 1–128 characters: letters, digits, _ . @ - (not first)',
      );
    if (value === undefined)
      throw new PropertyError(400, 'invalid_value', `property ${property} needs a value`);
    if (tooDeep(value, this.maxDepth))
      throw new PropertyError(
        400,
        'invalid_value',
        `the value of ${property} nests deeper than ${this.maxDepth} levels`,
      );
    const text = JSON.stringify(value);
    if (typeof text !== 'string')
      throw new PropertyError(400, 'invalid_value', `the value of ${property} is not JSON`);
    const bytes = Buffer.byteLength(text);
    if (bytes > this.maxValueBytes)
      throw new PropertyError(
        413,
        'value_too_large',
        `the value of ${property} is ${bytes} bytes as JSON; at most ${this.maxValueBytes} are stored`,
      );
    return text;
  }

  private checkRoom(username: string, device: string, adding: number): void {
    const n = (this.st.count.get(username, device) as { n: number }).n;
    if (n + adding > this.maxPerDevice)
      throw new PropertyError(
        409,
        'too_many_properties',
        `device ${device} has ${n} properties; at most ${this.maxPerDevice} are kept`,
      );
  }

  private run<T>(fn: () => T, device: string): T {
    try {
      return this.db.transaction(fn)();
    } catch (err) {
      if ((err as { code?: string }).code === 'SQLITE_CONSTRAINT_FOREIGNKEY')
        throw new PropertyError(404, 'device_not_found', `device ${device} does not exist`);
      throw err;
    }
  }

  private changed(username: string, change: PropertyChange): void {
    this.options.onChange?.(username, change);
  }

  /** Creates new properties, all or none: 409 if one exists already (or is listed twice). */
  create(
    username: string,
    device: string,
    items: ReadonlyArray<{ property: string; value: unknown }>,
  ): PropertyRecord[] {
    const encoded = items.map((i) => ({ property: i.property, text: this.encode(i.property, i.value) }));
    const seen = new Set<string>();
    for (const e of encoded) {
      if (seen.has(e.property))
        throw new PropertyError(409, 'property_exists', `property ${e.property} is listed twice`);
      seen.add(e.property);
    }
    const now = Date.now();
    const records = this.run(() => {
      this.checkRoom(username, device, encoded.length);
      return encoded.map((e) => {
        if (this.st.get.get(username, device, e.property))
          throw new PropertyError(
            409,
            'property_exists',
            `property ${e.property} already exists: PUT /properties/${e.property} changes it`,
          );
        this.st.insert.run(username, device, e.property, e.text, now, now);
        return this.get(username, device, e.property) as PropertyRecord;
      });
    }, device);
    for (const r of records) this.changed(username, { device, property: r.property, value: r.value });
    return records;
  }

  /** Creates or replaces a property's value. */
  set(username: string, device: string, property: string, value: unknown): PropertyRecord {
    const text = this.encode(property, value);
    const now = Date.now();
    const record = this.run(() => {
      if (this.st.update.run(text, now, username, device, property).changes === 0) {
        this.checkRoom(username, device, 1);
        this.st.insert.run(username, device, property, text, now, now);
      }
      return this.get(username, device, property) as PropertyRecord;
    }, device);
    this.changed(username, { device, property, value: record.value });
    return record;
  }

  /** Applies a JSON merge patch (RFC 7396) to an existing property's value. */
  patch(username: string, device: string, property: string, patch: unknown): PropertyRecord {
    const record = this.run(() => {
      const current = this.get(username, device, property);
      if (!current) throw new PropertyError(404, 'property_not_found', `property ${property} does not exist`);
      const text = this.encode(property, mergePatch(current.value, patch));
      this.st.update.run(text, Date.now(), username, device, property);
      return this.get(username, device, property) as PropertyRecord;
    }, device);
    this.changed(username, { device, property, value: record.value });
    return record;
  }

  delete(username: string, device: string, property: string): boolean {
    const gone = this.st.delete.run(username, device, property).changes > 0;
    if (gone) this.changed(username, { device, property, value: null, deleted: true });
    return gone;
  }
}
