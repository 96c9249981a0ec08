import type { BucketError, BucketRecord, BucketStore, DeviceSourceConfig } from '../storage/buckets.js';
import type { SharedStreams, StreamSubscription } from '../streams/shared-streams.js';

/** What a device-sourced bucket is doing (GET /v1/users/{u}/buckets/{b} shows it). */
export interface SourceStatus {
  /**
   * running: the device stream is open and samples are stored; waiting: the device is
   * offline (or just connected); error: the device could not open the stream (retried when
   * the device connects again or the bucket changes); disabled.
   */
  state: 'running' | 'waiting' | 'error' | 'disabled';
  message?: string;
}

export interface DeviceBucketSourcesOptions {
  store: BucketStore;
  streams: SharedStreams;
  /** Device logins (a failed stream is retried when its device connects again). */
  hub: {
    onStateChange(
      listener: (change: { username: string; device: string; connected: boolean }) => void,
    ): () => void;
  };
  onWarning?: (message: string, details?: Record<string, unknown>) => void;
}

interface Source {
  readonly bucketId: number;
  readonly username: string;
  readonly config: DeviceSourceConfig;
  sub: StreamSubscription | undefined;
  status: SourceStatus;
  closed: boolean;
}

function deviceKey(username: string, device: string): string {
  return `${username}\u0000${device}`;
}

function sameTarget(a: DeviceSourceConfig, b: DeviceSourceConfig): boolean {
  return (
    a.device === b.device && a.resource === b.resource && a.update === b.update && a.interval === b.interval
  );
}

/**
 * Device-sourced buckets: for each enabled bucket with `source: "device"`, a subscription to
 * the device resource on the shared device streams (the same device stream as WebSocket
 * subscribers), at the bucket's interval or — `update: "events"` — every sample the device
 * sends. Each sample is stored at the server's time. Subscriptions follow the buckets
 * (create, update, disable, delete) and the device's presence (SharedStreams pauses them
 * while it is offline).
 */
export class DeviceBucketSources {
  private readonly sources = new Map<number, Source>();
  private readonly byDevice = new Map<string, Set<Source>>();
  private readonly unlisten: Array<() => void> = [];
  private closed = false;

  constructor(private readonly options: DeviceBucketSourcesOptions) {
    this.unlisten.push(options.store.onChange((record, removed) => this.apply(record, removed)));
    this.unlisten.push(
      options.hub.onStateChange((change) => {
        if (!change.connected) return;
        const set = this.byDevice.get(deviceKey(change.username, change.device));
        if (!set) return;
        for (const s of [...set]) if (s.status.state === 'error') this.restart(s);
      }),
    );
    for (const record of options.store.all()) this.apply(record, false);
  }

  /** Subscriptions currently held (for tests and metrics). */
  get size(): number {
    return this.sources.size;
  }

  status(bucketId: number): SourceStatus | undefined {
    const record = this.options.store.getById(bucketId);
    if (record?.source !== 'device') return undefined;
    if (!record.enabled) return { state: 'disabled' };
    return this.sources.get(bucketId)?.status ?? { state: 'waiting' };
  }

  private apply(record: BucketRecord, removed: boolean): void {
    if (this.closed) return;
    const existing = this.sources.get(record.id);
    const wanted = !removed && record.enabled && record.source === 'device';
    if (!wanted) {
      if (existing) this.stop(existing);
      return;
    }
    const config = record.config as DeviceSourceConfig;
    if (existing && sameTarget(existing.config, config) && existing.status.state !== 'error') return;
    if (existing) this.stop(existing);
    const source: Source = {
      bucketId: record.id,
      username: record.username,
      config,
      sub: undefined,
      status: { state: 'waiting' },
      closed: false,
    };
    this.sources.set(record.id, source);
    const k = deviceKey(record.username, config.device);
    let set = this.byDevice.get(k);
    if (!set) {
      set = new Set();
      this.byDevice.set(k, set);
    }
    set.add(source);
    this.subscribe(source);
  }

  private subscribe(s: Source): void {
    const { device, resource, update, interval } = s.config;
    const intervalMs = update === 'events' ? 0 : (interval ?? 1) * 1000;
    // Callbacks may run before subscribe() returns: they use the source, not its subscription.
    s.sub = this.options.streams.subscribe(s.username, device, resource, intervalMs, {
      onStart: () => {
        if (!s.closed) s.status = { state: 'running' };
      },
      onStop: (stop) => {
        if (!s.closed) s.status = { state: 'waiting', message: stop.message };
      },
      onError: (failure) => {
        if (s.closed) return;
        s.sub = undefined;
        s.status = { state: 'error', message: failure.message };
      },
      onData: (payload) => {
        if (s.closed) return;
        this.options.store.appendSample(s.bucketId, payload).catch((err: BucketError) => {
          this.options.onWarning?.('device bucket sample not stored', {
            bucket: s.bucketId,
            error: err.message,
          });
        });
      },
    });
  }

  private restart(s: Source): void {
    s.sub?.close();
    s.sub = undefined;
    s.status = { state: 'waiting' };
    this.subscribe(s);
  }

  private stop(s: Source): void {
    s.closed = true;
    s.sub?.close();
    s.sub = undefined;
    this.sources.delete(s.bucketId);
    const k = deviceKey(s.username, s.config.device);
    const set = this.byDevice.get(k);
    if (set) {
      set.delete(s);
      if (set.size === 0) this.byDevice.delete(k);
    }
  }

  /** Ends every subscription (server shutdown). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const off of this.unlisten) off();
    for (const s of [...this.sources.values()]) this.stop(s);
  }
}
