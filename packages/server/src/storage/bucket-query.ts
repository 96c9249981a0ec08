import { type BucketStore, MAX_TS, type StoredRecord } from './buckets.js';

/*
 * Bucket reads beyond "the last N records" (Thinger.io clients ask for them): records of one
 * device, chosen fields, one record per group (`group_by`), and aggregation over time windows
 * (`agg`, `agg_type`, in a time zone `tz`). Records are scanned page by page through the store
 * (so records not yet compacted are seen as well), yielding to the event loop between pages,
 * and never more than a bounded number of them: a query that would need more is refused
 * (narrow the time range) rather than answered from part of the data.
 */

/** Records one query may scan. */
export const MAX_SCAN = 100_000;
/** JSON bytes one answer may hold. */
export const MAX_ANSWER_BYTES = 32 * 1024 * 1024;
/** Values kept for medians and modes (all other reducers keep running totals). */
const MAX_KEPT_VALUES = 2_000_000;
/** Reducers (fields × windows × groups) one aggregation may hold. */
const MAX_REDUCERS = 500_000;
const PAGE = 1000;

export const AGG_TYPES = [
  'count',
  'mean',
  'avg',
  'median',
  'mode',
  'spread',
  'stddev',
  'max',
  'min',
  'sum',
  'first',
  'last',
] as const;
export type AggType = (typeof AGG_TYPES)[number];
/** A window: `<n><unit>` with unit s, m, h, d, w (Monday to Monday), mo or y (calendar). */
export const AGG_PATTERN = '^[1-9][0-9]{0,5}(s|m|h|d|w|mo|y)$';

export interface BucketQuery {
  items: number;
  sort: 'asc' | 'desc';
  minTs?: number | undefined;
  maxTs?: number | undefined;
  /** Keep the records of this device only: all of a bucket it feeds, else those whose `device` field is it. */
  device?: { id: string; all: boolean } | undefined;
  /** Dotted paths of the fields to keep (the group field is kept too). */
  fields?: string[][] | undefined;
  /** Dotted path of the field whose values group the records. */
  groupBy?: string[] | undefined;
  agg?: { n: number; unit: 's' | 'm' | 'h' | 'd' | 'w' | 'mo' | 'y' } | undefined;
  aggType?: AggType | undefined;
  /** IANA time zone for day, week, month and year windows (default UTC). */
  tz?: string | undefined;
}

/** An answer row: its timestamp and its value as JSON text. */
export type QueryRow = StoredRecord;

export class QueryError extends Error {
  override name = 'QueryError';
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export function parseAgg(text: string): BucketQuery['agg'] {
  const m = new RegExp(AGG_PATTERN).exec(text);
  if (!m)
    throw new QueryError(400, 'invalid_request', `agg ${text} is not a window like 5m, 1h, 1d, 1w, 1mo, 1y`);
  return {
    n: Number(text.slice(0, text.length - (m[1] as string).length)),
    unit: m[1] as NonNullable<BucketQuery['agg']>['unit'],
  };
}

export function parsePath(text: string, what: string): string[] {
  const path = text.split('.');
  if (path.some((p) => p.length === 0 || p === '__proto__'))
    throw new QueryError(400, 'invalid_request', `${what} "${text}" is not a field path (a.b.c)`);
  return path;
}

/** Checks a time zone name; throws a 400 QueryError for an unknown one. */
export function checkTimeZone(tz: string): void {
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: tz });
  } catch {
    throw new QueryError(400, 'invalid_request', `tz ${tz} is not a time zone (e.g. UTC, Europe/Madrid)`);
  }
}

/** True when the query is a plain "last N records" read the store answers directly. */
export function isPlain(q: BucketQuery): boolean {
  return !q.device && !q.fields && !q.groupBy && !q.aggType;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function getPath(value: unknown, path: string[]): unknown {
  let v = value;
  for (const p of path) {
    if (!isObject(v) || !Object.hasOwn(v, p)) return undefined;
    v = v[p];
  }
  return v;
}

function setPath(target: Record<string, unknown>, path: string[], value: unknown): void {
  let o = target;
  for (let i = 0; i < path.length - 1; i++) {
    const k = path[i] as string;
    let next = Object.hasOwn(o, k) ? o[k] : undefined;
    if (!isObject(next)) {
      next = {};
      Object.defineProperty(o, k, { value: next, enumerable: true, writable: true, configurable: true });
    }
    o = next as Record<string, unknown>;
  }
  Object.defineProperty(o, path[path.length - 1] as string, {
    value,
    enumerable: true,
    writable: true,
    configurable: true,
  });
}

function project(value: unknown, fields: string[][], groupBy: string[] | undefined): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const path of groupBy ? [groupBy, ...fields] : fields) {
    const v = getPath(value, path);
    if (v !== undefined) setPath(out, path, v);
  }
  return out;
}

// --- time windows

const UNIT_MS = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 7 * 86_400_000 } as const;
/** 1970-01-05 was a Monday: weeks start on Mondays. */
const MONDAY_MS = 4 * 86_400_000;

class Zone {
  private readonly format: Intl.DateTimeFormat;
  private readonly offsets = new Map<number, number>();
  constructor(tz: string) {
    this.format = new Intl.DateTimeFormat('en-US', {
      timeZone: tz,
      hourCycle: 'h23',
      year: 'numeric',
      month: 'numeric',
      day: 'numeric',
      hour: 'numeric',
      minute: 'numeric',
      second: 'numeric',
    });
  }
  /** ms to add to a UTC instant to get the local wall-clock time (cached per hour). */
  offset(ts: number): number {
    const hour = Math.floor(ts / 3_600_000);
    let off = this.offsets.get(hour);
    if (off === undefined) {
      const at = hour * 3_600_000;
      const parts: Record<string, number> = {};
      for (const p of this.format.formatToParts(new Date(at)))
        if (p.type !== 'literal') parts[p.type] = Number(p.value);
      const local = Date.UTC(
        parts.year as number,
        (parts.month as number) - 1,
        parts.day as number,
        parts.hour as number,
        parts.minute as number,
        parts.second as number,
      );
      off = local - at;
      if (this.offsets.size > 100_000) this.offsets.clear();
      this.offsets.set(hour, off);
    }
    return off;
  }
  /** The UTC instant of a local wall-clock time (right but for the hour a DST change skips). */
  utc(local: number, near: number): number {
    return local - this.offset(local - this.offset(near));
  }
}

/** The start of the window holding `ts`. */
function windowStart(ts: number, agg: NonNullable<BucketQuery['agg']>, zone: Zone): number {
  const { n, unit } = agg;
  if (unit === 's' || unit === 'm' || unit === 'h') {
    const size = n * UNIT_MS[unit];
    return Math.floor(ts / size) * size;
  }
  const local = ts + zone.offset(ts);
  if (unit === 'd' || unit === 'w') {
    const size = n * UNIT_MS[unit];
    const shift = unit === 'w' ? MONDAY_MS : 0;
    return zone.utc(Math.floor((local - shift) / size) * size + shift, ts);
  }
  const d = new Date(local);
  const months = d.getUTCFullYear() * 12 + d.getUTCMonth();
  const per = unit === 'y' ? 12 * n : n;
  const first = Math.floor(months / per) * per;
  return zone.utc(Date.UTC(Math.floor(first / 12), first % 12, 1), ts);
}

// --- reducers

class Reducer {
  count = 0;
  sum = 0;
  mean = 0;
  m2 = 0;
  min = Number.POSITIVE_INFINITY;
  max = Number.NEGATIVE_INFINITY;
  first: unknown;
  last: unknown;
  values: number[] | undefined;

  constructor(keep: boolean) {
    if (keep) this.values = [];
  }

  add(v: unknown, numeric: boolean): void {
    if (this.count === 0) this.first = v;
    this.last = v;
    this.count++;
    if (!numeric) return;
    const x = v as number;
    this.sum += x;
    const d = x - this.mean;
    this.mean += d / this.count;
    this.m2 += d * (x - this.mean);
    if (x < this.min) this.min = x;
    if (x > this.max) this.max = x;
    this.values?.push(x);
  }

  result(type: AggType): unknown {
    switch (type) {
      case 'count':
        return this.count;
      case 'first':
        return this.first;
      case 'last':
        return this.last;
      case 'mean':
      case 'avg':
        return this.mean;
      case 'sum':
        return this.sum;
      case 'min':
        return this.min;
      case 'max':
        return this.max;
      case 'spread':
        return this.max - this.min;
      case 'stddev':
        return this.count > 1 ? Math.sqrt(this.m2 / (this.count - 1)) : undefined;
      case 'median': {
        const v = (this.values as number[]).sort((a, b) => a - b);
        const mid = v.length >> 1;
        return v.length % 2 === 1 ? v[mid] : ((v[mid - 1] as number) + (v[mid] as number)) / 2;
      }
      case 'mode': {
        const counts = new Map<number, number>();
        let best: number | undefined;
        let bestCount = 0;
        for (const x of this.values as number[]) {
          const c = (counts.get(x) ?? 0) + 1;
          counts.set(x, c);
          if (c > bestCount || (c === bestCount && x < (best as number))) {
            best = x;
            bestCount = c;
          }
        }
        return best;
      }
    }
  }
}

/** One output row being aggregated: a reducer per leaf path of the records. */
class Bucket {
  readonly leaves = new Map<string, { path: string[]; r: Reducer }>();
  firstTs = Number.POSITIVE_INFINITY;
  constructor(readonly groupValue: unknown) {}
}

/** Numeric (and, for count/first/last, any scalar) leaves of a record. */
function forEachLeaf(
  value: unknown,
  path: string[],
  visit: (path: string[], v: unknown) => void,
  depth = 0,
): void {
  if (isObject(value)) {
    if (depth > 64) return;
    for (const k of Object.keys(value)) forEachLeaf(value[k], [...path, k], visit, depth + 1);
    return;
  }
  if (value === null || Array.isArray(value)) return;
  visit(path, value);
}

// --- the scan

async function scan(
  store: BucketStore,
  username: string,
  bucket: string,
  q: BucketQuery,
  visit: (r: StoredRecord) => boolean,
): Promise<void> {
  let min = q.minTs ?? 0;
  let max = q.maxTs ?? MAX_TS;
  let scanned = 0;
  for (;;) {
    const page = store.read(username, bucket, { items: PAGE, minTs: min, maxTs: max, sort: q.sort });
    for (const r of page) {
      scanned++;
      if (!visit(r)) return;
    }
    if (page.length < PAGE) return;
    if (scanned >= MAX_SCAN)
      throw new QueryError(
        400,
        'range_too_large',
        `this query would read more than ${MAX_SCAN} records: narrow the time range (min_ts, max_ts)`,
      );
    const last = (page[page.length - 1] as StoredRecord).ts;
    if (q.sort === 'desc') max = last - 1;
    else min = last + 1;
    if (min > max) return;
    await new Promise((resolve) => setImmediate(resolve));
  }
}

/**
 * Runs a query that is not a plain read (see isPlain): rows in `q.sort` order, at most
 * `q.items`. Throws QueryError (range too large, answer too large) or BucketError.
 */
export async function runQuery(
  store: BucketStore,
  username: string,
  bucket: string,
  q: BucketQuery,
): Promise<QueryRow[]> {
  // A record of the device names it in its `device` field (parsed only when it may).
  const keepsDevice = (r: StoredRecord): { keep: boolean; value?: unknown } => {
    if (!q.device || q.device.all) return { keep: true };
    if (!r.data.includes('"device"')) return { keep: false };
    const value: unknown = JSON.parse(r.data);
    return { keep: isObject(value) && value.device === q.device.id, value };
  };
  let bytes = 0;
  const budget = (text: string) => {
    bytes += text.length + 20;
    if (bytes > MAX_ANSWER_BYTES)
      throw new QueryError(
        413,
        'response_too_large',
        'the answer would be too large: ask for fewer items or fields',
      );
  };

  // Records (of the device), with the chosen fields, and no grouping or aggregation.
  if (!q.groupBy && !q.aggType) {
    const rows: QueryRow[] = [];
    await scan(store, username, bucket, q, (r) => {
      const { keep, value } = keepsDevice(r);
      if (!keep) return true;
      const data = q.fields
        ? JSON.stringify(project(value === undefined ? JSON.parse(r.data) : value, q.fields, undefined))
        : r.data;
      budget(data);
      rows.push({ ts: r.ts, data });
      return rows.length < q.items;
    });
    return rows;
  }

  // One row per group: its first record in scan order (newest first unless sort=asc).
  if (!q.aggType) {
    const groups = new Map<string, QueryRow>();
    await scan(store, username, bucket, q, (r) => {
      const { keep, value } = keepsDevice(r);
      if (!keep) return true;
      const parsed = value === undefined ? JSON.parse(r.data) : value;
      const key = JSON.stringify(getPath(parsed, q.groupBy as string[]) ?? null);
      if (groups.has(key)) return true;
      const data = q.fields ? JSON.stringify(project(parsed, q.fields, q.groupBy)) : r.data;
      budget(key);
      budget(data);
      groups.set(key, { ts: r.ts, data });
      return true;
    });
    return order([...groups.values()], q);
  }

  // Aggregation: per group (if any) and window (if any), each leaf reduced.
  const aggType = q.aggType;
  const keep = aggType === 'median' || aggType === 'mode';
  const numericOnly = aggType !== 'count' && aggType !== 'first' && aggType !== 'last';
  const zone = new Zone(q.tz ?? 'UTC');
  const buckets = new Map<string, Bucket>();
  let kept = 0;
  let reducers = 0;
  await scan(store, username, bucket, { ...q, sort: 'asc' }, (r) => {
    const { keep: mine, value } = keepsDevice(r);
    if (!mine) return true;
    let parsed = value === undefined ? JSON.parse(r.data) : value;
    const groupValue = q.groupBy ? (getPath(parsed, q.groupBy) ?? null) : undefined;
    if (q.fields) parsed = project(parsed, q.fields, undefined);
    const start = q.agg ? windowStart(r.ts, q.agg, zone) : 0;
    const key = `${start}\u0000${q.groupBy ? JSON.stringify(groupValue) : ''}`;
    let b = buckets.get(key);
    if (!b) {
      budget(key); // group values held in memory count as answer (they are in it)
      b = new Bucket(groupValue);
      buckets.set(key, b);
      if (buckets.size > MAX_SCAN)
        throw new QueryError(400, 'range_too_large', 'too many windows: use a larger agg');
    }
    if (r.ts < b.firstTs) b.firstTs = q.agg ? start : r.ts;
    const bucketRef = b;
    forEachLeaf(isObject(parsed) ? parsed : { value: parsed }, [], (path, v) => {
      // The record's own timestamp and the group's field are not aggregated.
      if (path.length === 1 && path[0] === 'ts') return;
      if (q.groupBy && path.length === q.groupBy.length && path.every((p, i) => p === q.groupBy?.[i])) return;
      const numeric = typeof v === 'number' && Number.isFinite(v);
      if (numericOnly && !numeric) return;
      const k = path.join('\u0000');
      let leaf = bucketRef.leaves.get(k);
      if (!leaf) {
        if (++reducers > MAX_REDUCERS)
          throw new QueryError(
            400,
            'range_too_large',
            'too many fields × windows × groups to aggregate: use a larger agg, fields or a narrower range',
          );
        leaf = { path, r: new Reducer(keep) };
        bucketRef.leaves.set(k, leaf);
      }
      leaf.r.add(v, numeric);
      if (keep && ++kept > MAX_KEPT_VALUES)
        throw new QueryError(
          400,
          'range_too_large',
          `${aggType} over more than ${MAX_KEPT_VALUES} values: narrow the time range`,
        );
    });
    return true;
  });
  const rows: QueryRow[] = [];
  for (const b of buckets.values()) {
    const out: Record<string, unknown> = {};
    if (q.groupBy) setPath(out, q.groupBy, b.groupValue);
    for (const { path, r } of b.leaves.values()) {
      const v = r.result(aggType);
      if (v !== undefined && !(typeof v === 'number' && !Number.isFinite(v))) setPath(out, path, v);
    }
    const data = JSON.stringify(out);
    budget(data);
    rows.push({ ts: b.firstTs, data });
  }
  return order(rows, q);
}

function order(rows: QueryRow[], q: BucketQuery): QueryRow[] {
  rows.sort(q.sort === 'desc' ? (a, b) => b.ts - a.ts : (a, b) => a.ts - b.ts);
  return rows.slice(0, q.items);
}
