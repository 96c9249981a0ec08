import type { FastifyInstance } from 'fastify';
import { hashSecret } from '../auth/passwords.js';
import { authorize } from '../auth/tokens.js';
import { AlreadyExistsError, type DeviceRecord, type TokenScope } from '../storage/accounts.js';
import { type AppContext, deviceParams, ID_PATTERN, userParams } from './context.js';
import { deletedSchema, errorSchema, HttpError, sendDeleted } from './errors.js';

const deviceSchema = {
  type: 'object',
  properties: {
    device: { type: 'string' },
    name: { type: 'string' },
    description: { type: 'string' },
    enabled: { type: 'boolean' },
    created: { type: 'integer' },
    updated: { type: 'integer' },
    connection: {
      type: 'object',
      properties: { active: { type: 'boolean' }, ts: { type: ['integer', 'null'] } },
    },
  },
} as const;

const errors = { 400: errorSchema, 401: errorSchema, 403: errorSchema, 404: errorSchema, 409: errorSchema };

/** Device credentials: printable, 1–256 characters (the reference clients send them as C strings). */
const credentialSchema = {
  type: 'string',
  minLength: 1,
  maxLength: 256,
  pattern: '^[\\x21-\\x7e]+$',
} as const;

/** Thinger.io groupings a device list can be filtered by; this server has none of them. */
const GROUPINGS = ['product', 'asset_group', 'asset_type', 'project'] as const;

type DeviceListQuery = { count?: number; index?: number; name?: string } & Partial<
  Record<(typeof GROUPINGS)[number], string>
>;

export function registerAccountRoutes(app: FastifyInstance, ctx: AppContext): void {
  const view = (d: DeviceRecord) => {
    const live = ctx.hub.get(d.username, d.device);
    return {
      device: d.device,
      name: d.name,
      description: d.description,
      enabled: d.enabled,
      created: d.createdAt,
      updated: d.updatedAt,
      connection: { active: live !== undefined, ts: live ? live.connectedTs : d.lastConnectedTs },
    };
  };

  const getOr404 = (user: string, device: string): DeviceRecord => {
    const d = ctx.accounts.getDevice(user, device);
    if (!d) throw new HttpError(404, 'device_not_found', `device ${device} does not exist`);
    return d;
  };

  app.get<{ Params: { user: string }; Querystring: DeviceListQuery }>(
    '/v1/users/:user/devices',
    {
      schema: {
        summary:
          'List devices (`name`: those whose id or name contains it; product/asset/project filters find nothing: there are none)',
        params: userParams,
        querystring: {
          type: 'object',
          properties: {
            count: { type: 'integer', minimum: 1, maximum: 1000, default: 100 },
            index: { type: 'integer', minimum: 0, default: 0 },
            name: { type: 'string', minLength: 1, maxLength: 128 },
            ...Object.fromEntries(GROUPINGS.map((g) => [g, { type: 'string', maxLength: 128 }])),
            authorization: { type: 'string' },
          },
        },
        response: { 200: { type: 'array', items: deviceSchema }, ...errors },
      },
    },
    async (request, reply) => {
      const { user } = request.params;
      const { count = 100, index = 0, name } = request.query;
      // Thinger.io clients filter by product, asset group, … (thinr-cli fans out commands to a
      // product's devices): there are none here, so such a filter must not list every device.
      for (const g of GROUPINGS) {
        const value = request.query[g];
        if (value)
          throw new HttpError(
            404,
            `${g}_not_found`,
            `no ${g.replace('_', ' ')} ${value} (this server has none)`,
          );
      }
      const matches = (d: DeviceRecord) =>
        name === undefined ||
        d.device.toLowerCase().includes(name.toLowerCase()) ||
        d.name.toLowerCase().includes(name.toLowerCase());
      const scoped = request.principal?.scope?.devices;
      if (scoped) {
        // A token limited to some devices lists just those.
        const names = Object.keys(scoped).filter((d) => Object.hasOwn(scoped, d));
        for (const d of names) authorize(request.principal!, user, 'read', d);
        const all = names
          .map((d) => ctx.accounts.getDevice(user, d))
          .filter((d): d is DeviceRecord => d !== undefined && matches(d))
          .sort((a, b) => (a.device < b.device ? -1 : 1));
        if (names.length === 0) authorize(request.principal!, user, 'read', '');
        reply.header('x-total-count', String(all.length));
        return all.slice(index, index + count).map(view);
      }
      authorize(request.principal!, user, 'read');
      reply.header('x-total-count', String(ctx.accounts.countDevices(user, name)));
      return ctx.accounts.listDevices(user, count, index, name).map(view);
    },
  );

  app.post<{
    Params: { user: string };
    Body: { device: string; credentials: string; name?: string; description?: string; enabled?: boolean };
  }>(
    '/v1/users/:user/devices',
    {
      schema: {
        summary: 'Create a device',
        params: userParams,
        body: {
          type: 'object',
          properties: {
            device: { type: 'string', pattern: ID_PATTERN },
            credentials: credentialSchema,
            name: { type: 'string', maxLength: 256 },
            description: { type: 'string', maxLength: 4096 },
            enabled: { type: 'boolean' },
            type: { type: 'string' },
          },
          required: ['device', 'credentials'],
          additionalProperties: false,
        },
        response: { 201: deviceSchema, ...errors },
      },
    },
    async (request, reply) => {
      const { user } = request.params;
      authorize(request.principal!, user, 'admin');
      const b = request.body;
      try {
        const record = ctx.accounts.createDevice({
          username: user,
          device: b.device,
          name: b.name ?? b.device,
          description: b.description ?? '',
          enabled: b.enabled ?? true,
          credentialHash: await hashSecret(b.credentials),
        });
        reply.code(201);
        return view(record);
      } catch (err) {
        if (err instanceof AlreadyExistsError)
          throw new HttpError(409, 'device_exists', `device ${b.device} already exists`);
        throw err;
      }
    },
  );

  app.get<{ Params: { user: string; device: string } }>(
    '/v1/users/:user/devices/:device',
    { schema: { summary: 'Get a device', params: deviceParams, response: { 200: deviceSchema, ...errors } } },
    async (request) => {
      const { user, device } = request.params;
      authorize(request.principal!, user, 'read', device);
      return view(getOr404(user, device));
    },
  );

  const update = async (
    user: string,
    device: string,
    b: { credentials?: string; name?: string; description?: string; enabled?: boolean },
  ) => {
    getOr404(user, device);
    const record = ctx.accounts.updateDevice(user, device, {
      name: b.name,
      description: b.description,
      enabled: b.enabled,
      credentialHash: b.credentials === undefined ? undefined : await hashSecret(b.credentials),
    });
    if (!record) throw new HttpError(404, 'device_not_found', `device ${device} does not exist`);
    // A disabled device, or one whose credentials changed, loses its live session.
    if (b.enabled === false || b.credentials !== undefined) ctx.hub.disconnect(user, device);
    return view(record);
  };
  const updateSchema = {
    params: deviceParams,
    body: {
      type: 'object',
      properties: {
        credentials: credentialSchema,
        name: { type: 'string', maxLength: 256 },
        description: { type: 'string', maxLength: 4096 },
        enabled: { type: 'boolean' },
      },
      additionalProperties: false,
    },
    response: { 200: deviceSchema, ...errors },
  } as const;
  for (const method of ['put', 'patch'] as const) {
    app[method]<{
      Params: { user: string; device: string };
      Body: { credentials?: string; name?: string; description?: string; enabled?: boolean };
    }>(
      '/v1/users/:user/devices/:device',
      {
        schema: { summary: 'Update a device (name, description, enabled, new credentials)', ...updateSchema },
      },
      async (request) => {
        const { user, device } = request.params;
        authorize(request.principal!, user, 'admin');
        return update(user, device, request.body ?? {});
      },
    );
  }

  app.delete<{ Params: { user: string; device: string } }>(
    '/v1/users/:user/devices/:device',
    {
      schema: {
        summary: 'Delete a device',
        params: deviceParams,
        response: { 200: deletedSchema, ...errors },
      },
    },
    async (request, reply) => {
      const { user, device } = request.params;
      authorize(request.principal!, user, 'admin');
      if (!ctx.accounts.deleteDevice(user, device))
        throw new HttpError(404, 'device_not_found', `device ${device} does not exist`);
      ctx.hub.disconnect(user, device);
      return sendDeleted(reply);
    },
  );

  // Also under /v1, where Thinger.io clients (thinr-cli, thinger-node) ask for it.
  for (const version of ['v3', 'v1'] as const)
    app.get<{ Params: { user: string; device: string } }>(
      `/${version}/users/:user/devices/:device/stats`,
      {
        schema: {
          summary: 'Connection state and traffic of a device',
          params: deviceParams,
          response: {
            200: {
              type: 'object',
              properties: {
                connected: { type: 'boolean' },
                connected_ts: { type: ['integer', 'null'] },
                ip_address: { type: ['string', 'null'] },
                rx_bytes: { type: 'integer' },
                tx_bytes: { type: 'integer' },
              },
            },
            ...errors,
          },
        },
      },
      async (request) => {
        const { user, device } = request.params;
        authorize(request.principal!, user, 'read', device);
        const record = getOr404(user, device);
        const live = ctx.hub.get(user, device);
        return {
          connected: live !== undefined,
          connected_ts: live?.connectedTs ?? record.lastConnectedTs,
          ip_address: live?.ip ?? record.lastIp,
          // Bytes as the device counts them: what it sent (rx here) and received (tx here).
          rx_bytes: live?.session.stats.rxBytes ?? 0,
          tx_bytes: live?.session.stats.txBytes ?? 0,
        };
      },
    );

  // --- access tokens

  const tokenView = (t: {
    id: string;
    name: string;
    scope: TokenScope;
    createdAt: number;
    expiresAt: number | null;
  }) => ({
    id: t.id,
    name: t.name,
    scope: t.scope,
    created: t.createdAt,
    expires: t.expiresAt,
  });
  const scopeSchema = {
    type: 'object',
    properties: {
      access: { type: 'string', enum: ['read', 'call'] },
      devices: {
        type: 'object',
        maxProperties: 1000,
        additionalProperties: {
          type: 'object',
          properties: {
            resources: {
              type: 'array',
              items: { type: 'string', minLength: 1, maxLength: 256 },
              maxItems: 1000,
            },
          },
          additionalProperties: false,
        },
      },
    },
    required: ['access'],
    additionalProperties: false,
  } as const;

  app.get<{ Params: { user: string } }>(
    '/v1/users/:user/tokens',
    { schema: { summary: 'List access tokens', params: userParams, response: { ...errors } } },
    async (request) => {
      const { user } = request.params;
      authorize(request.principal!, user, 'admin');
      return ctx.accounts.listAccessTokens(user).map(tokenView);
    },
  );

  app.post<{ Params: { user: string }; Body: { name: string; scope?: TokenScope; expires_in?: number } }>(
    '/v1/users/:user/tokens',
    {
      schema: {
        summary: 'Create an access token (the token is shown once)',
        params: userParams,
        body: {
          type: 'object',
          properties: {
            name: { type: 'string', minLength: 1, maxLength: 256 },
            scope: scopeSchema,
            expires_in: { type: 'integer', minimum: 60, maximum: 10 * 365 * 24 * 3600 },
          },
          required: ['name'],
          additionalProperties: false,
        },
        response: { ...errors },
      },
    },
    async (request, reply) => {
      const { user } = request.params;
      authorize(request.principal!, user, 'admin');
      const scope: TokenScope = request.body.scope ?? { access: 'call' };
      for (const d of Object.keys(scope.devices ?? {})) {
        if (!new RegExp(ID_PATTERN).test(d))
          throw new HttpError(400, 'invalid_request', `invalid device id in scope: ${d}`);
      }
      const { record, token } = await ctx.tokens.createAccessToken(
        user,
        request.body.name,
        scope,
        request.body.expires_in,
      );
      reply.code(201);
      return { ...tokenView(record), access_token: token };
    },
  );

  app.delete<{ Params: { user: string; id: string } }>(
    '/v1/users/:user/tokens/:id',
    {
      schema: {
        summary: 'Delete (revoke) an access token',
        params: {
          type: 'object',
          properties: {
            user: { type: 'string', pattern: ID_PATTERN },
            id: { type: 'string', pattern: ID_PATTERN },
          },
          required: ['user', 'id'],
        },
        response: { 200: deletedSchema, ...errors },
      },
    },
    async (request, reply) => {
      const { user, id } = request.params;
      authorize(request.principal!, user, 'admin');
      if (!ctx.accounts.deleteAccessToken(user, id))
        throw new HttpError(404, 'token_not_found', `token ${id} does not exist`);
      return sendDeleted(reply);
    },
  );
}
