/**
 * Cheap IOTMP device simulator for the server benchmark, run as a child process (fork) so
 * that the load is spread: node bench/dist/sim-devices.js, driven over IPC (sim-protocol.ts).
 *
 * One net.Socket per device and nothing else: no SDK session, no timers per device. Frames
 * are pre-encoded with the codec (@iotmp/protocol) and cached by stream id; a received chunk
 * is scanned in place and every answer it asks for leaves in one write. What a device does:
 * - CONNECT (protocol version 1, keep-alive announced with `ka`), then waits for OK;
 * - answers RUN with OK {"temperature":23.5,"humidity":60} (whatever the resource);
 * - answers START_STREAM with OK and then streams that sample as STREAM_DATA when the parent
 *   grants credit (closed loop: the parent grants what the WebSocket consumer received);
 * - answers DESCRIBE / STOP_STREAM with OK, ignores KEEP_ALIVE, closes on DISCONNECT.
 */
import * as net from 'node:net';
import { decodeBody, encodeMessage, MessageType, type MessageType as MessageTypeCode } from '@iotmp/protocol';
import {
  deviceCredential,
  deviceName,
  deviceSourceAddress,
  INVALID_FRAME,
  SAMPLE,
  type SimCommand,
  type SimEvent,
  type SimStats,
  splitFrames,
} from './sim-protocol.js';

/** STREAM_DATA frames per write when streaming. */
const STREAM_BATCH = 8;
/** A device socket with more than this unsent is skipped by the stream pump. */
const MAX_UNSENT = 16 * 1024;

let host = '127.0.0.1';
let port = 0;
let user = '';
let localAddress: string | null = null;
let keepAliveSeconds = 1800;

const stats: Omit<SimStats, 'connected' | 'streamsOpen' | 'cpuUserUs' | 'cpuSystemUs'> = {
  runsAnswered: 0,
  streamFramesSent: 0,
  writes: 0,
};

function send(event: SimEvent): void {
  process.send?.(event);
}

// --- pre-encoded frames, by stream id ------------------------------------------------------

const okSampleCache: Array<Buffer | undefined> = [];
const okEmptyCache: Array<Buffer | undefined> = [];
const streamDataCache: Array<Buffer | undefined> = [];

function toBuffer(bytes: Uint8Array): Buffer {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function okSample(sid: number): Buffer {
  let f = okSampleCache[sid];
  if (!f) {
    f = toBuffer(encodeMessage({ type: MessageType.OK, streamId: sid, payload: SAMPLE }));
    okSampleCache[sid] = f;
  }
  return f;
}

function okEmpty(sid: number): Buffer {
  let f = okEmptyCache[sid];
  if (!f) {
    f = toBuffer(encodeMessage({ type: MessageType.OK, streamId: sid }));
    okEmptyCache[sid] = f;
  }
  return f;
}

function streamData(sid: number): Buffer {
  let f = streamDataCache[sid];
  if (!f) {
    f = toBuffer(encodeMessage({ type: MessageType.STREAM_DATA, streamId: sid, payload: SAMPLE }));
    streamDataCache[sid] = f;
  }
  return f;
}

/**
 * The stream id of a request. The server writes fields in ascending id order, so the stream
 * id (field 1, varint: key 0x08) comes first; anything else goes through the real decoder.
 */
function streamIdOf(type: number, buf: Buffer, start: number, end: number): number {
  if (start < end && buf[start] === 0x08) {
    let result = 0;
    let shift = 0;
    for (let p = start + 1; p < end && shift < 35; p++, shift += 7) {
      const b = buf[p] as number;
      result += (b & 0x7f) * 2 ** shift;
      if (b < 0x80) return result;
    }
  }
  try {
    return decodeBody(type as MessageTypeCode, buf, start, end).streamId ?? 0;
  } catch {
    return 0;
  }
}

// --- devices ---------------------------------------------------------------------------

type LoginResult = { ok: true; ms: number } | { ok: false; error: string };

class SimDevice {
  sock: net.Socket | null = null;
  state: 'connecting' | 'open' | 'closed' = 'connecting';
  private carry: Buffer | null = null;
  private readonly out: Buffer[] = [];
  private started = 0;
  private onLogin: ((r: LoginResult) => void) | null = null;
  private timer: NodeJS.Timeout | undefined;
  /** The stream the server opened on the sample resource (0: none), and its pre-built batch. */
  streamSid = 0;
  batch: Buffer | null = null;
  frameLength = 0;

  constructor(readonly index: number) {}

  login(timeoutMs: number): Promise<LoginResult> {
    return new Promise((resolve) => {
      this.onLogin = resolve;
      this.started = performance.now();
      const frame = toBuffer(
        encodeMessage({
          type: MessageType.CONNECT,
          streamId: 1,
          parameters: { ka: keepAliveSeconds },
          payload: [user, deviceName(this.index), deviceCredential(this.index)],
        }),
      );
      const sock = net.connect({
        host,
        port,
        localAddress: localAddress ?? deviceSourceAddress(this.index),
        noDelay: true,
      });
      this.sock = sock;
      sock.on('connect', () => sock.write(frame));
      sock.on('data', (chunk: Buffer) => this.onData(chunk));
      sock.on('error', (err) => this.loginDone({ ok: false, error: `socket error: ${err.message}` }));
      sock.on('close', () => this.onClose());
      this.timer = setTimeout(
        () => this.loginDone({ ok: false, error: `no answer to CONNECT within ${timeoutMs} ms` }),
        timeoutMs,
      );
    });
  }

  private loginDone(result: LoginResult): void {
    const cb = this.onLogin;
    if (!cb) return;
    this.onLogin = null;
    clearTimeout(this.timer);
    this.timer = undefined;
    if (!result.ok) this.close();
    cb(result);
  }

  close(): void {
    this.state = 'closed';
    this.sock?.destroy();
  }

  private onClose(): void {
    this.state = 'closed';
    this.sock = null;
    this.stopStreaming();
    this.loginDone({ ok: false, error: 'connection closed before OK' });
    if (devices.get(this.index) === this) devices.delete(this.index);
  }

  private onData(chunk: Buffer): void {
    const rest = splitFrames(this.carry, chunk, this);
    // A stream this simulator cannot read: drop what it holds (the server would be at fault).
    this.carry = rest === INVALID_FRAME ? null : rest;
    const out = this.out;
    if (out.length > 0 && this.sock) {
      this.sock.write(out.length === 1 ? (out[0] as Buffer) : Buffer.concat(out));
      stats.writes++;
    }
    out.length = 0;
  }

  /** @internal (FrameSink) */
  onFrame(type: number, buf: Buffer, start: number, end: number): void {
    switch (type) {
      case MessageType.RUN: {
        const sid = streamIdOf(type, buf, start, end);
        if (sid) this.out.push(okSample(sid));
        stats.runsAnswered++;
        return;
      }
      case MessageType.OK:
        if (this.state === 'connecting') {
          this.state = 'open';
          this.loginDone({ ok: true, ms: performance.now() - this.started });
        }
        return;
      case MessageType.ERROR:
        if (this.state === 'connecting') {
          let code: unknown;
          try {
            code = decodeBody(type, buf, start, end).parameters;
          } catch {
            code = '?';
          }
          this.loginDone({ ok: false, error: `CONNECT refused with ERROR ${String(code)}` });
        }
        return;
      case MessageType.START_STREAM: {
        const sid = streamIdOf(type, buf, start, end);
        if (!sid) return;
        this.out.push(okEmpty(sid));
        this.startStreaming(sid);
        return;
      }
      case MessageType.STOP_STREAM: {
        const sid = streamIdOf(type, buf, start, end);
        if (!sid) return;
        this.out.push(okEmpty(sid));
        if (sid === this.streamSid) this.stopStreaming();
        return;
      }
      case MessageType.DESCRIBE: {
        const sid = streamIdOf(type, buf, start, end);
        if (sid) this.out.push(okEmpty(sid));
        return;
      }
      case MessageType.DISCONNECT:
        this.close();
        return;
      default:
        return; // KEEP_ALIVE answers, STREAM_DATA to us: nothing to do
    }
  }

  private startStreaming(sid: number): void {
    if (this.streamSid === 0) streaming.push(this);
    this.streamSid = sid;
    const frame = streamData(sid);
    this.frameLength = frame.length;
    this.batch = Buffer.concat(Array.from({ length: STREAM_BATCH }, () => frame));
  }

  private stopStreaming(): void {
    if (this.streamSid === 0) return;
    this.streamSid = 0;
    this.batch = null;
    const i = streaming.indexOf(this);
    if (i >= 0) streaming.splice(i, 1);
  }
}

const devices = new Map<number, SimDevice>();

async function connectAll(
  indices: number[],
  inFlight: number,
  timeoutMs: number,
  deadlineMs: number,
): Promise<void> {
  const latenciesMs: number[] = [];
  const errors: string[] = [];
  let failed = 0;
  let next = 0;
  const t0 = performance.now();
  const progress = setInterval(() => send({ op: 'progress', done: latenciesMs.length, failed }), 1000);
  const deadline = t0 + deadlineMs;
  async function worker(): Promise<void> {
    while (next < indices.length && performance.now() < deadline) {
      const index = indices[next++] as number;
      devices.get(index)?.close();
      const d = new SimDevice(index);
      devices.set(index, d);
      const r = await d.login(timeoutMs);
      if (r.ok) latenciesMs.push(r.ms);
      else {
        failed++;
        if (errors.length < 5) errors.push(`${deviceName(index)}: ${r.error}`);
      }
    }
  }
  await Promise.all(Array.from({ length: Math.max(1, inFlight) }, worker));
  clearInterval(progress);
  send({
    op: 'connected',
    ok: latenciesMs.length,
    failed,
    skipped: indices.length - next,
    elapsedMs: performance.now() - t0,
    latenciesMs,
    errors,
  });
}

// --- streaming, closed loop ------------------------------------------------------------

const streaming: SimDevice[] = [];
let credit = 0;
let rr = 0;
let pumpTimer: NodeJS.Timeout | undefined;

/** Spends the credit round-robin over the streaming devices, a batch per write. */
function pump(): void {
  pumpTimer = undefined;
  let idle = 0;
  while (credit > 0 && streaming.length > 0 && idle < streaming.length) {
    if (rr >= streaming.length) rr = 0;
    const d = streaming[rr++] as SimDevice;
    const sock = d.sock;
    if (!sock || !d.batch || sock.writableLength > MAX_UNSENT) {
      idle++;
      continue;
    }
    const k = Math.min(STREAM_BATCH, credit);
    sock.write(k === STREAM_BATCH ? d.batch : d.batch.subarray(0, k * d.frameLength));
    credit -= k;
    stats.streamFramesSent += k;
    stats.writes++;
    idle = 0;
  }
  // Credit left but every socket full (or no stream yet): try again shortly.
  if (credit > 0 && pumpTimer === undefined) pumpTimer = setTimeout(pump, 1);
}

// --- IPC -------------------------------------------------------------------------------

process.on('message', (cmd: SimCommand) => {
  switch (cmd.op) {
    case 'init':
      host = cmd.host;
      port = cmd.port;
      user = cmd.user;
      localAddress = cmd.localAddress;
      keepAliveSeconds = cmd.keepAliveSeconds;
      send({ op: 'ready' });
      return;
    case 'connect':
      connectAll(cmd.indices, cmd.inFlight, cmd.timeoutMs, cmd.deadlineMs).catch((err: unknown) =>
        send({ op: 'error', message: String(err) }),
      );
      return;
    case 'disconnect': {
      let closed = 0;
      for (const d of [...devices.values()]) {
        d.close();
        closed++;
      }
      devices.clear();
      streaming.length = 0;
      credit = 0;
      setImmediate(() => send({ op: 'disconnected', closed }));
      return;
    }
    case 'credit':
      credit += cmd.n;
      if (pumpTimer === undefined) pump();
      return;
    case 'stop-stream':
      credit = 0;
      return;
    case 'stats': {
      let connected = 0;
      for (const d of devices.values()) if (d.state === 'open') connected++;
      const cpu = process.cpuUsage();
      send({
        op: 'stats',
        connected,
        streamsOpen: streaming.length,
        cpuUserUs: cpu.user,
        cpuSystemUs: cpu.system,
        ...stats,
      });
      return;
    }
  }
});

// The parent went away: nothing left to simulate for.
process.on('disconnect', () => process.exit(0));
