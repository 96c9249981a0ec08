import type { IncomingMessage } from 'node:http';
import type { PsonValue } from '@iotmp/pson';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { AuthFailure, authorize, type Principal } from '../auth/tokens.js';
import type { DeviceStateChange } from '../devices/hub.js';
import { topicFilterError } from '../events/topics.js';
import {
  type SharedStreams,
  type StreamFailure,
  StreamNotOpenError,
  type StreamSubscription,
} from '../streams/shared-streams.js';
import { type AppContext, deviceParams, ID_PATTERN, userParams } from './context.js';
import { errorBody, errorSchema, HttpError } from './errors.js';
import { jsonToPson, psonToJson } from './json.js';

/*
 * The WebSocket API.
 *
 * - `/v3/users/{u}/devices/{d}/resources/{res}?interval=N`: one resource. N in seconds
 *   (fractions allowed, at least 0.1); no interval (or 0) = the device's own events.
 * - `/v3/users/{u}/devices/{d}/resources`: many resources, driven by control frames
 *   `{"resource", "interval"?, "enabled"?}` (`enabled: false` removes one).
 * - `/v2/users/{u}/events`: server events, subscribed with `{"event", "filters"?, "enabled"?}`.
 *
 * Server frames: `{resource|event, signal: "start"|"stop"|"data"|"error", payload}`.
 * Client frames `{resource, payload}` go to the device as STREAM_DATA on that resource's
 * stream (on the one-resource socket `resource` may be left out).
 *
 * The two /v3 paths also serve plain HTTP GET (resource-routes.ts). A route constraint on
 * the Upgrade header sends WebSocket upgrades to the routes here and everything else there.
 */

/** Server → client frame. */
export interface ServerFrame {
  resource?: string;
  event?: string;
  signal: 'start' | 'stop' | 'data' | 'error';
  payload?: unknown;
}

/** The part of a `ws` WebSocket the bounded sender needs. */
export interface FrameSink {
  readonly readyState: number;
  readonly bufferedAmount: number;
  send(data: string): void;
  terminate(): void;
  /** The TCP/TLS socket under a `ws` WebSocket (ws has no public cork), to batch writes. */
  readonly _socket?: { cork(): void; uncork(): void } | undefined;
}

/**
 * Senders whose socket is corked this turn: every frame they send until the check phase of
 * the event loop goes out in one write (a system call per frame would cost more than the
 * frame; a busy consumer gets hundreds per turn).
 */
let corkedSenders: BoundedSender[] = [];
function uncorkAll(): void {
  const batch = corkedSenders;
  corkedSenders = [];
  for (const sender of batch) sender.uncork();
}

export interface WsRoutesOptions {
  /** The shared stream manager to use (default: a new one on ctx.hub, closed with the app). */
  streams?: SharedStreams;
  /** Bytes a consumer may leave unread before data frames to it are dropped (default 1 MiB). */
  maxBufferedBytes?: number;
}

const OPEN = 1;
/** Smallest interval a subscriber may ask for (ms). */
const MIN_INTERVAL_MS = 100;
const MAX_INTERVAL_SECONDS = 86_400;
/** Resources one multi-resource socket may subscribe to. */
const MAX_SUBSCRIPTIONS = 64;
const MAX_RESOURCE_LENGTH = 1024;
const WS_CONSTRAINT = 'iotmpWebSocketUpgrade';
const EVENTS = ['device_state_change', 'device_property_update', 'device_topic_publish'] as const;
type EventName = (typeof EVENTS)[number];
/** The filters each event takes (topic: an MQTT filter, required). */
const EVENT_FILTERS: Record<EventName, readonly string[]> = {
  device_state_change: ['device'],
  device_property_update: ['device', 'property'],
  device_topic_publish: ['topic'],
};
interface EventFilters {
  device?: string;
  property?: string;
  topic?: string;
}

/**
 * Sends JSON frames to one consumer, never queueing without bound: past `maxBufferedBytes`
 * unread, data frames are dropped (and counted); past four times that (only control frames
 * could get there), the consumer is cut off.
 */
export class BoundedSender {
  dropped = 0;
  private corked = false;

  constructor(
    private readonly socket: FrameSink,
    private readonly maxBufferedBytes: number,
    private readonly onDrop: () => void,
  ) {}

  /** Data frames may be dropped; returns whether the frame was sent. */
  send(frame: ServerFrame): boolean {
    const s = this.socket;
    if (s.readyState !== OPEN) return false;
    if (frame.signal === 'data' && s.bufferedAmount >= this.maxBufferedBytes) {
      this.dropped++;
      this.onDrop();
      return false;
    }
    if (s.bufferedAmount >= this.maxBufferedBytes * 4) {
      s.terminate();
      return false;
    }
    const raw = s._socket;
    if (raw && !this.corked) {
      raw.cork();
      this.corked = true;
      if (corkedSenders.push(this) === 1) setImmediate(uncorkAll);
    }
    s.send(JSON.stringify(frame));
    return true;
  }

  /** @internal Ends this turn's batch (uncorkAll). */
  uncork(): void {
    if (!this.corked) return;
    this.corked = false;
    this.socket._socket?.uncork();
  }
}

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

class FrameError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** A client frame as a JSON object, or FrameError. */
function parseFrame(data: unknown, isBinary: boolean, maxBytes: number): Record<string, unknown> {
  if (isBinary) throw new FrameError('invalid_frame', 'binary frames are not accepted: send JSON text');
  const buf = Array.isArray(data)
    ? Buffer.concat(data as Buffer[])
    : Buffer.isBuffer(data)
      ? data
      : Buffer.from(data as ArrayBuffer);
  if (buf.byteLength > maxBytes)
    throw new FrameError('frame_too_large', `frame of ${buf.byteLength} bytes exceeds ${maxBytes} bytes`);
  let value: unknown;
  try {
    value = JSON.parse(buf.toString('utf8'));
  } catch {
    throw new FrameError('invalid_frame', 'frame is not valid JSON');
  }
  if (!isPlainObject(value)) throw new FrameError('invalid_frame', 'frame must be a JSON object');
  return value;
}

function checkKeys(frame: Record<string, unknown>, allowed: readonly string[]): void {
  for (const k of Object.keys(frame)) {
    if (!allowed.includes(k))
      throw new FrameError('invalid_frame', `unknown field "${k}" (expected ${allowed.join(', ')})`);
  }
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

function errorPayload(err: unknown): { code: string; message: string } {
  if (err instanceof FrameError || err instanceof AuthFailure)
    return { code: err.code, message: err.message };
  return { code: 'internal_error', message: 'internal error' };
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

  const deviceMustExist = (user: string, device: string) => {
    if (!ctx.accounts.getDevice(user, device))
      throw new HttpError(404, 'device_not_found', `device ${device} does not exist`);
  };

  const mayRead = (principal: Principal, user: string, device: string, resource?: string): boolean => {
    try {
      authorize(principal, user, 'read', device, resource);
      return true;
    } catch {
      return false;
    }
  };

  const wsOnly = async (
    _request: FastifyRequest,
    reply: { code(n: number): { send(b: unknown): unknown } },
  ) => reply.code(400).send(errorBody('invalid_request', 'expected a WebSocket upgrade'));

  const errors = { 400: errorSchema, 401: errorSchema, 403: errorSchema, 404: errorSchema };

  // --- one resource ----------------------------------------------------------------------
  type OneRequest = FastifyRequest<{
    Params: { user: string; device: string; '*': string };
    Querystring: { interval?: number };
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
        },
        additionalProperties: false,
      },
      response: errors,
    },
    preHandler: async (request: FastifyRequest) => {
      const { params, query } = request as OneRequest;
      authorize(principalOf(request), params.user, 'read', params.device, params['*']);
      deviceMustExist(params.user, params.device);
      const ms = intervalMs(query.interval);
      if (typeof ms === 'string') throw new HttpError(400, 'invalid_request', ms);
    },
    handler: wsOnly,
    wsHandler: (socket, req) => {
      const request = req as unknown as OneRequest;
      const { user, device } = request.params;
      const resource = request.params['*'];
      const principal = principalOf(req);
      const ms = intervalMs(request.query.interval) as number;
      const out = sender(socket);
      const interval = ms > 0 ? ms / 1000 : null;
      const subscription = streams.subscribe(user, device, resource, ms, {
        onStart: () => out.send({ resource, signal: 'start', payload: { interval } }),
        onData: (payload) => out.send({ resource, signal: 'data', payload: psonToJson(payload) }),
        onStop: (stop) => out.send({ resource, signal: 'stop', payload: stop }),
        onError: (failure) => {
          out.send({ resource, signal: 'error', payload: failure });
          socket.close(CLOSE_CODE[failure.code], closeReason(failure.message));
        },
      });
      socket.on('close', () => subscription.close());
      socket.on('message', (data, isBinary) => {
        try {
          const frame = parseFrame(data, isBinary, maxFrameBytes);
          checkKeys(frame, ['resource', 'payload']);
          if (frame.resource !== undefined && frame.resource !== resource)
            throw new FrameError('invalid_frame', `this socket streams ${resource} only`);
          if (!('payload' in frame)) throw new FrameError('invalid_frame', 'frame needs a payload');
          authorize(principal, user, 'call', device, resource);
          sendToDevice(subscription, frame.payload);
        } catch (err) {
          out.send({ resource, signal: 'error', payload: errorPayload(err) });
        }
      });
    },
  });

  const sendToDevice = (subscription: StreamSubscription, payload: unknown) => {
    try {
      subscription.send(jsonToPson(payload) as PsonValue);
    } catch (err) {
      if (err instanceof StreamNotOpenError)
        throw new FrameError('stream_not_open', 'the device stream is not open (device offline?)');
      throw new FrameError('device_error', err instanceof Error ? err.message : String(err));
    }
  };

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
        entry.sub = streams.subscribe(user, device, resource, ms, {
          onStart: () => out.send({ resource, signal: 'start', payload: { interval: seconds(entry.ms) } }),
          onData: (payload) => out.send({ resource, signal: 'data', payload: psonToJson(payload) }),
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
            sendToDevice(sub, frame.payload);
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
  app.route({
    method: 'GET',
    url: '/v2/users/:user/events',
    schema: {
      summary:
        'WebSocket: server events (device_state_change, device_property_update, device_topic_publish). Send {"event", "filters"?, "enabled"?}; plain HTTP answers 426',
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
      const { user } = (req as unknown as EventsRequest).params;
      const principal = principalOf(req);
      const out = sender(socket);
      const subscriptions = new Map<EventName, EventFilters>();
      let topicSubscription: (() => void) | undefined;
      const onChange = (change: DeviceStateChange) => {
        if (change.username !== user) return;
        const filters = subscriptions.get('device_state_change');
        if (!filters) return;
        if (filters.device !== undefined && filters.device !== change.device) return;
        if (!mayRead(principal, user, change.device)) return;
        out.send({
          event: 'device_state_change',
          signal: 'data',
          payload: {
            device: change.device,
            connected: change.connected,
            ts: change.ts,
            ...(change.ip !== undefined ? { ip: change.ip } : {}),
            ...(change.reason !== undefined ? { reason: change.reason } : {}),
          },
        });
      };
      const unlisten = ctx.hub.onStateChange(onChange);
      const unlistenProperties = ctx.events.subscribe(user, 'device_property_update', (change) => {
        const filters = subscriptions.get('device_property_update');
        if (!filters) return;
        if (filters.device !== undefined && filters.device !== change.device) return;
        if (filters.property !== undefined && filters.property !== change.property) return;
        if (!mayRead(principal, user, change.device)) return;
        out.send({ event: 'device_property_update', signal: 'data', payload: change });
      });
      const subscribeTopic = (filter: string) => {
        topicSubscription?.();
        const topicMessage = (m: { topic: string; payload: PsonValue }, retained: boolean) =>
          out.send({
            event: 'device_topic_publish',
            signal: 'data',
            payload: { topic: m.topic, payload: psonToJson(m.payload), ...(retained ? { retained } : {}) },
          });
        const sub = ctx.topics.subscribe(user, filter, (m) => topicMessage(m, false));
        topicSubscription = sub.unsubscribe;
        return () => {
          for (const m of sub.retained) topicMessage(m, true);
        };
      };
      socket.on('close', () => {
        unlisten();
        unlistenProperties();
        topicSubscription?.();
      });
      socket.on('message', (data, isBinary) => {
        let event: string | undefined;
        try {
          const frame = parseFrame(data, isBinary, maxFrameBytes);
          if (typeof frame.event === 'string' && frame.event.length <= 64) event = frame.event;
          checkKeys(frame, ['event', 'filters', 'enabled']);
          if (typeof frame.event !== 'string' || !(EVENTS as readonly string[]).includes(frame.event))
            throw new FrameError('unknown_event', `event must be one of: ${EVENTS.join(', ')}`);
          const name = frame.event as EventName;
          if (frame.enabled !== undefined && typeof frame.enabled !== 'boolean')
            throw new FrameError('invalid_frame', 'enabled must be true or false');
          if (frame.enabled === false) {
            if (!subscriptions.delete(name))
              throw new FrameError('not_subscribed', `not subscribed to ${name}`);
            if (name === 'device_topic_publish') {
              topicSubscription?.();
              topicSubscription = undefined;
            }
            out.send({
              event: name,
              signal: 'stop',
              payload: { code: 'unsubscribed', message: `unsubscribed from ${name}` },
            });
            return;
          }
          const filters: EventFilters = {};
          const allowed = EVENT_FILTERS[name];
          if (frame.filters !== undefined && frame.filters !== null) {
            if (!isPlainObject(frame.filters))
              throw new FrameError('invalid_frame', `filters must be an object with ${allowed.join(', ')}`);
            for (const [k, v] of Object.entries(frame.filters)) {
              if (!allowed.includes(k))
                throw new FrameError(
                  'invalid_frame',
                  `unknown filter "${k}" (expected ${allowed.join(', ')})`,
                );
              if (k === 'topic') {
                const error = topicFilterError(v);
                if (error) throw new FrameError('invalid_frame', `filters.topic: ${error}`);
              } else if (typeof v !== 'string' || !new RegExp(ID_PATTERN).test(v))
                throw new FrameError(
                  'invalid_frame',
                  `filters.${k} must be ${k === 'device' ? 'a device' : 'a property'} id`,
                );
              filters[k as keyof EventFilters] = v as string;
            }
          }
          if (filters.device !== undefined) authorize(principal, user, 'read', filters.device);
          let sendRetained: (() => void) | undefined;
          if (name === 'device_topic_publish') {
            if (filters.topic === undefined)
              throw new FrameError(
                'invalid_frame',
                'filters.topic is required, e.g. {"topic": "sensors/+/temperature"}',
              );
            // Topics are not a device's: tokens limited to some devices do not reach them.
            authorize(principal, user, 'read');
            sendRetained = subscribeTopic(filters.topic);
          }
          subscriptions.set(name, filters);
          out.send({ event: name, signal: 'start', payload: { filters } });
          sendRetained?.();
        } catch (err) {
          out.send({
            ...(event !== undefined ? { event } : {}),
            signal: 'error',
            payload: errorPayload(err),
          });
        }
      });
    },
  });

  return { streams };
}
