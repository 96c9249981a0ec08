import {
  AuthError,
  type CallOptions,
  type Clock,
  ClosedError,
  type ProtocolVersion,
  type RemoteStream,
  RequestError,
  type ResourceDefinition,
  ResourceRegistry,
  Session,
  type SessionError,
  systemClock,
  type TimerHandle,
  type Transport,
} from '@iotmp/protocol';
import type { PsonValue } from '@iotmp/pson';
import { backoffDelay, type ReconnectOptions } from './backoff.js';
import { EventQueue } from './queue.js';

/** Device → server resource codes (spec §11.1). */
export const ServerResource = {
  READ_DEVICE_PROPERTY: 1,
  SET_DEVICE_PROPERTY: 2,
  CALL_DEVICE: 3,
  CALL_ENDPOINT: 4,
  WRITE_BUCKET: 5,
  LOCK_SYNC: 6,
  UNLOCK_SYNC: 7,
} as const;

export type DeviceTransportName = 'tcp' | 'tls' | 'ws' | 'wss';

export type DeviceState = 'idle' | 'connecting' | 'connected' | 'disconnected' | 'closed';

export interface DeviceStatus {
  state: DeviceState;
  /** Why the device is disconnected or closed. */
  reason?: string;
  error?: Error;
  /** Connection attempt number while connecting (0 = first). */
  attempt?: number;
  /** Milliseconds until the next attempt, while disconnected. */
  retryInMs?: number;
}

export interface DeviceOptions {
  username: string;
  deviceId: string;
  credential: string;
  /** Server host (default "localhost"). */
  host?: string;
  /** Server port (default: 25204 tcp, 25206 tls, 80 ws, 443 wss). */
  port?: number;
  /** How to reach the server (default "tls"; browsers: "wss" or "ws"). */
  transport?: DeviceTransportName;
  /** WebSocket URL, overriding host/port/path. */
  url?: string;
  /** WebSocket path (default "/iotmp"). */
  path?: string;
  /** TLS: verify the server certificate (default true), extra CA, SNI name. */
  tls?: {
    rejectUnauthorized?: boolean;
    ca?: string | Uint8Array | Array<string | Uint8Array>;
    servername?: string;
  };
  /** Protocol version: 1 (default, new PSON) or 0 (legacy PSON, for old servers). */
  version?: ProtocolVersion;
  /** Keep-alive interval in seconds (default 60). */
  keepAliveSeconds?: number;
  /** Default timeout of calls to the server (default 30 s). */
  requestTimeoutMs?: number;
  /** Timeout for opening the connection and logging in (default 10 s). */
  connectTimeoutMs?: number;
  /** Reconnect policy after a lost connection; false disables reconnecting. */
  reconnect?: ReconnectOptions | false;
  /** Items a subscription iterator keeps for a slow reader before dropping the oldest (default 1000). */
  subscriptionBuffer?: number;
  /** Time source (tests). */
  clock?: Clock;
  /** Protocol oddities and reconnect errors worth logging. */
  onWarning?: (message: string, details?: Record<string, unknown>) => void;
}

/** Something to re-open on every new connection. */
/**
 * A server subscription read with `for await`. `ready` resolves once the server accepted it
 * (on the current connection, or the next one). Leaving the loop ends it on the server.
 */
export interface Subscription<T> extends AsyncIterableIterator<T> {
  readonly ready: Promise<void>;
  /** Items dropped because the reader fell behind by more than `subscriptionBuffer`. */
  readonly dropped: number;
}

interface OpenSubscription {
  parameters: PsonValue;
  onData(payload: PsonValue | undefined): void;
  onOpen(): void;
  stream: RemoteStream | undefined;
  active: boolean;
}

export interface TopicMessage {
  topic: string;
  payload: PsonValue | undefined;
}

export interface ConfirmOption {
  /** Wait for the server's answer (default true). false sends without a stream id: no answer, no error. */
  confirm?: boolean;
}

function isObject(v: unknown): v is Record<string, PsonValue> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array);
}

/**
 * An IOTMP device: it connects to a server, exposes resources, streams, and uses the
 * server's resources. This is the transport-independent core; `@iotmp/device` (Node.js:
 * TCP, TLS, WebSocket) and `@iotmp/device/browser` (WebSocket) supply the connections.
 */
export abstract class DeviceCore {
  readonly resources = new ResourceRegistry();
  protected readonly options: DeviceOptions;
  private readonly clock: Clock;
  private session: Session | undefined;
  private _status: DeviceStatus = { state: 'idle' };
  private readonly statusListeners = new Set<(s: DeviceStatus) => void>();
  private readonly subscriptions = new Set<OpenSubscription>();
  private readonly publishStreams = new Map<string, Promise<RemoteStream>>();
  private connecting: Promise<void> | undefined;
  private reconnectTimer: TimerHandle | undefined;
  private wakeReconnect: (() => void) | undefined;
  private closedByUser = false;
  private everConnected = false;

  constructor(options: DeviceOptions) {
    for (const key of ['username', 'deviceId', 'credential'] as const) {
      if (typeof options[key] !== 'string' || options[key].length === 0) {
        throw new TypeError(`Device option ${key} must be a non-empty string`);
      }
    }
    this.options = options;
    this.clock = options.clock ?? systemClock;
  }

  /** Opens a new connection to the server. */
  protected abstract openTransport(signal: AbortSignal): Promise<Transport>;

  // ---------------------------------------------------------------------------------------
  // Resources and streams

  /**
   * Exposes a resource. Its kind follows from its handlers: `output` (sensor), `input`
   * (actuator), `input: true` + `output` (RPC; output receives the input), `run` (no I/O).
   * Names may be patterns: `gpio/:pin`, `fs/*path` (matches in `call.params`).
   */
  resource(name: string, definition: ResourceDefinition): this {
    this.resources.add(name, definition);
    return this;
  }

  /**
   * Pushes resource `name`'s current output (or `value`) to everyone streaming it. Returns
   * the number of listeners (0: nothing was computed or sent).
   */
  stream(name: string, value?: PsonValue): number | Promise<number> {
    return this.session?.state === 'open' ? this.session.stream(name, value) : 0;
  }

  // ---------------------------------------------------------------------------------------
  // Connection

  get status(): DeviceStatus {
    return this._status;
  }

  /** Bytes waiting to be sent; pace high-rate streaming on it (the connection closes past 1 MiB). */
  get bufferedAmount(): number {
    return this.session?.bufferedAmount ?? 0;
  }

  get connected(): boolean {
    return this._status.state === 'connected';
  }

  /** Calls `listener` on every status change; returns a function that unsubscribes. */
  onStatus(listener: (status: DeviceStatus) => void): () => void {
    this.statusListeners.add(listener);
    return () => this.statusListeners.delete(listener);
  }

  /** Status changes as an async iterator (ends when the device is closed). */
  statusChanges(): AsyncIterableIterator<DeviceStatus> {
    const off = this.onStatus((s) => {
      queue.push(s);
      if (s.state === 'closed') queue.end();
    });
    const queue = new EventQueue<DeviceStatus>(100, off);
    return queue;
  }

  private setStatus(status: DeviceStatus): void {
    this._status = status;
    for (const l of [...this.statusListeners]) {
      try {
        l(status);
      } catch (err) {
        this.warn('status listener threw', { error: String(err) });
      }
    }
  }

  /**
   * Connects and logs in; resolves once the server accepted the device. Bad credentials
   * reject at once with {@link AuthError}. Network failures are retried with backoff
   * (see `reconnect`), reporting each attempt as a status change, until connected or closed.
   */
  connect(): Promise<void> {
    if (this.closedByUser) return Promise.reject(new ClosedError('device is closed'));
    if (this.session?.state === 'open') return Promise.resolve();
    if (!this.connecting) {
      this.connecting = this.connectLoop(true).finally(() => {
        this.connecting = undefined;
      });
    }
    return this.connecting;
  }

  private async connectLoop(firstConnect: boolean): Promise<void> {
    const reconnect = this.options.reconnect;
    for (let attempt = 0; ; attempt++) {
      if (this.closedByUser) throw new ClosedError('device is closed');
      this.setStatus({ state: 'connecting', attempt });
      try {
        await this.openSession();
        this.everConnected = true;
        this.setStatus({ state: 'connected' });
        return;
      } catch (err) {
        if (this.closedByUser) throw new ClosedError('device is closed');
        const error = err instanceof Error ? err : new Error(String(err));
        if (err instanceof AuthError && firstConnect) {
          this.setStatus({ state: 'closed', reason: error.message, error });
          this.closedByUser = true;
          throw err;
        }
        if (reconnect === false) {
          this.setStatus({ state: 'disconnected', reason: error.message, error });
          throw err;
        }
        const delay = backoffDelay(attempt, reconnect ?? {});
        this.setStatus({ state: 'disconnected', reason: error.message, error, retryInMs: delay });
        this.warn('connection attempt failed', { attempt, error: error.message, retryInMs: delay });
        await this.sleep(delay);
      }
    }
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      this.wakeReconnect = resolve;
      this.reconnectTimer = this.clock.setTimeout(() => {
        this.reconnectTimer = undefined;
        this.wakeReconnect = undefined;
        resolve();
      }, ms);
    });
  }

  private async openSession(): Promise<void> {
    const o = this.options;
    const timeoutMs = o.connectTimeoutMs ?? 10_000;
    const ac = new AbortController();
    const timer = this.clock.setTimeout(
      () => ac.abort(new Error(`no connection within ${timeoutMs} ms`)),
      timeoutMs,
    );
    let transport: Transport;
    try {
      transport = await this.openTransport(ac.signal);
    } finally {
      this.clock.clearTimeout(timer);
    }
    if (this.closedByUser) {
      transport.destroy();
      throw new ClosedError('device is closed');
    }
    const session = new Session({
      role: 'client',
      transport,
      clock: this.clock,
      resources: this.resources,
      version: o.version ?? 1,
      keepAliveSeconds: o.keepAliveSeconds,
      requestTimeoutMs: o.requestTimeoutMs,
      onClose: (error) => this.onSessionClose(session, error),
      onWarning: o.onWarning,
    });
    this.session = session;
    this.publishStreams.clear();
    await session.connect(
      { username: o.username, deviceId: o.deviceId, credential: o.credential },
      { timeoutMs },
    );
    // Server-side subscriptions live per connection: open them again.
    for (const sub of this.subscriptions) await this.openSubscription(session, sub);
  }

  private async openSubscription(session: Session, sub: OpenSubscription): Promise<void> {
    try {
      sub.stream = await session.subscribe(sub.parameters, { onData: (p) => sub.onData(p) });
      if (!sub.active) await sub.stream.stop();
      else sub.onOpen();
    } catch (err) {
      this.warn('subscription refused', { parameters: sub.parameters, error: String(err) });
      throw err;
    }
  }

  private onSessionClose(session: Session, error: SessionError | undefined): void {
    if (this.session !== session) return;
    this.session = undefined;
    this.publishStreams.clear();
    for (const sub of this.subscriptions) sub.stream = undefined;
    if (this.closedByUser) {
      this.setStatus({ state: 'closed' });
      return;
    }
    const reason = error?.message ?? 'connection closed';
    this.setStatus({ state: 'disconnected', reason, ...(error ? { error } : {}) });
    if (this.everConnected && this.options.reconnect !== false && !this.connecting) {
      this.connecting = this.connectLoop(false)
        .catch((err: unknown) => this.warn('reconnect stopped', { error: String(err) }))
        .finally(() => {
          this.connecting = undefined;
        });
    }
  }

  /** Closes the connection (DISCONNECT) and stops reconnecting; subscription iterators end. */
  async close(): Promise<void> {
    if (this.closedByUser && this._status.state === 'closed') return;
    this.closedByUser = true;
    if (this.reconnectTimer !== undefined) this.clock.clearTimeout(this.reconnectTimer);
    this.wakeReconnect?.();
    const session = this.session;
    for (const sub of this.subscriptions) sub.active = false;
    this.subscriptions.clear();
    if (session) session.close();
    else this.setStatus({ state: 'closed' });
    for (const end of this.queueEnds) end();
    this.queueEnds.clear();
  }

  private readonly queueEnds = new Set<() => void>();

  // ---------------------------------------------------------------------------------------
  // Server resources

  private requireSession(): Session {
    const s = this.session;
    if (s?.state !== 'open') throw new ClosedError('device is not connected');
    return s;
  }

  private callOptions(): CallOptions {
    return { timeoutMs: this.options.requestTimeoutMs };
  }

  /** Runs a server resource: with an answer (confirm), or fire-and-forget. */
  private async serverCall(
    code: number,
    identifier: PsonValue,
    data: PsonValue | undefined,
    confirm: boolean,
  ) {
    const session = this.requireSession();
    if (!confirm) {
      session.callServerNoReply(code, identifier, data);
      return undefined;
    }
    return session.callServer(code, identifier, data, this.callOptions());
  }

  /** The device's properties (configuration) stored on the server. */
  readonly properties = {
    get: (property: string): Promise<PsonValue | undefined> =>
      this.serverCall(ServerResource.READ_DEVICE_PROPERTY, property, undefined, true),
    set: async (property: string, value: PsonValue, options?: ConfirmOption): Promise<void> => {
      await this.serverCall(ServerResource.SET_DEVICE_PROPERTY, property, value, options?.confirm ?? true);
    },
    /** The property's value now (unless `current: false`) and after every change. */
    watch: (
      property: string,
      options?: { current?: boolean },
    ): AsyncIterableIterator<PsonValue | undefined> => {
      const parameters: Record<string, PsonValue> = {
        event: 'device_property_update',
        filters: { property },
      };
      if (options?.current ?? true) parameters.current = true;
      return this.subscribeEvents(parameters, (p) => p);
    },
  };

  /** Time-series buckets on the server. */
  readonly buckets = {
    write: async (bucket: string, data: PsonValue, options?: ConfirmOption): Promise<void> => {
      await this.serverCall(ServerResource.WRITE_BUCKET, bucket, data, options?.confirm ?? true);
    },
  };

  /** Endpoints (outbound HTTP calls made by the server). */
  readonly endpoints = {
    call: (endpoint: string, data?: PsonValue, options?: ConfirmOption): Promise<PsonValue | undefined> =>
      this.serverCall(ServerResource.CALL_ENDPOINT, endpoint, data, options?.confirm ?? true),
  };

  /** Named locks with N slots, shared by the user's devices. */
  readonly syncs = {
    /** true when a slot was granted, false when none was free. */
    lock: async (
      sync: string,
      options?: { lock?: string; slots?: number; timeoutSeconds?: number },
    ): Promise<boolean> => {
      const payload: Record<string, PsonValue> = {};
      if (options?.lock) payload.lock = options.lock;
      if (options?.slots !== undefined && options.slots > 1) payload.slots = options.slots;
      if (options?.timeoutSeconds !== undefined && options.timeoutSeconds > 0)
        payload.timeout = options.timeoutSeconds;
      try {
        await this.serverCall(ServerResource.LOCK_SYNC, sync, payload, true);
        return true;
      } catch (err) {
        if (err instanceof RequestError) return false;
        throw err;
      }
    },
    unlock: async (sync: string, lock = ''): Promise<void> => {
      await this.serverCall(ServerResource.UNLOCK_SYNC, sync, { lock }, true);
    },
  };

  /** Calls a resource of another device of the same user, through the server. */
  call(
    device: string,
    resource: string,
    data?: PsonValue,
    options?: ConfirmOption,
  ): Promise<PsonValue | undefined> {
    return this.serverCall(ServerResource.CALL_DEVICE, [device, resource], data, options?.confirm ?? true);
  }

  /** MQTT-style topics on the server. */
  readonly topics = {
    publish: async (
      topic: string,
      payload: PsonValue,
      options?: { qos?: 0 | 1 | 2; retained?: boolean },
    ): Promise<void> => {
      const session = this.requireSession();
      const key = `${options?.qos ?? 0}|${options?.retained ? 1 : 0}|${topic}`;
      let stream = this.publishStreams.get(key);
      if (!stream) {
        const parameters: Record<string, PsonValue> = {
          event: 'device_topic_publish',
          scope: 'publish',
          topic,
        };
        if (options?.qos) parameters.qos = options.qos;
        if (options?.retained) parameters.retained = true;
        stream = session.subscribe(parameters, { onData: () => {} }, this.callOptions());
        this.publishStreams.set(key, stream);
        stream.catch(() => this.publishStreams.delete(key));
      }
      (await stream).send(payload);
    },
    /** Messages published to topics matching `filter` (`+` and `#` wildcards). */
    subscribe: (filter: string, options?: { qos?: 0 | 1 | 2 }): Subscription<TopicMessage> => {
      const parameters: Record<string, PsonValue> = {
        event: 'device_topic_publish',
        scope: 'subscribe',
        topic: filter,
      };
      if (options?.qos) parameters.qos = options.qos;
      return this.subscribeEvents(parameters, (p) =>
        isObject(p) && 'payload' in p
          ? { topic: typeof p.topic === 'string' ? p.topic : filter, payload: p.payload }
          : { topic: filter, payload: p },
      );
    },
  };

  /** Server events (e.g. "device_state_change" of the user's devices). */
  readonly events = {
    subscribe: (event: string, filters?: PsonValue): Subscription<PsonValue | undefined> => {
      const parameters: Record<string, PsonValue> = { event };
      if (filters !== undefined) parameters.filters = filters;
      return this.subscribeEvents(parameters, (p) => p);
    },
  };

  /**
   * A server event stream as an async iterator. It is opened now if connected (and again
   * after every reconnect); breaking out of the loop closes it on the server.
   */
  private subscribeEvents<T>(
    parameters: PsonValue,
    map: (payload: PsonValue | undefined) => T,
  ): Subscription<T> {
    const sub: OpenSubscription = {
      parameters,
      onData: (p) => queue.push(map(p)),
      onOpen: () => queue.markReady(),
      stream: undefined,
      active: true,
    };
    const end = () => queue.end();
    const queue: EventQueue<T> = new EventQueue<T>(this.options.subscriptionBuffer ?? 1000, () => {
      sub.active = false;
      this.subscriptions.delete(sub);
      this.queueEnds.delete(end);
      void sub.stream?.stop().catch(() => {});
    });
    this.subscriptions.add(sub);
    this.queueEnds.add(end);
    const session = this.session;
    if (session?.state === 'open') {
      this.openSubscription(session, sub).catch((err: unknown) => {
        this.subscriptions.delete(sub);
        queue.end(err instanceof Error ? err : new Error(String(err)));
      });
    }
    return queue;
  }

  private warn(message: string, details?: Record<string, unknown>): void {
    this.options.onWarning?.(message, details);
  }
}
