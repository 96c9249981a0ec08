import { closeSync, fdatasync, fdatasyncSync, openSync } from 'node:fs';
import type { PsonValue } from '@iotmp/pson';
import { psonToJson } from '../api/json.js';
import type { Db } from './database.js';

/**
 * Data buckets: time series of JSON records per user, written by devices (server resource
 * code 5), by the API, or sampled from a device resource.
 *
 * Storage (SQLite, the accounts database):
 * - `buckets`: one row per bucket; kept in memory as well (writes look buckets up there).
 * - `bucket_log`: every group commit first appends one row holding all its records, in
 *   arrival order. One insert per commit, on the last pages of one B-tree: a commit of a
 *   thousand records from a thousand devices writes a few pages, not one page per bucket.
 * - `bucket_data (bucket_id, ts) WITHOUT ROWID`: records keyed for reads. A compaction moves
 *   the log into it in the background: sorted by bucket and time, in bounded transactions,
 *   so each page is written once for many records. Reads merge the table with the records
 *   still in the log (held in memory, {@link BucketStore} `pending`).
 *
 * Records are stored as JSON text: reads splice it into the answer without decoding, and API
 * writes (already JSON) cost one JSON.stringify. Values from devices become JSON first:
 * binaries become base64 strings, integers beyond 2^53 decimal strings (as in the REST API).
 *
 * Durability (group commit): {@link BucketStore.write} queues its records; every queued record
 * is committed in one transaction at the next `setImmediate` (or at once when many are
 * queued), and the write resolves only once that transaction is on disk. With the database in
 * WAL mode at `synchronous = FULL` (storage/database.ts), the store commits its own
 * transactions at NORMAL and then calls `fdatasync` on the WAL file through libuv's thread
 * pool: the same guarantee as FULL (the WAL frames of the commit are on stable storage before
 * the write is acknowledged) without blocking the event loop for the milliseconds an fsync
 * takes here. Up to {@link MAX_SYNCS} fdatasyncs overlap; commits made while they are all
 * running wait for the next one (pipelined group commit).
 */

export type BucketErrorCode =
  | 'bucket_not_found'
  | 'bucket_exists'
  | 'bucket_disabled'
  | 'bucket_not_writable'
  | 'invalid_bucket'
  | 'invalid_record'
  | 'record_too_large'
  | 'too_many_records'
  | 'too_many_buckets'
  | 'unavailable';

const STATUS: Record<BucketErrorCode, number> = {
  bucket_not_found: 404,
  bucket_exists: 409,
  bucket_disabled: 409,
  bucket_not_writable: 409,
  invalid_bucket: 400,
  invalid_record: 400,
  record_too_large: 413,
  too_many_records: 400,
  too_many_buckets: 409,
  unavailable: 503,
};

/** Why a bucket operation was refused; `status` is the matching HTTP status. */
export class BucketError extends Error {
  override name = 'BucketError';
  readonly status: number;
  constructor(
    readonly code: BucketErrorCode,
    message: string,
  ) {
    super(message);
    this.status = STATUS[code];
  }
}

export type BucketSource = 'write' | 'device';
export const RETENTION_UNITS = ['minutes', 'hours', 'days', 'weeks', 'months', 'years'] as const;
export type RetentionUnit = (typeof RETENTION_UNITS)[number];
/** How long records are kept (by their `ts`): a month is 30 days, a year 365 days. */
export interface Retention {
  period: number;
  unit: RetentionUnit;
}
const UNIT_MS: Record<RetentionUnit, number> = {
  minutes: 60_000,
  hours: 3_600_000,
  days: 86_400_000,
  weeks: 7 * 86_400_000,
  months: 30 * 86_400_000,
  years: 365 * 86_400_000,
};
/** Longest retention accepted (100 years). */
const MAX_RETENTION_MS = 100 * UNIT_MS.years;

/** A device-sourced bucket: a resource sampled every `interval` seconds, or the device's own stream events. */
export interface DeviceSourceConfig {
  device: string;
  resource: string;
  update: 'interval' | 'events';
  /** Seconds between samples (update "interval" only). */
  interval?: number;
}
export const MIN_SAMPLE_INTERVAL_S = 1;
export const MAX_SAMPLE_INTERVAL_S = 7 * 86_400;

/** A bucket list filter: text its id or name contains (any case), or a test of id and name. */
export type BucketMatch = string | ((bucket: string, name: string) => boolean);

export interface BucketRecord {
  readonly id: number;
  readonly username: string;
  readonly bucket: string;
  readonly name: string;
  readonly description: string;
  readonly enabled: boolean;
  readonly source: BucketSource;
  /** `{}` for "write" buckets. */
  readonly config: DeviceSourceConfig | Record<string, never>;
  readonly retention: Retention | null;
  readonly createdAt: number;
  readonly updatedAt: number;
}

export interface BucketInput {
  bucket: string;
  name?: string | undefined;
  description?: string | undefined;
  enabled?: boolean | undefined;
  source: BucketSource;
  config?: unknown;
  retention?: unknown;
}

export interface BucketPatch {
  name?: string | undefined;
  description?: string | undefined;
  enabled?: boolean | undefined;
  source?: BucketSource | undefined;
  config?: unknown;
  retention?: unknown;
}

export interface ReadQuery {
  /** At most this many records (1–1000). */
  items: number;
  minTs?: number | undefined;
  maxTs?: number | undefined;
  sort: 'asc' | 'desc';
}

/** A stored record: its timestamp and its value as JSON text. */
export interface StoredRecord {
  ts: number;
  data: string;
}

/** Largest record, as JSON text (bytes). */
export const MAX_RECORD_BYTES = 64 * 1024;
/** Most buckets of one user. */
export const MAX_BUCKETS_PER_USER = 10_000;
/** Most records in one write. */
export const MAX_RECORDS_PER_WRITE = 1000;
/** Latest timestamp accepted (the largest JavaScript Date). */
export const MAX_TS = 8_640_000_000_000_000;
/** Deepest nesting of a record. */
const MAX_DEPTH = 64;
/** Rows per INSERT statement in the compaction. */
const ROWS_PER_INSERT = 64;
/** fdatasyncs of the WAL running at once (they run on libuv's thread pool, of 4 by default). */
const MAX_SYNCS = 2;

export interface BucketStoreOptions {
  /** Wall clock in ms (tests inject one). */
  now?: () => number;
  /** Queued records that make a flush happen at once instead of at the next setImmediate. */
  flushAt?: number;
  /** Log records that start a compaction at once. */
  compactAt?: number;
  /** Compaction runs at least this often while the log is not empty (ms). */
  compactIntervalMs?: number;
  /** Rows per compaction transaction (bounds how long one blocks the event loop). */
  compactChunk?: number;
  /** Retention sweep period (ms); 0 = only when `sweep()` is called. */
  sweepIntervalMs?: number;
  /** Rows per sweep transaction. */
  sweepBatch?: number;
  /**
   * Records waiting to be made durable past which writes are refused ("unavailable", 503)
   * instead of queued: bounds memory when devices write faster than the disk takes.
   */
  maxUnacknowledged?: number;
  /** Buckets one user may have (default MAX_BUCKETS_PER_USER). */
  maxBucketsPerUser?: number;
  /** After each durable group commit: records in it, seconds from commit start to durable. */
  onCommit?: (records: number, seconds: number) => void;
  /**
   * Asked on every accepted write: a function to receive its records (timestamp, value),
   * or undefined when nobody listens (the server's `bucket_write` events). Called as the
   * records are queued, before they are durable.
   */
  onWrite?: (username: string, bucket: string) => ((ts: number, data: unknown) => void) | undefined;
  onWarning?: (message: string, details?: Record<string, unknown>) => void;
}

interface BucketState {
  record: BucketRecord;
  retentionMs: number;
  /** Last server-assigned timestamp (they are unique per bucket); undefined until first needed. */
  lastAutoTs: number | undefined;
}

/** A record committed to the log and not yet moved to bucket_data. */
interface PendingRecord {
  readonly bucketId: number;
  readonly ts: number;
  readonly data: string;
  seq: number;
}

interface CompactionJob {
  readonly rows: PendingRecord[];
  next: number;
  /** The last log row it covers. */
  readonly upto: number;
}

interface Waiter {
  resolve(n: number): void;
  reject(err: Error): void;
  count: number;
}

interface BucketRow {
  id: number;
  username: string;
  bucket: string;
  name: string;
  description: string;
  enabled: number;
  source: string;
  config: string;
  retention: string | null;
  created_at: number;
  updated_at: number;
}

const EMPTY_CONFIG: Record<string, never> = Object.freeze({}) as Record<string, never>;

function toRecord(row: BucketRow): BucketRecord {
  return {
    id: row.id,
    username: row.username,
    bucket: row.bucket,
    name: row.name,
    description: row.description,
    enabled: row.enabled === 1,
    source: row.source === 'device' ? 'device' : 'write',
    config: row.source === 'device' ? (JSON.parse(row.config) as DeviceSourceConfig) : EMPTY_CONFIG,
    retention: row.retention === null ? null : (JSON.parse(row.retention) as Retention),
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  };
}

function retentionMs(r: Retention | null): number {
  return r ? r.period * UNIT_MS[r.unit] : 0;
}

const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v);

/** Validates a retention: null/undefined = keep forever, or `{period, unit}`. */
export function parseRetention(value: unknown): Retention | null {
  if (value === undefined || value === null) return null;
  if (!isObject(value)) throw new BucketError('invalid_bucket', 'retention must be {"period": n, "unit": …}');
  const { period, unit } = value;
  for (const k of Object.keys(value))
    if (k !== 'period' && k !== 'unit')
      throw new BucketError('invalid_bucket', `retention has an unknown field "${k}"`);
  if (!RETENTION_UNITS.includes(unit as RetentionUnit))
    throw new BucketError('invalid_bucket', `retention unit must be one of ${RETENTION_UNITS.join(', ')}`);
  if (typeof period !== 'number' || !Number.isInteger(period) || period < 1)
    throw new BucketError('invalid_bucket', 'retention period must be a positive integer');
  const r: Retention = { period, unit: unit as RetentionUnit };
  if (retentionMs(r) > MAX_RETENTION_MS)
    throw new BucketError('invalid_bucket', 'retention is limited to 100 years');
  return r;
}

const ID_RE = /^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$/;

/** Validates the config of a bucket of this source ("write": nothing; "device": what to sample). */
export function parseConfig(
  source: BucketSource,
  value: unknown,
): DeviceSourceConfig | Record<string, never> {
  if (source === 'write') {
    if (value === undefined || value === null || (isObject(value) && Object.keys(value).length === 0))
      return EMPTY_CONFIG;
    throw new BucketError('invalid_bucket', 'a "write" bucket takes no config');
  }
  if (!isObject(value))
    throw new BucketError(
      'invalid_bucket',
      'a "device" bucket needs config {"device", "resource", "interval"} or {"device", "resource", "update": "events"}',
    );
  for (const k of Object.keys(value))
    if (k !== 'device' && k !== 'resource' && k !== 'update' && k !== 'interval')
      throw new BucketError('invalid_bucket', `config has an unknown field "${k}"`);
  const { device, resource, interval } = value;
  if (typeof device !== 'string' || !ID_RE.test(device))
    throw new BucketError('invalid_bucket', 'config.device must be a device id');
  if (typeof resource !== 'string' || resource.length === 0 || resource.length > 256)
    throw new BucketError('invalid_bucket', 'config.resource must be a resource name (1–256 characters)');
  const update = value.update ?? 'interval';
  if (update !== 'interval' && update !== 'events')
    throw new BucketError('invalid_bucket', 'config.update must be "interval" or "events"');
  if (update === 'events') {
    if (interval !== undefined)
      throw new BucketError('invalid_bucket', 'config.interval goes with update "interval" only');
    return { device, resource, update };
  }
  if (
    typeof interval !== 'number' ||
    !Number.isInteger(interval) ||
    interval < MIN_SAMPLE_INTERVAL_S ||
    interval > MAX_SAMPLE_INTERVAL_S
  )
    throw new BucketError(
      'invalid_bucket',
      `config.interval must be an integer number of seconds (${MIN_SAMPLE_INTERVAL_S}–${MAX_SAMPLE_INTERVAL_S})`,
    );
  return { device, resource, update, interval };
}

/**
 * True when JSON.stringify(value) keeps the value as it is (plain JSON): no bigint, binary,
 * Map, undefined or non-finite number anywhere. Throws when nested deeper than MAX_DEPTH.
 */
function isPlainJson(value: unknown, depth: number): boolean {
  switch (typeof value) {
    case 'string':
    case 'boolean':
      return true;
    case 'number':
      return Number.isFinite(value);
    case 'object':
      break;
    default:
      return false;
  }
  if (value === null) return true;
  if (depth >= MAX_DEPTH)
    throw new BucketError('invalid_record', `a record may be nested at most ${MAX_DEPTH} levels deep`);
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) if (!isPlainJson(value[i], depth + 1)) return false;
    return true;
  }
  const proto = Object.getPrototypeOf(value);
  if (proto !== Object.prototype && proto !== null) return false;
  for (const k in value) if (!isPlainJson((value as Record<string, unknown>)[k], depth + 1)) return false;
  return true;
}

/** A value as stored JSON text, size-checked. */
function toJsonText(value: unknown): string {
  const json = JSON.stringify(isPlainJson(value, 0) ? value : psonToJson(value as PsonValue));
  // Bytes ≤ 3 × UTF-16 length: count them only when that bound is over the limit.
  if (json.length * 3 > MAX_RECORD_BYTES && Buffer.byteLength(json) > MAX_RECORD_BYTES)
    throw new BucketError('record_too_large', `a record is limited to ${MAX_RECORD_BYTES} bytes of JSON`);
  return json;
}

/** The record's own `ts` (ms since 1970), undefined when it has none. */
function explicitTs(record: Record<string, unknown>): number | undefined {
  if (!Object.hasOwn(record, 'ts')) return undefined;
  let ts = record.ts;
  if (typeof ts === 'bigint' && ts >= 0n && ts <= BigInt(MAX_TS)) ts = Number(ts);
  if (typeof ts !== 'number' || !Number.isInteger(ts) || ts < 0 || ts > MAX_TS)
    throw new BucketError(
      'invalid_record',
      `ts must be an integer number of milliseconds since 1970 (0–${MAX_TS}), got ${String(ts)}`,
    );
  return ts;
}

function isRecordObject(v: unknown): v is Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v) || v instanceof Uint8Array) return false;
  return !(v instanceof Map);
}

const BUSY = new BucketError(
  'unavailable',
  'bucket storage is busy: too many records are waiting to be stored; retry later',
);

const immediate = () => new Promise<void>((resolve) => setImmediate(resolve));

/**
 * A group commit's records as one log row: per record `bucketId,ts,length:json` (length in
 * UTF-16 code units, so that the JSON text needs no escaping).
 */
function encodeLogRow(records: PendingRecord[]): string {
  let out = '';
  for (let i = 0; i < records.length; i++) {
    const r = records[i] as PendingRecord;
    out += `${r.bucketId},${r.ts},${r.data.length}:${r.data}`;
  }
  return out;
}

function* decodeLogRow(text: string, seq: number): Generator<PendingRecord> {
  let p = 0;
  while (p < text.length) {
    const c1 = text.indexOf(',', p);
    const c2 = text.indexOf(',', c1 + 1);
    const colon = text.indexOf(':', c2 + 1);
    const bucketId = Number(text.slice(p, c1));
    const ts = Number(text.slice(c1 + 1, c2));
    const length = Number(text.slice(c2 + 1, colon));
    if (
      c1 < 0 ||
      c2 < 0 ||
      colon < 0 ||
      !Number.isInteger(bucketId) ||
      !Number.isInteger(ts) ||
      !(length >= 0)
    )
      throw new Error(`bucket log row ${seq} is damaged at ${p}`);
    p = colon + 1 + length;
    yield { bucketId, ts, data: text.slice(colon + 1, p), seq };
  }
}

/** Buckets and their records: CRUD, durable group-committed writes, reads, retention. */
export class BucketStore {
  private readonly st;
  private readonly tx: (work: () => void) => void;
  private readonly insertArgs: unknown[] = new Array(ROWS_PER_INSERT * 3);
  private readonly now: () => number;
  private readonly flushAt: number;
  private readonly compactAt: number;
  private readonly compactChunk: number;
  private readonly sweepBatch: number;
  /** By user, then bucket (no key strings to build on the write path). */
  private readonly byUser = new Map<string, Map<string, BucketState>>();
  private readonly byId = new Map<number, BucketState>();
  private readonly listeners = new Set<(record: BucketRecord, removed: boolean) => void>();

  // --- group commit
  private queue: PendingRecord[] = [];
  private waiters: Waiter[] = [];
  private flushScheduled = false;
  /** Commits waiting for the next fdatasync of the WAL, and how many fdatasyncs are running. */
  private syncWaiters: Array<{ waiters: Waiter[]; records: number; started: number }> = [];
  private syncing = 0;
  /** fd of the WAL file (fdatasync'ed after relaxed commits); -1: commits are synchronous. */
  private walFd = -1;
  private readonly durableLevel: number;
  private readonly relaxed: boolean;

  // --- log and its in-memory mirror
  /** Seq of the last committed log row (one row per group commit). */
  private lastSeq = 0;
  /** Log rows with seq ≤ this have been moved (deleted from the log). */
  private logFloor = 0;
  /** Records per log row still in the log, oldest first. */
  private readonly logRows: Array<{ seq: number; records: number }> = [];
  private logCount = 0;
  /** Committed log records by bucket id and ts (the newest per ts). */
  private readonly pending = new Map<number, Map<number, PendingRecord>>();
  private compaction: Promise<void> | undefined;
  /** The compaction under way: its sorted records and how far it got. */
  private job: CompactionJob | undefined;
  private sweeping: Promise<{ expired: number; purged: number }> | undefined;
  private readonly timers: NodeJS.Timeout[] = [];
  private closed = false;

  /** Records acknowledged since start. */
  recordsWritten = 0;
  /** Records written and not yet acknowledged (queued, or committed and waiting for fdatasync). */
  unacknowledged = 0;
  private readonly maxUnacknowledged: number;
  private readonly maxBuckets: number;

  constructor(
    private readonly db: Db,
    private readonly options: BucketStoreOptions = {},
  ) {
    this.now = options.now ?? Date.now;
    this.flushAt = options.flushAt ?? 8192;
    this.compactAt = options.compactAt ?? 200_000;
    this.compactChunk = options.compactChunk ?? 2000;
    this.sweepBatch = options.sweepBatch ?? 5000;
    this.maxUnacknowledged = options.maxUnacknowledged ?? 200_000;
    this.maxBuckets = options.maxBucketsPerUser ?? MAX_BUCKETS_PER_USER;
    this.durableLevel = db.pragma('synchronous', { simple: true }) as number;
    this.st = {
      all: db.prepare('SELECT * FROM buckets ORDER BY id'),
      insert: db.prepare(
        `INSERT INTO buckets (username, bucket, name, description, enabled, source, config, retention, created_at, updated_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING *`,
      ),
      update: db.prepare(
        `UPDATE buckets SET name = ?, description = ?, enabled = ?, source = ?, config = ?, retention = ?, updated_at = ?
         WHERE id = ? RETURNING *`,
      ),
      delete: db.prepare('DELETE FROM buckets WHERE id = ?'),
      insertLog: db.prepare('INSERT INTO bucket_log (seq, records) VALUES (?, ?)'),
      loadLog: db.prepare('SELECT seq, records FROM bucket_log ORDER BY seq'),
      deleteLog: db.prepare('DELETE FROM bucket_log WHERE seq <= ?'),
      insertData: db.prepare('INSERT OR REPLACE INTO bucket_data (bucket_id, ts, data) VALUES (?, ?, ?)'),
      // Many rows per call: fewer crossings between JavaScript and SQLite.
      insertDataMany: db.prepare(
        `INSERT OR REPLACE INTO bucket_data (bucket_id, ts, data) VALUES ${Array(ROWS_PER_INSERT).fill('(?, ?, ?)').join(', ')}`,
      ),
      readDesc: db.prepare(
        'SELECT ts, data FROM bucket_data WHERE bucket_id = ? AND ts >= ? AND ts <= ? ORDER BY ts DESC LIMIT ?',
      ),
      readAsc: db.prepare(
        'SELECT ts, data FROM bucket_data WHERE bucket_id = ? AND ts >= ? AND ts <= ? ORDER BY ts ASC LIMIT ?',
      ),
      maxTsUpTo: db.prepare('SELECT max(ts) AS ts FROM bucket_data WHERE bucket_id = ? AND ts <= ?'),
      count: db.prepare('SELECT count(*) AS n FROM bucket_data WHERE bucket_id = ?'),
      // The ts of the n-th oldest row below a bound: the end of one bounded delete.
      nthOlder: db.prepare(
        'SELECT ts FROM bucket_data WHERE bucket_id = ? AND ts < ? ORDER BY ts LIMIT 1 OFFSET ?',
      ),
      deleteUpTo: db.prepare('DELETE FROM bucket_data WHERE bucket_id = ? AND ts <= ?'),
      purges: db.prepare('SELECT bucket_id FROM bucket_purges ORDER BY bucket_id'),
      purgeDone: db.prepare('DELETE FROM bucket_purges WHERE bucket_id = ?'),
      nthAny: db.prepare('SELECT ts FROM bucket_data WHERE bucket_id = ? ORDER BY ts LIMIT 1 OFFSET ?'),
      deleteAll: db.prepare('DELETE FROM bucket_data WHERE bucket_id = ?'),
      relax: db.prepare('PRAGMA synchronous = NORMAL'),
      restore: db.prepare(`PRAGMA synchronous = ${this.durableLevel}`),
    };
    this.tx = db.transaction((work: () => void) => work());

    for (const row of this.st.all.all() as BucketRow[]) this.remember(toRecord(row));
    this.loadLog();

    // Relaxed commits + fdatasync need a WAL file we can open; otherwise commit synchronously.
    const walMode = db.pragma('journal_mode', { simple: true }) === 'wal';
    if (walMode && this.durableLevel >= 2 && !db.memory) {
      try {
        this.walFd = openSync(`${db.name}-wal`, 'r');
      } catch (err) {
        options.onWarning?.('cannot open the WAL file: bucket commits will fsync on the event loop', {
          error: String(err),
        });
      }
    }
    this.relaxed = this.walFd >= 0;

    const compactEvery = options.compactIntervalMs ?? 1000;
    if (compactEvery > 0) {
      const t = setInterval(() => {
        if (this.lastSeq > this.logFloor) void this.compact();
      }, compactEvery);
      t.unref();
      this.timers.push(t);
    }
    const sweepEvery = options.sweepIntervalMs ?? 60_000;
    if (sweepEvery > 0) {
      const t = setInterval(() => void this.sweep().catch(() => undefined), sweepEvery);
      t.unref();
      this.timers.push(t);
    }
    // Left over from before a restart: moved and purged soon, in the background.
    if (this.lastSeq > this.logFloor) setImmediate(() => void this.compact());
  }

  // ------------------------------------------------------------------------------------
  // Buckets

  /** Called after every create, update and delete (`removed`). */
  onChange(listener: (record: BucketRecord, removed: boolean) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private emit(record: BucketRecord, removed: boolean): void {
    for (const l of this.listeners) {
      try {
        l(record, removed);
      } catch (err) {
        this.options.onWarning?.('bucket listener failed', { error: String(err) });
      }
    }
  }

  private lookup(username: string, bucket: string): BucketState | undefined {
    return this.byUser.get(username)?.get(bucket);
  }

  private remember(record: BucketRecord): BucketState {
    let buckets = this.byUser.get(record.username);
    if (!buckets) {
      buckets = new Map();
      this.byUser.set(record.username, buckets);
    }
    const old = buckets.get(record.bucket);
    const state: BucketState = {
      record,
      retentionMs: retentionMs(record.retention),
      lastAutoTs: old?.record.id === record.id ? old.lastAutoTs : undefined,
    };
    buckets.set(record.bucket, state);
    this.byId.set(record.id, state);
    return state;
  }

  get(username: string, bucket: string): BucketRecord | undefined {
    return this.lookup(username, bucket)?.record;
  }

  getById(id: number): BucketRecord | undefined {
    return this.byId.get(id)?.record;
  }

  /** Every bucket (of every user), oldest first. */
  all(): BucketRecord[] {
    return [...this.byId.values()].map((s) => s.record);
  }

  /**
   * A page of the user's buckets; with `match`, those whose id and name pass it (a string:
   * those whose id or name contains it, any case).
   */
  list(username: string, count: number, index: number, match?: BucketMatch): BucketRecord[] {
    return this.matching(username, match).slice(index, index + count);
  }

  countOf(username: string, match?: BucketMatch): number {
    return this.matching(username, match).length;
  }

  /**
   * A page of the user's buckets and how many there are in all, with `match` as for list():
   * each bucket is matched once.
   */
  page(
    username: string,
    count: number,
    index: number,
    match?: BucketMatch,
  ): { page: BucketRecord[]; total: number } {
    const all = this.matching(username, match);
    return { page: all.slice(index, index + count), total: all.length };
  }

  private matching(username: string, match: BucketMatch | undefined): BucketRecord[] {
    const all = this.ofUser(username);
    if (match === undefined) return all;
    if (typeof match === 'function') return all.filter((b) => match(b.bucket, b.name));
    const m = match.toLowerCase();
    return all.filter((b) => b.bucket.toLowerCase().includes(m) || b.name.toLowerCase().includes(m));
  }

  private ofUser(username: string): BucketRecord[] {
    const out: BucketRecord[] = [];
    for (const s of this.byUser.get(username)?.values() ?? []) out.push(s.record);
    return out.sort((a, b) => (a.bucket < b.bucket ? -1 : a.bucket > b.bucket ? 1 : 0));
  }

  create(username: string, input: BucketInput): BucketRecord {
    this.assertOpen();
    if (this.lookup(username, input.bucket))
      throw new BucketError('bucket_exists', `bucket ${input.bucket} already exists`);
    if ((this.byUser.get(username)?.size ?? 0) >= this.maxBuckets)
      throw new BucketError('too_many_buckets', `a user may have at most ${this.maxBuckets} buckets`);
    const config = parseConfig(input.source, input.config);
    const retention = parseRetention(input.retention);
    const now = this.now();
    const row = this.st.insert.get(
      username,
      input.bucket,
      input.name ?? input.bucket,
      input.description ?? '',
      input.enabled === false ? 0 : 1,
      input.source,
      JSON.stringify(config),
      retention ? JSON.stringify(retention) : null,
      now,
      now,
    ) as BucketRow;
    const record = this.remember(toRecord(row)).record;
    this.emit(record, false);
    return record;
  }

  update(username: string, bucket: string, patch: BucketPatch): BucketRecord {
    this.assertOpen();
    const state = this.lookup(username, bucket);
    if (!state) throw new BucketError('bucket_not_found', `bucket ${bucket} does not exist`);
    const old = state.record;
    const source = patch.source ?? old.source;
    const config = parseConfig(
      source,
      patch.config !== undefined ? patch.config : source === old.source ? old.config : undefined,
    );
    const retention = patch.retention !== undefined ? parseRetention(patch.retention) : old.retention;
    const row = this.st.update.get(
      patch.name ?? old.name,
      patch.description ?? old.description,
      (patch.enabled ?? old.enabled) ? 1 : 0,
      source,
      JSON.stringify(config),
      retention ? JSON.stringify(retention) : null,
      this.now(),
      old.id,
    ) as BucketRow;
    const record = this.remember(toRecord(row)).record;
    this.emit(record, false);
    return record;
  }

  /** Deletes a bucket; its records are removed in the background (bounded batches). */
  delete(username: string, bucket: string): boolean {
    this.assertOpen();
    const state = this.lookup(username, bucket);
    if (!state) return false;
    // The trigger buckets_purge queues its records for removal, in the same transaction.
    this.st.delete.run(state.record.id);
    const userBuckets = this.byUser.get(username);
    userBuckets?.delete(bucket);
    if (userBuckets?.size === 0) this.byUser.delete(username);
    this.byId.delete(state.record.id);
    // Its log records are skipped by the next compaction (the bucket id is gone, and never reused).
    this.pending.delete(state.record.id);
    this.emit(state.record, true);
    setImmediate(() => void this.sweep().catch(() => undefined));
    return true;
  }

  // ------------------------------------------------------------------------------------
  // Writes

  /**
   * Appends or replaces records of a "write" bucket; resolves (with the number of records)
   * once they are durably committed. `data` is one object or an array of 1–1000 objects.
   * A record's own integer `ts` (ms) is its timestamp and stays in the stored value;
   * without one it gets the server's time, made unique within the bucket (the previous
   * server-assigned ts + 1 when the clock has not moved on). A record whose ts exists
   * replaces the stored one. Binaries in device values are stored as base64 strings.
   */
  write(username: string, bucket: string, data: unknown): Promise<number> {
    try {
      const state = this.lookup(username, bucket);
      if (!state) throw new BucketError('bucket_not_found', `bucket ${bucket} does not exist`);
      const b = state.record;
      if (!b.enabled) throw new BucketError('bucket_disabled', `bucket ${bucket} is disabled`);
      if (b.source !== 'write')
        throw new BucketError(
          'bucket_not_writable',
          `bucket ${bucket} records device ${(b.config as DeviceSourceConfig).device}: it takes no writes`,
        );
      this.admit();
      if (Array.isArray(data)) {
        if (data.length === 0)
          throw new BucketError('invalid_record', 'an array of records may not be empty');
        if (data.length > MAX_RECORDS_PER_WRITE)
          throw new BucketError('too_many_records', `at most ${MAX_RECORDS_PER_WRITE} records per write`);
        // All or nothing: every record is checked before any is queued.
        const texts: string[] = new Array(data.length);
        const stamps: Array<number | undefined> = new Array(data.length);
        for (let i = 0; i < data.length; i++) {
          const r: unknown = data[i];
          if (!isRecordObject(r))
            throw new BucketError(
              'invalid_record',
              `record ${i} is not an object: a record is a JSON object`,
            );
          stamps[i] = explicitTs(r);
          texts[i] = toJsonText(r);
        }
        const now = this.now();
        const written = this.options.onWrite?.(username, bucket);
        for (let i = 0; i < data.length; i++) {
          const ts = stamps[i] ?? this.autoTs(state, now);
          this.queue.push({ bucketId: b.id, ts, data: texts[i] as string, seq: 0 });
          written?.(ts, data[i]);
        }
        return this.waitFor(data.length);
      }
      if (!isRecordObject(data)) throw new BucketError('invalid_record', 'a record is a JSON object');
      const text = toJsonText(data);
      const ts = explicitTs(data) ?? this.autoTs(state, this.now());
      this.queue.push({ bucketId: b.id, ts, data: text, seq: 0 });
      this.options.onWrite?.(username, bucket)?.(ts, data);
      return this.waitFor(1);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /**
   * Stores one sample of a device-sourced bucket at the server's time (any JSON value;
   * undefined is skipped). Resolves once durable.
   */
  appendSample(bucketId: number, value: PsonValue | undefined): Promise<number> {
    try {
      const state = this.byId.get(bucketId);
      if (!state) throw new BucketError('bucket_not_found', `bucket ${bucketId} does not exist`);
      if (!state.record.enabled) throw new BucketError('bucket_disabled', 'bucket is disabled');
      this.admit();
      if (value === undefined) return Promise.resolve(0);
      const text = toJsonText(value);
      const ts = this.autoTs(state, this.now());
      this.queue.push({ bucketId, ts, data: text, seq: 0 });
      const written = this.options.onWrite?.(state.record.username, state.record.bucket);
      if (written) written(ts, JSON.parse(text));
      return this.waitFor(1);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /** Open, and not overwhelmed: past `maxUnacknowledged` waiting records, writes are refused. */
  private admit(): void {
    this.assertOpen();
    // One shared error: refusing must stay cheap when it happens thousands of times a second.
    if (this.unacknowledged >= this.maxUnacknowledged) throw BUSY;
  }

  private assertOpen(): void {
    if (this.closed) throw new BucketError('unavailable', 'the server is shutting down');
  }

  /** A server timestamp for this bucket, unique within it. */
  private autoTs(state: BucketState, now: number): number {
    let last = state.lastAutoTs;
    if (last === undefined) {
      // Continue after the newest record not in the future (those of a run just before a restart).
      const bound = now + 1000;
      const row = this.st.maxTsUpTo.get(state.record.id, bound) as { ts: number | null };
      last = row.ts ?? -1;
      const p = this.pending.get(state.record.id);
      if (p) for (const ts of p.keys()) if (ts > last && ts <= bound) last = ts;
    }
    const ts = now > last ? now : last + 1;
    state.lastAutoTs = ts;
    return ts;
  }

  private waitFor(count: number): Promise<number> {
    this.unacknowledged += count;
    const p = new Promise<number>((resolve, reject) => {
      this.waiters.push({ resolve, reject, count });
    });
    // (Not inside someone else's transaction: the commit must be ours alone.)
    if (this.queue.length >= this.flushAt && !this.db.inTransaction) this.flush();
    else if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(() => this.flush());
    }
    return p;
  }

  /** Runs `work` in a transaction committed without fsync (a later fdatasync makes it durable). */
  private relaxedTx(work: () => void): void {
    if (!this.relaxed) {
      this.tx(work);
      return;
    }
    this.st.relax.run();
    try {
      this.tx(work);
    } finally {
      this.st.restore.run();
    }
  }

  /** Commits everything queued in one transaction: one log row. */
  private flush(): void {
    this.flushScheduled = false;
    if (this.db.inTransaction) {
      this.flushScheduled = true;
      setImmediate(() => this.flush());
      return;
    }
    const batch = this.queue;
    const waiters = this.waiters;
    if (batch.length === 0 && waiters.length === 0) return;
    this.queue = [];
    this.waiters = [];
    const started = performance.now();
    const seq = this.lastSeq + 1;
    try {
      this.relaxedTx(() => {
        this.st.insertLog.run(seq, encodeLogRow(batch));
      });
    } catch (err) {
      this.options.onWarning?.('bucket commit failed', { error: String(err), records: batch.length });
      const e = new BucketError('unavailable', `records could not be stored: ${(err as Error).message}`);
      for (const w of waiters) w.reject(e);
      this.unacknowledged -= batch.length;
      return;
    }
    this.lastSeq = seq;
    this.logRows.push({ seq, records: batch.length });
    this.logCount += batch.length;
    for (let i = 0; i < batch.length; i++) {
      const r = batch[i] as PendingRecord;
      r.seq = seq;
      // A bucket deleted meanwhile: its log records are skipped by the compaction.
      if (this.byId.has(r.bucketId)) this.addPending(r);
    }
    if (this.relaxed) {
      this.syncWaiters.push({ waiters, records: batch.length, started });
      if (this.syncing < MAX_SYNCS) this.startSync();
    } else this.acknowledge(waiters, batch.length, started);
    if (this.logCount >= this.compactAt) {
      this.keepUp(batch.length);
      void this.compact();
    }
  }

  private addPending(r: PendingRecord): void {
    let m = this.pending.get(r.bucketId);
    if (!m) {
      m = new Map();
      this.pending.set(r.bucketId, m);
    }
    m.set(r.ts, r);
  }

  private acknowledge(waiters: Waiter[], records: number, started: number): void {
    this.recordsWritten += records;
    this.unacknowledged -= records;
    this.options.onCommit?.(records, (performance.now() - started) / 1000);
    for (const w of waiters) w.resolve(w.count);
  }

  /** One fdatasync of the WAL for every commit made so far (overlapping up to MAX_SYNCS). */
  private startSync(): void {
    const batches = this.syncWaiters;
    this.syncWaiters = [];
    this.syncing++;
    fdatasync(this.walFd, (err) => {
      this.syncing--;
      if (err) {
        this.options.onWarning?.('fdatasync of the WAL failed', { error: String(err) });
        const e = new BucketError('unavailable', `records could not be made durable: ${err.message}`);
        for (const b of batches) {
          for (const w of b.waiters) w.reject(e);
          this.unacknowledged -= b.records;
        }
      } else {
        for (const b of batches) this.acknowledge(b.waiters, b.records, b.started);
      }
      if (this.syncWaiters.length > 0 && this.syncing < MAX_SYNCS) this.startSync();
    });
  }

  // ------------------------------------------------------------------------------------
  // Reads

  /** Records of a bucket in [minTs, maxTs], newest first (desc) or oldest first (asc). */
  read(username: string, bucket: string, q: ReadQuery): StoredRecord[] {
    const state = this.lookup(username, bucket);
    if (!state) throw new BucketError('bucket_not_found', `bucket ${bucket} does not exist`);
    const id = state.record.id;
    let min = q.minTs ?? 0;
    const max = q.maxTs ?? MAX_TS;
    // Expired records are hidden even before the sweep removes them.
    if (state.retentionMs > 0) min = Math.max(min, this.now() - state.retentionMs);
    if (min > max) return [];
    const desc = q.sort === 'desc';
    const rows = (desc ? this.st.readDesc : this.st.readAsc).all(id, min, max, q.items) as StoredRecord[];
    const p = this.pending.get(id);
    if (!p || p.size === 0) return rows;
    // Merge the records still in the log; they replace table rows with the same ts.
    const merged = new Map<number, string>();
    for (const r of rows) merged.set(r.ts, r.data);
    let extra = 0;
    for (const r of p.values()) {
      if (r.ts < min || r.ts > max) continue;
      merged.set(r.ts, r.data);
      extra++;
    }
    if (extra === 0) return rows;
    const stamps = [...merged.keys()].sort(desc ? (a, b) => b - a : (a, b) => a - b);
    const out: StoredRecord[] = [];
    for (let i = 0; i < stamps.length && i < q.items; i++) {
      const ts = stamps[i] as number;
      out.push({ ts, data: merged.get(ts) as string });
    }
    return out;
  }

  /** Records stored in a bucket (counts them: for tests and tools, not for hot paths). */
  countRecords(username: string, bucket: string): number {
    const state = this.lookup(username, bucket);
    if (!state) throw new BucketError('bucket_not_found', `bucket ${bucket} does not exist`);
    return this.countById(state.record.id);
  }

  /** Records of a bucket id: table rows plus log records that are not replacing one. */
  countById(id: number): number {
    let n = (this.st.count.get(id) as { n: number }).n;
    const p = this.pending.get(id);
    if (p) for (const ts of p.keys()) if (this.st.readAsc.get(id, ts, ts, 1) === undefined) n++;
    return n;
  }

  // ------------------------------------------------------------------------------------
  // Compaction: the log into bucket_data

  private loadLog(): void {
    let first = true;
    for (const row of this.st.loadLog.iterate() as IterableIterator<{ seq: number; records: string }>) {
      if (first) this.logFloor = row.seq - 1;
      first = false;
      this.lastSeq = row.seq;
      let n = 0;
      for (const r of decodeLogRow(row.records, row.seq)) {
        n++;
        if (this.byId.has(r.bucketId)) this.addPending(r);
      }
      this.logRows.push({ seq: row.seq, records: n });
      this.logCount += n;
    }
  }

  /** Moves every record committed so far from the log into bucket_data (resolves when done). */
  async compact(): Promise<void> {
    const target = this.lastSeq;
    // A run already under way may have started before the latest commits: then one more.
    while (this.logFloor < target && !this.closed) {
      const floor = this.logFloor;
      this.compaction ??= this.runCompaction().finally(() => {
        this.compaction = undefined;
      });
      await this.compaction;
      if (this.logFloor === floor) return; // failed (logged); the next run retries
    }
  }

  /** Runs the current job (or a new one) to its end, a chunk per turn of the event loop. */
  private async runCompaction(): Promise<void> {
    for (;;) {
      if (this.closed) return;
      const job = this.job ?? this.startJob();
      if (!job) return;
      const floor = this.logFloor;
      if (this.compactStep(job, this.compactChunk)) return;
      if (this.job !== job && this.logFloor === floor) return; // failed
      await immediate();
    }
  }

  /** A job for everything committed so far: its records sorted by bucket, then time. */
  private startJob(): CompactionJob | undefined {
    const upto = this.lastSeq;
    if (upto <= this.logFloor) return undefined;
    // Each chunk then writes a few neighbouring pages of bucket_data.
    const rows: PendingRecord[] = [];
    const ids = [...this.pending.keys()].sort((a, b) => a - b);
    for (const id of ids) {
      const m = this.pending.get(id) as Map<number, PendingRecord>;
      const start = rows.length;
      let sorted = true;
      let prev = -1;
      for (const r of m.values()) {
        if (r.seq > upto) continue;
        if (r.ts < prev) sorted = false;
        prev = r.ts;
        rows.push(r);
      }
      if (!sorted) {
        const part = rows.splice(start).sort((a, b) => a.ts - b.ts);
        for (const r of part) rows.push(r);
      }
    }
    this.job = { rows, next: 0, upto };
    return this.job;
  }

  /**
   * Moves up to `count` rows of the job in one transaction; the last one also deletes the
   * job's log rows. True when the job is done.
   */
  private compactStep(job: CompactionJob, count: number): boolean {
    const { rows, upto } = job;
    const from = job.next;
    const end = Math.min(rows.length, from + count);
    const last = end === rows.length;
    const now = this.now();
    try {
      this.relaxedTx(() => {
        const args = this.insertArgs;
        let n = 0;
        for (let k = from; k < end; k++) {
          const r = rows[k] as PendingRecord;
          // Replaced by a newer write (moved later), swept, or its bucket deleted: skipped.
          if (this.pending.get(r.bucketId)?.get(r.ts) !== r) continue;
          const state = this.byId.get(r.bucketId);
          if (!state) continue;
          if (state.retentionMs > 0 && r.ts < now - state.retentionMs) continue; // expired
          args[n++] = r.bucketId;
          args[n++] = r.ts;
          args[n++] = r.data;
          if (n === args.length) {
            this.st.insertDataMany.run(args);
            n = 0;
          }
        }
        for (let k = 0; k < n; k += 3) this.st.insertData.run(args[k], args[k + 1], args[k + 2]);
        if (last) this.st.deleteLog.run(upto);
      });
    } catch (err) {
      this.options.onWarning?.('bucket compaction failed', { error: String(err) });
      this.job = undefined; // the log still holds everything: the next job starts over
      return false;
    }
    // In the table now: reads find them there (unless a newer write replaced them meanwhile).
    for (let k = from; k < end; k++) {
      const r = rows[k] as PendingRecord;
      const m = this.pending.get(r.bucketId);
      if (m && m.get(r.ts) === r) {
        m.delete(r.ts);
        if (m.size === 0) this.pending.delete(r.bucketId);
      }
    }
    job.next = end;
    if (!last) return false;
    this.job = undefined;
    this.logFloor = upto;
    while (this.logRows.length > 0 && (this.logRows[0] as { seq: number }).seq <= upto)
      this.logCount -= (this.logRows.shift() as { records: number }).records;
    return true;
  }

  /**
   * Under sustained load a turn of the event loop can bring in far more records than one
   * background chunk moves: past `compactAt`, each commit also moves as many log records as it
   * added (and a quarter more), so the log stops growing and intake slows to what the disk takes.
   */
  private keepUp(added: number): void {
    if (this.closed || this.logCount < this.compactAt) return;
    let budget = Math.ceil(added * 1.25);
    while (budget > 0 && this.logCount >= this.compactAt) {
      const job = this.job ?? this.startJob();
      if (!job) return;
      const count = Math.min(budget, job.rows.length - job.next);
      const floor = this.logFloor;
      const done = this.compactStep(job, count);
      if (!done && this.job !== job && this.logFloor === floor) return; // failed
      budget -= Math.max(count, 1);
    }
  }

  // ------------------------------------------------------------------------------------
  // Retention and purges

  /**
   * Deletes records older than their bucket's retention (relative to `now`) and the records
   * of deleted buckets, in transactions of at most `sweepBatch` rows with a turn of the event
   * loop between them. Runs by itself every `sweepIntervalMs`.
   */
  sweep(now?: number): Promise<{ expired: number; purged: number }> {
    if (this.sweeping) return this.sweeping.then(() => this.sweep(now));
    this.sweeping = this.runSweep(now ?? this.now()).finally(() => {
      this.sweeping = undefined;
    });
    return this.sweeping;
  }

  private async runSweep(now: number): Promise<{ expired: number; purged: number }> {
    let expired = 0;
    let purged = 0;
    for (const state of [...this.byId.values()]) {
      if (state.retentionMs <= 0) continue;
      const cutoff = now - state.retentionMs;
      const id = state.record.id;
      const p = this.pending.get(id);
      if (p) {
        // Not moved yet: dropped from memory, and the compaction skips them in the log.
        for (const [ts] of p) if (ts < cutoff) p.delete(ts);
      }
      for (;;) {
        if (this.closed) return { expired, purged };
        const edge = this.st.nthOlder.get(id, cutoff, this.sweepBatch - 1) as { ts: number } | undefined;
        const upTo = edge ? edge.ts : cutoff - 1;
        let n = 0;
        this.relaxedTx(() => {
          n = this.st.deleteUpTo.run(id, upTo).changes;
        });
        expired += n;
        if (!edge) break;
        await immediate();
      }
    }
    for (const { bucket_id: id } of this.st.purges.all() as Array<{ bucket_id: number }>) {
      for (;;) {
        if (this.closed) return { expired, purged };
        const edge = this.st.nthAny.get(id, this.sweepBatch - 1) as { ts: number } | undefined;
        let n = 0;
        this.relaxedTx(() => {
          if (edge) n = this.st.deleteUpTo.run(id, edge.ts).changes;
          else {
            n = this.st.deleteAll.run(id).changes;
            this.st.purgeDone.run(id);
          }
        });
        purged += n;
        if (!edge) break;
        await immediate();
      }
    }
    return { expired, purged };
  }

  // ------------------------------------------------------------------------------------

  /** Log records not yet moved into bucket_data. */
  get logRecords(): number {
    return this.logCount;
  }

  /**
   * Commits what is queued and waits until it is durable; stops compaction and sweeps (the
   * log is durable: the next start moves it). The database stays open (the server closes it).
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.flush();
    this.closed = true;
    for (const t of this.timers) clearInterval(t);
    if (this.relaxed) {
      await new Promise<void>((resolve) => {
        const check = () => {
          if (this.syncing === 0 && this.syncWaiters.length === 0) resolve();
          else setImmediate(check);
        };
        check();
      });
      try {
        fdatasyncSync(this.walFd);
      } catch {
        // the database's own close checkpoints and syncs
      }
      closeSync(this.walFd);
      this.walFd = -1;
    }
    await Promise.allSettled([this.compaction, this.sweeping]);
  }
}
