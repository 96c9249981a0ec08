import { ClosedError, FrameError, RequestError, TimeoutError } from '@iotmp/protocol';
import { PsonError, type PsonValue } from '@iotmp/pson';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { authorize, type Principal, visibleResources } from '../auth/tokens.js';
import type { LiveDevice } from '../devices/hub.js';
import { type AppContext, ID_PATTERN } from './context.js';
import { errorSchema, HttpError } from './errors.js';
import { psonToJson } from './json.js';

const errors = {
  400: errorSchema,
  401: errorSchema,
  403: errorSchema,
  404: errorSchema,
  500: errorSchema,
  504: errorSchema,
};

const resourceParams = {
  type: 'object',
  properties: {
    user: { type: 'string', pattern: ID_PATTERN },
    device: { type: 'string', pattern: ID_PATTERN },
    '*': { type: 'string', minLength: 1, maxLength: 1024 },
  },
  required: ['user', 'device', '*'],
} as const;

/**
 * The device's answer as HTTP: an ERROR with a return code becomes that status; an ERROR
 * with nothing in it is how devices say "no such resource"; anything else is a 500.
 */
function mapDeviceError(err: unknown, resource: string, timeoutMs: number): HttpError {
  if (err instanceof TimeoutError) {
    return new HttpError(504, 'device_timeout', `device did not answer ${resource} within ${timeoutMs} ms`);
  }
  if (err instanceof ClosedError) {
    return new HttpError(404, 'device_offline', 'device disconnected during the call');
  }
  // The input could not be put on the wire (nested too deep, too large for one frame).
  if (err instanceof PsonError || err instanceof FrameError) {
    return new HttpError(400, 'invalid_request', `input cannot be sent to the device: ${err.message}`);
  }
  if (err instanceof RequestError) {
    const message =
      typeof err.payload === 'object' && err.payload !== null && 'error' in err.payload
        ? String((err.payload as { error: unknown }).error)
        : undefined;
    if (err.returnCode !== undefined && err.returnCode >= 400 && err.returnCode <= 599) {
      return new HttpError(err.returnCode, 'device_error', message ?? `device answered ${err.returnCode}`);
    }
    if (err.payload === undefined && err.parameters === undefined) {
      return new HttpError(404, 'resource_not_found', `device has no resource ${resource}`);
    }
    return new HttpError(500, 'device_error', message ?? 'device reported an error');
  }
  return new HttpError(500, 'internal_error', 'internal error');
}

function send(reply: FastifyReply, output: PsonValue | undefined): unknown {
  if (output instanceof Uint8Array) {
    reply.type('application/octet-stream');
    return Buffer.from(output.buffer, output.byteOffset, output.byteLength);
  }
  reply.type('application/json; charset=utf-8');
  return JSON.stringify(psonToJson(output));
}

/** A device's DESCRIBE answer cut to the resources a token lists (tokens limited to resources). */
function onlyVisible(
  principal: Principal,
  device: string,
  api: PsonValue | undefined,
): PsonValue | undefined {
  const visible = visibleResources(principal, device);
  if (!visible || typeof api !== 'object' || api === null || Array.isArray(api) || api instanceof Uint8Array)
    return api;
  const entries = api instanceof Map ? [...api] : Object.entries(api);
  return Object.fromEntries(entries.filter(([name]) => visible.includes(String(name)))) as PsonValue;
}

export function registerResourceRoutes(app: FastifyInstance, ctx: AppContext): void {
  const timeoutMs = ctx.config.deviceCallTimeoutMs;

  const liveDevice = (user: string, device: string): LiveDevice => {
    const live = ctx.hub.get(user, device);
    if (live) return live;
    if (!ctx.accounts.getDevice(user, device))
      throw new HttpError(404, 'device_not_found', `device ${device} does not exist`);
    throw new HttpError(404, 'device_offline', `device ${device} is not connected`);
  };

  const timed = async <T>(work: () => Promise<T>): Promise<T> => {
    const end = ctx.metrics.callDuration.startTimer();
    try {
      const result = await work();
      end({ outcome: 'ok' });
      return result;
    } catch (err) {
      end({ outcome: err instanceof TimeoutError ? 'timeout' : 'error' });
      throw err;
    }
  };

  /** DESCRIBE of every resource, cut to what the token may see. */
  const describeAll = async (request: FastifyRequest, reply: FastifyReply, user: string, device: string) => {
    authorize(request.principal!, user, 'read', device);
    const live = liveDevice(user, device);
    try {
      const api = await timed(() => live.session.describe(undefined, { timeoutMs }));
      return send(reply, onlyVisible(request.principal!, device, api));
    } catch (err) {
      throw mapDeviceError(err, 'DESCRIBE', timeoutMs);
    }
  };

  app.get<{ Params: { user: string; device: string } }>(
    '/v3/users/:user/devices/:device/resources',
    {
      schema: {
        summary: "List a device's resources (DESCRIBE)",
        params: {
          type: 'object',
          properties: {
            user: { type: 'string', pattern: ID_PATTERN },
            device: { type: 'string', pattern: ID_PATTERN },
          },
          required: ['user', 'device'],
        },
        response: { ...errors },
      },
    },
    async (request, reply) => describeAll(request, reply, request.params.user, request.params.device),
  );

  /** GET of a resource path: describe (…/api), list (api), or run with the query as parameters. */
  const getResource = async (
    request: FastifyRequest,
    reply: FastifyReply,
    user: string,
    device: string,
    path: string,
    query: Record<string, string>,
  ) => {
    // …/resources/api lists every resource, as on Thinger.io (a resource named "api" is …/api/api).
    if (path === 'api') return describeAll(request, reply, user, device);
    const describe = path.endsWith('/api');
    const resource = describe ? path.slice(0, -4) : path;
    if (!resource) throw new HttpError(400, 'invalid_request', 'resource name missing');
    authorize(request.principal!, user, 'read', device, resource);
    const live = liveDevice(user, device);
    const { authorization: _, ...rest } = query;
    const parameters = Object.keys(rest).length > 0 ? rest : undefined;
    try {
      const output = await timed(() =>
        describe
          ? live.session.describe(resource, { timeoutMs })
          : live.session.run(resource, undefined, { timeoutMs, parameters }),
      );
      return send(reply, output);
    } catch (err) {
      throw mapDeviceError(err, resource, timeoutMs);
    }
  };

  /** POST of a resource path: run it with the body as input. */
  const postResource = async (
    request: FastifyRequest,
    reply: FastifyReply,
    user: string,
    device: string,
    resource: string,
  ) => {
    authorize(request.principal!, user, 'call', device, resource);
    const live = liveDevice(user, device);
    let input: PsonValue | undefined;
    const body = request.body;
    if (Buffer.isBuffer(body)) input = new Uint8Array(body.buffer, body.byteOffset, body.byteLength);
    else if (body !== undefined && body !== null && body !== '') input = body as PsonValue;
    try {
      return send(reply, await timed(() => live.session.run(resource, input, { timeoutMs })));
    } catch (err) {
      throw mapDeviceError(err, resource, timeoutMs);
    }
  };

  const queryOfParameters = {
    type: 'object',
    additionalProperties: { type: 'string', maxLength: 4096 },
    maxProperties: 64,
  } as const;

  app.get<{ Params: { user: string; device: string; '*': string }; Querystring: Record<string, string> }>(
    '/v3/users/:user/devices/:device/resources/*',
    {
      schema: {
        summary: 'Run a resource (query string → parameters) or, with a trailing /api, describe it',
        params: resourceParams,
        querystring: queryOfParameters,
        response: { ...errors },
      },
    },
    async (request, reply) =>
      getResource(
        request,
        reply,
        request.params.user,
        request.params.device,
        request.params['*'],
        request.query,
      ),
  );

  app.post<{ Params: { user: string; device: string; '*': string }; Body: unknown }>(
    '/v3/users/:user/devices/:device/resources/*',
    {
      schema: {
        summary: 'Run a resource with input (JSON, or application/octet-stream for binary)',
        params: resourceParams,
        response: { ...errors },
      },
    },
    async (request, reply) =>
      postResource(request, reply, request.params.user, request.params.device, request.params['*']),
  );

  // Thinger.io's older paths (v1, v2: one path segment, no "resources/"), as its generated
  // clients still offer them. Fixed routes of the same place (…/stats, …/tokens) come first.
  const legacyParams = {
    type: 'object',
    properties: {
      user: { type: 'string', pattern: ID_PATTERN },
      device: { type: 'string', pattern: ID_PATTERN },
      resource: { type: 'string', minLength: 1, maxLength: 1024 },
    },
    required: ['user', 'device', 'resource'],
  } as const;
  for (const version of ['v1', 'v2'] as const) {
    app.get<{
      Params: { user: string; device: string; resource: string };
      Querystring: Record<string, string>;
    }>(
      `/${version}/users/:user/devices/:device/:resource`,
      {
        schema: {
          summary: `Run a resource (as …/v3/…/resources/{resource}; Thinger.io's ${version} path)`,
          params: legacyParams,
          querystring: queryOfParameters,
          response: { ...errors },
        },
      },
      async (request, reply) =>
        getResource(
          request,
          reply,
          request.params.user,
          request.params.device,
          request.params.resource,
          request.query,
        ),
    );
    app.post<{ Params: { user: string; device: string; resource: string }; Body: unknown }>(
      `/${version}/users/:user/devices/:device/:resource`,
      {
        schema: {
          summary: `Run a resource with input (as …/v3/…/resources/{resource}; Thinger.io's ${version} path)`,
          params: legacyParams,
          response: { ...errors },
        },
      },
      async (request, reply) =>
        postResource(request, reply, request.params.user, request.params.device, request.params.resource),
    );
  }
}
