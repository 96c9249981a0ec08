import type { PsonValue } from '@iotmp/pson';
import type { WebSocket } from 'ws';
import { authorize, authorizeProperties, type Principal } from '../auth/tokens.js';
import type { DeviceStateChange } from '../devices/hub.js';
import { topicFilterError } from '../events/topics.js';
import type { SharedStreams } from '../streams/shared-streams.js';
import { type AppContext, ID_PATTERN } from './context.js';
import { psonToJson } from './json.js';
import {
  type BoundedSender,
  checkKeys,
  errorPayload,
  FrameError,
  isPlainObject,
  mayRead,
  parseFrame,
  wsJson,
} from './ws-common.js';
import { compilePattern, type Matcher, PatternError } from './ws-pattern.js';
import { RESOURCE_STREAM, type ResourceStreamSpec, ResourceStreams } from './ws-resource-stream.js';

/*
 * The events WebSocket, in its two dialects:
 *
 * - v2 (`/v2/users/{u}/events`): `{"event", "filters"?: {…}, "params"?: {"interval": ms},
 *   "enabled"?}`; filters are exact ids; answers `{event, signal: start|stop|data|error,
 *   payload}` (device_state_change data also carries Thinger.io's top-level `user`, `device`,
 *   `state`, `ts`, which thinr-cli's dashboard reads).
 * - v1 (`/v1/users/{u}/events`, Thinger.io's older API that the Node-RED and n8n nodes use):
 *   flat subscriptions `{"event": "device_state_change", "device": "esp.*", "state":
 *   "disconnected"}` whose `event` and filters may be basic patterns (ws-pattern.ts) and whose
 *   unknown keys are ignored; events arrive flat, `{event, user, device, state, ts}`, with no
 *   acknowledgement (those tools pass every frame on to their flows); refusals are
 *   `{"success": false, "error": {code, message}}`.
 *
 * `bucket_write` (both; filter `bucket`): one frame per record written, Thinger.io's
 * `{event, user, bucket, ts, data}` (v2 adds `signal: "data"`); tokens limited to devices
 * may not subscribe (buckets are the account's).
 *
 * `device_resource_stream` (both): `{"event": "device_resource_stream", "filters":
 * {"resource", "device"?, "product"?, …}, "params": {"interval": ms}}` streams one resource of
 * every connected matching device (ws-resource-stream.ts): acknowledged with `{event, signal:
 * "start", registered: true, payload: {filters, params?}}`, then `{event, signal: "data", user,
 * device, resource, ts, payload}` per sample.
 */

export type EventsDialect = 'v1' | 'v2';

/**
 * The events of the events WebSocket: the filters each takes (besides the product / asset
 * groupings) and the values a client may offer for some of them. The one list: the socket
 * (both dialects) and `GET /v1/server/events` (SERVER_EVENT_LIST) are made from it.
 */
const EVENT_DEFINITIONS = {
  device_state_change: { filters: ['device', 'state'], hints: { state: ['connected', 'disconnected'] } },
  device_property_update: { filters: ['device', 'property'] },
  device_topic_publish: { filters: ['topic'] },
  [RESOURCE_STREAM]: { filters: ['device', 'resource'] },
  bucket_write: { filters: ['bucket'] },
} as const satisfies Record<
  string,
  { filters: readonly string[]; hints?: Readonly<Record<string, readonly string[]>> }
>;
type EventName = keyof typeof EVENT_DEFINITIONS;
const EVENTS = Object.keys(EVENT_DEFINITIONS) as EventName[];
type SimpleEvent = Exclude<EventName, typeof RESOURCE_STREAM>;

/** Product / asset filters: devices here have none, so a non-empty one matches nothing. */
const GROUPINGS = ['product', 'asset_type', 'asset_group', 'project'] as const;
/** The filters each event takes (topic: an MQTT filter, required; resource: required). */
const EVENT_FILTERS: Record<EventName, readonly string[]> = Object.fromEntries(
  EVENTS.map((e) => {
    const own: readonly string[] = EVENT_DEFINITIONS[e].filters;
    return [e, own.includes('device') ? [...own, ...GROUPINGS] : own];
  }),
) as Record<EventName, readonly string[]>;

/** A server event and its filters, as `GET /v1/server/events` lists them (Thinger.io form). */
export interface ServerEventInfo {
  event: string;
  filters: Array<{ field: string; hints?: string[] }>;
  role: 'user';
}

/** The events and their filters (product and asset filters left out: there are none), by name. */
export const SERVER_EVENT_LIST: readonly ServerEventInfo[] = [...EVENTS].sort().map((event) => {
  const def: { filters: readonly string[]; hints?: Readonly<Record<string, readonly string[]>> } =
    EVENT_DEFINITIONS[event];
  return {
    event,
    filters: def.filters.map((field) => {
      const hints = def.hints?.[field];
      return hints ? { field, hints: [...hints] } : { field };
    }),
    role: 'user',
  };
});
const STATES = ['connected', 'disconnected', 'resumed', 'awake', 'asleep'];
const MAX_RESOURCE_LENGTH = 1024;
const MAX_EVENT_LENGTH = 128;
/** Resource subscriptions one events socket may hold. */
const MAX_RESOURCE_SUBSCRIPTIONS = 64;
const MIN_INTERVAL_MS = 100;
const MAX_INTERVAL_MS = 86_400_000;

interface Filters {
  device?: Matcher;
  property?: Matcher;
  state?: Matcher;
  bucket?: Matcher;
  topic?: string;
  resource?: string;
  /** A product / asset filter no device matches. */
  nothing: boolean;
  /** The filters as given (validated), for acknowledgements and subscription keys. */
  echo: Record<string, string>;
}

const exact =
  (want: string): Matcher =>
  (value) =>
    value === want;

export interface EventsSocketOptions {
  ctx: AppContext;
  streams: SharedStreams;
  user: string;
  principal: Principal;
  dialect: EventsDialect;
  out: BoundedSender;
  maxFrameBytes: number;
}

/** Serves one events WebSocket until it closes. */
export function serveEvents(socket: WebSocket, o: EventsSocketOptions): void {
  const { ctx, user, principal, dialect, out } = o;
  const v1 = dialect === 'v1';
  const subscriptions = new Map<SimpleEvent, Filters>();
  let topicSubscription: (() => void) | undefined;
  const resources = new ResourceStreams({
    user,
    principal,
    streams: o.streams,
    connectedDevices: () => ctx.hub.devicesOf(user).map((d) => d.device),
    out,
    deviceSignals: !v1,
  });

  /** A data frame: v1 frames carry no signal, but may be dropped all the same. */
  const sendData = (frame: Record<string, unknown>) => out.sendRaw(JSON.stringify(frame), true);

  const deviceMatches = (f: Filters, device: string) =>
    !f.nothing && (f.device === undefined || f.device(device)) && mayRead(principal, user, device);

  const onChange = (change: DeviceStateChange) => {
    if (change.username !== user) return;
    resources.deviceChanged(change.device, change.connected);
    const f = subscriptions.get('device_state_change');
    if (!f || !deviceMatches(f, change.device)) return;
    const state = change.connected ? 'connected' : 'disconnected';
    if (f.state !== undefined && !f.state(state)) return;
    const extra = {
      ...(change.ip !== undefined ? { ip: change.ip } : {}),
      ...(change.reason !== undefined ? { reason: change.reason } : {}),
    };
    if (v1) {
      sendData({ event: 'device_state_change', user, device: change.device, state, ts: change.ts, ...extra });
      return;
    }
    out.send({
      event: 'device_state_change',
      signal: 'data',
      user,
      device: change.device,
      state,
      ts: change.ts,
      payload: { device: change.device, connected: change.connected, ts: change.ts, ...extra },
    });
  };
  const unlisten = ctx.hub.onStateChange(onChange);

  const unlistenProperties = ctx.events.subscribe(user, 'device_property_update', (change) => {
    const f = subscriptions.get('device_property_update');
    if (!f || !deviceMatches(f, change.device) || !mayReadProperties(principal, user, change.device)) return;
    if (f.property !== undefined && !f.property(change.property)) return;
    if (v1)
      sendData({
        event: 'device_property_update',
        user,
        device: change.device,
        property: change.property,
        value: wsJson(change.value as PsonValue),
        ts: Date.now(),
        ...(change.deleted ? { deleted: true } : {}),
      });
    else out.send({ event: 'device_property_update', signal: 'data', payload: change });
  });

  /** The bus listener of bucket_write, while the socket is subscribed to it. */
  let unlistenBuckets: (() => void) | undefined;
  const listenBuckets = () => {
    unlistenBuckets ??= ctx.events.subscribe(user, 'bucket_write', (w) => {
      const f = subscriptions.get('bucket_write');
      if (!f || f.nothing || (f.bucket !== undefined && !f.bucket(w.bucket))) return;
      // Thinger.io's frame (thinr-cli's dashboard reads `data`); v2 adds the signal.
      sendData({
        event: 'bucket_write',
        ...(v1 ? {} : { signal: 'data' }),
        user,
        bucket: w.bucket,
        ts: w.ts,
        data: w.data,
      });
    });
  };

  const subscribeTopic = (filter: string) => {
    topicSubscription?.();
    const topicMessage = (m: { topic: string; payload: PsonValue }, retained: boolean) => {
      if (v1)
        sendData({
          event: 'device_topic_publish',
          user,
          topic: m.topic,
          payload: wsJson(m.payload),
          ...(retained ? { retained } : {}),
          ts: Date.now(),
        });
      else
        out.send({
          event: 'device_topic_publish',
          signal: 'data',
          payload: { topic: m.topic, payload: psonToJson(m.payload), ...(retained ? { retained } : {}) },
        });
    };
    const sub = ctx.topics.subscribe(user, filter, (m) => topicMessage(m, false));
    topicSubscription = sub.unsubscribe;
    return () => {
      for (const m of sub.retained) topicMessage(m, true);
    };
  };

  socket.on('close', () => {
    unlisten();
    unlistenProperties();
    unlistenBuckets?.();
    topicSubscription?.();
    resources.close();
  });

  /** Removes a subscription; false when there was none. */
  const unsubscribe = (name: EventName, filters: Filters | undefined): boolean => {
    if (name === RESOURCE_STREAM)
      return resources.unsubscribe(filters ? resourceKey(filters) : undefined) > 0;
    if (!subscriptions.delete(name)) return false;
    if (name === 'device_topic_publish') {
      topicSubscription?.();
      topicSubscription = undefined;
    }
    if (name === 'bucket_write') {
      unlistenBuckets?.();
      unlistenBuckets = undefined;
    }
    return true;
  };

  const subscribe = (name: EventName, filters: Filters, intervalMs: number, params: unknown) => {
    if (filters.device !== undefined && !v1 && filters.echo.device !== undefined)
      authorize(principal, user, 'read', filters.echo.device, filters.resource);
    if (name === RESOURCE_STREAM) {
      const spec: ResourceStreamSpec = {
        key: resourceKey(filters),
        resource: filters.resource as string,
        matchDevice: filters.device ?? (() => true),
        matchesNothing: filters.nothing,
        intervalMs,
      };
      if (!resources.has(spec.key) && resources.size >= MAX_RESOURCE_SUBSCRIPTIONS)
        throw new FrameError(
          'too_many_subscriptions',
          `at most ${MAX_RESOURCE_SUBSCRIPTIONS} resource subscriptions per socket: remove one first`,
        );
      // Acknowledged before any device stream is asked for: no data can come first.
      out.send({
        event: RESOURCE_STREAM,
        signal: 'start',
        registered: true,
        payload: { filters: filters.echo, ...(params !== undefined ? { params } : {}) },
      });
      resources.subscribe(spec);
      return;
    }
    let sendRetained: (() => void) | undefined;
    if (name === 'device_topic_publish') {
      // Topics are not a device's: tokens limited to some devices do not reach them.
      authorize(principal, user, 'read');
      sendRetained = subscribeTopic(filters.topic as string);
    }
    // Buckets neither: the same.
    if (name === 'bucket_write') {
      authorize(principal, user, 'read');
      listenBuckets();
    }
    subscriptions.set(name, filters);
    if (!v1) out.send({ event: name, signal: 'start', payload: { filters: filters.echo } });
    sendRetained?.();
  };

  const acknowledgeStop = (name: EventName, what: string) => {
    if (v1 && name !== RESOURCE_STREAM) return;
    out.send({
      event: name,
      signal: 'stop',
      payload: { code: 'unsubscribed', message: `unsubscribed from ${what}` },
    });
  };

  const onV2 = (frame: Record<string, unknown>) => {
    checkKeys(frame, ['event', 'filters', 'params', 'enabled']);
    if (typeof frame.event !== 'string' || !(EVENTS as readonly string[]).includes(frame.event))
      throw new FrameError('unknown_event', `event must be one of: ${EVENTS.join(', ')}`);
    const name = frame.event as EventName;
    const enabled = enabledOf(frame);
    if (frame.filters !== undefined && frame.filters !== null && !isPlainObject(frame.filters))
      throw new FrameError(
        'invalid_frame',
        `filters must be an object with ${EVENT_FILTERS[name].join(', ')}`,
      );
    const given = (frame.filters ?? {}) as Record<string, unknown>;
    if (!enabled) {
      const filters =
        name === RESOURCE_STREAM && Object.keys(given).length > 0
          ? parseFilters(name, given, 'v2', false)
          : undefined;
      if (!unsubscribe(name, filters)) throw new FrameError('not_subscribed', `not subscribed to ${name}`);
      acknowledgeStop(name, name);
      return;
    }
    for (const k of Object.keys(given)) {
      if (!EVENT_FILTERS[name].includes(k))
        throw new FrameError(
          'invalid_frame',
          `unknown filter "${k}" (expected ${EVENT_FILTERS[name].join(', ')})`,
        );
    }
    const filters = parseFilters(name, given, 'v2', true);
    const interval = name === RESOURCE_STREAM ? paramsInterval(frame.params) : 0;
    subscribe(name, filters, interval, name === RESOURCE_STREAM ? frame.params : undefined);
  };

  const onV1 = (frame: Record<string, unknown>) => {
    const event = frame.event;
    if (typeof event !== 'string' || event.length === 0 || event.length > MAX_EVENT_LENGTH)
      throw new FrameError(
        'invalid_frame',
        `event must be an event name (or a pattern such as "device_.*") of at most ${MAX_EVENT_LENGTH} characters`,
      );
    const enabled = enabledOf(frame);
    const isExact = (EVENTS as readonly string[]).includes(event);
    let names: EventName[];
    if (isExact) names = [event as EventName];
    else {
      const match = patternOf(event, 'event');
      names = EVENTS.filter((e) => match(e));
    }
    if (names.length === 0)
      throw new FrameError('unknown_event', `no event matches "${event}" (events: ${EVENTS.join(', ')})`);
    // Filters are the frame's other keys (plus an optional "filters" object); unknown keys are ignored.
    const flat: Record<string, unknown> = Object.create(null);
    for (const [k, v] of Object.entries(frame)) {
      if (k !== 'event' && k !== 'enabled' && k !== 'params' && k !== 'filters') flat[k] = v;
    }
    if (isPlainObject(frame.filters)) Object.assign(flat, frame.filters);
    // Everything is checked first and applied after: a frame is refused whole or taken whole.
    const actions: Array<() => void> = [];
    /** Why events the pattern names were left out. */
    const skipped: string[] = [];
    for (const name of names) {
      const given: Record<string, unknown> = {};
      for (const k of EVENT_FILTERS[name]) {
        const v = flat[k];
        if (v !== undefined && v !== null && v !== '' && v !== 'any') given[k] = v;
      }
      const required = name === RESOURCE_STREAM ? 'resource' : name === 'device_topic_publish' ? 'topic' : '';
      if (required && given[required] === undefined) {
        if (enabled) {
          if (isExact) throw missingFilter(name);
          // A pattern also naming an event that needs a filter: not that one.
          skipped.push(`${name} needs a ${required} filter`);
          continue;
        }
        actions.push(() => {
          if (unsubscribe(name, undefined)) acknowledgeStop(name, name);
        });
        continue;
      }
      if (!enabled) {
        const filters = name === RESOURCE_STREAM ? parseFilters(name, given, 'v1', false) : undefined;
        actions.push(() => {
          if (unsubscribe(name, filters)) acknowledgeStop(name, name);
        });
        continue;
      }
      // Topics and buckets are the account's, not a device's: a device-limited token may not
      // listen to them (an exact name is refused; a pattern leaves them out).
      if ((name === 'bucket_write' || name === 'device_topic_publish') && !mayReadAccount(principal, user)) {
        if (isExact) authorize(principal, user, 'read');
        skipped.push(`${name} is not for tokens limited to devices`);
        continue;
      }
      const filters = parseFilters(name, given, 'v1', true);
      if (
        name === RESOURCE_STREAM &&
        !resources.has(resourceKey(filters)) &&
        resources.size >= MAX_RESOURCE_SUBSCRIPTIONS
      )
        throw new FrameError(
          'too_many_subscriptions',
          `at most ${MAX_RESOURCE_SUBSCRIPTIONS} resource subscriptions per socket: remove one first`,
        );
      const interval = name === RESOURCE_STREAM ? paramsInterval(frame.params) : 0;
      actions.push(() =>
        subscribe(name, filters, interval, name === RESOURCE_STREAM ? frame.params : undefined),
      );
    }
    if (actions.length === 0)
      throw new FrameError(
        'invalid_frame',
        `"${event}" matches no event this subscription can take (${skipped.join('; ')})`,
      );
    for (const act of actions) act();
  };

  socket.on('message', (data, isBinary) => {
    let event: string | undefined;
    try {
      const frame = parseFrame(data, isBinary, o.maxFrameBytes);
      if (typeof frame.event === 'string' && frame.event.length <= MAX_EVENT_LENGTH) event = frame.event;
      if (v1) onV1(frame);
      else onV2(frame);
    } catch (err) {
      const error = errorPayload(err);
      if (v1) out.send({ success: false, ...(event !== undefined ? { event } : {}), error });
      else out.send({ ...(event !== undefined ? { event } : {}), signal: 'error', payload: error });
    }
  });
}

/** Whether the token reaches what is the account's rather than a device's (buckets, topics). */
function mayReadProperties(principal: Principal, user: string, device: string): boolean {
  try {
    authorizeProperties(principal, user, 'read', device);
    return true;
  } catch {
    return false;
  }
}

function mayReadAccount(principal: Principal, user: string): boolean {
  try {
    authorize(principal, user, 'read');
    return true;
  } catch {
    return false;
  }
}

function enabledOf(frame: Record<string, unknown>): boolean {
  if (frame.enabled !== undefined && typeof frame.enabled !== 'boolean')
    throw new FrameError('invalid_frame', 'enabled must be true or false');
  return frame.enabled !== false;
}

function missingFilter(name: EventName): FrameError {
  return name === RESOURCE_STREAM
    ? new FrameError(
        'invalid_frame',
        'filters.resource is required, e.g. {"event": "device_resource_stream", "filters": {"resource": "telemetry"}}',
      )
    : new FrameError('invalid_frame', 'filters.topic is required, e.g. {"topic": "sensors/+/temperature"}');
}

function patternOf(value: string, what: string): Matcher {
  try {
    return compilePattern(value);
  } catch (err) {
    throw new FrameError(
      'invalid_frame',
      `${what}: ${err instanceof PatternError ? err.message : 'bad pattern'}`,
    );
  }
}

const ID = new RegExp(ID_PATTERN);

/**
 * Validated filters of one event. v2: exact ids; v1: patterns (device, property, state,
 * product / asset filters). `requireAll` = a subscription (required filters must be there).
 */
function parseFilters(
  name: EventName,
  given: Record<string, unknown>,
  dialect: EventsDialect,
  requireAll: boolean,
): Filters {
  const f: Filters = { nothing: false, echo: {} };
  for (const [k, v] of Object.entries(given)) {
    if (typeof v !== 'string') throw new FrameError('invalid_frame', `filters.${k} must be a string`);
    if ((GROUPINGS as readonly string[]).includes(k)) {
      if (v === '') continue;
      if (v.length > 256) throw new FrameError('invalid_frame', `filters.${k} is too long`);
      // Devices here belong to no product or asset group: only a pattern matching "" lets them through.
      if (dialect === 'v2' || !patternOf(v, `filters.${k}`)('')) f.nothing = true;
      f.echo[k] = v;
      continue;
    }
    switch (k) {
      case 'topic': {
        const error = topicFilterError(v);
        if (error) throw new FrameError('invalid_frame', `filters.topic: ${error}`);
        f.topic = v;
        break;
      }
      case 'resource':
        if (v.length === 0 || v.length > MAX_RESOURCE_LENGTH)
          throw new FrameError(
            'invalid_frame',
            `filters.resource must be a non-empty string of at most ${MAX_RESOURCE_LENGTH} characters`,
          );
        f.resource = v;
        break;
      case 'state':
        if (dialect === 'v2') {
          if (!STATES.includes(v))
            throw new FrameError('invalid_frame', `filters.state must be one of ${STATES.join(', ')}`);
          f.state = exact(v);
        } else f.state = patternOf(v, 'filters.state');
        break;
      case 'bucket':
        if (dialect === 'v2' && !ID.test(v))
          throw new FrameError('invalid_frame', 'filters.bucket must be a bucket id');
        f.bucket = dialect === 'v2' ? exact(v) : patternOf(v, 'filters.bucket');
        break;
      case 'device':
      case 'property':
        if (dialect === 'v2' && !ID.test(v))
          throw new FrameError(
            'invalid_frame',
            `filters.${k} must be ${k === 'device' ? 'a device' : 'a property'} id`,
          );
        if (k === 'device') f.device = dialect === 'v2' ? exact(v) : patternOf(v, 'filters.device');
        else f.property = dialect === 'v2' ? exact(v) : patternOf(v, 'filters.property');
        break;
      default:
        throw new FrameError('invalid_frame', `unknown filter "${k}"`);
    }
    f.echo[k] = v;
  }
  if (requireAll) {
    if (name === 'device_topic_publish' && f.topic === undefined) throw missingFilter(name);
    if (name === RESOURCE_STREAM && f.resource === undefined) throw missingFilter(name);
  }
  return f;
}

/** What identifies a resource subscription on its socket: its filters. */
function resourceKey(f: Filters): string {
  return JSON.stringify(Object.entries(f.echo).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

/** `params.interval` of a resource subscription: milliseconds, as Thinger.io; 0 = device events. */
function paramsInterval(params: unknown): number {
  if (params === undefined || params === null) return 0;
  if (!isPlainObject(params))
    throw new FrameError('invalid_frame', 'params must be an object, e.g. {"interval": 1000} (milliseconds)');
  const v = params.interval;
  if (v === undefined || v === null || v === 0) return 0;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0)
    throw new FrameError('invalid_frame', 'params.interval must be a number of milliseconds');
  if (v < MIN_INTERVAL_MS || v > MAX_INTERVAL_MS)
    throw new FrameError(
      'invalid_frame',
      `params.interval must be between ${MIN_INTERVAL_MS} and ${MAX_INTERVAL_MS} milliseconds (or 0 for the device's own events)`,
    );
  return Math.round(v);
}
