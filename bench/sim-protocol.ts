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

/** Something that takes whole IOTMP frames: the type and where the body is in `buf`. */
export interface FrameSink {
  onFrame(type: number, buf: Buffer, start: number, end: number): void;
}

/** What {@link splitFrames} returns for a header that is malformed or announces a body over the limit. */
export const INVALID_FRAME = Symbol('invalid frame');

/**
 * Cuts socket chunks into IOTMP frames (header: two varints, type and body size, at most 5 bytes
 * each) with no copy but of an unfinished frame, and hands each whole frame to `sink`. `carry`
 * is what the previous call returned: the unfinished tail (null if none), to pass back with the
 * next chunk; INVALID_FRAME when the stream cannot be read any further.
 */
export function splitFrames(
  carry: Buffer | null,
  chunk: Buffer,
  sink: FrameSink,
  maxBody = Number.POSITIVE_INFINITY,
): Buffer | null | typeof INVALID_FRAME {
  const buf = carry ? Buffer.concat([carry, chunk]) : chunk;
  const n = buf.length;
  let p = 0;
  while (p < n) {
    let q = p;
    let type = 0;
    let size = 0;
    let shift = 0;
    let b = 0x80;
    while (q < n && b >= 0x80 && shift < 35) {
      b = buf[q++] as number;
      type += (b & 0x7f) * 2 ** shift;
      shift += 7;
    }
    if (b < 0x80) {
      b = 0x80;
      shift = 0;
      while (q < n && b >= 0x80 && shift < 35) {
        b = buf[q++] as number;
        size += (b & 0x7f) * 2 ** shift;
        shift += 7;
      }
    }
    if ((b >= 0x80 && shift >= 35) || size > maxBody) return INVALID_FRAME;
    if (b >= 0x80 || q + size > n) break;
    sink.onFrame(type, buf, q, q + size);
    p = q + size;
  }
  return p < n ? Buffer.from(buf.subarray(p)) : null;
}
