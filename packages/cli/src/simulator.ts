/**
 * The device fleet behind `iotmp simulate`: real SDK devices (@iotmp/device) named
 * `<prefix>-<i>`, created through the REST API when missing, with credentials derived from a
 * per-install secret (re-runs reuse the devices; unknown credentials are reset), connected
 * with bounded concurrency.
 *
 * Each device offers `telemetry` (output: temperature/humidity/pressure, a random walk, also
 * streamed at `rate` messages per second while someone listens), `led` (input: {on}),
 * `sum` and `echo` (input and output), and watches its property `config`.
 *
 * Kept cheap for the machine it shares with the server: one timer drives every device's
 * stream, counters are plain numbers, nothing is computed for a stream nobody listens to
 * beyond one sample, and a device whose connection backs up skips samples (counted) instead
 * of queueing them.
 */
import { createHmac } from 'node:crypto';
import { AuthError, Device, type DeviceStatus, ResourceError } from '@iotmp/device';
import type { ApiClient } from './api-client.js';
import { listDevices } from './commands/devices.js';

export type SimTransport = 'tcp' | 'tls' | 'ws' | 'wss';

export interface SimulatorOptions {
  client: ApiClient;
  /** Secret the device credentials derive from (the config directory's simulator.key). */
  secret: Buffer;
  devices: number;
  /** Stream messages per second per device (fractions allowed; 0: no streaming). */
  rate: number;
  transport: SimTransport;
  version: 0 | 1;
  prefix: string;
  /** Where devices connect: host and port (or the WebSocket URL for ws/wss). */
  host: string;
  port: number;
  url?: string | undefined;
  tls: { ca?: string | undefined; rejectUnauthorized: boolean };
  /** Connections (and logins) in progress at once. */
  concurrency: number;
  /** Lines worth showing: property changes, failures. */
  log(text: string): void;
  progress?(phase: 'create' | 'connect', done: number, total: number): void;
}

export interface Counters {
  connected: number;
  messages: number;
  calls: number;
  propertyUpdates: number;
  errors: number;
  reconnects: number;
  /** Stream samples skipped because the device's connection was backed up. */
  skipped: number;
}

export interface SimulationReport {
  server: string;
  user: string;
  transport: SimTransport;
  version: 0 | 1;
  devices: number;
  /** Devices created by this run (the others existed). */
  created: number;
  /** Existing devices whose credentials were reset to the derived ones. */
  credentialsReset: number;
  /** Devices connected when the run ended. */
  connected: number;
  /** Devices that never connected. */
  failed: number;
  connectSeconds: number;
  durationSeconds: number;
  /** Configured stream rate per device (messages/s). */
  rate: number;
  messages: number;
  messagesPerSecond: number;
  calls: number;
  callsPerSecond: number;
  propertyUpdates: number;
  errors: number;
  reconnects: number;
  skipped: number;
}

/** Stream ticks per second: one timer for the whole fleet. */
const TICK_MS = 100;
/** Past this much unsent data a device skips samples. */
const MAX_BUFFERED = 256 * 1024;
/** Device creations in flight (each costs the server a password hash). */
const CREATE_CONCURRENCY = 16;

/** Runs `work` over `items` with at most `limit` in flight. */
export async function pool<T>(
  items: readonly T[],
  limit: number,
  work: (item: T) => Promise<void>,
): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const item = items[next++] as T;
      await work(item);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

/** Temperature (°C), humidity (%) and pressure (hPa) wandering within plausible bounds. */
class RandomWalk {
  temperature = 18 + Math.random() * 8;
  humidity = 40 + Math.random() * 20;
  pressure = 1000 + Math.random() * 25;

  next(): { temperature: number; humidity: number; pressure: number } {
    this.temperature = clamp(this.temperature + (Math.random() - 0.5) * 0.2, -10, 45);
    this.humidity = clamp(this.humidity + (Math.random() - 0.5) * 0.5, 5, 100);
    this.pressure = clamp(this.pressure + (Math.random() - 0.5) * 0.3, 950, 1050);
    return {
      temperature: round(this.temperature, 2),
      humidity: round(this.humidity, 1),
      pressure: round(this.pressure, 1),
    };
  }
}

function clamp(v: number, min: number, max: number): number {
  return Math.min(max, Math.max(min, v));
}

function round(v: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(v * f) / f;
}

function isNumber(v: unknown): v is number {
  return typeof v === 'number' && Number.isFinite(v);
}

interface SimDevice {
  id: string;
  device: Device | undefined;
  walk: RandomWalk;
  state: DeviceStatus['state'];
  everConnected: boolean;
  /** Pre-existing, with credentials we may not know. */
  existed: boolean;
  watching: boolean;
}

export class Simulator {
  readonly counters: Counters = {
    connected: 0,
    messages: 0,
    calls: 0,
    propertyUpdates: 0,
    errors: 0,
    reconnects: 0,
    skipped: 0,
  };
  private readonly sims: SimDevice[];
  private ticker: NodeJS.Timeout | undefined;
  private stopped = false;
  private created = 0;
  private credentialsReset = 0;
  private connectStarted = 0;
  private connectSeconds = 0;
  private runStarted = 0;

  constructor(private readonly options: SimulatorOptions) {
    this.sims = Array.from({ length: options.devices }, (_, i) => ({
      id: `${options.prefix}-${i + 1}`,
      device: undefined,
      walk: new RandomWalk(),
      state: 'idle' as const,
      everConnected: false,
      existed: false,
      watching: false,
    }));
  }

  /** The credentials of device `id`: the same on every run of this installation. */
  credentials(id: string): string {
    const o = this.options;
    return createHmac('sha256', o.secret)
      .update(`iotmp-simulate\0${o.client.server}\0${o.client.user}\0${id}`)
      .digest('base64url');
  }

  /** Creates the devices that do not exist yet. */
  async prepare(): Promise<void> {
    const { client } = this.options;
    const existing = new Set((await listDevices(client)).map((d) => d.device));
    const missing: SimDevice[] = [];
    for (const sim of this.sims) {
      if (existing.has(sim.id)) sim.existed = true;
      else missing.push(sim);
    }
    let done = 0;
    this.options.progress?.('create', 0, missing.length);
    await pool(missing, CREATE_CONCURRENCY, async (sim) => {
      if (this.stopped) return;
      const res = await client.request('POST', `${client.userPath()}/devices`, {
        json: {
          device: sim.id,
          credentials: this.credentials(sim.id),
          description: 'simulated by iotmp simulate',
        },
        allowError: true,
      });
      if (res.ok) this.created++;
      else if (res.status === 409) sim.existed = true;
      else throw client.apiError(res);
      this.options.progress?.('create', ++done, missing.length);
    });
  }

  /** Connects every device (at most `concurrency` logins at once); resolves when each has connected or failed once. */
  async connect(): Promise<void> {
    this.connectStarted = performance.now();
    let done = 0;
    this.options.progress?.('connect', 0, this.sims.length);
    await pool(this.sims, this.options.concurrency, async (sim) => {
      if (this.stopped) return;
      let outcome = await this.connectOne(sim);
      if (outcome === 'auth' && sim.existed && !this.stopped) {
        // Made by another installation (or by hand): give it the credentials we derive.
        const { client } = this.options;
        await client.request('PATCH', `${client.userPath()}/devices/${encodeURIComponent(sim.id)}`, {
          json: { credentials: this.credentials(sim.id), enabled: true },
        });
        this.credentialsReset++;
        outcome = await this.connectOne(sim);
      }
      if (outcome === 'auth') {
        this.counters.errors++;
        this.options.log(`${sim.id}: login refused`);
      }
      this.options.progress?.('connect', ++done, this.sims.length);
    });
    this.connectSeconds = (performance.now() - this.connectStarted) / 1000;
  }

  /** Opens one device; resolves after its first attempt ('failed' ones keep retrying). */
  private connectOne(sim: SimDevice): Promise<'connected' | 'failed' | 'auth'> {
    const o = this.options;
    const device = new Device({
      username: o.client.user,
      deviceId: sim.id,
      credential: this.credentials(sim.id),
      host: o.host,
      port: o.port,
      transport: o.transport,
      ...(o.url !== undefined ? { url: o.url } : {}),
      version: o.version,
      tls: { rejectUnauthorized: o.tls.rejectUnauthorized, ...(o.tls.ca ? { ca: o.tls.ca } : {}) },
      reconnect: { initialDelayMs: 1000, maxDelayMs: 30_000 },
      subscriptionBuffer: 16,
    });
    sim.device = device;
    this.addResources(sim, device);
    return new Promise((resolve) => {
      let settled = false;
      const settle = (outcome: 'connected' | 'failed' | 'auth') => {
        if (!settled) {
          settled = true;
          resolve(outcome);
        }
      };
      device.onStatus((status) => {
        const was = sim.state;
        sim.state = status.state;
        if (status.state === 'connected') {
          this.counters.connected++;
          if (sim.everConnected) this.counters.reconnects++;
          sim.everConnected = true;
          this.watchConfig(sim, device);
          settle('connected');
        } else if (was === 'connected') this.counters.connected--;
        if (status.state === 'disconnected' && !this.stopped) {
          // A failed attempt (a retry is scheduled), or a lost connection. A refused login
          // also passes through 'disconnected' first: connect() then rejects with AuthError.
          if (status.retryInMs !== undefined) {
            this.counters.errors++;
            settle('failed');
          } else if (was === 'connected') this.counters.errors++;
        }
      });
      device.connect().catch((err: unknown) => {
        if (err instanceof AuthError) settle('auth');
        else settle('failed');
      });
    });
  }

  private addResources(sim: SimDevice, device: Device): void {
    const c = this.counters;
    let led = false;
    device.resource('telemetry', {
      output: () => {
        c.calls++;
        return sim.walk.next();
      },
    });
    device.resource('led', {
      input: (value) => {
        c.calls++;
        const on = (value as { on?: unknown } | undefined)?.on;
        if (typeof on !== 'boolean') throw new ResourceError(400, 'expected {"on": true|false}');
        led = on;
      },
      describe: { in: { on: led } },
    });
    device.resource('sum', {
      input: true,
      output: (input) => {
        c.calls++;
        const v = input as { a?: unknown; b?: unknown } | unknown[] | undefined;
        if (Array.isArray(v) && v.every(isNumber)) return { sum: v.reduce((s, x) => s + x, 0) };
        if (v && !Array.isArray(v) && isNumber(v.a) && isNumber(v.b)) return { sum: v.a + v.b };
        throw new ResourceError(400, 'expected {"a": number, "b": number} or an array of numbers');
      },
      describe: { in: { a: 1, b: 2 }, out: { sum: 3 } },
    });
    device.resource('echo', {
      input: true,
      output: (input) => {
        c.calls++;
        return input;
      },
    });
  }

  /** Logs the device's `config` property: its value now and every change (once per device). */
  private watchConfig(sim: SimDevice, device: Device): void {
    if (sim.watching) return;
    sim.watching = true;
    void (async () => {
      try {
        for await (const value of device.properties.watch('config')) {
          if (value === undefined) continue;
          this.counters.propertyUpdates++;
          this.options.log(`${sim.id}: config = ${JSON.stringify(value)}`);
        }
      } catch (err) {
        if (!this.stopped) {
          this.counters.errors++;
          this.options.log(`${sim.id}: cannot watch property config: ${(err as Error).message}`);
        }
      }
    })();
  }

  /** Starts streaming at `rate` messages per second per device. */
  run(): void {
    this.runStarted = performance.now();
    const rate = this.options.rate;
    if (rate <= 0) return;
    let last = performance.now();
    let due = 0;
    this.ticker = setInterval(() => {
      const now = performance.now();
      due += (rate * (now - last)) / 1000;
      last = now;
      const n = Math.floor(due);
      if (n === 0) return;
      due -= n;
      this.streamAll(n);
    }, TICK_MS);
  }

  private streamAll(n: number): void {
    const c = this.counters;
    for (const sim of this.sims) {
      const device = sim.device;
      if (sim.state !== 'connected' || !device) continue;
      for (let i = 0; i < n; i++) {
        if (device.bufferedAmount > MAX_BUFFERED) {
          c.skipped += n - i;
          break;
        }
        const listeners = device.stream('telemetry', sim.walk.next()) as number;
        if (listeners === 0) break; // nobody listens to this device
        c.messages += listeners;
      }
    }
  }

  /** Stops streaming and closes every device; returns the report. */
  async stop(): Promise<SimulationReport> {
    this.stopped = true;
    if (this.ticker) clearInterval(this.ticker);
    const ended = performance.now();
    const connected = this.counters.connected;
    const never = this.sims.filter((s) => !s.everConnected).length;
    await Promise.race([
      Promise.allSettled(this.sims.map((s) => s.device?.close())),
      new Promise((r) => setTimeout(r, 5000).unref()),
    ]);
    const o = this.options;
    const seconds = this.runStarted > 0 ? (ended - this.runStarted) / 1000 : 0;
    const c = this.counters;
    return {
      server: o.client.server,
      user: o.client.user,
      transport: o.transport,
      version: o.version,
      devices: o.devices,
      created: this.created,
      credentialsReset: this.credentialsReset,
      connected,
      failed: never,
      connectSeconds: round(
        this.connectSeconds || (this.connectStarted ? (ended - this.connectStarted) / 1000 : 0),
        2,
      ),
      durationSeconds: round(seconds, 2),
      rate: o.rate,
      messages: c.messages,
      messagesPerSecond: seconds > 0 ? round(c.messages / seconds, 1) : 0,
      calls: c.calls,
      callsPerSecond: seconds > 0 ? round(c.calls / seconds, 1) : 0,
      propertyUpdates: c.propertyUpdates,
      errors: c.errors,
      reconnects: c.reconnects,
      skipped: c.skipped,
    };
  }
}
