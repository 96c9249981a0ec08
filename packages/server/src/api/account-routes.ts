import type { FastifyInstance } from 'fastify';
import { hashSecret } from '../auth/passwords.js';
import { PermissionError, scopeFromPermissions } from '../auth/permissions.js';
import { ANY_DEVICE, authorize, type Principal } from '../auth/tokens.js';
import {
  type AccessTokenPatch,
  type AccessTokenRecord,
  AlreadyExistsError,
  type DeviceRecord,
  type TokenPermissions,
  type TokenScope,
} from '../storage/accounts.js';
import { type AppContext, deviceParams, ID_PATTERN, userParams } from './context.js';
import { deletedSchema, errorSchema, HttpError, sendDeleted } from './errors.js';
import { filteredListQuery, nameFilter } from './name-filter.js';
import { SERVER_EVENT_LIST } from './ws-events.js';

const deviceSchema = {
  type: 'object',
  properties: {
    device: { type: 'string' },
    name: { type: 'string' },
    description: { type: 'string' },
    enabled: { type: 'boolean' },
    type: {
      type: 'string',
      description: 'Always "Generic" (an IOTMP device), as Thinger.io names such devices',
    },
    user: { type: 'string' },
    created: { type: 'integer' },
    updated: { type: 'integer' },
    modified: { type: 'integer', description: 'The same as `updated` (Thinger.io’s name)' },
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

/** Groupings a Thinger.io client may name when it creates or updates a device or bucket. */
export const ASSIGNABLE_GROUPINGS = ['product', 'asset_group', 'asset_type'] as const;

/** Schema of the groupings in create/update bodies ("" = none, as Thinger.io takes it). */
const groupingSchema = {
  type: 'string',
  maxLength: 128,
  description: 'Thinger.io grouping: only "" (none) is accepted here',
} as const;
export const groupingProperties = {
  product: groupingSchema,
  asset_group: groupingSchema,
  asset_type: groupingSchema,
} as const;

/**
 * Refuses a non-empty product, asset group or asset type in a create/update body (there are
 * none on this server: 404 as for a missing one); "" means none and is accepted.
 */
export function refuseGroupings(body: Partial<Record<(typeof ASSIGNABLE_GROUPINGS)[number], string>>): void {
  for (const g of ASSIGNABLE_GROUPINGS) {
    const value = body[g];
    if (value)
      throw new HttpError(404, `${g}_not_found`, `no ${g.replace('_', ' ')} ${value} (this server has none)`);
  }
}

/** Thinger.io device types: this server has "Generic" (IOTMP) devices only. */
function refuseType(type: string | undefined): void {
  if (type !== undefined && type !== 'Generic')
    throw new HttpError(
      400,
      'unsupported_device_type',
      `device type ${type} is not supported: this server has IOTMP devices only (type "Generic")`,
    );
}

type DeviceListQuery = { count?: number; index?: number; name?: string } & Partial<
  Record<(typeof GROUPINGS)[number], string>
>;

/** Access tokens one user may hold (device tokens included). */
const MAX_TOKENS_PER_USER = 1000;

/**
 * A token made or changed with an access token (not a login) may not outlive it: otherwise a
 * token about to expire could mint a permanent one. Returns the expiry to store.
 */
function withinCallersExpiry(caller: Principal, expiresAt: number | null): number | null {
  const callerExpiresAt = caller.expiresAt;
  if (callerExpiresAt === undefined || callerExpiresAt === null) return expiresAt;
  if (expiresAt === null || expiresAt > callerExpiresAt)
    throw new HttpError(
      403,
      'forbidden',
      `this access token expires at ${new Date(callerExpiresAt).toISOString()}: tokens it makes or changes must expire by then (log in to make longer-lived ones)`,
    );
  return expiresAt;
}

export function registerAccountRoutes(app: FastifyInstance, ctx: AppContext): void {
  const view = (d: DeviceRecord) => {
    const live = ctx.hub.get(d.username, d.device);
    return {
      device: d.device,
      name: d.name,
      description: d.description,
      enabled: d.enabled,
      type: 'Generic',
      user: d.username,
      created: d.createdAt,
      updated: d.updatedAt,
      modified: d.updatedAt,
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
          'List devices (`name`: a case-insensitive regular expression searched in ids and names; product/asset/project filters find nothing: there are none)',
        params: userParams,
        querystring: {
          type: 'object',
          properties: {
            ...filteredListQuery,
            ...Object.fromEntries(GROUPINGS.map((g) => [g, { type: 'string', maxLength: 128 }])),
            authorization: { type: 'string' },
          },
        },
        response: { 200: { type: 'array', items: deviceSchema }, ...errors },
      },
    },
    async (request, reply) => {
      const { user } = request.params;
      const { count = 100, index = 0 } = request.query;
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
      const filter = nameFilter(request.query.name, 'devices');
      const matches = (d: DeviceRecord) => filter === undefined || filter.matches(d.device, d.name);
      const scoped = request.principal?.scope?.devices;
      if (scoped && !Object.hasOwn(scoped, ANY_DEVICE)) {
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
      // A token for every device (and nothing else) lists them all.
      authorize(request.principal!, user, 'read', scoped ? ANY_DEVICE : undefined);
      if (filter !== undefined && filter.text === undefined) {
        const { page, total } = ctx.accounts.filterDevices(user, filter.matches, count, index);
        reply.header('x-total-count', String(total));
        return page.map(view);
      }
      reply.header('x-total-count', String(ctx.accounts.countDevices(user, filter?.text)));
      return ctx.accounts.listDevices(user, count, index, filter?.text).map(view);
    },
  );

  type DeviceBody = {
    device: string;
    credentials: string;
    name?: string;
    description?: string;
    enabled?: boolean;
    type?: string;
  } & Partial<Record<(typeof ASSIGNABLE_GROUPINGS)[number], string>>;

  app.post<{ Params: { user: string }; Body: DeviceBody }>(
    '/v1/users/:user/devices',
    {
      schema: {
        summary: 'Create a device',
        description:
          'Thinger.io clients may send `type` (only "Generic": IOTMP devices) and `product`/`asset_group`/`asset_type` (only "": this server has none).',
        params: userParams,
        body: {
          type: 'object',
          properties: {
            device: { type: 'string', pattern: ID_PATTERN },
            credentials: credentialSchema,
            name: { type: 'string', maxLength: 256 },
            description: { type: 'string', maxLength: 4096 },
            enabled: { type: 'boolean' },
            type: { type: 'string', maxLength: 32 },
            ...groupingProperties,
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
      refuseType(b.type);
      refuseGroupings(b);
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
        type: { type: 'string', maxLength: 32 },
        ...groupingProperties,
      },
      additionalProperties: false,
    },
    response: { 200: deviceSchema, ...errors },
  } as const;
  for (const method of ['put', 'patch'] as const) {
    app[method]<{
      Params: { user: string; device: string };
      Body: Partial<Omit<DeviceBody, 'device'>>;
    }>(
      '/v1/users/:user/devices/:device',
      {
        schema: { summary: 'Update a device (name, description, enabled, new credentials)', ...updateSchema },
      },
      async (request) => {
        const { user, device } = request.params;
        authorize(request.principal!, user, 'admin');
        const body = request.body ?? {};
        refuseType(body.type);
        refuseGroupings(body);
        return update(user, device, body);
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

  app.get<{ Params: { user: string } }>(
    '/v1/users/:user/info/devices/stats',
    {
      schema: {
        summary: 'How many devices the user has, and how many are connected',
        description:
          "Thinger.io's ReadDevicesStatistics (its fields are not documented; thinger-node calls it). A token limited to some devices counts those.",
        params: userParams,
        response: {
          200: {
            type: 'object',
            properties: {
              devices: { type: 'integer', description: 'Devices of the user' },
              connected: { type: 'integer', description: 'Of them, connected now' },
              disconnected: { type: 'integer' },
            },
          },
          ...errors,
        },
      },
    },
    async (request) => {
      const { user } = request.params;
      const scoped = request.principal?.scope?.devices;
      let devices: number;
      let connected: number;
      if (scoped && !Object.hasOwn(scoped, ANY_DEVICE)) {
        const names = Object.keys(scoped).filter((d) => Object.hasOwn(scoped, d));
        if (names.length === 0) authorize(request.principal!, user, 'read', '');
        for (const d of names) authorize(request.principal!, user, 'read', d);
        const existing = names.filter((d) => ctx.accounts.getDevice(user, d) !== undefined);
        devices = existing.length;
        connected = existing.filter((d) => ctx.hub.get(user, d) !== undefined).length;
      } else {
        authorize(request.principal!, user, 'read', scoped ? ANY_DEVICE : undefined);
        devices = ctx.accounts.countDevices(user);
        connected = ctx.hub.devicesOf(user).length;
      }
      return { devices, connected, disconnected: Math.max(0, devices - connected) };
    },
  );

  // --- access tokens
  //
  // Two request forms: this server's ({name, scope?, expires_in?}) and Thinger.io's ({token,
  // name, description?, enabled?, allow, deny?, expire?}: thinr-cli logs in this way). A token
  // is named in paths by its key: the `token` given, or its generated `id`. The JWT
  // (`access_token`) is shown once, when the token is created.

  const tokenView = (t: AccessTokenRecord) => ({
    id: t.id,
    token: t.token,
    name: t.name,
    description: t.description,
    enabled: t.enabled,
    scope: t.scope,
    ...(t.permissions ? { allow: t.permissions.allow, deny: t.permissions.deny } : {}),
    created: t.createdAt,
    modified: t.updatedAt,
    expires: t.expiresAt,
    ...(t.expiresAt !== null ? { expire: Math.floor(t.expiresAt / 1000) } : {}),
  });
  const tokenSchema = {
    type: 'object',
    properties: {
      id: { type: 'string', description: 'Generated id (also accepted in paths)' },
      token: { type: 'string', description: 'The key naming the token in paths' },
      name: { type: 'string' },
      description: { type: 'string' },
      enabled: { type: 'boolean' },
      scope: {
        type: 'object',
        properties: {
          access: { type: 'string', enum: ['read', 'call', 'admin'] },
          devices: {
            type: 'object',
            additionalProperties: {
              type: 'object',
              properties: { resources: { type: 'array', items: { type: 'string' } } },
            },
          },
        },
      },
      allow: { type: 'object', additionalProperties: true, description: 'As given (Thinger.io form)' },
      deny: { type: 'object', additionalProperties: true },
      created: { type: 'integer' },
      modified: { type: 'integer' },
      expires: { type: ['integer', 'null'], description: 'ms since 1970, or null: never' },
      expire: {
        type: 'integer',
        description: 'Expiry in seconds since 1970 (Thinger.io form), when there is one',
      },
      access_token: { type: 'string', description: 'The token: only in the answer to its creation' },
    },
  } as const;
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
  /** Thinger.io permission tree (checked further by scopeFromPermissions). */
  const permissionSchema = {
    anyOf: [
      { type: 'null' },
      {
        type: 'object',
        maxProperties: 64,
        additionalProperties: {
          type: 'object',
          maxProperties: 1000,
          additionalProperties: {
            anyOf: [
              { type: 'string', maxLength: 64 },
              {
                type: 'array',
                maxItems: 100,
                items: { anyOf: [{ type: 'string', maxLength: 64 }, { type: 'object' }] },
              },
            ],
          },
        },
      },
    ],
  } as const;
  /** Thinger.io's `expire`: seconds since 1970 (0: never), at most ten years ahead. */
  const expireSchema = { type: 'integer', minimum: 0 } as const;
  const TEN_YEARS_S = 10 * 365 * 24 * 3600;
  const expireAt = (expire: number | undefined): number | null | undefined => {
    if (expire === undefined) return undefined;
    if (expire === 0) return null;
    const now = Date.now();
    if (expire * 1000 <= now)
      throw new HttpError(400, 'invalid_request', 'expire is in the past (seconds since 1970 expected)');
    if (expire * 1000 > now + TEN_YEARS_S * 1000)
      throw new HttpError(
        400,
        'invalid_request',
        'expire is more than ten years ahead (seconds since 1970 expected)',
      );
    return expire * 1000;
  };
  const scopeOf = (allow: unknown, deny: unknown): { scope: TokenScope; permissions: TokenPermissions } => {
    try {
      const scope = scopeFromPermissions(allow, deny);
      return {
        scope,
        permissions: {
          allow: allow as Record<string, unknown>,
          deny: (deny ?? {}) as Record<string, unknown>,
        },
      };
    } catch (err) {
      if (err instanceof PermissionError) throw new HttpError(400, 'invalid_request', err.message);
      throw err;
    }
  };
  const checkScopeDevices = (scope: TokenScope) => {
    for (const d of Object.keys(scope.devices ?? {})) {
      if (!new RegExp(ID_PATTERN).test(d))
        throw new HttpError(400, 'invalid_request', `invalid device id in scope: ${d}`);
    }
  };
  const tokenParams = {
    type: 'object',
    properties: {
      user: { type: 'string', pattern: ID_PATTERN },
      id: { type: 'string', pattern: ID_PATTERN },
    },
    required: ['user', 'id'],
  } as const;
  const tokenOr404 = (user: string, id: string): AccessTokenRecord => {
    const t = ctx.accounts.findAccessToken(user, id);
    if (!t) throw new HttpError(404, 'token_not_found', `token ${id} does not exist`);
    return t;
  };
  const createToken = async (
    user: string,
    input: Parameters<typeof ctx.tokens.createAccessToken>[1],
    reply: { code(n: number): unknown },
  ) => {
    // Every request with a token reads its record: a user's tokens are bounded like their other assets.
    if (ctx.accounts.listAccessTokens(user).length >= MAX_TOKENS_PER_USER)
      throw new HttpError(
        409,
        'too_many_tokens',
        `at most ${MAX_TOKENS_PER_USER} access tokens per user: delete unused ones first`,
      );
    try {
      const { record, token } = await ctx.tokens.createAccessToken(user, input);
      reply.code(201);
      return { ...tokenView(record), access_token: token };
    } catch (err) {
      if (err instanceof AlreadyExistsError)
        throw new HttpError(409, 'token_exists', `token ${input.token ?? ''} already exists`);
      throw err;
    }
  };

  app.get<{ Params: { user: string }; Querystring: { count?: number; index?: number; name?: string } }>(
    '/v1/users/:user/tokens',
    {
      schema: {
        summary: 'List access tokens (without their JWT); `name`: those whose key or name contains it',
        params: userParams,
        querystring: {
          type: 'object',
          properties: {
            count: { type: 'integer', minimum: 1, maximum: 1000 },
            index: { type: 'integer', minimum: 0, default: 0 },
            name: { type: 'string', maxLength: 128 },
            authorization: { type: 'string' },
          },
        },
        response: { 200: { type: 'array', items: tokenSchema }, ...errors },
      },
    },
    async (request, reply) => {
      const { user } = request.params;
      const { count, index = 0, name } = request.query;
      authorize(request.principal!, user, 'admin');
      const needle = name?.toLowerCase();
      const all = ctx.accounts
        .listAccessTokens(user)
        .filter(
          (t) => !needle || t.token.toLowerCase().includes(needle) || t.name.toLowerCase().includes(needle),
        );
      reply.header('x-total-count', String(all.length));
      return all.slice(index, count === undefined ? undefined : index + count).map(tokenView);
    },
  );

  type TokenBody = {
    name: string;
    scope?: TokenScope;
    expires_in?: number;
    token?: string;
    description?: string;
    enabled?: boolean;
    allow?: unknown;
    deny?: unknown;
    expire?: number;
  };
  app.post<{ Params: { user: string }; Body: TokenBody }>(
    '/v1/users/:user/tokens',
    {
      schema: {
        summary: 'Create an access token (the token is shown once)',
        description:
          'This server\'s form: {name, scope?, expires_in?}. Thinger.io\'s form: {token, name, description?, enabled?, allow, deny?, expire?}, where `allow` is {"*": {"*": "*"}} (everything), {"*": {"*": ["Read…"]}} (read everything) or {"Device": {"<device>"|"*": "*"|["Read…", "AccessDeviceResources"]}}, `deny` must be empty and `expire` is in seconds since 1970.',
        params: userParams,
        body: {
          type: 'object',
          properties: {
            name: { type: 'string', minLength: 1, maxLength: 256 },
            scope: scopeSchema,
            expires_in: { type: 'integer', minimum: 60, maximum: TEN_YEARS_S },
            token: { type: 'string', pattern: ID_PATTERN },
            description: { type: 'string', maxLength: 4096 },
            enabled: { type: 'boolean' },
            allow: permissionSchema,
            deny: permissionSchema,
            expire: expireSchema,
          },
          required: ['name'],
          additionalProperties: false,
        },
        response: { 201: tokenSchema, ...errors },
      },
    },
    async (request, reply) => {
      const { user } = request.params;
      authorize(request.principal!, user, 'admin');
      const b = request.body;
      if (b.scope !== undefined && (b.allow !== undefined || b.deny !== undefined))
        throw new HttpError(400, 'invalid_request', 'give either scope or allow/deny, not both');
      if (b.expires_in !== undefined && b.expire !== undefined)
        throw new HttpError(400, 'invalid_request', 'give either expires_in or expire, not both');
      let scope: TokenScope = b.scope ?? { access: 'call' };
      let permissions: TokenPermissions | null = null;
      if (b.allow !== undefined && b.allow !== null) ({ scope, permissions } = scopeOf(b.allow, b.deny));
      else if (b.deny !== undefined && b.deny !== null)
        throw new HttpError(400, 'invalid_request', 'deny needs allow');
      else checkScopeDevices(scope);
      const expiresAt = withinCallersExpiry(
        request.principal!,
        b.expires_in !== undefined ? Date.now() + b.expires_in * 1000 : (expireAt(b.expire) ?? null),
      );
      return createToken(
        user,
        {
          token: b.token,
          name: b.name,
          description: b.description,
          enabled: b.enabled,
          scope,
          permissions,
          expiresAt,
        },
        reply,
      );
    },
  );

  app.get<{ Params: { user: string; id: string } }>(
    '/v1/users/:user/tokens/:id',
    {
      schema: {
        summary: 'Get an access token (by key or id), without its JWT',
        params: tokenParams,
        response: { 200: tokenSchema, ...errors },
      },
    },
    async (request) => {
      const { user, id } = request.params;
      authorize(request.principal!, user, 'admin');
      return tokenView(tokenOr404(user, id));
    },
  );

  for (const method of ['put', 'patch'] as const)
    app[method]<{
      Params: { user: string; id: string };
      Body: Omit<TokenBody, 'name' | 'token'> & { name?: string };
    }>(
      '/v1/users/:user/tokens/:id',
      {
        schema: {
          summary: 'Update an access token: name, description, enabled, expire, allow/deny or scope',
          params: tokenParams,
          body: {
            type: 'object',
            properties: {
              name: { type: 'string', minLength: 1, maxLength: 256 },
              description: { type: 'string', maxLength: 4096 },
              enabled: { type: 'boolean' },
              expire: expireSchema,
              allow: permissionSchema,
              deny: permissionSchema,
              scope: scopeSchema,
            },
            additionalProperties: false,
          },
          response: { 200: tokenSchema, ...errors },
        },
      },
      async (request) => {
        const { user, id } = request.params;
        authorize(request.principal!, user, 'admin');
        const current = tokenOr404(user, id);
        const b = request.body ?? {};
        if (b.scope !== undefined && (b.allow !== undefined || b.deny !== undefined))
          throw new HttpError(400, 'invalid_request', 'give either scope or allow/deny, not both');
        const expire = expireAt(b.expire);
        const patch: AccessTokenPatch = {
          name: b.name,
          description: b.description,
          enabled: b.enabled,
          expiresAt: expire === undefined ? undefined : withinCallersExpiry(request.principal!, expire),
        };
        if (b.scope !== undefined) {
          checkScopeDevices(b.scope);
          patch.scope = b.scope;
          patch.permissions = null;
        } else if (b.allow !== undefined || b.deny !== undefined) {
          const allow = b.allow !== undefined ? b.allow : current.permissions?.allow;
          if (allow === undefined || allow === null)
            throw new HttpError(400, 'invalid_request', 'deny needs allow');
          const deny = b.deny !== undefined ? b.deny : current.permissions?.deny;
          const mapped = scopeOf(allow, deny);
          patch.scope = mapped.scope;
          patch.permissions = mapped.permissions;
        }
        const updated = ctx.accounts.updateAccessToken(user, current.id, patch);
        if (!updated) throw new HttpError(404, 'token_not_found', `token ${id} does not exist`);
        return tokenView(updated);
      },
    );

  app.delete<{ Params: { user: string; id: string } }>(
    '/v1/users/:user/tokens/:id',
    {
      schema: {
        summary: 'Delete (revoke) an access token (by key or id)',
        params: tokenParams,
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

  // --- device tokens (Thinger.io: {token_name, token_resources?, token_expiration?}): access
  // tokens that read and call one device (all its resources, or those listed).

  const isDeviceToken = (t: AccessTokenRecord, device: string) => {
    const devices = t.scope.devices;
    return (
      t.permissions === null &&
      t.scope.access === 'call' &&
      devices !== undefined &&
      Object.keys(devices).length === 1 &&
      Object.hasOwn(devices, device)
    );
  };
  const deviceTokenView = (t: AccessTokenRecord, device: string) => ({
    ...tokenView(t),
    token_name: t.name,
    token_resources: t.scope.devices?.[device]?.resources ?? null,
    token_expiration: t.expiresAt === null ? null : Math.floor(t.expiresAt / 1000),
  });
  const deviceTokenSchema = {
    type: 'object',
    properties: {
      ...tokenSchema.properties,
      token_name: { type: 'string' },
      token_resources: { type: ['array', 'null'], items: { type: 'string' } },
      token_expiration: { type: ['integer', 'null'], description: 'seconds since 1970, or null: never' },
    },
  } as const;

  app.get<{ Params: { user: string; device: string } }>(
    '/v1/users/:user/devices/:device/tokens',
    {
      schema: {
        summary: "List a device's tokens (access tokens for that device only)",
        params: deviceParams,
        response: { 200: { type: 'array', items: deviceTokenSchema }, ...errors },
      },
    },
    async (request) => {
      const { user, device } = request.params;
      authorize(request.principal!, user, 'admin');
      getOr404(user, device);
      return ctx.accounts
        .listAccessTokens(user)
        .filter((t) => isDeviceToken(t, device))
        .map((t) => deviceTokenView(t, device));
    },
  );

  app.post<{
    Params: { user: string; device: string };
    Body: { token_name: string; token_resources?: string[]; token_expiration?: number };
  }>(
    '/v1/users/:user/devices/:device/tokens',
    {
      schema: {
        summary: 'Create a device token: reads and calls this device (all resources, or `token_resources`)',
        params: deviceParams,
        body: {
          type: 'object',
          properties: {
            token_name: { type: 'string', minLength: 1, maxLength: 256 },
            token_resources: {
              type: 'array',
              minItems: 1,
              maxItems: 1000,
              items: { type: 'string', minLength: 1, maxLength: 256 },
            },
            token_expiration: expireSchema,
          },
          required: ['token_name'],
          additionalProperties: false,
        },
        response: { 201: deviceTokenSchema, ...errors },
      },
    },
    async (request, reply) => {
      const { user, device } = request.params;
      authorize(request.principal!, user, 'admin');
      getOr404(user, device);
      const b = request.body;
      const grant = b.token_resources ? { resources: b.token_resources } : {};
      const devices: Record<string, { resources?: string[] }> = {};
      Object.defineProperty(devices, device, {
        value: grant,
        enumerable: true,
        writable: true,
        configurable: true,
      });
      const created = (await createToken(
        user,
        {
          name: b.token_name,
          scope: { access: 'call', devices },
          expiresAt: withinCallersExpiry(request.principal!, expireAt(b.token_expiration) ?? null),
        },
        reply,
      )) as ReturnType<typeof tokenView> & { access_token: string };
      const record = ctx.accounts.getAccessToken(created.id) as AccessTokenRecord;
      return { ...deviceTokenView(record, device), access_token: created.access_token };
    },
  );

  app.delete<{ Params: { user: string; device: string; id: string } }>(
    '/v1/users/:user/devices/:device/tokens/:id',
    {
      schema: {
        summary: 'Delete a device token',
        params: {
          type: 'object',
          properties: {
            user: { type: 'string', pattern: ID_PATTERN },
            device: { type: 'string', pattern: ID_PATTERN },
            id: { type: 'string', pattern: ID_PATTERN },
          },
          required: ['user', 'device', 'id'],
        },
        response: { 200: deletedSchema, ...errors },
      },
    },
    async (request, reply) => {
      const { user, device, id } = request.params;
      authorize(request.principal!, user, 'admin');
      const t = ctx.accounts.findAccessToken(user, id);
      if (!t || !isDeviceToken(t, device))
        throw new HttpError(404, 'token_not_found', `device ${device} has no token ${id}`);
      ctx.accounts.deleteAccessToken(user, t.id);
      return sendDeleted(reply);
    },
  );

  // --- what Thinger.io clients read about the user and the server

  app.get<{ Params: { user: string } }>(
    '/v1/users/:user',
    {
      schema: {
        summary: 'The user (Thinger.io profile form: `user`, `role`, `created`)',
        params: userParams,
        response: {
          200: {
            type: 'object',
            properties: {
              user: { type: 'string' },
              role: { type: 'string', enum: ['user'] },
              created: { type: 'integer' },
            },
          },
          ...errors,
        },
      },
    },
    async (request) => {
      const { user } = request.params;
      authorize(request.principal!, user, 'read');
      const record = ctx.accounts.getUser(user);
      if (!record) throw new HttpError(404, 'user_not_found', `user ${user} does not exist`);
      return { user: record.username, role: 'user', created: record.createdAt };
    },
  );

  // Thinger.io groupings clients list (Node-RED's editor, thinr-cli's product commands): none here.
  for (const kind of ['products', 'projects', 'groups', 'types'] as const)
    app.get<{ Params: { user: string } }>(
      `/v1/users/:user/${kind}`,
      {
        schema: {
          summary: `Thinger.io ${kind}: none on this server (an empty list)`,
          params: userParams,
          querystring: {
            type: 'object',
            properties: {
              count: { type: 'integer', minimum: 1, maximum: 1000 },
              index: { type: 'integer', minimum: 0 },
              name: { type: 'string', maxLength: 128 },
              project: { type: 'string', maxLength: 128 },
              authorization: { type: 'string' },
            },
          },
          response: { 200: { type: 'array', maxItems: 0, items: {} }, ...errors },
        },
      },
      async (request, reply) => {
        authorize(request.principal!, request.params.user, 'read');
        reply.header('x-total-count', '0');
        return [];
      },
    );

  // thinr-cli checks a token by listing proxies: this server has none.
  app.get(
    '/v1/proxies',
    {
      schema: {
        summary: 'Proxies: none on this server (any valid token may ask)',
        response: { 200: { type: 'array', maxItems: 0, items: {} }, ...errors },
      },
    },
    async () => [],
  );

  // Public, like /v1/server/version: the Node-RED editor asks without a token.
  app.get(
    '/v1/server/assets',
    {
      schema: {
        summary: 'The kinds of assets this server has, and the path listing each (Thinger.io form)',
        response: {
          200: {
            type: 'array',
            items: {
              type: 'object',
              properties: {
                asset: { type: 'string' },
                category: { type: 'string' },
                paths: { type: 'object', properties: { list: { type: 'string' } } },
                role: { type: 'string' },
              },
            },
          },
        },
      },
    },
    async () => SERVER_ASSETS,
  );

  app.get(
    '/v1/server/events',
    {
      schema: {
        summary: 'The server events and their filters (Thinger.io form)',
        response: {
          200: {
            type: 'array',
            items: {
              type: 'object',
              properties: {
                event: { type: 'string' },
                filters: {
                  type: 'array',
                  items: {
                    type: 'object',
                    properties: {
                      field: { type: 'string' },
                      hints: { type: 'array', items: { type: 'string' } },
                    },
                  },
                },
                role: { type: 'string' },
              },
            },
          },
        },
      },
    },
    async () => SERVER_EVENT_LIST,
  );
}

/** The user part of asset list paths, in the form Thinger.io clients substitute. */
const USER_IN_PATH = '(?<user>[A-Za-z0-9][A-Za-z0-9_.@-]{0,127})';
const SERVER_ASSETS = (['bucket', 'device', 'endpoint', 'token'] as const).map((asset) => ({
  asset,
  category: asset,
  paths: { list: `v1/users/${USER_IN_PATH}/${asset}s` },
  role: 'user',
}));
