import {
  ConnectError,
  type ConnectInfo,
  type InboundSubscription,
  type ServerCall,
  Session,
  type SessionError,
  type SessionOptions,
  type Transport,
} from '@iotmp/protocol';
import { VerifierCache, verifySecret } from '../auth/passwords.js';
import type { AccountStore } from '../storage/accounts.js';
import { LoginThrottle } from './throttle.js';

/** A device with a live, authenticated session. */
export interface LiveDevice {
  readonly username: string;
  readonly device: string;
  readonly session: Session;
  readonly connectedTs: number;
  readonly ip: string | undefined;
}

export interface DeviceStateChange {
  username: string;
  device: string;
  connected: boolean;
  ts: number;
  ip?: string | undefined;
  reason?: string | undefined;
}

export interface HubLogger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  debug(obj: object, msg: string): void;
}

export interface DeviceHubOptions {
  accounts: AccountStore;
  log: HubLogger;
  /** Extra session options: limits, keep-alive, clock, server resources. */
  session?: Partial<SessionOptions>;
  /** Called with every live device's server resource calls and subscriptions; `onClose` when its session ends. */
  serverResources?: (
    device: LiveDevice,
  ) => Pick<SessionOptions, 'onServerCall' | 'onSubscribe'> & { onClose?: () => void };
  throttle?: LoginThrottle;
  verifierCache?: VerifierCache;
}

export interface HubCounters {
  connects: number;
  authFailures: number;
  throttled: number;
  closedSlowPeer: number;
}

function key(username: string, device: string): string {
  return `${username}\u0000${device}`;
}

/**
 * Every device connection goes through here: login (credential check with a verifier
 * cache and failed-login throttling), one live session per device (a new login replaces
 * the old one), disconnects, and state changes for the API and events.
 */
export class DeviceHub {
  private readonly live = new Map<string, LiveDevice>();
  private readonly pendingSessions = new Set<Session>();
  private readonly listeners = new Set<(change: DeviceStateChange) => void>();
  private readonly throttle: LoginThrottle;
  private readonly cache: VerifierCache;
  /** scrypt needs 32 MiB and ~100 ms of a core: run few at once, queue the rest. */
  private readonly kdf = new Semaphore(4);
  readonly counters: HubCounters = { connects: 0, authFailures: 0, throttled: 0, closedSlowPeer: 0 };
  private closing = false;
  /** Traffic of sessions that have ended; live ones are added when read. */
  private readonly endedTraffic = { rxBytes: 0, txBytes: 0, rxMessages: 0, txMessages: 0 };

  /** Per-connection session options; the hub's shared limits live on its prototype. */
  private readonly Connection: new (
    hub: DeviceHub,
    transport: Transport,
  ) => DeviceConnection;

  constructor(private readonly options: DeviceHubOptions) {
    this.throttle = options.throttle ?? new LoginThrottle();
    this.cache = options.verifierCache ?? new VerifierCache();
    // A subclass per hub whose prototype carries the shared session options (limits, clock):
    // each connection then holds only its own few fields, not a copy of every option.
    const Connection = class extends DeviceConnection {};
    Object.assign(Connection.prototype, options.session ?? {});
    this.Connection = Connection;
  }

  get size(): number {
    return this.live.size;
  }

  /** Bytes and messages in and out, all device connections since start. */
  get traffic(): { rxBytes: number; txBytes: number; rxMessages: number; txMessages: number } {
    const t = { ...this.endedTraffic };
    const add = (s: Session) => {
      t.rxBytes += s.stats.rxBytes;
      t.txBytes += s.stats.txBytes;
      t.rxMessages += s.stats.rxMessages;
      t.txMessages += s.stats.txMessages;
    };
    for (const d of this.live.values()) add(d.session);
    for (const s of this.pendingSessions) add(s);
    return t;
  }

  get(username: string, device: string): LiveDevice | undefined {
    return this.live.get(key(username, device));
  }

  devicesOf(username: string): LiveDevice[] {
    return [...this.live.values()].filter((d) => d.username === username);
  }

  all(): IterableIterator<LiveDevice> {
    return this.live.values();
  }

  onStateChange(listener: (change: DeviceStateChange) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private emit(change: DeviceStateChange): void {
    for (const l of this.listeners) {
      try {
        l(change);
      } catch (err) {
        this.options.log.warn({ err }, 'device state listener failed');
      }
    }
  }

  /** Takes a new connection: it must log in before anything else. */
  accept(transport: Transport): void {
    if (this.closing) {
      transport.destroy();
      return;
    }
    const connection = new this.Connection(this, transport);
    const session = new Session(connection);
    connection.session = session;
    this.pendingSessions.add(session);
    session.start();
  }

  /** @internal */
  serverCall(live: LiveDevice | undefined, call: ServerCall) {
    const handler = live && this.options.serverResources?.(live).onServerCall;
    if (!handler) throw new Error('server resources are not available');
    return handler(call);
  }

  /** @internal */
  subscribe(live: LiveDevice | undefined, sub: InboundSubscription) {
    const handler = live && this.options.serverResources?.(live).onSubscribe;
    if (!handler) throw new Error('server events are not available');
    return handler(sub);
  }

  /** @internal */
  warnSession(transport: Transport, message: string, details: Record<string, unknown> | undefined): void {
    this.options.log.debug({ ...details, remote: transport.remoteAddress }, message);
  }

  /** @internal */
  async authenticate(info: ConnectInfo, connection: DeviceConnection): Promise<boolean | number> {
    const ip = hostOf(info.remoteAddress);
    const id = key(info.username, info.deviceId);
    const record = this.options.accounts.getDevice(info.username, info.deviceId);
    // A recently verified credential costs one HMAC, and proves the secret: no throttling.
    if (record?.enabled && this.cache.has(id, info.credential, record.credentialHash)) {
      return this.accepted(info, connection, ip);
    }
    // Throttled per source address, and per device from that address: a stranger elsewhere
    // cannot lock a device out by failing its logins.
    const ipKey = `ip:${ip ?? 'unknown'}`;
    const deviceKey = `device:${id}@${ip ?? 'unknown'}`;
    if (!this.throttle.begin(ipKey, false)) return this.throttled(info, ip);
    if (!this.throttle.begin(deviceKey, true)) {
      this.throttle.end(ipKey);
      return this.throttled(info, ip);
    }
    let ok = false;
    if (record?.enabled) {
      ok = await this.kdf.run(() => verifySecret(info.credential, record.credentialHash));
      if (ok) this.cache.add(id, info.credential, record.credentialHash);
    }
    if (!ok) {
      this.counters.authFailures++;
      this.throttle.fail(ipKey);
      this.throttle.fail(deviceKey);
      this.options.log.warn(
        {
          username: info.username,
          device: info.deviceId,
          ip,
          reason: !record ? 'unknown device' : !record.enabled ? 'disabled' : 'bad credential',
        },
        'device login refused',
      );
      return false;
    }
    this.throttle.succeed(ipKey);
    this.throttle.succeed(deviceKey);
    // Re-check after the await: the device may have been disabled, deleted or re-keyed meanwhile.
    const current = this.options.accounts.getDevice(info.username, info.deviceId);
    if (!current?.enabled || current.credentialHash !== record?.credentialHash) return false;
    return this.accepted(info, connection, ip);
  }

  private throttled(info: ConnectInfo, ip: string | undefined): number {
    this.counters.throttled++;
    this.counters.authFailures++;
    this.options.log.warn(
      { username: info.username, device: info.deviceId, ip },
      'login throttled after repeated failures',
    );
    return ConnectError.BAD_CREDENTIALS;
  }

  private accepted(info: ConnectInfo, connection: DeviceConnection, ip: string | undefined): boolean {
    if (connection.session?.state !== 'authenticating') return false;
    connection.live = {
      username: info.username,
      device: info.deviceId,
      session: connection.session,
      connectedTs: Date.now(),
      ip,
    };
    return true;
  }

  /** @internal Makes a logged-in device live, replacing an older session of the same device. */
  register(live: LiveDevice): void {
    const id = key(live.username, live.device);
    const previous = this.live.get(id);
    this.live.set(id, live);
    this.pendingSessions.delete(live.session);
    if (previous) {
      this.options.log.info(
        { username: live.username, device: live.device },
        'new login replaces the live session',
      );
      previous.session.close();
    }
    this.counters.connects++;
    this.options.accounts.recordConnection(live.username, live.device, live.connectedTs, live.ip ?? null);
    this.options.log.info(
      { username: live.username, device: live.device, ip: live.ip, version: live.session.version },
      'device connected',
    );
    this.emit({
      username: live.username,
      device: live.device,
      connected: true,
      ts: live.connectedTs,
      ip: live.ip,
    });
  }

  /** @internal */
  onSessionClose(session: Session, live: LiveDevice | undefined, error: SessionError | undefined): void {
    this.pendingSessions.delete(session);
    this.endedTraffic.rxBytes += session.stats.rxBytes;
    this.endedTraffic.txBytes += session.stats.txBytes;
    this.endedTraffic.rxMessages += session.stats.rxMessages;
    this.endedTraffic.txMessages += session.stats.txMessages;
    if (error?.code === 'IOTMP_ERR_SLOW_PEER') this.counters.closedSlowPeer++;
    if (!live) return;
    // Every session that was live, replaced ones too (they may hold syncs).
    this.options.serverResources?.(live).onClose?.();
    const id = key(live.username, live.device);
    if (this.live.get(id) !== live) return; // replaced by a newer login
    this.live.delete(id);
    this.options.log.info(
      { username: live.username, device: live.device, reason: error?.message },
      'device disconnected',
    );
    this.emit({
      username: live.username,
      device: live.device,
      connected: false,
      ts: Date.now(),
      reason: error?.message,
    });
  }

  /** Drops a device's live session (disabled, deleted, credentials changed). */
  disconnect(username: string, device: string): boolean {
    const live = this.live.get(key(username, device));
    if (!live) return false;
    live.session.close();
    return true;
  }

  /** Sends DISCONNECT to every device and closes every connection. */
  closeAll(): void {
    this.closing = true;
    for (const s of this.pendingSessions) s.close();
    for (const d of [...this.live.values()]) d.session.close();
  }
}

/**
 * One device connection's session options and hooks, as methods (one object per connection,
 * not a closure per hook): the Session calls them as `options.authenticate(info)` etc.
 */
class DeviceConnection implements SessionOptions {
  readonly role = 'server' as const;
  session: Session | undefined;
  /** Set once the login is accepted. */
  live: LiveDevice | undefined;

  constructor(
    private readonly hub: DeviceHub,
    readonly transport: Transport,
  ) {}

  authenticate(info: ConnectInfo): Promise<boolean | number> {
    return this.hub.authenticate(info, this);
  }

  // Registered only once the OK is out: nothing may reach the device before it (spec Appendix C).
  onOpen(): void {
    if (this.live) this.hub.register(this.live);
  }

  onServerCall(call: ServerCall) {
    return this.hub.serverCall(this.live, call);
  }

  onSubscribe(sub: InboundSubscription) {
    return this.hub.subscribe(this.live, sub);
  }

  onWarning(message: string, details?: Record<string, unknown>): void {
    this.hub.warnSession(this.transport, message, details);
  }

  onClose(error: SessionError | undefined): void {
    this.hub.onSessionClose(this.session as Session, this.live, error);
  }
}

/** At most `limit` tasks at once; the rest wait in order. */
class Semaphore {
  private active = 0;
  private readonly waiting: Array<() => void> = [];
  constructor(private readonly limit: number) {}

  async run<T>(task: () => Promise<T>): Promise<T> {
    if (this.active >= this.limit) await new Promise<void>((resolve) => this.waiting.push(resolve));
    this.active++;
    try {
      return await task();
    } finally {
      this.active--;
      this.waiting.shift()?.();
    }
  }
}

function hostOf(address: string | undefined): string | undefined {
  if (!address) return undefined;
  const i = address.lastIndexOf(':');
  const host = i > 0 && !address.endsWith(']') ? address.slice(0, i) : address;
  return host.replace(/^::ffff:/, '');
}
