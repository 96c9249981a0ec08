import type { FastifyInstance } from 'fastify';
import { authorize } from '../auth/tokens.js';
import type { SourceStatus } from '../buckets/device-source.js';
import {
  AGG_PATTERN,
  AGG_TYPES,
  type AggType,
  type BucketQuery,
  checkTimeZone,
  isPlain,
  parseAgg,
  parsePath,
  QueryError,
  type QueryRow,
  runQuery,
} from '../storage/bucket-query.js';
import {
  BucketError,
  type BucketPatch,
  type BucketRecord,
  type BucketSource,
  MAX_RECORDS_PER_WRITE,
  MAX_SAMPLE_INTERVAL_S,
  MAX_TS,
  MIN_SAMPLE_INTERVAL_S,
  RETENTION_UNITS,
} from '../storage/buckets.js';
import { groupingProperties, refuseGroupings } from './account-routes.js';
import { type AppContext, deviceParams, ID_PATTERN, userParams } from './context.js';
import { deletedSchema, errorSchema, HttpError, sendDeleted } from './errors.js';
import { filteredListQuery, nameFilter } from './name-filter.js';

const errors = {
  400: errorSchema,
  401: errorSchema,
  403: errorSchema,
  404: errorSchema,
  409: errorSchema,
  413: errorSchema,
  503: errorSchema,
};

const bucketParams = {
  type: 'object',
  properties: {
    user: { type: 'string', pattern: ID_PATTERN },
    bucket: { type: 'string', pattern: ID_PATTERN },
  },
  required: ['user', 'bucket'],
} as const;

const configSchema = {
  type: 'object',
  description:
    'Nothing for "write" buckets. For "device" buckets: {"device", "resource", "interval" (seconds)} samples the resource, {"device", "resource", "update": "events"} stores what the device streams. Thinger.io\'s form puts the source here: {"source": "write"|"api"|"device", …} ("mqtt" and tags are not supported; `user` must be the bucket\'s).',
  properties: {
    source: { type: 'string', enum: ['write', 'api', 'device', 'mqtt'] },
    device: { type: 'string', pattern: ID_PATTERN },
    resource: { type: 'string', minLength: 1, maxLength: 256 },
    update: { type: 'string', enum: ['interval', 'events', 'none'] },
    interval: { type: 'integer', minimum: MIN_SAMPLE_INTERVAL_S, maximum: MAX_SAMPLE_INTERVAL_S },
    tags: { type: 'array', maxItems: 5, items: { type: 'string', maxLength: 128 } },
    user: { type: 'string', pattern: ID_PATTERN },
    topic: { type: 'string', maxLength: 512 },
  },
  additionalProperties: false,
} as const;

const retentionObject = {
  type: 'object',
  properties: {
    period: { type: 'integer', minimum: 1 },
    unit: { type: 'string', enum: RETENTION_UNITS },
  },
  required: ['period', 'unit'],
  additionalProperties: false,
} as const;
/** null (or absent) keeps records forever; a month is 30 days, a year 365. */
const retentionSchema = { anyOf: [{ type: 'null' }, retentionObject] } as const;

const bucketSchema = {
  type: 'object',
  properties: {
    bucket: { type: 'string' },
    name: { type: 'string' },
    description: { type: 'string' },
    enabled: { type: 'boolean' },
    source: { type: 'string', enum: ['write', 'device'] },
    config: {
      type: 'object',
      properties: {
        device: { type: 'string' },
        resource: { type: 'string' },
        update: { type: 'string' },
        interval: { type: 'integer' },
      },
    },
    retention: {
      type: 'object',
      nullable: true,
      properties: { period: { type: 'integer' }, unit: { type: 'string' } },
    },
    created: { type: 'integer' },
    updated: { type: 'integer' },
    status: {
      type: 'object',
      description: 'device buckets: running, waiting (device offline), error (stream refused), disabled',
      properties: { state: { type: 'string' }, message: { type: 'string' } },
    },
  },
} as const;

/** A record: a JSON object; its own integer `ts` (ms since 1970), if any, is its timestamp. */
const recordSchema = {
  type: 'object',
  properties: { ts: { type: 'integer', minimum: 0, maximum: MAX_TS } },
} as const;

interface CreateBody {
  bucket: string;
  name?: string;
  description?: string;
  enabled?: boolean;
  source?: BucketSource;
  config?: Record<string, unknown>;
  retention?: unknown;
  backend?: string;
  product?: string;
  asset_group?: string;
  asset_type?: string;
}

/** Thinger.io-only fields of bucket create/update bodies. */
const thingerBucketFields = {
  backend: { type: 'string', enum: [''], description: 'Thinger.io storage backend: only the default ("")' },
  ...groupingProperties,
} as const;

/**
 * The source and config of a create/update body in either form: ours (`source` beside
 * `config`) or Thinger.io's (`config.source`; "api" and "write" are both a "write" bucket).
 * Throws 400 for what this server does not have (MQTT sources, tags, other users).
 */
function sourceAndConfig(
  user: string,
  body: { source?: BucketSource | undefined; config?: Record<string, unknown> | undefined },
): { source: BucketSource | undefined; config: Record<string, unknown> | undefined } {
  const config = body.config;
  if (!config || config.source === undefined) {
    for (const k of ['tags', 'user', 'topic'])
      if (config && config[k] !== undefined)
        throw new HttpError(400, 'invalid_request', `config.${k} goes with config.source (Thinger.io form)`);
    if (config?.update === 'none')
      throw new HttpError(
        400,
        'invalid_request',
        'config.update "none" is not supported: use "interval" or "events"',
      );
    return { source: body.source, config };
  }
  const { source: thingerSource, tags, user: owner, topic, ...rest } = config;
  if (thingerSource === 'mqtt' || topic !== undefined)
    throw new HttpError(
      400,
      'invalid_request',
      'MQTT buckets are not supported: this server has no MQTT broker',
    );
  const source: BucketSource = thingerSource === 'device' ? 'device' : 'write';
  if (body.source !== undefined && body.source !== source)
    throw new HttpError(
      400,
      'invalid_request',
      `source ${body.source} differs from config.source ${String(thingerSource)}`,
    );
  if (Array.isArray(tags) && tags.length > 0)
    throw new HttpError(400, 'invalid_request', 'bucket tags are not supported');
  if (owner !== undefined && owner !== user)
    throw new HttpError(400, 'invalid_request', `config.user must be ${user}, the bucket's owner`);
  if (rest.update === 'none')
    throw new HttpError(
      400,
      'invalid_request',
      'config.update "none" is not supported: use "interval" or "events"',
    );
  return { source, config: source === 'write' && Object.keys(rest).length === 0 ? undefined : rest };
}

/** A bucket read's query string, in every version. */
interface ReadQueryString {
  items: number;
  min_ts?: number;
  max_ts?: number;
  sort: 'asc' | 'desc';
  tz?: string;
  agg?: string;
  agg_type?: AggType | '';
  transform?: string;
  group_by?: string;
  fields?: string;
}

/** Most records a plain read answers from one store read. */
const PLAIN_READ_MAX = 1000;

function readQuerystring(maxItems: number) {
  return {
    type: 'object',
    properties: {
      items: { type: 'integer', minimum: 1, maximum: maxItems, default: 100 },
      min_ts: { type: 'integer', minimum: 0, maximum: MAX_TS },
      max_ts: { type: 'integer', minimum: 0, maximum: MAX_TS, description: '0: no upper bound' },
      sort: { type: 'string', enum: ['asc', 'desc'], default: 'desc' },
      tz: {
        type: 'string',
        maxLength: 64,
        description: 'Time zone of day/week/month/year windows (default UTC)',
      },
      agg: {
        type: 'string',
        pattern: `^$|${AGG_PATTERN}`,
        description: 'Aggregation window: 5m, 1h, 1d, 1w (from Monday), 1mo, 1y…',
      },
      agg_type: {
        type: 'string',
        enum: ['', ...AGG_TYPES],
        description: 'Reducer of each numeric field (count: every value); without agg, over the whole range',
      },
      transform: { type: 'string', maxLength: 64, description: 'Not supported: refused when not empty' },
      group_by: { type: 'string', maxLength: 256, description: 'A field (a.b): one row per value' },
      fields: { type: 'string', maxLength: 4096, description: 'Comma-separated fields (a.b) to keep' },
      authorization: { type: 'string' },
    },
    additionalProperties: false,
  } as const;
}

/** The query of a read (400 for what cannot be answered). */
function bucketQuery(q: ReadQueryString): BucketQuery {
  if (q.transform) throw new HttpError(400, 'invalid_request', `transform ${q.transform} is not supported`);
  if (q.tz) checkTimeZone(q.tz);
  const agg = q.agg ? parseAgg(q.agg) : undefined;
  const aggType = q.agg_type || (agg ? 'mean' : undefined);
  const fields = q.fields
    ? q.fields
        .split(',')
        .map((f) => f.trim())
        .filter((f) => f.length > 0)
        .map((f) => parsePath(f, 'fields'))
    : undefined;
  return {
    items: q.items,
    sort: q.sort,
    minTs: q.min_ts,
    // max_ts=0 asks for no upper bound (Thinger.io clients send it for "until now").
    maxTs: q.max_ts === 0 ? undefined : q.max_ts,
    fields: fields && fields.length > 0 ? fields : undefined,
    groupBy: q.group_by ? parsePath(q.group_by, 'group_by') : undefined,
    agg,
    aggType: aggType || undefined,
    tz: q.tz || undefined,
  };
}

/** `{"ts", "val"}` rows (v1). Stored JSON goes out as it is: no parse, no re-serialization. */
function tsValRows(rows: readonly QueryRow[]): string {
  let body = '[';
  for (let i = 0; i < rows.length; i++) {
    const r = rows[i] as QueryRow;
    body += `${i === 0 ? '' : ','}{"ts":${r.ts},"val":${r.data}}`;
  }
  return `${body}]`;
}

/** Rows with the record's fields beside `ts` (v2, v3); a value that is not an object is `val`. */
function flatRows(rows: readonly QueryRow[]): string {
  let body = '[';
  for (let i = 0; i < rows.length; i++) {
    const r = rows[i] as QueryRow;
    let row: string;
    if (r.data.charCodeAt(0) !== 0x7b /* { */) row = `{"ts":${r.ts},"val":${r.data}}`;
    else if (r.data.includes('"ts"')) {
      const { ts: _own, ...rest } = JSON.parse(r.data) as Record<string, unknown>;
      row = JSON.stringify({ ts: r.ts, ...rest });
    } else row = r.data === '{}' ? `{"ts":${r.ts}}` : `{"ts":${r.ts},${r.data.slice(1)}`;
    body += `${i === 0 ? '' : ','}${row}`;
  }
  return `${body}]`;
}

type BucketRequest = { Params: { user: string; bucket: string } };

/** A BucketError as an API error; 400s use the API's general code. */
function httpError(err: unknown): unknown {
  if (!(err instanceof BucketError)) return err;
  const code = err.status === 400 ? 'invalid_request' : err.code;
  return new HttpError(err.status, code, err.message);
}

/**
 * /v1/users/{user}/buckets: bucket CRUD (paged list like devices), writes
 * (POST …/data: an object or an array of up to 1000) and reads (GET …/data: `items`,
 * `min_ts`, `max_ts`, `sort`) answering `[{"ts", "val"}]` as Thinger.io does.
 */
export function registerBucketRoutes(
  app: FastifyInstance,
  ctx: AppContext,
  sources: { status(bucketId: number): SourceStatus | undefined },
): void {
  const store = ctx.buckets;

  const view = (b: BucketRecord) => {
    const status = b.source === 'device' ? sources.status(b.id) : undefined;
    return {
      bucket: b.bucket,
      name: b.name,
      description: b.description,
      enabled: b.enabled,
      source: b.source,
      config: b.config,
      retention: b.retention,
      created: b.createdAt,
      updated: b.updatedAt,
      ...(status ? { status } : {}),
    };
  };

  const getOr404 = (user: string, bucket: string): BucketRecord => {
    const b = store.get(user, bucket);
    if (!b) throw new HttpError(404, 'bucket_not_found', `bucket ${bucket} does not exist`);
    return b;
  };

  app.get<{ Params: { user: string }; Querystring: { count?: number; index?: number; name?: string } }>(
    '/v1/users/:user/buckets',
    {
      schema: {
        summary:
          'List buckets (`name`: a case-insensitive regular expression searched in ids and names; x-total-count header: how many there are)',
        params: userParams,
        querystring: {
          type: 'object',
          properties: {
            ...filteredListQuery,
          },
        },
        response: { 200: { type: 'array', items: bucketSchema }, ...errors },
      },
    },
    async (request, reply) => {
      const { user } = request.params;
      const { count = 100, index = 0 } = request.query;
      authorize(request.principal!, user, 'read');
      const filter = nameFilter(request.query.name, 'buckets');
      const { page, total } = store.page(user, count, index, filter?.matches);
      reply.header('x-total-count', String(total));
      return page.map(view);
    },
  );

  app.post<{ Params: { user: string }; Body: CreateBody }>(
    '/v1/users/:user/buckets',
    {
      schema: {
        summary: 'Create a bucket',
        params: userParams,
        body: {
          type: 'object',
          properties: {
            bucket: { type: 'string', pattern: ID_PATTERN },
            name: { type: 'string', maxLength: 256 },
            description: { type: 'string', maxLength: 4096 },
            enabled: { type: 'boolean' },
            source: { type: 'string', enum: ['write', 'device'] },
            config: configSchema,
            retention: retentionSchema,
            ...thingerBucketFields,
          },
          required: ['bucket'],
          additionalProperties: false,
        },
        response: { 201: bucketSchema, ...errors },
      },
    },
    async (request, reply) => {
      const { user } = request.params;
      authorize(request.principal!, user, 'admin');
      const b = request.body;
      refuseGroupings(b);
      const { source, config } = sourceAndConfig(user, b);
      if (source === undefined)
        throw new HttpError(
          400,
          'invalid_request',
          "body must have required property 'source' (or config.source)",
        );
      try {
        const record = store.create(user, {
          bucket: b.bucket,
          name: b.name,
          description: b.description,
          enabled: b.enabled,
          source,
          config,
          retention: b.retention,
        });
        reply.code(201);
        return view(record);
      } catch (err) {
        throw httpError(err);
      }
    },
  );

  app.get<BucketRequest>(
    '/v1/users/:user/buckets/:bucket',
    { schema: { summary: 'Get a bucket', params: bucketParams, response: { 200: bucketSchema, ...errors } } },
    async (request) => {
      const { user, bucket } = request.params;
      authorize(request.principal!, user, 'read');
      return view(getOr404(user, bucket));
    },
  );

  const updateSchema = {
    params: bucketParams,
    body: {
      type: 'object',
      properties: {
        name: { type: 'string', maxLength: 256 },
        description: { type: 'string', maxLength: 4096 },
        enabled: { type: 'boolean' },
        source: { type: 'string', enum: ['write', 'device'] },
        config: configSchema,
        retention: retentionSchema,
        ...thingerBucketFields,
      },
      additionalProperties: false,
    },
    response: { 200: bucketSchema, ...errors },
  } as const;
  for (const method of ['put', 'patch'] as const) {
    app[method]<BucketRequest & { Body: Omit<CreateBody, 'bucket'> }>(
      '/v1/users/:user/buckets/:bucket',
      {
        schema: {
          summary: 'Update a bucket (name, description, enabled, source, config, retention)',
          ...updateSchema,
        },
      },
      async (request) => {
        const { user, bucket } = request.params;
        authorize(request.principal!, user, 'admin');
        const b = request.body ?? {};
        refuseGroupings(b);
        const { source, config } = sourceAndConfig(user, b);
        const patch: BucketPatch = {
          name: b.name,
          description: b.description,
          enabled: b.enabled,
          source,
          retention: b.retention,
        };
        // Thinger.io's form names a "write" bucket's source in config, with nothing else there.
        if (config !== undefined || b.config?.source !== undefined) patch.config = config ?? {};
        try {
          return view(store.update(user, bucket, patch));
        } catch (err) {
          throw httpError(err);
        }
      },
    );
  }

  app.delete<BucketRequest>(
    '/v1/users/:user/buckets/:bucket',
    {
      schema: {
        summary: 'Delete a bucket and its records',
        params: bucketParams,
        response: { 200: deletedSchema, ...errors },
      },
    },
    async (request, reply) => {
      const { user, bucket } = request.params;
      authorize(request.principal!, user, 'admin');
      if (!store.delete(user, bucket))
        throw new HttpError(404, 'bucket_not_found', `bucket ${bucket} does not exist`);
      return sendDeleted(reply);
    },
  );

  app.post<BucketRequest & { Body: unknown }>(
    '/v1/users/:user/buckets/:bucket/data',
    {
      schema: {
        summary: `Write records: a JSON object, or an array of 1–${MAX_RECORDS_PER_WRITE}; answered once durable`,
        description:
          'A record without an integer "ts" (ms since 1970) is stamped with the server time (unique within the bucket); a record with the ts of a stored one replaces it. Records are at most 64 KiB of JSON.',
        params: bucketParams,
        body: {
          anyOf: [
            recordSchema,
            { type: 'array', minItems: 1, maxItems: MAX_RECORDS_PER_WRITE, items: recordSchema },
          ],
        },
        response: {
          200: { type: 'object', properties: { written: { type: 'integer' } } },
          ...errors,
        },
      },
    },
    async (request) => {
      const { user, bucket } = request.params;
      authorize(request.principal!, user, 'call');
      try {
        return { written: await store.write(user, bucket, request.body) };
      } catch (err) {
        throw httpError(err);
      }
    },
  );

  /** Runs a read: the store's own for plain ones, the query engine for the rest. */
  const read = async (user: string, bucket: string, q: BucketQuery): Promise<QueryRow[]> => {
    try {
      if (isPlain(q) && q.items <= PLAIN_READ_MAX)
        return store.read(user, bucket, { items: q.items, minTs: q.minTs, maxTs: q.maxTs, sort: q.sort });
      return await runQuery(store, user, bucket, q);
    } catch (err) {
      if (err instanceof QueryError) throw new HttpError(err.status, err.code, err.message);
      throw httpError(err);
    }
  };
  const toQuery = (q: ReadQueryString): BucketQuery => {
    try {
      return bucketQuery(q);
    } catch (err) {
      if (err instanceof QueryError) throw new HttpError(err.status, err.code, err.message);
      throw err;
    }
  };
  const readDescription =
    'Query: items, min_ts, max_ts (0: no bound), sort, fields (a,b.c), group_by (a field: one row per value, the first in `sort` order), agg (a window: 5m, 1h, 1d…) and agg_type (count, mean, median, mode, spread, stddev, max, min, sum, first, last; over each numeric field), tz (for day/week/month/year windows). Queries other than "the last N records" read at most 100000 records of the range (400 range_too_large beyond).';
  const rowsResponse = (row: Record<string, unknown>) => ({
    200: { type: 'array', items: { type: 'object', properties: row, additionalProperties: true } },
    ...errors,
  });

  for (const version of ['v1', 'v2', 'v3'] as const) {
    const flat = version !== 'v1';
    const format = flat ? flatRows : tsValRows;
    const rowShape = flat ? { ts: { type: 'integer' } } : { ts: { type: 'integer' }, val: {} };
    app.get<BucketRequest & { Querystring: ReadQueryString }>(
      `/${version}/users/:user/buckets/:bucket/data`,
      {
        schema: {
          summary: flat
            ? 'Read records: rows {"ts", …the record\'s fields}, newest first unless sort=asc'
            : 'Read records: [{"ts", "val"}], newest first unless sort=asc',
          description: readDescription,
          params: bucketParams,
          querystring: readQuerystring(flat ? 10_000 : PLAIN_READ_MAX),
          response: rowsResponse(rowShape),
        },
      },
      async (request, reply) => {
        const { user, bucket } = request.params;
        authorize(request.principal!, user, 'read');
        const rows = await read(user, bucket, toQuery(request.query));
        reply.type('application/json; charset=utf-8');
        return format(rows);
      },
    );

    // One device's records of a bucket: all those of a bucket it feeds, else those naming it
    // in their `device` field (as devices of a Thinger.io product tag theirs).
    app.get<{ Params: { user: string; device: string; bucket: string }; Querystring: ReadQueryString }>(
      `/${version}/users/:user/devices/:device/buckets/:bucket/data`,
      {
        schema: {
          summary: `Read one device's records of a bucket (${flat ? 'rows {"ts", …fields}' : '[{"ts", "val"}]'})`,
          description: `${readDescription} The device's records: every record of a bucket sampling it, else those whose "device" field is its id.`,
          params: {
            type: 'object',
            properties: { ...deviceParams.properties, bucket: { type: 'string', pattern: ID_PATTERN } },
            required: ['user', 'device', 'bucket'],
          },
          querystring: readQuerystring(flat ? 10_000 : PLAIN_READ_MAX),
          response: rowsResponse(rowShape),
        },
      },
      async (request, reply) => {
        const { user, device, bucket } = request.params;
        authorize(request.principal!, user, 'read');
        authorize(request.principal!, user, 'read', device);
        if (!ctx.accounts.getDevice(user, device))
          throw new HttpError(404, 'device_not_found', `device ${device} does not exist`);
        const b = getOr404(user, bucket);
        reply.type('application/json; charset=utf-8');
        const feeds = b.source === 'device' && (b.config as { device?: string }).device === device;
        if (b.source === 'device' && !feeds) return '[]';
        const q = toQuery(request.query);
        q.device = { id: device, all: feeds };
        return format(await read(user, bucket, q));
      },
    );
  }

  app.get<{ Params: { user: string; device: string } }>(
    '/v3/users/:user/devices/:device/buckets',
    {
      schema: {
        summary: 'The buckets sampling a device ("device" buckets with this device)',
        params: deviceParams,
        response: { 200: { type: 'array', items: bucketSchema }, ...errors },
      },
    },
    async (request) => {
      const { user, device } = request.params;
      authorize(request.principal!, user, 'read');
      authorize(request.principal!, user, 'read', device);
      if (!ctx.accounts.getDevice(user, device))
        throw new HttpError(404, 'device_not_found', `device ${device} does not exist`);
      return store
        .list(user, Number.MAX_SAFE_INTEGER, 0)
        .filter((b) => b.source === 'device' && (b.config as { device?: string }).device === device)
        .map(view);
    },
  );
}
