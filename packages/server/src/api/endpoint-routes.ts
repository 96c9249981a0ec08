import type { FastifyInstance } from 'fastify';
import { authorize } from '../auth/tokens.js';
import { EndpointError } from '../endpoints/runner.js';
import { checkJsonTemplate, parseTemplate, TemplateError } from '../endpoints/template.js';
import { AlreadyExistsError } from '../storage/accounts.js';
import { type EndpointRecord, HTTP_METHODS, type HttpRequestProfile } from '../storage/endpoints.js';
import { type AppContext, ID_PATTERN, userParams } from './context.js';
import { deletedSchema, errorSchema, HttpError, sendDeleted } from './errors.js';
import { filteredListQuery, nameFilter } from './name-filter.js';

/** Endpoints one user may have. */
export const MAX_ENDPOINTS_PER_USER = 1000;
/** Largest stored profile (URL, headers, body template), as JSON. */
const MAX_PROFILE_LENGTH = 64 * 1024;
/** Headers that frame or route the request: undici and the server set them. */
const RESERVED_HEADERS = new Set([
  'host',
  'content-length',
  'transfer-encoding',
  'connection',
  'keep-alive',
  'upgrade',
  'te',
  'trailer',
  'expect',
  'proxy-connection',
  'http2-settings',
]);

const endpointParams = {
  type: 'object',
  properties: {
    user: { type: 'string', pattern: ID_PATTERN },
    endpoint: { type: 'string', pattern: ID_PATTERN },
  },
  required: ['user', 'endpoint'],
} as const;

const profileSchema = {
  type: 'object',
  description:
    'An HTTP request. url, header values and body may hold {{key}}, {{a.b}} or {{payload}} placeholders, filled from the data of each call',
  properties: {
    url: { type: 'string', minLength: 8, maxLength: 4096, pattern: '^[Hh][Tt][Tt][Pp][Ss]?://' },
    method: { type: 'string', enum: [...HTTP_METHODS], default: 'POST' },
    headers: {
      type: 'object',
      maxProperties: 50,
      propertyNames: { pattern: "^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$" },
      additionalProperties: { type: 'string', maxLength: 4096 },
    },
    body: {
      description:
        'A string is a text template; any other JSON value a JSON template. Absent: POST, PUT and PATCH send the data as JSON',
    },
  },
  required: ['url'],
  additionalProperties: false,
} as const;

const endpointSchema = {
  type: 'object',
  properties: {
    endpoint: { type: 'string' },
    name: { type: 'string' },
    description: { type: 'string' },
    type: { type: 'string', enum: ['http_request'] },
    enabled: { type: 'boolean' },
    profile: {
      type: 'object',
      properties: {
        url: { type: 'string' },
        method: { type: 'string' },
        headers: { type: 'object', additionalProperties: { type: 'string' } },
        body: {},
      },
    },
    created: { type: 'integer' },
    updated: { type: 'integer' },
  },
} as const;

const errors = { 400: errorSchema, 401: errorSchema, 403: errorSchema, 404: errorSchema, 409: errorSchema };

interface EndpointBody {
  endpoint: string;
  name?: string;
  description?: string;
  type?: 'http_request';
  enabled?: boolean;
  profile: HttpRequestProfile;
}

function view(e: EndpointRecord) {
  return {
    endpoint: e.endpoint,
    name: e.name,
    description: e.description,
    type: e.type,
    enabled: e.enabled,
    profile: e.profile,
    created: e.createdAt,
    updated: e.updatedAt,
  };
}

/** What JSON schema cannot say about a profile; throws HttpError 400. */
function checkProfile(profile: HttpRequestProfile): HttpRequestProfile {
  const invalid = (code: string, message: string) => new HttpError(400, code, message);
  if (JSON.stringify(profile).length > MAX_PROFILE_LENGTH)
    throw invalid('invalid_request', `the profile is larger than ${MAX_PROFILE_LENGTH} characters as JSON`);
  try {
    const parts = parseTemplate(profile.url);
    // The URL with every placeholder filled ("1" fits a host, a port and a path) must still
    // be an http(s) URL with a host.
    const sample = parts.map((p) => (typeof p === 'string' ? p : '1')).join('');
    let url: URL;
    try {
      url = new URL(sample);
    } catch {
      throw invalid('invalid_url', `profile.url is not a valid URL: ${profile.url.slice(0, 200)}`);
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:')
      throw invalid('invalid_url', 'profile.url must be an http: or https: URL');
    if (url.username !== '' || url.password !== '')
      throw invalid(
        'invalid_url',
        'profile.url may not hold credentials: send an Authorization header instead',
      );
    const seen = new Set<string>();
    for (const [name, value] of Object.entries(profile.headers ?? {})) {
      const lower = name.toLowerCase();
      if (RESERVED_HEADERS.has(lower))
        throw invalid('invalid_request', `header ${name} is set by the server and cannot be configured`);
      if (seen.has(lower)) throw invalid('invalid_request', `header ${name} is given twice`);
      seen.add(lower);
      parseTemplate(value);
    }
    if (profile.body !== undefined) {
      if (profile.method === 'GET') throw invalid('invalid_request', 'a GET request cannot have a body');
      if (typeof profile.body === 'string') parseTemplate(profile.body);
      else checkJsonTemplate(profile.body);
    }
  } catch (err) {
    if (err instanceof TemplateError) throw invalid('invalid_template', err.message);
    throw err;
  }
  const checked: HttpRequestProfile = { url: profile.url, method: profile.method };
  if (profile.headers !== undefined) checked.headers = profile.headers;
  if (profile.body !== undefined) checked.body = profile.body;
  return checked;
}

export function registerEndpointRoutes(app: FastifyInstance, ctx: AppContext): void {
  const getOr404 = (user: string, endpoint: string): EndpointRecord => {
    const e = ctx.endpoints.store.get(user, endpoint);
    if (!e) throw new HttpError(404, 'endpoint_not_found', `endpoint ${endpoint} does not exist`);
    return e;
  };

  // Definitions can hold credentials of third-party services (headers): managing and reading
  // them takes a login token, like devices and tokens. Calling takes "call" access.

  app.get<{ Params: { user: string }; Querystring: { count?: number; index?: number; name?: string } }>(
    '/v1/users/:user/endpoints',
    {
      schema: {
        summary:
          'List endpoints (`name`: a case-insensitive regular expression searched in ids and names; x-total-count header: how many there are)',
        params: userParams,
        querystring: {
          type: 'object',
          properties: {
            ...filteredListQuery,
          },
        },
        response: { 200: { type: 'array', items: endpointSchema }, ...errors },
      },
    },
    async (request, reply) => {
      const { user } = request.params;
      const { count = 100, index = 0 } = request.query;
      authorize(request.principal!, user, 'admin');
      const filter = nameFilter(request.query.name, 'endpoints');
      if (filter !== undefined) {
        const { page, total } = ctx.endpoints.store.filter(user, filter.matches, count, index);
        reply.header('x-total-count', String(total));
        return page.map(view);
      }
      reply.header('x-total-count', String(ctx.endpoints.store.count(user)));
      return ctx.endpoints.store.list(user, count, index).map(view);
    },
  );

  app.post<{ Params: { user: string }; Body: EndpointBody }>(
    '/v1/users/:user/endpoints',
    {
      schema: {
        summary: 'Create an endpoint (type http_request)',
        params: userParams,
        body: {
          type: 'object',
          properties: {
            endpoint: { type: 'string', pattern: ID_PATTERN },
            name: { type: 'string', maxLength: 256 },
            description: { type: 'string', maxLength: 4096 },
            type: { type: 'string', enum: ['http_request'], default: 'http_request' },
            enabled: { type: 'boolean' },
            profile: profileSchema,
          },
          required: ['endpoint', 'profile'],
          additionalProperties: false,
        },
        response: { 201: endpointSchema, ...errors },
      },
    },
    async (request, reply) => {
      const { user } = request.params;
      authorize(request.principal!, user, 'admin');
      const b = request.body;
      const profile = checkProfile(b.profile);
      if (ctx.endpoints.store.count(user) >= MAX_ENDPOINTS_PER_USER)
        throw new HttpError(
          409,
          'too_many_endpoints',
          `a user may have at most ${MAX_ENDPOINTS_PER_USER} endpoints; delete one first`,
        );
      try {
        const record = ctx.endpoints.store.create({
          username: user,
          endpoint: b.endpoint,
          name: b.name ?? b.endpoint,
          description: b.description ?? '',
          type: 'http_request',
          enabled: b.enabled ?? true,
          profile,
        });
        reply.code(201);
        return view(record);
      } catch (err) {
        if (err instanceof AlreadyExistsError)
          throw new HttpError(409, 'endpoint_exists', `endpoint ${b.endpoint} already exists`);
        throw err;
      }
    },
  );

  app.get<{ Params: { user: string; endpoint: string } }>(
    '/v1/users/:user/endpoints/:endpoint',
    {
      schema: {
        summary: 'Get an endpoint',
        params: endpointParams,
        response: { 200: endpointSchema, ...errors },
      },
    },
    async (request) => {
      const { user, endpoint } = request.params;
      authorize(request.principal!, user, 'admin');
      return view(getOr404(user, endpoint));
    },
  );

  const updateSchema = {
    params: endpointParams,
    body: {
      type: 'object',
      properties: {
        name: { type: 'string', maxLength: 256 },
        description: { type: 'string', maxLength: 4096 },
        type: { type: 'string', enum: ['http_request'] },
        enabled: { type: 'boolean' },
        profile: profileSchema,
      },
      additionalProperties: false,
    },
    response: { 200: endpointSchema, ...errors },
  } as const;
  for (const method of ['put', 'patch'] as const) {
    app[method]<{
      Params: { user: string; endpoint: string };
      Body: Partial<Omit<EndpointBody, 'endpoint'>>;
    }>(
      '/v1/users/:user/endpoints/:endpoint',
      {
        schema: {
          summary: 'Update an endpoint (name, description, enabled; a profile replaces the whole profile)',
          ...updateSchema,
        },
      },
      async (request) => {
        const { user, endpoint } = request.params;
        authorize(request.principal!, user, 'admin');
        const b = request.body ?? {};
        const profile = b.profile === undefined ? undefined : checkProfile(b.profile);
        const record = ctx.endpoints.store.update(user, endpoint, {
          name: b.name,
          description: b.description,
          enabled: b.enabled,
          profile,
        });
        if (!record) throw new HttpError(404, 'endpoint_not_found', `endpoint ${endpoint} does not exist`);
        return view(record);
      },
    );
  }

  app.delete<{ Params: { user: string; endpoint: string } }>(
    '/v1/users/:user/endpoints/:endpoint',
    {
      schema: {
        summary: 'Delete an endpoint',
        params: endpointParams,
        response: { 200: deletedSchema, ...errors },
      },
    },
    async (request, reply) => {
      const { user, endpoint } = request.params;
      authorize(request.principal!, user, 'admin');
      if (!ctx.endpoints.store.delete(user, endpoint))
        throw new HttpError(404, 'endpoint_not_found', `endpoint ${endpoint} does not exist`);
      return sendDeleted(reply);
    },
  );

  app.post<{ Params: { user: string; endpoint: string }; Body: unknown }>(
    '/v1/users/:user/endpoints/:endpoint/call',
    {
      schema: {
        summary:
          "Call an endpoint: the request body (any JSON) fills its templates; answers 200 with the endpoint's status, headers and body",
        params: endpointParams,
        body: { description: 'The data for the templates: any JSON value, or none' },
        response: {
          200: {
            type: 'object',
            properties: {
              status: { type: 'integer', description: "The endpoint's HTTP status (any, 5xx included)" },
              headers: {
                type: 'object',
                additionalProperties: {
                  anyOf: [{ type: 'string' }, { type: 'array', items: { type: 'string' } }],
                },
              },
              body: { description: 'Parsed JSON when the response is JSON, else its text' },
            },
            required: ['status', 'headers', 'body'],
          },
          ...errors,
          413: errorSchema,
          429: errorSchema,
          502: errorSchema,
          503: errorSchema,
          504: errorSchema,
        },
      },
    },
    async (request, reply) => {
      const { user, endpoint } = request.params;
      authorize(request.principal!, user, 'call');
      try {
        return await ctx.endpoints.run(user, endpoint, request.body);
      } catch (err) {
        if (err instanceof EndpointError) {
          if (err.retryAfterSeconds !== undefined) reply.header('retry-after', String(err.retryAfterSeconds));
          throw new HttpError(err.status, err.code, err.message);
        }
        throw err;
      }
    },
  );
}
