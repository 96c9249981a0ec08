import {
  type Clock,
  type RemoteStream,
  RequestError,
  type Session,
  SessionError,
  SessionErrorCode,
  systemClock,
  type TimerHandle,
} from '@iotmp/protocol';
import type { PsonValue } from '@iotmp/pson';

/**
 * Where live device sessions come from: the {@link DeviceHub} (or a stand-in in tests).
 * `onStateChange` must report logins and disconnects of every device.
 */
export interface StreamSource {
  get(username: string, device: string): { readonly session: Session } | undefined;
  onStateChange(
    listener: (change: {
      username: string;
      device: string;
      connected: boolean;
      reason?: string | undefined;
    }) => void,
  ): () => void;
}

/** Why a subscriber's data paused (it resumes by itself with a new `onStart`). */
export interface StreamStop {
  code: 'device_offline' | 'stream_ended';
  message: string;
}

/** Why a subscription ended for good: the device could not open the stream. */
export interface StreamFailure {
  code: 'resource_not_found' | 'device_error' | 'device_timeout' | 'too_many_streams';
  message: string;
  /** The device's return code, when it sent one. */
  returnCode?: number;
}

/** What a subscriber is told. Callbacks may close the subscription (or others). */
export interface StreamSubscriber {
  /** The device stream is open: data follows. Called again after every `onStop`, once resumed. */
  onStart?(): void;
  /** A sample, already thinned to this subscriber's interval. `ts` is the manager clock's time. */
  onData(payload: PsonValue | undefined, ts: number): void;
  /** The device stream went away (device disconnected, or the device ended it). */
  onStop?(stop: StreamStop): void;
  /** The stream could not be opened; the subscription is closed. */
  onError?(failure: StreamFailure): void;
}

export interface StreamSubscription {
  /** This subscriber's interval in ms; 0 = every sample (the device's own events). */
  readonly intervalMs: number;
  /** False once closed (by `close()` or after `onError`). */
  readonly active: boolean;
  /** True while the device stream is open for this subscriber (between onStart and onStop). */
  readonly started: boolean;
  /** Changes the interval (0 = every sample); the device stream follows the new GCD. */
  setInterval(intervalMs: number): void;
  /**
   * Sends `payload` to the device on the shared stream (STREAM_DATA: input for the streamed
   * resource). Throws {@link StreamNotOpenError} while the stream is not open.
   */
  send(payload: PsonValue): void;
  /** Leaves; the device stream stops when its last subscriber leaves. */
  close(): void;
}

export class StreamNotOpenError extends Error {
  override name = 'StreamNotOpenError';
}

export interface SharedStreamsOptions {
  source: StreamSource;
  clock?: Clock;
  /**
   * The smallest interval asked of a device (default 100 ms). When the GCD of the subscribers'
   * intervals falls below it (e.g. 1.1 s and 1 s), the smallest interval is used instead and
   * every subscriber gets the sample nearest to its own schedule.
   */
  minDeviceIntervalMs?: number;
  /** How long START_STREAM may wait for the device (default 30 s). */
  openTimeoutMs?: number;
  /** Delay between checks while a device that just logged in finishes its login (default 10 ms). */
  loginPollMs?: number;
  onWarning?: (message: string, details?: Record<string, unknown>) => void;
}

/** What {@link SharedStreams.info} reports of one device resource. */
export interface SharedStreamInfo {
  subscribers: number;
  /** The interval the device stream runs (or will run) at; 0 = event-driven. */
  deviceIntervalMs: number;
  state: GroupState;
}

type GroupState = 'idle' | 'starting' | 'open' | 'offline' | 'ended';

interface Sub {
  readonly group: Group;
  readonly subscriber: StreamSubscriber;
  intervalMs: number;
  /** 'pending': told nothing yet; then alternating 'started' / 'stopped'. */
  phase: 'pending' | 'started' | 'stopped';
  /** Nominal time of the last sample delivered, and when the next one is due. */
  last: number | undefined;
  due: number | undefined;
  closed: boolean;
}

interface Group {
  readonly key: string;
  readonly deviceKey: string;
  readonly username: string;
  readonly device: string;
  readonly resource: string;
  /** Extra START_STREAM parameters (besides the interval); part of the group's identity. */
  readonly parameters: PsonValue | undefined;
  readonly subs: Set<Sub>;
  state: GroupState;
  /** Identifies the current device stream; callbacks of older streams are ignored. */
  token: object | undefined;
  stream: RemoteStream | undefined;
  session: Session | undefined;
  /** Interval of the current (or opening) device stream; -1 when none. */
  streamIntervalMs: number;
  busy: boolean;
  dirty: boolean;
  scheduled: boolean;
  retry: TimerHandle | undefined;
}

function gcd(a: number, b: number): number {
  while (b > 0) [a, b] = [b, a % b];
  return a;
}

function key(...parts: string[]): string {
  return parts.join('\u0000');
}

/**
 * One device stream per device resource, shared by every subscriber of it (WebSocket
 * clients, later buckets). The device samples at the greatest common divisor of the
 * subscribers' intervals; each subscriber receives the samples that fall on its own
 * schedule, decided by time, not by counting (a subscriber at 10 s on a 5 s stream gets every
 * second sample). A subscriber's schedule starts at the first sample it gets and advances by
 * its interval without drift; a sample within half a device interval of the due time counts
 * as on time, so arrival jitter of up to a quarter of the device interval never skips or
 * doubles a sample. Subscribers without an interval get every sample. When the set of intervals changes the stream is re-opened at the new GCD;
 * it stops when the last subscriber leaves. When the device disconnects, subscribers get
 * `onStop`, and `onStart` again once the device is back and the stream re-opened.
 */
export class SharedStreams {
  private readonly source: StreamSource;
  private readonly clock: Clock;
  private readonly minDeviceIntervalMs: number;
  private readonly openTimeoutMs: number;
  private readonly loginPollMs: number;
  private readonly groups = new Map<string, Group>();
  private readonly byDevice = new Map<string, Set<Group>>();
  private readonly unlisten: () => void;
  private closed = false;

  constructor(private readonly options: SharedStreamsOptions) {
    this.source = options.source;
    this.clock = options.clock ?? systemClock;
    this.minDeviceIntervalMs = options.minDeviceIntervalMs ?? 100;
    this.openTimeoutMs = options.openTimeoutMs ?? 30_000;
    this.loginPollMs = options.loginPollMs ?? 10;
    this.unlisten = this.source.onStateChange((change) => {
      const groups = this.byDevice.get(key(change.username, change.device));
      if (!groups) return;
      for (const g of [...groups]) {
        if (!change.connected && g.state !== 'offline') {
          const why = change.reason ? `device disconnected: ${change.reason}` : 'device disconnected';
          this.goOffline(g, { code: 'device_offline', message: why });
        }
        void this.reconcile(g);
      }
    });
  }

  /** Device resources with at least one subscriber. */
  get size(): number {
    return this.groups.size;
  }

  info(username: string, device: string, resource: string): SharedStreamInfo | undefined {
    const g = this.groups.get(key(username, device, resource));
    if (!g) return undefined;
    return { subscribers: g.subs.size, deviceIntervalMs: this.deviceInterval(g), state: g.state };
  }

  /**
   * Subscribes to `resource` of a device. `intervalMs` 0 (or absent) = every sample the device
   * sends (its own events, plus the periodic samples other subscribers asked for).
   * `options.parameters` (an object) go to the device in START_STREAM besides the interval;
   * only subscribers with the same parameters share a device stream.
   */
  subscribe(
    username: string,
    device: string,
    resource: string,
    intervalMs: number | undefined,
    subscriber: StreamSubscriber,
    options?: { parameters?: Record<string, PsonValue> | undefined },
  ): StreamSubscription {
    if (this.closed) throw new Error('shared streams are closed');
    const parameters = options?.parameters;
    const k =
      parameters === undefined
        ? key(username, device, resource)
        : key(username, device, resource, JSON.stringify(parameters));
    let g = this.groups.get(k);
    if (!g) {
      g = {
        key: k,
        deviceKey: key(username, device),
        username,
        device,
        resource,
        parameters,
        subs: new Set(),
        state: 'idle',
        token: undefined,
        stream: undefined,
        session: undefined,
        streamIntervalMs: -1,
        busy: false,
        dirty: false,
        scheduled: false,
        retry: undefined,
      };
      this.groups.set(k, g);
      let set = this.byDevice.get(g.deviceKey);
      if (!set) {
        set = new Set();
        this.byDevice.set(g.deviceKey, set);
      }
      set.add(g);
    }
    const sub: Sub = {
      group: g,
      subscriber,
      intervalMs: normalizeInterval(intervalMs),
      phase: 'pending',
      last: undefined,
      due: undefined,
      closed: false,
    };
    g.subs.add(sub);
    this.schedule(g);
    const self = this;
    return {
      get intervalMs() {
        return sub.intervalMs;
      },
      get active() {
        return !sub.closed;
      },
      get started() {
        return !sub.closed && sub.phase === 'started';
      },
      setInterval(ms: number) {
        if (sub.closed) return;
        sub.intervalMs = normalizeInterval(ms);
        sub.due = sub.last === undefined || sub.intervalMs === 0 ? undefined : sub.last + sub.intervalMs;
        self.schedule(sub.group);
      },
      send(payload: PsonValue) {
        const stream = sub.group.stream;
        if (sub.closed || !stream || stream.closed || sub.group.state !== 'open')
          throw new StreamNotOpenError('the device stream is not open');
        stream.send(payload);
      },
      close() {
        self.remove(sub);
      },
    };
  }

  /** Stops every device stream and forgets every subscriber (without telling them). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.unlisten();
    for (const g of [...this.groups.values()]) {
      for (const s of g.subs) s.closed = true;
      g.subs.clear();
      this.teardown(g);
    }
  }

  private remove(sub: Sub): void {
    if (sub.closed) return;
    sub.closed = true;
    sub.group.subs.delete(sub);
    this.schedule(sub.group);
  }

  /**
   * Reconciles once the current burst of changes is done (in a microtask), so that e.g. two
   * subscribers leaving together re-open the device stream once, not twice.
   */
  private schedule(g: Group): void {
    if (g.scheduled) return;
    g.scheduled = true;
    queueMicrotask(() => {
      g.scheduled = false;
      void this.reconcile(g);
    });
  }

  /** The interval the device should sample at for this group's subscribers; 0 = events only. */
  private deviceInterval(g: Group): number {
    let d = 0;
    let min = Number.POSITIVE_INFINITY;
    for (const s of g.subs) {
      if (s.intervalMs <= 0) continue;
      d = gcd(d, s.intervalMs);
      if (s.intervalMs < min) min = s.intervalMs;
    }
    if (d === 0) return 0;
    return d >= this.minDeviceIntervalMs ? d : Math.max(min, this.minDeviceIntervalMs);
  }

  /** Brings the device stream in line with the subscribers; serialized per group. */
  private async reconcile(g: Group): Promise<void> {
    if (g.busy) {
      g.dirty = true;
      return;
    }
    g.busy = true;
    try {
      do {
        g.dirty = false;
        await this.step(g);
      } while (g.dirty);
    } catch (err) {
      this.options.onWarning?.('shared stream failed', { resource: g.resource, error: String(err) });
    } finally {
      g.busy = false;
    }
  }

  private async step(g: Group): Promise<void> {
    if (this.groups.get(g.key) !== g) return;
    if (g.subs.size === 0) {
      this.teardown(g);
      return;
    }
    const session = this.source.get(g.username, g.device)?.session;
    if (!session || session.state === 'closed') {
      this.goOffline(g, { code: 'device_offline', message: 'device is not connected' });
      return;
    }
    if (session.state !== 'open') {
      // Just logged in: its OK must leave before any request (spec Appendix C).
      this.retrySoon(g);
      return;
    }
    const want = this.deviceInterval(g);
    if (g.stream && !g.stream.closed && g.session === session && g.streamIntervalMs === want) {
      if (g.state === 'open') this.startAll(g);
      return;
    }
    // The device ended the stream itself: open it again only for a new subscriber or interval.
    if (
      g.state === 'ended' &&
      g.session === session &&
      g.streamIntervalMs === want &&
      ![...g.subs].some((s) => s.phase === 'pending')
    )
      return;

    // (Re)open at the interval wanted. STOP_STREAM of the old stream leaves first.
    const old = g.stream;
    g.stream = undefined;
    if (old && !old.closed) old.stop().catch(() => undefined);
    const token = {};
    g.token = token;
    g.session = session;
    g.streamIntervalMs = want;
    g.state = 'starting';
    let stream: RemoteStream;
    try {
      stream = await session.openStream(
        g.resource,
        {
          intervalMs: want > 0 ? want : undefined,
          timeoutMs: this.openTimeoutMs,
          ...(g.parameters !== undefined ? { parameters: g.parameters } : {}),
        },
        {
          onData: (payload) => this.onData(g, token, payload),
          onClose: (reason) => this.onStreamClosed(g, token, reason),
        },
      );
    } catch (err) {
      if (g.token !== token) return;
      g.token = undefined;
      // (Read again: the state may have changed while waiting.)
      if ((session.state as Session['state']) === 'closed') {
        this.goOffline(g, { code: 'device_offline', message: 'device disconnected' });
        return;
      }
      this.failAll(g, failureOf(err, g.resource));
      return;
    }
    if (g.token !== token || this.groups.get(g.key) !== g) {
      stream.stop().catch(() => undefined);
      return;
    }
    g.stream = stream;
    if (g.state === 'starting') g.state = 'open';
    this.startAll(g);
  }

  private retrySoon(g: Group): void {
    if (g.retry !== undefined) return;
    g.retry = this.clock.setTimeout(() => {
      g.retry = undefined;
      void this.reconcile(g);
    }, this.loginPollMs);
  }

  private onData(g: Group, token: object, payload: PsonValue | undefined): void {
    if (g.token !== token) return;
    // Data may arrive in the same read as the OK, before openStream() resolved.
    if (g.state === 'starting') {
      g.state = 'open';
      this.startAll(g);
    }
    const now = this.clock.now();
    const deviceMs = g.streamIntervalMs;
    for (const s of [...g.subs]) {
      if (s.closed || s.phase !== 'started') continue;
      const iv = s.intervalMs;
      if (iv <= 0) {
        this.deliver(s, payload, now);
        continue;
      }
      if (s.due === undefined) {
        s.last = now;
        s.due = now + iv;
        this.deliver(s, payload, now);
        continue;
      }
      // Within half a device period of the due time counts as on time (jitter).
      const period = deviceMs > 0 ? Math.min(deviceMs, iv) : iv;
      if (now < s.due - period / 2) continue;
      // Keep the nominal schedule (no drift), unless samples were missed: then start afresh.
      s.last = now - s.due >= period ? now : s.due;
      s.due = s.last + iv;
      this.deliver(s, payload, now);
    }
  }

  private deliver(s: Sub, payload: PsonValue | undefined, ts: number): void {
    try {
      s.subscriber.onData(payload, ts);
    } catch (err) {
      this.options.onWarning?.('stream subscriber failed', { error: String(err) });
    }
  }

  private onStreamClosed(g: Group, token: object, reason: Error | undefined): void {
    if (g.token !== token) return;
    g.token = undefined;
    g.stream = undefined;
    if (g.session?.state !== 'open') {
      this.goOffline(g, {
        code: 'device_offline',
        message: reason ? `device disconnected: ${reason.message}` : 'device disconnected',
      });
      void this.reconcile(g);
      return;
    }
    // The device ended the stream itself: wait for a change (subscribers, intervals, login).
    g.state = 'ended';
    this.stopAll(g, { code: 'stream_ended', message: 'the device ended the stream' });
  }

  private goOffline(g: Group, stop: StreamStop): void {
    g.token = undefined;
    const stream = g.stream;
    g.stream = undefined;
    if (stream && !stream.closed) stream.stop().catch(() => undefined);
    g.state = 'offline';
    g.streamIntervalMs = -1;
    this.stopAll(g, stop);
  }

  private startAll(g: Group): void {
    for (const s of [...g.subs]) {
      if (s.closed || s.phase === 'started') continue;
      s.phase = 'started';
      s.last = undefined;
      s.due = undefined;
      this.notify(() => s.subscriber.onStart?.());
    }
  }

  private stopAll(g: Group, stop: StreamStop): void {
    for (const s of [...g.subs]) {
      if (s.closed || s.phase === 'stopped') continue;
      s.phase = 'stopped';
      this.notify(() => s.subscriber.onStop?.(stop));
    }
  }

  private failAll(g: Group, failure: StreamFailure): void {
    const subs = [...g.subs];
    g.subs.clear();
    for (const s of subs) s.closed = true;
    this.teardown(g);
    for (const s of subs) this.notify(() => s.subscriber.onError?.(failure));
  }

  private notify(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.options.onWarning?.('stream subscriber failed', { error: String(err) });
    }
  }

  private teardown(g: Group): void {
    g.token = undefined;
    const stream = g.stream;
    g.stream = undefined;
    if (stream && !stream.closed) stream.stop().catch(() => undefined);
    if (g.retry !== undefined) {
      this.clock.clearTimeout(g.retry);
      g.retry = undefined;
    }
    g.state = 'idle';
    g.streamIntervalMs = -1;
    if (this.groups.get(g.key) === g) this.groups.delete(g.key);
    const set = this.byDevice.get(g.deviceKey);
    if (set) {
      set.delete(g);
      if (set.size === 0) this.byDevice.delete(g.deviceKey);
    }
  }
}

function normalizeInterval(ms: number | undefined): number {
  if (ms === undefined || !Number.isFinite(ms) || ms <= 0) return 0;
  return Math.max(1, Math.round(ms));
}

function failureOf(err: unknown, resource: string): StreamFailure {
  if (err instanceof RequestError) {
    const message =
      typeof err.payload === 'object' && err.payload !== null && 'error' in err.payload
        ? String((err.payload as { error: unknown }).error)
        : undefined;
    if (err.payload === undefined && err.parameters === undefined)
      return { code: 'resource_not_found', message: `device has no resource ${resource}` };
    if (err.returnCode === 404)
      return { code: 'resource_not_found', message: message ?? `device has no resource ${resource}` };
    return {
      code: 'device_error',
      message: message ?? 'device refused the stream',
      ...(err.returnCode !== undefined ? { returnCode: err.returnCode } : {}),
    };
  }
  if (err instanceof SessionError) {
    if (err.code === SessionErrorCode.TIMEOUT)
      return { code: 'device_timeout', message: `device did not open a stream on ${resource} in time` };
    if (err.code === SessionErrorCode.TOO_MANY_STREAMS || err.code === SessionErrorCode.TOO_MANY_REQUESTS)
      return { code: 'too_many_streams', message: err.message };
  }
  return { code: 'device_error', message: err instanceof Error ? err.message : String(err) };
}
