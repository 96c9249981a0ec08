import type { DeviceProtocol, GenCommand, GenEvent, GenStats } from './peers-protocol.js';
import { percentile, WorkerProcess } from './server-harness.js';
import { BENCH_USER } from './sim-protocol.js';

type Connected = Extract<GenEvent, { op: 'connected' }>;
type StreamsOpen = Extract<GenEvent, { op: 'streams-open' }>;

export class GenProcess extends WorkerProcess<GenCommand, GenEvent> {
  constructor(readonly id: number) {
    super('./peers-devices.js', `generator ${id}`);
  }

  init(protocol: DeviceProtocol, port: number): Promise<GenEvent> {
    return this.ask(
      { op: 'init', protocol, host: '127.0.0.1', port, user: BENCH_USER, keepAliveSeconds: 1800 },
      'ready',
    );
  }

  connect(cmd: Omit<Extract<GenCommand, { op: 'connect' }>, 'op'>): Promise<Connected> {
    this.progress = 0;
    return this.ask({ op: 'connect', ...cmd }, 'connected');
  }

  openStreams(timeoutMs: number): Promise<StreamsOpen> {
    return this.ask({ op: 'open-streams', timeoutMs }, 'streams-open');
  }

  disconnect(): Promise<GenEvent> {
    return this.ask({ op: 'disconnect' }, 'disconnected');
  }

  stats(): Promise<GenStats> {
    return this.ask<Extract<GenEvent, { op: 'stats' }>>({ op: 'stats' }, 'stats');
  }

  /** Closing the IPC channel makes the process exit on its own (writing a --cpu-prof profile if asked). */
  stop(): Promise<void> {
    const child = this.child;
    if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
      child.once('exit', () => {
        clearTimeout(timer);
        resolve();
      });
      if (child.connected) child.disconnect();
      else child.kill();
    });
  }
}

export interface ConnectResult {
  attempted: number;
  ok: number;
  failed: number;
  skipped: number;
  elapsedMs: number;
  perSecond: number;
  p50ms: number;
  p90ms: number;
  p99ms: number;
  errors: string[];
}

/** A fleet of generator processes; device i lives in process i % count. */
export class Generators {
  readonly procs: GenProcess[];
  /** Devices of the last connect() in each process: telemetry credit is shared in proportion. */
  private devicesPerProc: number[];

  constructor(count: number) {
    this.procs = Array.from({ length: count }, (_, k) => new GenProcess(k));
    this.devicesPerProc = this.procs.map(() => 0);
  }

  async init(protocol: DeviceProtocol, port: number): Promise<void> {
    await Promise.all(this.procs.map((p) => p.init(protocol, port)));
  }

  /** Connects `indices`, `inFlight` pending at once in total. */
  async connect(
    indices: number[],
    o: { inFlight: number; subscribe: boolean; timeoutMs: number; deadlineMs: number },
  ): Promise<ConnectResult> {
    const parts: number[][] = this.procs.map(() => []);
    for (const i of indices) parts[i % this.procs.length]?.push(i);
    this.devicesPerProc = parts.map((p) => p.length);
    const inFlight = Math.max(1, Math.ceil(o.inFlight / this.procs.length));
    const t0 = performance.now();
    const results = await Promise.all(
      this.procs.map((p, k) =>
        p.connect({
          indices: parts[k] as number[],
          inFlight,
          timeoutMs: o.timeoutMs,
          deadlineMs: o.deadlineMs,
          subscribe: o.subscribe,
        }),
      ),
    );
    const elapsedMs = performance.now() - t0;
    const latencies = results.flatMap((r) => r.latenciesMs).sort((a, b) => a - b);
    const ok = results.reduce((a, r) => a + r.ok, 0);
    return {
      attempted: indices.length,
      ok,
      failed: results.reduce((a, r) => a + r.failed, 0),
      skipped: results.reduce((a, r) => a + r.skipped, 0),
      elapsedMs,
      perSecond: (ok * 1000) / elapsedMs,
      p50ms: percentile(latencies, 0.5),
      p90ms: percentile(latencies, 0.9),
      p99ms: percentile(latencies, 0.99),
      errors: results.flatMap((r) => r.errors),
    };
  }

  async openStreams(timeoutMs: number): Promise<{ open: number; failed: number; errors: string[] }> {
    const r = await Promise.all(this.procs.map((p) => p.openStreams(timeoutMs)));
    return {
      open: r.reduce((a, x) => a + x.open, 0),
      failed: r.reduce((a, x) => a + x.failed, 0),
      errors: r.flatMap((x) => x.errors),
    };
  }

  async disconnect(): Promise<void> {
    await Promise.all(this.procs.map((p) => p.disconnect()));
  }

  /**
   * Spreads `n` messages of telemetry credit over the processes that have devices, in
   * proportion to their devices; returns what was granted.
   */
  credit(n: number): number {
    const total = this.devicesPerProc.reduce((a, d) => a + d, 0);
    if (total === 0) return 0;
    let granted = 0;
    this.procs.forEach((p, k) => {
      const share = Math.floor((n * (this.devicesPerProc[k] as number)) / total);
      if (share > 0) {
        p.send({ op: 'credit', n: share });
        granted += share;
      }
    });
    return granted;
  }

  stopTelemetry(): void {
    for (const p of this.procs) p.send({ op: 'stop-stream' });
  }

  async stats(): Promise<GenStats> {
    const all = await Promise.all(this.procs.map((p) => p.stats()));
    const sum = (f: (s: GenStats) => number) => all.reduce((a, s) => a + f(s), 0);
    return {
      connected: sum((s) => s.connected),
      publishing: sum((s) => s.publishing),
      telemetrySent: sum((s) => s.telemetrySent),
      commandsAnswered: sum((s) => s.commandsAnswered),
      writes: sum((s) => s.writes),
      cpuUserUs: sum((s) => s.cpuUserUs),
      cpuSystemUs: sum((s) => s.cpuSystemUs),
    };
  }

  async stop(): Promise<void> {
    await Promise.all(this.procs.map((p) => p.stop()));
  }
}
