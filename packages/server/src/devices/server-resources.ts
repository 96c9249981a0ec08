import {
  type InboundSubscription,
  RequestError,
  ResourceError,
  type ServerCall,
  SessionError,
  SessionErrorCode,
  type SubscriptionHandlers,
} from '@iotmp/protocol';
import type { PsonValue } from '@iotmp/pson';
import { ID_PATTERN } from '../api/context.js';
import { psonToJson } from '../api/json.js';
import { type EventBus, SERVER_EVENTS, type ServerEvents } from '../events/bus.js';
import { type TopicBroker, topicFilterError, topicNameError } from '../events/topics.js';
import { PropertyError, type PropertyStore } from '../storage/properties.js';
import type { DeviceStateChange, LiveDevice } from './hub.js';
import { MAX_SYNC_SLOTS, MAX_SYNC_TIMEOUT_SECONDS, SyncError, type SyncManager } from './syncs.js';

/*
 * What a device may ask of the server (spec §11): RUN with a numeric code (1–7) and
 * START_STREAM on resource 8 (server events). Every call is scoped to the device's own user:
 * identifiers name that user's properties, devices, buckets, endpoints, syncs and topics,
 * never another user's. Refusals become ERROR with {"error": message} and an HTTP-like code
 * in PARAMETERS (the session engine turns a thrown ResourceError into that frame).
 */

/** Device → server codes (spec §11.1). */
export const ServerCode = {
  READ_DEVICE_PROPERTY: 1,
  SET_DEVICE_PROPERTY: 2,
  CALL_DEVICE: 3,
  CALL_ENDPOINT: 4,
  WRITE_BUCKET: 5,
  LOCK_SYNC: 6,
  UNLOCK_SYNC: 7,
} as const;

/**
 * Writes bucket data (the BucketStore). Resolves after a durable commit. A rejection whose
 * `code` is a lowercase API code (e.g. "bucket_not_found") is the device's fault: its message
 * is shown to the device, with `status` (when numeric) as the return code; anything else is
 * logged and answered "internal error".
 */
export interface BucketWriter {
  write(username: string, bucket: string, data: unknown): Promise<unknown>;
}

/** Calls an endpoint (the EndpointRunner); rejections as for {@link BucketWriter}. */
export interface EndpointCaller {
  call(username: string, endpoint: string, data: unknown): Promise<{ status: number; body: unknown }>;
}

export interface ServerResourcesLogger {
  warn(obj: object, msg: string): void;
  debug(obj: object, msg: string): void;
}

export interface ServerResourcesOptions {
  hub: {
    get(username: string, device: string): LiveDevice | undefined;
    onStateChange(listener: (change: DeviceStateChange) => void): () => void;
  };
  accounts: { getDevice(username: string, device: string): object | undefined };
  properties: PropertyStore;
  events: EventBus;
  topics: TopicBroker;
  syncs: SyncManager;
  /** Absent: code 5 answers 501. */
  buckets?: BucketWriter | undefined;
  /** Absent: code 4 answers 501. */
  endpoints?: EndpointCaller | undefined;
  /** How long a device → device call waits for the other device (capped at 30 s). */
  deviceCallTimeoutMs: number;
  log?: ServerResourcesLogger;
  /** Every answered call, for metrics: its code and whether it succeeded. */
  onCall?: (code: number, ok: boolean) => void;
}

/** The handlers the hub installs on one live device's session. */
export interface DeviceServerResources {
  onServerCall(call: ServerCall): Promise<PsonValue | undefined>;
  onSubscribe(subscription: InboundSubscription): SubscriptionHandlers;
  /** The device's session ended (its syncs are freed). */
  onClose(): void;
}

/** A device → device call never waits longer than this, whatever the configuration says. */
export const MAX_DEVICE_CALL_TIMEOUT_MS = 30_000;
const MAX_RESOURCE_LENGTH = 1024;
const MAX_LOCK_ID_LENGTH = 128;
const ID_RE = new RegExp(ID_PATTERN);
const ID_RULE = '1–128 characters: letters, digits, _ . @ - (not first)';
/** API-style error codes (the BucketStore's and EndpointRunner's): their messages are meant for callers. */
const CLIENT_ERROR_CODE = /^[a-z][a-z0-9_]*$/;

function isPlainObject(v: unknown): v is Record<string, PsonValue> {
  return (
    typeof v === 'object' &&
    v !== null &&
    !Array.isArray(v) &&
    !(v instanceof Uint8Array) &&
    !(v instanceof Map)
  );
}

/** A PSON number (bigints from 64-bit varints included) as a JS number, else undefined. */
function numberOf(v: unknown): number | undefined {
  if (typeof v === 'number') return v;
  if (typeof v === 'bigint' && v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER))
    return Number(v);
  return undefined;
}

/** Text from a device, shortened for an error message. */
function quote(v: unknown): string {
  const s = typeof v === 'string' ? v : String(v);
  return JSON.stringify(s.length > 64 ? `${s.slice(0, 64)}…` : s);
}

function bad(message: string): ResourceError {
  return new ResourceError(400, message);
}

/**
 * Sends of one subscription, held back until the OK that accepts it is out: the session
 * writes that OK when `onSubscribe` returns, so queued data leaves one microtask later.
 * A payload that cannot be sent (e.g. larger than a frame) is dropped for this subscriber.
 */
function gatedSender(sub: InboundSubscription, onDrop: (error: unknown) => void): (p: PsonValue) => void {
  const trySend = (payload: PsonValue) => {
    try {
      sub.send(payload);
    } catch (err) {
      onDrop(err);
    }
  };
  let queue: PsonValue[] | undefined = [];
  queueMicrotask(() => {
    const queued = queue ?? [];
    queue = undefined;
    for (const p of queued) trySend(p);
  });
  return (payload) => {
    if (queue) queue.push(payload);
    else trySend(payload);
  };
}

export class ServerResources {
  private readonly perDevice = new WeakMap<LiveDevice, DeviceServerResources>();
  private readonly stopListening: () => void;
  private readonly callTimeoutMs: number;

  constructor(private readonly options: ServerResourcesOptions) {
    this.callTimeoutMs = Math.max(1, Math.min(options.deviceCallTimeoutMs, MAX_DEVICE_CALL_TIMEOUT_MS));
    // Device state changes become a server event of their user.
    this.stopListening = options.hub.onStateChange((c) => {
      const payload: ServerEvents['device_state_change'] = {
        device: c.device,
        connected: c.connected,
        ts: c.ts,
      };
      if (c.ip !== undefined) payload.ip = c.ip;
      if (c.reason !== undefined) payload.reason = c.reason;
      options.events.publish(c.username, 'device_state_change', payload);
    });
  }

  /** The handlers of one live device (the same object for every call of that session). */
  for(live: LiveDevice): DeviceServerResources {
    let handlers = this.perDevice.get(live);
    if (!handlers) {
      handlers = {
        onServerCall: (call) => this.serve(live, call),
        onSubscribe: (sub) => this.subscribe(live, sub),
        onClose: () => {
          this.options.syncs.releaseOwner(live.username, live);
        },
      };
      this.perDevice.set(live, handlers);
    }
    return handlers;
  }

  close(): void {
    this.stopListening();
  }

  // ---------------------------------------------------------------------------------------
  // Calls (RUN with a code)

  private async serve(live: LiveDevice, call: ServerCall): Promise<PsonValue | undefined> {
    try {
      const result = await this.dispatch(live, call);
      this.options.onCall?.(call.code, true);
      return result;
    } catch (err) {
      this.options.onCall?.(call.code, false);
      if (err instanceof ResourceError) throw err;
      // Unexpected (a bug, storage failure): logged; the device learns nothing internal.
      this.options.log?.warn(
        { err, username: live.username, device: live.device, code: call.code },
        'server resource call failed',
      );
      throw new ResourceError(500, 'internal error');
    }
  }

  private dispatch(
    live: LiveDevice,
    call: ServerCall,
  ): Promise<PsonValue | undefined> | PsonValue | undefined {
    switch (call.code) {
      case ServerCode.READ_DEVICE_PROPERTY:
        return this.readProperty(live, call);
      case ServerCode.SET_DEVICE_PROPERTY:
        return this.setProperty(live, call);
      case ServerCode.CALL_DEVICE:
        return this.callDevice(live, call);
      case ServerCode.CALL_ENDPOINT:
        return this.callEndpoint(live, call);
      case ServerCode.WRITE_BUCKET:
        return this.writeBucket(live, call);
      case ServerCode.LOCK_SYNC:
        return this.lockSync(live, call);
      case ServerCode.UNLOCK_SYNC:
        return this.unlockSync(live, call);
      default:
        throw new ResourceError(404, `unknown server resource ${call.code} (known: 1–7)`);
    }
  }

  /** The call's identifier as an id of `what` (property, bucket, …), or ERROR 400. */
  private id(call: ServerCall, what: string): string {
    const v = call.identifier;
    if (typeof v !== 'string' || !ID_RE.test(v))
      throw bad(
        `${what} id must be a string of ${ID_RULE}${v === undefined ? ' (none given)' : typeof v === 'string' ? `, not ${quote(v)}` : ''}`,
      );
    return v;
  }

  private readProperty(live: LiveDevice, call: ServerCall): PsonValue {
    const property = this.id(call, 'property');
    const record = this.options.properties.get(live.username, live.device, property);
    // ERROR, not an empty OK: the reference client's get_property() then reports "not found".
    if (!record) throw new ResourceError(404, `property ${property} does not exist`);
    return record.value as PsonValue;
  }

  private setProperty(live: LiveDevice, call: ServerCall): undefined {
    const property = this.id(call, 'property');
    try {
      this.options.properties.set(live.username, live.device, property, psonToJson(call.data));
    } catch (err) {
      if (err instanceof PropertyError) throw new ResourceError(err.status, err.message);
      throw err;
    }
    return undefined;
  }

  private async callDevice(live: LiveDevice, call: ServerCall): Promise<PsonValue | undefined> {
    const target = call.identifier;
    if (
      !Array.isArray(target) ||
      target.length !== 2 ||
      typeof target[0] !== 'string' ||
      typeof target[1] !== 'string'
    )
      throw bad('a device call names its target as [device, resource] (two strings)');
    const [device, resource] = target as [string, string];
    if (!ID_RE.test(device)) throw bad(`device id must be a string of ${ID_RULE}, not ${quote(device)}`);
    if (resource.length === 0 || resource.length > MAX_RESOURCE_LENGTH)
      throw bad(`resource must be 1–${MAX_RESOURCE_LENGTH} characters`);
    // Only the caller's own user's devices: the lookup is keyed by that user.
    const other = this.options.hub.get(live.username, device);
    if (!other) {
      if (!this.options.accounts.getDevice(live.username, device))
        throw new ResourceError(404, `device ${device} does not exist`);
      throw new ResourceError(503, `device ${device} is not connected`);
    }
    if (!call.wantsReply) {
      // The caller wants no answer: neither does the relay (no pending call, no timeout).
      try {
        other.session.runNoReply(resource, call.data);
      } catch {
        // the other device is going away: nobody is waiting to hear it
      }
      return undefined;
    }
    try {
      return await other.session.run(resource, call.data, { timeoutMs: this.callTimeoutMs });
    } catch (err) {
      if (err instanceof RequestError) {
        const payload = err.payload;
        // A bare ERROR is how devices say "no such resource" (spec §8.2).
        if (payload === undefined && err.parameters === undefined)
          throw new ResourceError(404, `device ${device} has no resource ${quote(resource)}`);
        const message =
          isPlainObject(payload) && typeof payload.error === 'string'
            ? payload.error
            : `device ${device} answered with an error`;
        throw new ResourceError(err.returnCode ?? 502, message);
      }
      if (err instanceof SessionError) {
        if (err.code === SessionErrorCode.TIMEOUT)
          throw new ResourceError(504, `device ${device} did not answer within ${this.callTimeoutMs} ms`);
        if (err.code === SessionErrorCode.TOO_MANY_REQUESTS)
          throw new ResourceError(429, `device ${device} has too many calls in flight`);
        throw new ResourceError(503, `device ${device} disconnected`);
      }
      throw err;
    }
  }

  /** A rejection of the bucket store or endpoint runner, as an answer to the device. */
  private external(err: unknown): ResourceError {
    if (err instanceof ResourceError) return err;
    const e = err as { code?: unknown; status?: unknown; message?: unknown } | null;
    if (
      err instanceof Error &&
      typeof e?.code === 'string' &&
      CLIENT_ERROR_CODE.test(e.code) &&
      typeof e.message === 'string'
    ) {
      const status = typeof e.status === 'number' && e.status >= 400 && e.status <= 599 ? e.status : 400;
      return new ResourceError(status, e.message);
    }
    throw err;
  }

  private async callEndpoint(live: LiveDevice, call: ServerCall): Promise<PsonValue | undefined> {
    const endpoint = this.id(call, 'endpoint');
    const endpoints = this.options.endpoints;
    if (!endpoints) throw new ResourceError(501, 'endpoints are not available on this server');
    let result: { status: number; body: unknown };
    try {
      result = await endpoints.call(
        live.username,
        endpoint,
        call.data === undefined ? undefined : psonToJson(call.data),
      );
    } catch (err) {
      throw this.external(err);
    }
    if (result.status >= 400)
      throw new ResourceError(result.status, `endpoint ${endpoint} answered HTTP ${result.status}`);
    return result.body === undefined ? undefined : (result.body as PsonValue);
  }

  private async writeBucket(live: LiveDevice, call: ServerCall): Promise<undefined> {
    const bucket = this.id(call, 'bucket');
    const buckets = this.options.buckets;
    if (!buckets) throw new ResourceError(501, 'buckets are not available on this server');
    if (!isPlainObject(call.data))
      throw bad(`bucket data must be an object (e.g. {"temperature": 21.5}), not ${kindOf(call.data)}`);
    try {
      await buckets.write(live.username, bucket, psonToJson(call.data));
    } catch (err) {
      throw this.external(err);
    }
    return undefined;
  }

  /** The optional object of a sync call ({lock?, slots?, timeout?}; other keys are ignored). */
  private syncPayload(call: ServerCall): Record<string, PsonValue> {
    const data = call.data;
    if (data === undefined || data === null) return {};
    if (!isPlainObject(data))
      throw bad(`sync data must be an object {"lock"?, "slots"?, "timeout"?}, not ${kindOf(data)}`);
    if (data.lock !== undefined && (typeof data.lock !== 'string' || data.lock.length > MAX_LOCK_ID_LENGTH))
      throw bad(`lock must be a string of at most ${MAX_LOCK_ID_LENGTH} characters`);
    return data;
  }

  private lockSync(live: LiveDevice, call: ServerCall): undefined {
    const sync = this.id(call, 'sync');
    const data = this.syncPayload(call);
    let slots = 1;
    if (data.slots !== undefined) {
      const n = numberOf(data.slots);
      if (n === undefined || !Number.isInteger(n) || n < 1 || n > MAX_SYNC_SLOTS)
        throw bad(`slots must be an integer from 1 to ${MAX_SYNC_SLOTS}`);
      slots = n;
    }
    let timeout = 0;
    if (data.timeout !== undefined) {
      const n = numberOf(data.timeout);
      if (n === undefined || !Number.isFinite(n) || n < 0 || n > MAX_SYNC_TIMEOUT_SECONDS)
        throw bad(`timeout must be a number of seconds from 0 (none) to ${MAX_SYNC_TIMEOUT_SECONDS}`);
      timeout = n;
    }
    try {
      this.options.syncs.lock(
        live.username,
        sync,
        { device: live.device, lock: (data.lock as string | undefined) ?? '', owner: live },
        slots,
        timeout,
      );
    } catch (err) {
      if (err instanceof SyncError) throw new ResourceError(err.status, err.message);
      throw err;
    }
    return undefined;
  }

  private unlockSync(live: LiveDevice, call: ServerCall): undefined {
    const sync = this.id(call, 'sync');
    const data = this.syncPayload(call);
    try {
      this.options.syncs.unlock(live.username, sync, live.device, (data.lock as string | undefined) ?? '');
    } catch (err) {
      if (err instanceof SyncError) throw new ResourceError(err.status, err.message);
      throw err;
    }
    return undefined;
  }

  // ---------------------------------------------------------------------------------------
  // Subscriptions (START_STREAM on resource 8)

  private subscribe(live: LiveDevice, sub: InboundSubscription): SubscriptionHandlers {
    const p = sub.parameters;
    if (!isPlainObject(p) || typeof p.event !== 'string')
      throw bad('a subscription needs parameters {"event": name, …}');
    switch (p.event) {
      case 'device_topic_publish':
        return this.subscribeTopic(live, sub, p);
      case 'device_property_update':
        return this.subscribeProperty(live, sub, p);
      case 'device_state_change':
        return this.subscribeState(live, sub, p);
      default:
        throw new ResourceError(
          404,
          `unknown event ${quote(p.event)} (known: ${[...SERVER_EVENTS, 'device_topic_publish'].join(', ')})`,
        );
    }
  }

  private sender(live: LiveDevice, sub: InboundSubscription, event: string): (p: PsonValue) => void {
    return gatedSender(sub, (err) =>
      this.options.log?.debug(
        { username: live.username, device: live.device, event, error: String(err) },
        'server event not delivered to a device',
      ),
    );
  }

  /** `filters` of a subscription: an object of ids, only the keys allowed. */
  private filters(p: Record<string, PsonValue>, allowed: readonly string[]): Record<string, string> {
    const f = p.filters;
    if (f === undefined || f === null) return {};
    if (!isPlainObject(f)) throw bad(`filters must be an object with ${allowed.join(', ')}`);
    const out: Record<string, string> = {};
    for (const [k, v] of Object.entries(f)) {
      if (!allowed.includes(k)) throw bad(`unknown filter ${quote(k)} (expected ${allowed.join(', ')})`);
      if (typeof v !== 'string' || !ID_RE.test(v)) throw bad(`filters.${k} must be an id of ${ID_RULE}`);
      out[k] = v;
    }
    return out;
  }

  /**
   * `filters.property` given: the values of that property of this device (or of
   * `filters.device`), with `current` the present value in the OK — as the reference
   * client's property_stream(). Without it: every property change of the user's devices
   * (or of `filters.device`) as {device, property, value}.
   */
  private subscribeProperty(
    live: LiveDevice,
    sub: InboundSubscription,
    p: Record<string, PsonValue>,
  ): SubscriptionHandlers {
    const filters = this.filters(p, ['property', 'device']);
    if (p.current !== undefined && typeof p.current !== 'boolean') throw bad('current must be true or false');
    const { username } = live;
    const send = this.sender(live, sub, 'device_property_update');
    if (filters.property !== undefined) {
      const property = filters.property;
      const device = filters.device ?? live.device;
      const unsubscribe = this.options.events.subscribe(username, 'device_property_update', (c) => {
        if (c.device === device && c.property === property) send(c.value as PsonValue);
      });
      const current =
        p.current === true ? this.options.properties.get(username, device, property)?.value : undefined;
      return { initial: current as PsonValue | undefined, onClose: unsubscribe };
    }
    const device = filters.device;
    const unsubscribe = this.options.events.subscribe(username, 'device_property_update', (c) => {
      if (device === undefined || c.device === device) send(c as unknown as PsonValue);
    });
    return { onClose: unsubscribe };
  }

  private subscribeState(
    live: LiveDevice,
    sub: InboundSubscription,
    p: Record<string, PsonValue>,
  ): SubscriptionHandlers {
    const { device } = this.filters(p, ['device']);
    const send = this.sender(live, sub, 'device_state_change');
    const unsubscribe = this.options.events.subscribe(live.username, 'device_state_change', (c) => {
      if (device === undefined || c.device === device) send(c as unknown as PsonValue);
    });
    return { onClose: unsubscribe };
  }

  private subscribeTopic(
    live: LiveDevice,
    sub: InboundSubscription,
    p: Record<string, PsonValue>,
  ): SubscriptionHandlers {
    const { scope, topic, qos, retained } = p;
    if (scope !== 'publish' && scope !== 'subscribe') throw bad('scope must be "publish" or "subscribe"');
    if (qos !== undefined) {
      const n = numberOf(qos);
      if (n !== 0 && n !== 1 && n !== 2) throw bad('qos must be 0, 1 or 2');
    }
    if (retained !== undefined && typeof retained !== 'boolean') throw bad('retained must be true or false');
    const topics = this.options.topics;
    const { username } = live;
    if (scope === 'publish') {
      const error = topicNameError(topic);
      if (error) throw bad(error);
      const name = topic as string;
      return { onData: (payload) => topics.publish(username, name, payload, retained === true) };
    }
    const error = topicFilterError(topic);
    if (error) throw bad(error);
    const send = this.sender(live, sub, 'device_topic_publish');
    const subscription = topics.subscribe(username, topic as string, (m) =>
      send({ topic: m.topic, payload: m.payload }),
    );
    // Retained messages first (queued before anything published later).
    for (const m of subscription.retained) send({ topic: m.topic, payload: m.payload, retained: true });
    return { onClose: subscription.unsubscribe };
  }
}

function kindOf(v: unknown): string {
  if (v === undefined) return 'nothing';
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (v instanceof Uint8Array) return 'bytes';
  return `a ${typeof v}`;
}
