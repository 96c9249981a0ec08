/**
 * What the server benchmark (bench/server.bench.ts) and its device simulator processes
 * (bench/sim-devices.ts) share: device names and credentials, the sensor sample, and the
 * IPC messages between them.
 */

/** The user that owns every benchmark device. */
export const BENCH_USER = 'bench';
/** The device resource every simulated device serves (RUN) and streams (START_STREAM). */
export const SAMPLE_RESOURCE = 'sample';
/** What it answers and streams. */
export const SAMPLE = { temperature: 23.5, humidity: 60 } as const;

export function deviceName(i: number): string {
  return `d${String(i).padStart(5, '0')}`;
}

/**
 * A loopback source address of its own for device `i` (127.1.0.0 and up), as devices on the
 * Internet have: per-address login throttling then sees one device per address, and every
 * device has the whole ephemeral port range to itself.
 */
export function deviceSourceAddress(i: number): string {
  return `127.${1 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}`;
}

export function deviceCredential(i: number): string {
  return `secret-${i}-bench`;
}

/** Parent → simulator. */
export type SimCommand =
  | {
      op: 'init';
      host: string;
      port: number;
      user: string;
      /** Source address of every connection, or null: each device its own (deviceSourceAddress). */
      localAddress: string | null;
      keepAliveSeconds: number;
    }
  /**
   * Log in devices `indices` (CONNECT, wait for OK) with at most `inFlight` logins pending at
   * once; no new login starts after `deadlineMs` (the case stays bounded in time).
   */
  | { op: 'connect'; indices: number[]; inFlight: number; timeoutMs: number; deadlineMs: number }
  /** Close every device connection. */
  | { op: 'disconnect' }
  /** Streaming devices may send `n` more STREAM_DATA frames (closed loop: the parent grants what was delivered). */
  | { op: 'credit'; n: number }
  /** Forget the remaining credit. */
  | { op: 'stop-stream' }
  | { op: 'stats' };

export interface SimStats {
  connected: number;
  runsAnswered: number;
  streamsOpen: number;
  streamFramesSent: number;
  writes: number;
  cpuUserUs: number;
  cpuSystemUs: number;
}

/** Simulator → parent. */
export type SimEvent =
  | { op: 'ready' }
  | { op: 'progress'; done: number; failed: number }
  | {
      op: 'connected';
      ok: number;
      failed: number;
      /** Not attempted because the deadline passed. */
      skipped: number;
      /** ms from the first connect() to the last answer. */
      elapsedMs: number;
      /** Per-login latency (TCP connect → OK), ms, unsorted. */
      latenciesMs: number[];
      errors: string[];
    }
  | { op: 'disconnected'; closed: number }
  | ({ op: 'stats' } & SimStats)
  | { op: 'error'; message: string };
