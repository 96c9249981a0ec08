import type { FastifyInstance } from 'fastify';
import { authorizeProperties } from '../auth/tokens.js';
import { PropertyError, type PropertyRecord } from '../storage/properties.js';
import { type AppContext, deviceParams, ID_PATTERN } from './context.js';
import { deletedSchema, errorSchema, HttpError, sendDeleted } from './errors.js';

/*
 * Device properties over REST, in Thinger.io's shape (`/v3/users/{u}/devices/{d}/properties`):
 * a property is `{property, value, created_ts, modified_ts}`; GET of one property returns
 * that object (not the bare value); PUT takes `{value}` and creates or replaces; PATCH takes
 * `{value}` holding a JSON merge patch (RFC 7396) for an existing property. Values are any
 * JSON up to 64 KiB. Every change reaches subscribed devices and the events WebSocket.
 */

const errors = {
  400: errorSchema,
  401: errorSchema,
  403: errorSchema,
  404: errorSchema,
  409: errorSchema,
  413: errorSchema,
};

const propertySchema = {
  type: 'object',
  properties: {
    property: { type: 'string' },
    value: { description: 'any JSON value' },
    created_ts: { type: 'integer', description: 'ms since the epoch' },
    modified_ts: { type: 'integer', description: 'ms since the epoch' },
  },
  required: ['property', 'value'],
} as const;

const propertyParams = {
  type: 'object',
  properties: {
    user: { type: 'string', pattern: ID_PATTERN },
    device: { type: 'string', pattern: ID_PATTERN },
    property: { type: 'string', pattern: ID_PATTERN },
  },
  required: ['user', 'device', 'property'],
} as const;

const newProperty = {
  type: 'object',
  properties: {
    property: { type: 'string', pattern: ID_PATTERN },
    value: { description: 'any JSON value (at most 64 KiB as JSON)' },
  },
  required: ['property', 'value'],
  additionalProperties: false,
} as const;

/** Most properties one POST creates. */
const MAX_CREATE = 100;

interface NewProperty {
  property: string;
  value: unknown;
}

function view(r: PropertyRecord) {
  return { property: r.property, value: r.value, created_ts: r.createdTs, modified_ts: r.modifiedTs };
}

function asHttp(err: unknown): unknown {
  return err instanceof PropertyError ? new HttpError(err.status, err.code, err.message) : err;
}

export function registerPropertyRoutes(app: FastifyInstance, ctx: AppContext): void {
  const deviceMustExist = (user: string, device: string) => {
    if (!ctx.accounts.getDevice(user, device))
      throw new HttpError(404, 'device_not_found', `device ${device} does not exist`);
  };
  const store = ctx.properties;

  app.get<{ Params: { user: string; device: string } }>(
    '/v3/users/:user/devices/:device/properties',
    {
      schema: {
        summary: "List a device's properties",
        params: deviceParams,
        response: { 200: { type: 'array', items: propertySchema }, ...errors },
      },
    },
    async (request) => {
      const { user, device } = request.params;
      authorizeProperties(request.principal!, user, 'read', device);
      deviceMustExist(user, device);
      return store.list(user, device).map(view);
    },
  );

  app.post<{ Params: { user: string; device: string }; Body: NewProperty | NewProperty[] }>(
    '/v3/users/:user/devices/:device/properties',
    {
      schema: {
        summary: 'Create a property ({property, value}) or several (an array); 409 if one exists',
        params: deviceParams,
        body: {
          anyOf: [newProperty, { type: 'array', items: newProperty, minItems: 1, maxItems: MAX_CREATE }],
        },
        response: {
          201: { anyOf: [propertySchema, { type: 'array', items: propertySchema }] },
          ...errors,
        },
      },
    },
    async (request, reply) => {
      const { user, device } = request.params;
      authorizeProperties(request.principal!, user, 'call', device);
      deviceMustExist(user, device);
      const body = request.body;
      try {
        const created = store.create(user, device, Array.isArray(body) ? body : [body]);
        reply.code(201);
        return Array.isArray(body) ? created.map(view) : view(created[0] as PropertyRecord);
      } catch (err) {
        throw asHttp(err);
      }
    },
  );

  const getOr404 = (user: string, device: string, property: string): PropertyRecord => {
    const record = store.get(user, device, property);
    if (!record) throw new HttpError(404, 'property_not_found', `property ${property} does not exist`);
    return record;
  };

  app.get<{ Params: { user: string; device: string; property: string } }>(
    '/v3/users/:user/devices/:device/properties/:property',
    {
      schema: {
        summary: 'Get a property: {property, value, created_ts, modified_ts}',
        params: propertyParams,
        response: { 200: propertySchema, ...errors },
      },
    },
    async (request) => {
      const { user, device, property } = request.params;
      authorizeProperties(request.principal!, user, 'read', device);
      deviceMustExist(user, device);
      return view(getOr404(user, device, property));
    },
  );

  app.put<{ Params: { user: string; device: string; property: string }; Body: NewProperty }>(
    '/v3/users/:user/devices/:device/properties/:property',
    {
      schema: {
        summary: "Set a property's value ({value}); creates the property if needed",
        params: propertyParams,
        body: {
          type: 'object',
          properties: {
            value: { description: 'any JSON value (at most 64 KiB as JSON)' },
            property: { type: 'string', description: 'if given, the property of the path' },
          },
          required: ['value'],
          additionalProperties: false,
        },
        response: { 200: propertySchema, ...errors },
      },
    },
    async (request) => {
      const { user, device, property } = request.params;
      authorizeProperties(request.principal!, user, 'call', device);
      deviceMustExist(user, device);
      const body = request.body;
      if (body.property !== undefined && body.property !== property)
        throw new HttpError(
          400,
          'invalid_request',
          `body names property ${body.property}, the path ${property}`,
        );
      try {
        return view(store.set(user, device, property, body.value));
      } catch (err) {
        throw asHttp(err);
      }
    },
  );

  app.patch<{ Params: { user: string; device: string; property: string }; Body: { value: unknown } }>(
    '/v3/users/:user/devices/:device/properties/:property',
    {
      schema: {
        summary: "Merge into a property's value: {value: <JSON merge patch, RFC 7396>}",
        params: propertyParams,
        body: {
          type: 'object',
          properties: { value: { description: 'a JSON merge patch: objects merge, null removes a key' } },
          required: ['value'],
          additionalProperties: false,
        },
        response: { 200: propertySchema, ...errors },
      },
    },
    async (request) => {
      const { user, device, property } = request.params;
      authorizeProperties(request.principal!, user, 'call', device);
      deviceMustExist(user, device);
      try {
        return view(store.patch(user, device, property, request.body.value));
      } catch (err) {
        throw asHttp(err);
      }
    },
  );

  app.delete<{ Params: { user: string; device: string; property: string } }>(
    '/v3/users/:user/devices/:device/properties/:property',
    {
      schema: {
        summary: 'Delete a property',
        params: propertyParams,
        response: { 200: deletedSchema, ...errors },
      },
    },
    async (request, reply) => {
      const { user, device, property } = request.params;
      authorizeProperties(request.principal!, user, 'call', device);
      deviceMustExist(user, device);
      if (!store.delete(user, device, property))
        throw new HttpError(404, 'property_not_found', `property ${property} does not exist`);
      return sendDeleted(reply);
    },
  );
}
