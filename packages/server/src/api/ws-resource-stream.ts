import type { PsonValue } from '@iotmp/pson';
import type { Principal } from '../auth/tokens.js';
import type { SharedStreams, StreamSubscription } from '../streams/shared-streams.js';
import { type BoundedSender, mayRead, payloadJson } from './ws-common.js';

/*
 * `device_resource_stream` on the events WebSocket: one resource of every connected device a
 * subscription's filters match (Thinger.io's fleet stream). Each matching device gets a
 * subscription on the hub's shared device streams, exactly as a resource WebSocket would,
 * so consumers share one device stream per device resource at the GCD of their intervals.
 * Devices that connect later join; devices that leave are dropped; the last consumer of a
 * device stream leaving stops it.
 */

export const RESOURCE_STREAM = 'device_resource_stream';
/** Device streams one events socket may hold across all its resource subscriptions. */
export const MAX_STREAM_MEMBERS = 100_000;

export interface ResourceStreamSpec {
  /** Identifies the subscription on its socket (same filters = same subscription). */
  key: string;
  resource: string;
  /** Does a device id match the subscription's device filter (absent: every device)? */
  matchDevice: (device: string) => boolean;
  /** A product / asset filter that no device here matches (devices have none). */
  matchesNothing: boolean;
  /** 0 = the device's own events. */
  intervalMs: number;
}

interface Member {
  sub: StreamSubscription | undefined;
}

interface StreamSet {
  spec: ResourceStreamSpec;
  members: Map<string, Member>;
  /** Told once that MAX_STREAM_MEMBERS was reached. */
  full: boolean;
}

export interface ResourceStreamsOptions {
  user: string;
  principal: Principal;
  streams: SharedStreams;
  /** The user's connected devices, now. */
  connectedDevices: () => Iterable<string>;
  out: BoundedSender;
  /** Also tell the consumer when each device's stream starts and stops (v2). */
  deviceSignals: boolean;
}

/** The resource subscriptions of one events socket. */
export class ResourceStreams {
  private readonly sets = new Map<string, StreamSet>();
  private members = 0;
  private closed = false;
  private readonly userJson: string;

  constructor(private readonly o: ResourceStreamsOptions) {
    this.userJson = JSON.stringify(o.user);
  }

  get size(): number {
    return this.sets.size;
  }

  has(key: string): boolean {
    return this.sets.has(key);
  }

  /** Adds a subscription, or changes the interval of the one with the same filters. */
  subscribe(spec: ResourceStreamSpec): void {
    const existing = this.sets.get(spec.key);
    if (existing) {
      existing.spec = { ...existing.spec, intervalMs: spec.intervalMs };
      for (const m of existing.members.values()) m.sub?.setInterval(spec.intervalMs);
      return;
    }
    const set: StreamSet = { spec, members: new Map(), full: false };
    this.sets.set(spec.key, set);
    if (spec.matchesNothing) return;
    for (const device of this.o.connectedDevices()) {
      if (this.sets.get(spec.key) !== set) break;
      this.join(set, device);
    }
  }

  /** Removes one subscription (by key) or all; returns how many were removed. */
  unsubscribe(key?: string): number {
    const sets = key === undefined ? [...this.sets.values()] : [this.sets.get(key)].filter((s) => !!s);
    for (const set of sets as StreamSet[]) {
      this.sets.delete(set.spec.key);
      for (const m of set.members.values()) m.sub?.close();
      this.members -= set.members.size;
      set.members.clear();
    }
    return sets.length;
  }

  /** A device of the user connected or disconnected. */
  deviceChanged(device: string, connected: boolean): void {
    for (const set of [...this.sets.values()]) {
      if (this.sets.get(set.spec.key) !== set) continue;
      if (connected) {
        if (!set.spec.matchesNothing && set.spec.matchDevice(device)) this.join(set, device);
      } else this.leave(set, device);
    }
  }

  close(): void {
    this.closed = true;
    this.unsubscribe();
  }

  private join(set: StreamSet, device: string): void {
    if (this.closed || set.members.has(device)) return;
    const { resource } = set.spec;
    if (!set.spec.matchDevice(device) || !mayRead(this.o.principal, this.o.user, device, resource)) return;
    const out = this.o.out;
    if (this.members >= MAX_STREAM_MEMBERS) {
      if (!set.full) {
        set.full = true;
        out.send({
          event: RESOURCE_STREAM,
          signal: 'error',
          user: this.o.user,
          resource,
          payload: {
            code: 'too_many_streams',
            message: `at most ${MAX_STREAM_MEMBERS} device streams per socket: further devices are left out`,
          },
        });
      }
      return;
    }
    const member: Member = { sub: undefined };
    set.members.set(device, member);
    this.members++;
    const head = { event: RESOURCE_STREAM, user: this.o.user, device, resource };
    // The data frame up to its timestamp, built once: a sample then costs its payload's JSON.
    const prefix = `{"event":"${RESOURCE_STREAM}","signal":"data","user":${this.userJson},"device":${JSON.stringify(device)},"resource":${JSON.stringify(resource)},"ts":`;
    const signals = this.o.deviceSignals;
    member.sub = this.o.streams.subscribe(this.o.user, device, resource, set.spec.intervalMs, {
      onStart: signals ? () => out.send({ ...head, signal: 'start' }) : undefined,
      onData: (payload: PsonValue | undefined) =>
        out.sendRaw(`${prefix}${Date.now()},"payload":${payloadJson(payload)}}`, true),
      onStop: signals ? (stop) => out.send({ ...head, signal: 'stop', payload: stop }) : undefined,
      onError: (failure) => {
        // The device refused the stream: this device is out until it connects again.
        if (set.members.get(device) === member) {
          set.members.delete(device);
          this.members--;
        }
        out.send({ ...head, signal: 'error', ts: Date.now(), payload: failure });
      },
    });
    if (this.closed || set.members.get(device) !== member || this.sets.get(set.spec.key) !== set)
      member.sub.close();
  }

  private leave(set: StreamSet, device: string): void {
    const member = set.members.get(device);
    if (!member) return;
    set.members.delete(device);
    this.members--;
    const wasStarted = member.sub?.started === true;
    member.sub?.close();
    if (wasStarted && this.o.deviceSignals)
      this.o.out.send({
        event: RESOURCE_STREAM,
        signal: 'stop',
        user: this.o.user,
        device,
        resource: set.spec.resource,
        payload: { code: 'device_offline', message: 'device disconnected' },
      });
  }
}
