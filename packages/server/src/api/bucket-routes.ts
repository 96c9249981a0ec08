import type { FastifyInstance } from 'fastify';
import { authorize } from '../auth/tokens.js';
import type { SourceStatus } from '../buckets/device-source.js';
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
import { type AppContext, ID_PATTERN, userParams } from './context.js';
import { deletedSchema, errorSchema, HttpError, sendDeleted } from './errors.js';

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
    'Nothing for "write" buckets. For "device" buckets: {"device", "resource", "interval" (seconds)} samples the resource, {"device", "resource", "update": "events"} stores what the device streams.',
  properties: {
    device: { type: 'string', pattern: ID_PATTERN },
    resource: { type: 'string', minLength: 1, maxLength: 256 },
    update: { type: 'string', enum: ['interval', 'events'] },
    interval: { type: 'integer', minimum: MIN_SAMPLE_INTERVAL_S, maximum: MAX_SAMPLE_INTERVAL_S },
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
  source: BucketSource;
  config?: unknown;
  retention?: unknown;
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

  app.get<{ Params: { user: string }; Querystring: { count?: number; index?: number } }>(
    '/v1/users/:user/buckets',
    {
      schema: {
        summary: 'List buckets (x-total-count header: how many there are)',
        params: userParams,
        querystring: {
          type: 'object',
          properties: {
            count: { type: 'integer', minimum: 1, maximum: 1000, default: 100 },
            index: { type: 'integer', minimum: 0, default: 0 },
            authorization: { type: 'string' },
          },
        },
        response: { 200: { type: 'array', items: bucketSchema }, ...errors },
      },
    },
    async (request, reply) => {
      const { user } = request.params;
      const { count = 100, index = 0 } = request.query;
      authorize(request.principal!, user, 'read');
      reply.header('x-total-count', String(store.countOf(user)));
      return store.list(user, count, index).map(view);
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
          },
          required: ['bucket', 'source'],
          additionalProperties: false,
        },
        response: { 201: bucketSchema, ...errors },
      },
    },
    async (request, reply) => {
      const { user } = request.params;
      authorize(request.principal!, user, 'admin');
      try {
        const record = store.create(user, request.body);
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
      },
      additionalProperties: false,
    },
    response: { 200: bucketSchema, ...errors },
  } as const;
  for (const method of ['put', 'patch'] as const) {
    app[method]<BucketRequest & { Body: BucketPatch }>(
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
        try {
          return view(store.update(user, bucket, request.body ?? {}));
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

  app.get<
    BucketRequest & { Querystring: { items: number; min_ts?: number; max_ts?: number; sort: 'asc' | 'desc' } }
  >(
    '/v1/users/:user/buckets/:bucket/data',
    {
      schema: {
        summary: 'Read records: [{"ts", "val"}], newest first unless sort=asc',
        params: bucketParams,
        querystring: {
          type: 'object',
          properties: {
            items: { type: 'integer', minimum: 1, maximum: 1000, default: 100 },
            min_ts: { type: 'integer', minimum: 0, maximum: MAX_TS },
            max_ts: { type: 'integer', minimum: 0, maximum: MAX_TS },
            sort: { type: 'string', enum: ['asc', 'desc'], default: 'desc' },
            authorization: { type: 'string' },
          },
          additionalProperties: false,
        },
        response: {
          200: {
            type: 'array',
            items: { type: 'object', properties: { ts: { type: 'integer' }, val: {} } },
          },
          ...errors,
        },
      },
    },
    async (request, reply) => {
      const { user, bucket } = request.params;
      authorize(request.principal!, user, 'read');
      const q = request.query;
      let rows: ReturnType<typeof store.read>;
      try {
        rows = store.read(user, bucket, { items: q.items, minTs: q.min_ts, maxTs: q.max_ts, sort: q.sort });
      } catch (err) {
        throw httpError(err);
      }
      // Stored JSON goes out as it is: no parse, no re-serialization.
      let body = '[';
      for (let i = 0; i < rows.length; i++) {
        const r = rows[i] as { ts: number; data: string };
        body += `${i === 0 ? '' : ','}{"ts":${r.ts},"val":${r.data}}`;
      }
      reply.type('application/json; charset=utf-8');
      return `${body}]`;
    },
  );
}
