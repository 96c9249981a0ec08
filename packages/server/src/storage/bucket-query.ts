import { createHash } from 'node:crypto';
import { type BucketStore, MAX_RECORD_BYTES, MAX_TS, type StoredRecord } from './buckets.js';

/*
 * Bucket reads beyond "the last N records" (Thinger.io clients ask for them): records of one
 * device, chosen fields, one record per group (`group_by`), and aggregation over time windows
 * (`agg`, `agg_type`, in a time zone `tz`). Records are scanned page by page through the store
 * (so records not yet compacted are seen as well), in pages bounded by records and by bytes,
 * yielding to the event loop between pages (and within one after every PAGE_BYTES parsed),
 * and never more than a bounded number of them: a query that would need more is refused
 * (narrow the time range) rather than answered from part of the data. What an answer holds
 * in memory while it is built (records, groups, reducers and the values first/last keep) is
 * charged to the answer's budget as it is kept: a query that would hold too much is refused
 * (413) as soon as it does.
 */

/** Records one query may scan. */
export const MAX_SCAN = 100_000;
/** JSON bytes one answer may hold. */
export const MAX_ANSWER_BYTES = 32 * 1024 * 1024;
/** Values kept for medians and modes (all other reducers keep running totals). */
const MAX_KEPT_VALUES = 2_000_000;
/** Reducers (fields × windows × groups) one aggregation may hold. */
const MAX_REDUCERS = 500_000;
/** Records in one page of a scan (at most). */
const PAGE = 1000;
/** Record text one page of a scan aims at (pages shrink for large records), and parsed between yields. */
const PAGE_BYTES = 8 * 1024 * 1024;
/** Records in the first page of a scan: PAGE_BYTES of the largest records. */
const FIRST_PAGE = Math.max(1, Math.floor(PAGE_BYTES / MAX_RECORD_BYTES));
/** Bytes charged for each value and reducer kept, beside its text. */
const KEPT_OVERHEAD = 16;

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

/**
 * A Map key for a group: long texts by their digest. (V8 hashes a long string by its length
 * alone: long group values of one length would all collide, each lookup comparing them all.)
 */
function groupKey(text: string): string {
  // JSON text and window keys never start with "#".
  return text.length <= 1024 ? text : `#${createHash('sha256').update(text).digest('base64')}`;
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

/** 00:00 UTC of the first day of a month of any year (Date.UTC reads years 0–99 as 1900–1999). */
function monthStart(year: number, month: number): number {
  const d = new Date(0);
  d.setUTCFullYear(year, month, 1);
  return d.getTime();
}

/**
 * The start of the window holding `ts`, or 0 for a window that starts before 1970 (large
 * windows, counted from year 0 or from 1970 in a time zone ahead of UTC): no record is older.
 */
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
    return Math.max(0, zone.utc(Math.floor((local - shift) / size) * size + shift, ts));
  }
  const d = new Date(local);
  const months = d.getUTCFullYear() * 12 + d.getUTCMonth();
  const per = unit === 'y' ? 12 * n : n;
  const first = Math.floor(months / per) * per;
  const start = monthStart(Math.floor(first / 12), first % 12);
  // A month before 1970 (local time) starts before 1970 in UTC too.
  return start < 0 ? 0 : Math.max(0, zone.utc(start, ts));
}

// --- reducers

/** Bytes a kept value is charged: its text (strings), else a number's worth. */
function keptSize(v: unknown): number {
  return (typeof v === 'string' ? v.length : 8) + KEPT_OVERHEAD;
}

class Reducer {
  count = 0;
  sum = 0;
  mean = 0;
  m2 = 0;
  min = Number.POSITIVE_INFINITY;
  max = Number.NEGATIVE_INFINITY;
  /** The first / last value (kept only for agg_type first / last). */
  first: unknown;
  last: unknown;
  values: number[] | undefined;

  constructor(private readonly type: AggType) {
    if (type === 'median' || type === 'mode') this.values = [];
  }

  /** Adds a value; returns the change in bytes this reducer keeps (first / last values). */
  add(v: unknown, numeric: boolean): number {
    let kept = 0;
    if (this.type === 'first' && this.count === 0) {
      this.first = v;
      kept = keptSize(v);
    } else if (this.type === 'last') {
      kept = keptSize(v) - (this.count === 0 ? 0 : keptSize(this.last));
      this.last = v;
    }
    this.count++;
    if (!numeric) return kept;
    const x = v as number;
    this.sum += x;
    const d = x - this.mean;
    this.mean += d / this.count;
    this.m2 += d * (x - this.mean);
    if (x < this.min) this.min = x;
    if (x > this.max) this.max = x;
    this.values?.push(x);
    return kept;
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
  /** Bytes charged to the answer for this row while it is aggregated. */
  held = 0;
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

const nextTurn = () => new Promise((resolve) => setImmediate(resolve));

async function scan(
  store: BucketStore,
  username: string,
  bucket: string,
  q: BucketQuery,
  visit: (r: StoredRecord) => boolean,
  stats: QueryStats,
): Promise<void> {
  let min = q.minTs ?? 0;
  let max = q.maxTs ?? MAX_TS;
  let scanned = 0;
  // Pages start with as many of the largest records as PAGE_BYTES holds, and grow (to PAGE)
  // as long as the records seen are smaller.
  let items = FIRST_PAGE;
  let longest = 0;
  let parsed = 0;
  for (;;) {
    const page = store.read(username, bucket, { items, minTs: min, maxTs: max, sort: q.sort });
    stats.pages++;
    for (const r of page) {
      scanned++;
      stats.records++;
      if (r.data.length > longest) longest = r.data.length;
      parsed += r.data.length;
      if (!visit(r)) return;
      if (parsed >= PAGE_BYTES) {
        parsed = 0;
        await nextTurn();
      }
    }
    if (page.length < items) return;
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
    items = Math.max(FIRST_PAGE, Math.min(PAGE, items * 2, Math.floor(PAGE_BYTES / Math.max(1, longest))));
    await nextTurn();
  }
}

/** What a query did (tests and tools): pages and records read, most bytes held for the answer. */
export interface QueryStats {
  pages: number;
  records: number;
  peakBytes: number;
}

export interface QueryOptions {
  /** Bytes the answer (and what is kept to build it) may hold (default MAX_ANSWER_BYTES). */
  maxAnswerBytes?: number;
  /** Filled in as the query runs. */
  stats?: QueryStats;
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
  options: QueryOptions = {},
): Promise<QueryRow[]> {
  const maxBytes = options.maxAnswerBytes ?? MAX_ANSWER_BYTES;
  const stats = options.stats ?? { pages: 0, records: 0, peakBytes: 0 };
  // A record of the device names it in its `device` field (parsed only when it may).
  const keepsDevice = (r: StoredRecord): { keep: boolean; value?: unknown } => {
    if (!q.device || q.device.all) return { keep: true };
    if (!r.data.includes('"device"')) return { keep: false };
    const value: unknown = JSON.parse(r.data);
    return { keep: isObject(value) && value.device === q.device.id, value };
  };
  let bytes = 0;
  /** Charges `n` bytes (negative: released) to the answer. */
  const charge = (n: number) => {
    bytes += n;
    if (bytes > stats.peakBytes) stats.peakBytes = bytes;
    if (bytes > maxBytes)
      throw new QueryError(
        413,
        'response_too_large',
        'the answer would be too large: ask for fewer items or fields, a larger agg or a narrower time range',
      );
  };
  const budget = (text: string) => charge(text.length + 20);
  const records = (query: BucketQuery, visit: (r: StoredRecord) => boolean) =>
    scan(store, username, bucket, query, visit, stats);

  // Records (of the device), with the chosen fields, and no grouping or aggregation.
  if (!q.groupBy && !q.aggType) {
    const rows: QueryRow[] = [];
    await records(q, (r) => {
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
    await records(q, (r) => {
      const { keep, value } = keepsDevice(r);
      if (!keep) return true;
      const parsed = value === undefined ? JSON.parse(r.data) : value;
      const group = JSON.stringify(getPath(parsed, q.groupBy as string[]) ?? null);
      const key = groupKey(group);
      if (groups.has(key)) return true;
      const data = q.fields ? JSON.stringify(project(parsed, q.fields, q.groupBy)) : r.data;
      budget(group);
      budget(data);
      groups.set(key, { ts: r.ts, data });
      return true;
    });
    return order([...groups.values()], q);
  }

  // Aggregation: per group (if any) and window (if any), each leaf reduced.
  const aggType = q.aggType;
  const keep = aggType === 'median' || aggType === 'mode';
  /** Charges what a row being aggregated keeps (released when the row is written out). */
  const hold = (b: Bucket, n: number) => {
    b.held += n;
    charge(n);
  };
  const numericOnly = aggType !== 'count' && aggType !== 'first' && aggType !== 'last';
  const zone = new Zone(q.tz ?? 'UTC');
  const buckets = new Map<string, Bucket>();
  let kept = 0;
  let reducers = 0;
  await records({ ...q, sort: 'asc' }, (r) => {
    const { keep: mine, value } = keepsDevice(r);
    if (!mine) return true;
    let parsed = value === undefined ? JSON.parse(r.data) : value;
    const groupValue = q.groupBy ? (getPath(parsed, q.groupBy) ?? null) : undefined;
    if (q.fields) parsed = project(parsed, q.fields, undefined);
    const start = q.agg ? windowStart(r.ts, q.agg, zone) : 0;
    const group = `${start}\u0000${q.groupBy ? JSON.stringify(groupValue) : ''}`;
    const key = groupKey(group);
    let b = buckets.get(key);
    if (!b) {
      b = new Bucket(groupValue);
      hold(b, group.length + 20); // group values held in memory count as answer (they are in it)
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
        leaf = { path, r: new Reducer(aggType) };
        bucketRef.leaves.set(k, leaf);
        hold(bucketRef, k.length + KEPT_OVERHEAD);
      }
      const more = leaf.r.add(v, numeric);
      if (more !== 0) hold(bucketRef, more);
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
    // The row's text replaces what was kept to build it.
    charge(-b.held);
    b.held = 0;
    budget(data);
    rows.push({ ts: b.firstTs, data });
  }
  return order(rows, q);
}

function order(rows: QueryRow[], q: BucketQuery): QueryRow[] {
  rows.sort(q.sort === 'desc' ? (a, b) => b.ts - a.ts : (a, b) => a.ts - b.ts);
  return rows.slice(0, q.items);
}
