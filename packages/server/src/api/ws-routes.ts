import type { IncomingMessage } from 'node:http';
import type { PsonValue } from '@iotmp/pson';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { AuthFailure, authorize, type Principal } from '../auth/tokens.js';
import {
  type SharedStreams,
  type StreamFailure,
  StreamNotOpenError,
  type StreamStop,
  type StreamSubscription,
} from '../streams/shared-streams.js';
import { type AppContext, deviceParams, ID_PATTERN, userParams } from './context.js';
import { errorBody, errorSchema, HttpError } from './errors.js';
import { jsonToPson } from './json.js';
import {
  BoundedSender,
  checkKeys,
  errorPayload,
  FrameError,
  type FrameSink,
  frameBytes,
  parseFrame,
  payloadJson,
} from './ws-common.js';
import { type EventsDialect, serveEvents } from './ws-events.js';

export { BoundedSender, type FrameSink, type ServerFrame } from './ws-common.js';

/*
 * The WebSocket API.
 *
 * - `/v3/users/{u}/devices/{d}/resources/{res}?interval=N`: one resource. N in seconds
 *   (fractions allowed, at least 0.1); no interval (or 0) = the device's own events.
 *   `cmd`, `timeout` (seconds), `cols`, `rows` go to the device as START_STREAM parameters
 *   (thinr-cli's `$cmd/{session}?cmd=…&timeout=…` command streams; only subscribers with the
 *   same parameters share a device stream). `raw=1`: no JSON envelope — device strings and
 *   bytes arrive as text and binary frames, client text and binary frames go to the device as
 *   strings and bytes (thinr-cli's `$terminal/{session}?raw=1` console). Such session sockets
 *   (raw, or with parameters) are refused (404 device_offline) when the device is not
 *   connected, and close when their stream stops (1000: the device ended it; 4503: the
 *   device disconnected), after a stop frame when not raw: re-opening would start the
 *   session (the command) again.
 * - `/v3/users/{u}/devices/{d}/resources`: many resources, driven by control frames
 *   `{"resource", "interval"?, "enabled"?}` (`enabled: false` removes one; interval in
 *   seconds, as Node-RED's thinger-server node sends it).
 * - `/v2/users/{u}/events` and `/v1/users/{u}/events`: server events (ws-events.ts), among
 *   them `device_resource_stream`, a resource of every matching device.
 *
 * Server frames: `{resource|event, signal: "start"|"stop"|"data"|"error", payload}`; binary
 * inside a payload is `{"bytes": [...]}`, as Thinger.io writes it. Client frames
 * `{resource, payload}` go to the device as STREAM_DATA on that resource's stream (on the
 * one-resource socket `resource` may be left out); input sent before the device stream first
 * opened waits for it (bounded).
 *
 * The two /v3 paths also serve plain HTTP GET (resource-routes.ts). A route constraint on
 * the Upgrade header sends WebSocket upgrades to the routes here and everything else there.
 */

export interface WsRoutesOptions {
  /** The shared stream manager to use (default: a new one on ctx.hub, closed with the app). */
  streams?: SharedStreams;
  /** Bytes a consumer may leave unread before data frames to it are dropped (default 1 MiB). */
  maxBufferedBytes?: number;
}

/** Smallest interval a subscriber may ask for (ms). */
const MIN_INTERVAL_MS = 100;
const MAX_INTERVAL_SECONDS = 86_400;
/** Resources one multi-resource socket may subscribe to. */
const MAX_SUBSCRIPTIONS = 64;
const MAX_RESOURCE_LENGTH = 1024;
/** Input a one-resource socket may queue before its device stream first opens. */
const MAX_PENDING_INPUTS = 1024;
const MAX_PENDING_BYTES = 1 << 20;
const WS_CONSTRAINT = 'iotmpWebSocketUpgrade';

/** A WebSocket interval (seconds) in ms; 0 = no interval (events). A string says what is wrong. */
export function intervalMs(value: unknown): number | string {
  if (value === undefined || value === null) return 0;
  if (typeof value !== 'number' || !Number.isFinite(value))
    return 'interval must be a number of seconds (or absent for the device events)';
  if (value < 0 || value > MAX_INTERVAL_SECONDS)
    return `interval must be between ${MIN_INTERVAL_MS / 1000} and ${MAX_INTERVAL_SECONDS} seconds`;
  if (value === 0) return 0;
  const ms = Math.round(value * 1000);
  if (ms < MIN_INTERVAL_MS)
    return `interval must be at least ${MIN_INTERVAL_MS / 1000} s (or absent for the device events)`;
  return ms;
}

function resourceOf(frame: Record<string, unknown>): string {
  const r = frame.resource;
  if (typeof r !== 'string' || r.length === 0 || r.length > MAX_RESOURCE_LENGTH)
    throw new FrameError(
      'invalid_frame',
      `resource must be a non-empty string of at most ${MAX_RESOURCE_LENGTH} characters`,
    );
  return r;
}

function isUpgrade(req: IncomingMessage): boolean {
  const upgrade = req.headers.upgrade;
  const connection = req.headers.connection;
  return (
    typeof upgrade === 'string' &&
    upgrade.toLowerCase() === 'websocket' &&
    typeof connection === 'string' &&
    connection.toLowerCase().includes('upgrade')
  );
}

/** A close reason fits in 123 bytes. */
function closeReason(text: string): string {
  let out = text;
  while (Buffer.byteLength(out) > 123) out = out.slice(0, -1);
  return out;
}

const CLOSE_CODE: Record<StreamFailure['code'], number> = {
  resource_not_found: 4404,
  device_error: 4500,
  device_timeout: 4504,
  too_many_streams: 4429,
};
/** Session sockets (raw, or with stream parameters) close when their stream stops. */
const SESSION_STOP_CODE: Record<StreamStop['code'], number> = {
  stream_ended: 1000,
  device_offline: 4503,
};

/** Bytes of a received message (ws hands a Buffer, an ArrayBuffer or fragments). */
function byteLengthOf(data: unknown): number {
  if (Array.isArray(data)) return data.reduce((n: number, b: Buffer) => n + b.byteLength, 0);
  return (data as { byteLength?: number }).byteLength ?? 0;
}

/** The query parameters of a one-resource socket that go to the device in START_STREAM. */
const STREAM_PARAMETERS = ['cmd', 'timeout', 'cols', 'rows'] as const;

interface OneQuery {
  interval?: number;
  raw?: string;
  cmd?: string;
  timeout?: number;
  cols?: number;
  rows?: number;
}

function isRaw(query: OneQuery): boolean {
  return query.raw === '1' || query.raw === 'true';
}

/**
 * A one-resource socket is a session (thinr-cli's console or command) when raw or given
 * stream parameters: it needs the device connected when it opens, and ends with its stream.
 */
function isSession(query: OneQuery): boolean {
  return isRaw(query) || streamParameters(query) !== undefined;
}

function streamParameters(query: OneQuery): Record<string, PsonValue> | undefined {
  let out: Record<string, PsonValue> | undefined;
  for (const k of STREAM_PARAMETERS) {
    const v = query[k];
    if (v === undefined) continue;
    out ??= {};
    out[k] = v;
  }
  return out;
}

export function registerWsRoutes(
  app: FastifyInstance,
  ctx: AppContext,
  options?: WsRoutesOptions,
): { streams: SharedStreams } {
  const streams = options?.streams ?? ctx.streams;
  const maxBuffered = options?.maxBufferedBytes ?? 1 << 20;
  const maxFrameBytes = ctx.config.maxFrameSize;
  const sender = (socket: FrameSink) =>
    new BoundedSender(socket, maxBuffered, () => ctx.metrics.wsDropped.inc());

  // Sockets opened with an API access token, by token id. Changing, disabling or deleting the
  // token, or its expiry passing, closes them (4401): the client connects again and gets what
  // the token allows now. (Login tokens are not stored; their sockets live on.)
  const tokenSockets = new Map<string, Set<WatchedSocket>>();
  ctx.accounts.onTokenChange((id) => {
    for (const s of tokenSockets.get(id) ?? [])
      s.close(4401, 'access token changed or revoked: connect again');
  });
  const watchToken = (principal: Principal, socket: WatchedSocket) => {
    const id = principal.tokenId;
    if (id === undefined) return;
    const sockets = tokenSockets.get(id) ?? new Set<WatchedSocket>();
    tokenSockets.set(id, sockets);
    sockets.add(socket);
    let timer: NodeJS.Timeout | undefined;
    const checkExpiry = () => {
      const expiresAt = ctx.accounts.getAccessToken(id)?.expiresAt;
      if (expiresAt === null || expiresAt === undefined) return;
      const left = expiresAt - Date.now();
      if (left <= 0) socket.close(4401, 'access token expired');
      // (Timers hold at most ~24.8 days: a later expiry is checked again then.)
      else timer = setTimeout(checkExpiry, Math.min(left + 1, 2 ** 31 - 1)).unref();
    };
    checkExpiry();
    socket.once('close', () => {
      clearTimeout(timer);
      sockets.delete(socket);
      if (sockets.size === 0) tokenSockets.delete(id);
    });
  };

  if (!app.hasConstraintStrategy(WS_CONSTRAINT)) {
    app.addConstraintStrategy({
      name: WS_CONSTRAINT,
      mustMatchWhenDerived: false,
      storage() {
        const handlers = new Map<unknown, never>();
        return {
          get: (value: unknown) => handlers.get(value) ?? null,
          set: (value: unknown, handler: never) => {
            handlers.set(value, handler);
          },
        };
      },
      deriveConstraint: (req: IncomingMessage) => (isUpgrade(req) ? 'websocket' : undefined),
    } as never);
  }

  const principalOf = (request: FastifyRequest): Principal => request.principal as Principal;
  /** What watchToken needs of a socket. */
  type WatchedSocket = {
    close(code: number, reason: string): void;
    once(event: 'close', fn: () => void): unknown;
  };

  const deviceMustExist = (user: string, device: string) => {
    if (!ctx.accounts.getDevice(user, device))
      throw new HttpError(404, 'device_not_found', `device ${device} does not exist`);
  };

  const wsOnly = async (
    _request: FastifyRequest,
    reply: { code(n: number): { send(b: unknown): unknown } },
  ) => reply.code(400).send(errorBody('invalid_request', 'expected a WebSocket upgrade'));

  const errors = { 400: errorSchema, 401: errorSchema, 403: errorSchema, 404: errorSchema };

  const sendToDevice = (subscription: StreamSubscription, payload: PsonValue) => {
    try {
      subscription.send(payload);
    } catch (err) {
      if (err instanceof StreamNotOpenError)
        throw new FrameError('stream_not_open', 'the device stream is not open (device offline?)');
      throw new FrameError('device_error', err instanceof Error ? err.message : String(err));
    }
  };

  /** `{"resource":…,"signal":"data","payload":` — a data frame is this, the payload's JSON, `}`. */
  const dataPrefix = (resource: string) =>
    `{"resource":${JSON.stringify(resource)},"signal":"data","payload":`;

  // --- one resource ----------------------------------------------------------------------
  type OneRequest = FastifyRequest<{
    Params: { user: string; device: string; '*': string };
    Querystring: OneQuery;
  }>;
  app.route({
    method: 'GET',
    url: '/v3/users/:user/devices/:device/resources/*',
    constraints: { [WS_CONSTRAINT]: 'websocket' },
    exposeHeadRoute: false,
    schema: {
      hide: true,
      params: {
        type: 'object',
        properties: {
          user: { type: 'string', pattern: ID_PATTERN },
          device: { type: 'string', pattern: ID_PATTERN },
          '*': { type: 'string', minLength: 1, maxLength: MAX_RESOURCE_LENGTH },
        },
        required: ['user', 'device', '*'],
      },
      querystring: {
        type: 'object',
        properties: {
          interval: { type: 'number' },
          authorization: { type: 'string' },
          raw: { type: 'string', enum: ['', '0', '1', 'true', 'false'] },
          cmd: { type: 'string', maxLength: 4096 },
          timeout: { type: 'integer', minimum: 0, maximum: MAX_INTERVAL_SECONDS },
          cols: { type: 'integer', minimum: 1, maximum: 10_000 },
          rows: { type: 'integer', minimum: 1, maximum: 10_000 },
        },
        additionalProperties: false,
      },
      response: errors,
    },
    preHandler: async (request: FastifyRequest) => {
      const { params, query } = request as OneRequest;
      // A session (a command's parameters, a raw console) does something on the device the
      // moment it opens, as a call does: it needs call access, not read.
      authorize(
        principalOf(request),
        params.user,
        isSession(query) ? 'call' : 'read',
        params.device,
        params['*'],
      );
      deviceMustExist(params.user, params.device);
      const ms = intervalMs(query.interval);
      if (typeof ms === 'string') throw new HttpError(400, 'invalid_request', ms);
      // A session (console, command) needs its device now: it would not resume later.
      if (isSession(query) && !ctx.hub.get(params.user, params.device))
        throw new HttpError(404, 'device_offline', `device ${params.device} is not connected`);
    },
    handler: wsOnly,
    wsHandler: (socket, req) => {
      const request = req as unknown as OneRequest;
      const { user, device } = request.params;
      const resource = request.params['*'];
      const principal = principalOf(req);
      watchToken(principal, socket);
      const query = request.query;
      const ms = intervalMs(query.interval) as number;
      const raw = isRaw(query);
      const parameters = streamParameters(query);
      const session = isSession(query);
      const out = sender(socket);
      const interval = ms > 0 ? ms / 1000 : null;
      const prefix = dataPrefix(resource);
      // Input that arrives before the device stream first opened waits for it.
      let pending: PsonValue[] | undefined = [];
      let pendingBytes = 0;
      let subscription: StreamSubscription | undefined;

      const fail = (err: unknown) => {
        if (!raw) {
          out.send({ resource, signal: 'error', payload: errorPayload(err) });
          return;
        }
        const { code, message } = errorPayload(err);
        socket.close(code === 'frame_too_large' ? 1009 : 1008, closeReason(message));
      };
      const flushPending = () => {
        const queued = pending;
        pending = undefined;
        if (!queued || !subscription) return;
        for (const p of queued) {
          try {
            sendToDevice(subscription, p);
          } catch (err) {
            fail(err);
            return;
          }
        }
      };
      const input = (payload: PsonValue, bytes: number) => {
        if (pending) {
          pendingBytes += bytes;
          if (pending.length >= MAX_PENDING_INPUTS || pendingBytes > MAX_PENDING_BYTES)
            throw new FrameError(
              'too_much_input',
              'too much input before the device stream opened: wait for its start',
            );
          pending.push(payload);
          return;
        }
        sendToDevice(subscription as StreamSubscription, payload);
      };
      const sendRawPayload = (payload: PsonValue | undefined) => {
        if (payload === undefined || payload === null) return;
        if (payload instanceof Uint8Array) out.sendRaw(Buffer.from(payload), true);
        else out.sendRaw(typeof payload === 'string' ? payload : payloadJson(payload), true);
      };

      subscription = streams.subscribe(
        user,
        device,
        resource,
        ms,
        {
          onStart: () => {
            if (!raw) out.send({ resource, signal: 'start', payload: { interval } });
            if (pending) queueMicrotask(flushPending);
          },
          onData: raw ? sendRawPayload : (payload) => out.sendRaw(`${prefix}${payloadJson(payload)}}`, true),
          onStop: (stop) => {
            pending = undefined;
            if (!raw) out.send({ resource, signal: 'stop', payload: stop });
            // A session is over when its stream stops (re-opening it would run the command again).
            if (session) {
              subscription?.close();
              socket.close(SESSION_STOP_CODE[stop.code], closeReason(stop.message));
            }
          },
          onError: (failure) => {
            if (!raw) out.send({ resource, signal: 'error', payload: failure });
            socket.close(CLOSE_CODE[failure.code], closeReason(failure.message));
          },
        },
        parameters ? { parameters } : undefined,
      );
      socket.on('close', () => subscription?.close());
      socket.on('message', (data, isBinary) => {
        try {
          if (raw) {
            const buf = frameBytes(data, maxFrameBytes);
            authorize(principal, user, 'call', device, resource);
            input(isBinary ? new Uint8Array(buf) : buf.toString('utf8'), buf.byteLength);
            return;
          }
          const frame = parseFrame(data, isBinary, maxFrameBytes);
          checkKeys(frame, ['resource', 'payload']);
          if (frame.resource !== undefined && frame.resource !== resource)
            throw new FrameError('invalid_frame', `this socket streams ${resource} only`);
          if (!('payload' in frame)) throw new FrameError('invalid_frame', 'frame needs a payload');
          authorize(principal, user, 'call', device, resource);
          input(jsonToPson(frame.payload), byteLengthOf(data));
        } catch (err) {
          fail(err);
        }
      });
    },
  });

  // --- many resources --------------------------------------------------------------------
  type ManyRequest = FastifyRequest<{ Params: { user: string; device: string } }>;
  app.route({
    method: 'GET',
    url: '/v3/users/:user/devices/:device/resources',
    constraints: { [WS_CONSTRAINT]: 'websocket' },
    exposeHeadRoute: false,
    schema: {
      hide: true,
      params: deviceParams,
      querystring: {
        type: 'object',
        properties: { authorization: { type: 'string' } },
        additionalProperties: false,
      },
      response: errors,
    },
    preHandler: async (request: FastifyRequest) => {
      const { params } = request as ManyRequest;
      authorize(principalOf(request), params.user, 'read', params.device);
      deviceMustExist(params.user, params.device);
    },
    handler: wsOnly,
    wsHandler: (socket, req) => {
      const { user, device } = (req as unknown as ManyRequest).params;
      const principal = principalOf(req);
      watchToken(principal, socket);
      const out = sender(socket);
      interface Entry {
        sub: StreamSubscription | undefined;
        ms: number;
      }
      const subs = new Map<string, Entry>();
      let open = true;
      socket.on('close', () => {
        open = false;
        for (const e of subs.values()) e.sub?.close();
        subs.clear();
      });
      const seconds = (ms: number) => (ms > 0 ? ms / 1000 : null);
      const subscribe = (resource: string, ms: number) => {
        // Callbacks may run before subscribe() returns: they use the entry, not its sub.
        const entry: Entry = { sub: undefined, ms };
        subs.set(resource, entry);
        const prefix = dataPrefix(resource);
        entry.sub = streams.subscribe(user, device, resource, ms, {
          onStart: () => out.send({ resource, signal: 'start', payload: { interval: seconds(entry.ms) } }),
          onData: (payload) => out.sendRaw(`${prefix}${payloadJson(payload)}}`, true),
          onStop: (stop) => out.send({ resource, signal: 'stop', payload: stop }),
          onError: (failure) => {
            if (subs.get(resource) === entry) subs.delete(resource);
            out.send({ resource, signal: 'error', payload: failure });
          },
        });
        if (!open || subs.get(resource) !== entry) entry.sub.close();
      };
      socket.on('message', (data, isBinary) => {
        let resource: string | undefined;
        try {
          const frame = parseFrame(data, isBinary, maxFrameBytes);
          // Named in the error frame if the frame is refused (when short enough to echo).
          if (typeof frame.resource === 'string' && frame.resource.length <= MAX_RESOURCE_LENGTH)
            resource = frame.resource;
          checkKeys(frame, ['resource', 'interval', 'enabled', 'payload']);
          resource = resourceOf(frame);
          if ('payload' in frame) {
            if (frame.interval !== undefined || frame.enabled !== undefined)
              throw new FrameError(
                'invalid_frame',
                'a frame either sends data ({resource, payload}) or controls a subscription ({resource, interval, enabled})',
              );
            authorize(principal, user, 'call', device, resource);
            const sub = subs.get(resource)?.sub;
            if (!sub) throw new FrameError('not_subscribed', `subscribe to ${resource} before sending to it`);
            sendToDevice(sub, jsonToPson(frame.payload));
            return;
          }
          if (frame.enabled !== undefined && typeof frame.enabled !== 'boolean')
            throw new FrameError('invalid_frame', 'enabled must be true or false');
          const ms = intervalMs(frame.interval);
          if (typeof ms === 'string') throw new FrameError('invalid_frame', ms);
          const existing = subs.get(resource);
          if (frame.enabled === false) {
            if (!existing) throw new FrameError('not_subscribed', `not subscribed to ${resource}`);
            subs.delete(resource);
            existing.sub?.close();
            out.send({
              resource,
              signal: 'stop',
              payload: { code: 'unsubscribed', message: `unsubscribed from ${resource}` },
            });
            return;
          }
          authorize(principal, user, 'read', device, resource);
          if (existing?.sub) {
            existing.ms = ms;
            existing.sub.setInterval(ms);
            // Acknowledge the new interval (it takes effect at once when the stream is open).
            if (existing.sub.started)
              out.send({ resource, signal: 'start', payload: { interval: seconds(ms) } });
            return;
          }
          if (subs.size >= MAX_SUBSCRIPTIONS)
            throw new FrameError(
              'too_many_subscriptions',
              `at most ${MAX_SUBSCRIPTIONS} resources per socket: remove one first`,
            );
          subscribe(resource, ms);
        } catch (err) {
          out.send({
            ...(resource !== undefined ? { resource } : {}),
            signal: 'error',
            payload: errorPayload(err),
          });
        }
      });
    },
  });

  // --- events ----------------------------------------------------------------------------
  type EventsRequest = FastifyRequest<{ Params: { user: string } }>;
  const eventsRoute = (dialect: EventsDialect) =>
    app.route({
      method: 'GET',
      url: `/${dialect}/users/:user/events`,
      schema: {
        summary:
          dialect === 'v2'
            ? 'WebSocket: server events (device_state_change, device_property_update, device_topic_publish, device_resource_stream). Send {"event", "filters"?, "params"?, "enabled"?}; plain HTTP answers 426'
            : 'WebSocket: server events, Thinger.io v1 form (flat filters, patterns). Send {"event", <filter>: <value>…}; plain HTTP answers 426',
        params: userParams,
        querystring: {
          type: 'object',
          properties: { authorization: { type: 'string' } },
          additionalProperties: false,
        },
        response: { ...errors, 426: errorSchema },
      },
      preHandler: async (request: FastifyRequest) => {
        const { user } = (request as EventsRequest).params;
        // Device-limited tokens may listen too: they only see events of their devices.
        if (principalOf(request).username !== user)
          throw new AuthFailure("the token does not give access to this user's data", 403, 'forbidden');
      },
      handler: async (_request, reply) =>
        reply
          .code(426)
          .header('upgrade', 'websocket')
          .send(errorBody('upgrade_required', 'this route is a WebSocket: connect with Upgrade: websocket')),
      wsHandler: (socket, req) => {
        watchToken(principalOf(req), socket);
        serveEvents(socket, {
          ctx,
          streams,
          user: (req as unknown as EventsRequest).params.user,
          principal: principalOf(req),
          dialect,
          out: sender(socket),
          maxFrameBytes,
        });
      },
    });
  eventsRoute('v2');
  eventsRoute('v1');

  return { streams };
}
