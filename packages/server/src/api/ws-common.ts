import type { PsonValue } from '@iotmp/pson';
import { AuthFailure, authorize, type Principal } from '../auth/tokens.js';
import { binaryAsByteList, psonToJson } from './json.js';

/*
 * What the WebSocket routes share: the bounded per-consumer sender, client frame parsing,
 * errors, and the JSON form of device payloads on WebSockets.
 */

/** Server → client frame. */
export interface ServerFrame {
  resource?: string;
  event?: string;
  signal: 'start' | 'stop' | 'data' | 'error';
  payload?: unknown;
  [field: string]: unknown;
}

/** The part of a `ws` WebSocket the bounded sender needs. */
export interface FrameSink {
  readonly readyState: number;
  readonly bufferedAmount: number;
  send(data: string | Buffer): void;
  terminate(): void;
  /** The TCP/TLS socket under a `ws` WebSocket (ws has no public cork), to batch writes. */
  readonly _socket?: { cork(): void; uncork(): void } | undefined;
}

/**
 * Senders whose socket is corked this turn: every frame they send until the check phase of
 * the event loop goes out in one write (a system call per frame would cost more than the
 * frame; a busy consumer gets hundreds per turn).
 */
let corkedSenders: BoundedSender[] = [];
function uncorkAll(): void {
  const batch = corkedSenders;
  corkedSenders = [];
  for (const sender of batch) sender.uncork();
}

const OPEN = 1;

/**
 * Sends frames to one consumer, never queueing without bound: past `maxBufferedBytes`
 * unread, data frames are dropped (and counted); past four times that (only control frames
 * could get there), the consumer is cut off.
 */
export class BoundedSender {
  dropped = 0;
  private corked = false;

  constructor(
    private readonly socket: FrameSink,
    private readonly maxBufferedBytes: number,
    private readonly onDrop: () => void,
  ) {}

  /** A JSON frame. Data frames may be dropped; returns whether the frame was sent. */
  send(frame: { signal?: unknown; [field: string]: unknown }): boolean {
    if (!this.admit(frame.signal === 'data')) return false;
    this.socket.send(JSON.stringify(frame));
    return true;
  }

  /**
   * A frame already serialized (a JSON text, or raw text or bytes on a raw socket): `data`
   * says whether it may be dropped. Returns whether it was sent.
   */
  sendRaw(frame: string | Buffer, data: boolean): boolean {
    if (!this.admit(data)) return false;
    this.socket.send(frame);
    return true;
  }

  private admit(data: boolean): boolean {
    const s = this.socket;
    if (s.readyState !== OPEN) return false;
    if (data && s.bufferedAmount >= this.maxBufferedBytes) {
      this.dropped++;
      this.onDrop();
      return false;
    }
    if (s.bufferedAmount >= this.maxBufferedBytes * 4) {
      s.terminate();
      return false;
    }
    const raw = s._socket;
    if (raw && !this.corked) {
      raw.cork();
      this.corked = true;
      if (corkedSenders.push(this) === 1) setImmediate(uncorkAll);
    }
    return true;
  }

  /** @internal Ends this turn's batch (uncorkAll). */
  uncork(): void {
    if (!this.corked) return;
    this.corked = false;
    this.socket._socket?.uncork();
  }
}

/** A refused client frame: answered with an error frame, the socket stays open. */
export class FrameError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** A client frame's bytes, or FrameError when it is too large. */
export function frameBytes(data: unknown, maxBytes: number): Buffer {
  const buf = Array.isArray(data)
    ? Buffer.concat(data as Buffer[])
    : Buffer.isBuffer(data)
      ? data
      : Buffer.from(data as ArrayBuffer);
  if (buf.byteLength > maxBytes)
    throw new FrameError('frame_too_large', `frame of ${buf.byteLength} bytes exceeds ${maxBytes} bytes`);
  return buf;
}

/** A client frame as a JSON object, or FrameError. */
export function parseFrame(data: unknown, isBinary: boolean, maxBytes: number): Record<string, unknown> {
  if (isBinary) throw new FrameError('invalid_frame', 'binary frames are not accepted: send JSON text');
  const buf = frameBytes(data, maxBytes);
  let value: unknown;
  try {
    value = JSON.parse(buf.toString('utf8'));
  } catch {
    throw new FrameError('invalid_frame', 'frame is not valid JSON');
  }
  if (!isPlainObject(value)) throw new FrameError('invalid_frame', 'frame must be a JSON object');
  return value;
}

export function checkKeys(frame: Record<string, unknown>, allowed: readonly string[]): void {
  for (const k of Object.keys(frame)) {
    if (!allowed.includes(k))
      throw new FrameError('invalid_frame', `unknown field "${k}" (expected ${allowed.join(', ')})`);
  }
}

export function errorPayload(err: unknown): { code: string; message: string } {
  if (err instanceof FrameError || err instanceof AuthFailure)
    return { code: err.code, message: err.message };
  return { code: 'internal_error', message: 'internal error' };
}

export function mayRead(principal: Principal, user: string, device: string, resource?: string): boolean {
  try {
    authorize(principal, user, 'read', device, resource);
    return true;
  } catch {
    return false;
  }
}

/** A device payload as JSON on the WebSockets: binary as `{"bytes": [0-255, …]}`. */
export function wsJson(value: PsonValue | undefined): unknown {
  return psonToJson(value, binaryAsByteList);
}

/*
 * The JSON text of the last payload serialized: a device stream shared by several consumers
 * hands each of them the same sample object, which is then serialized once, not once per
 * consumer. Primitive payloads compare by value, which is as good.
 */
let lastPayload: PsonValue | undefined;
let lastJson = 'null';

/**
 * Whether JSON.stringify writes `value` as wsJson would (no binary, bigint, Map, non-finite
 * number, undefined): then the payload is serialized as it is, without a converted copy.
 */
function plainJson(value: unknown, depth: number): boolean {
  switch (typeof value) {
    case 'string':
    case 'boolean':
      return true;
    case 'number':
      return Number.isFinite(value);
    case 'object': {
      if (value === null) return true;
      if (depth > 16) return false;
      if (Array.isArray(value)) {
        for (const v of value) if (!plainJson(v, depth + 1)) return false;
        return true;
      }
      const proto = Object.getPrototypeOf(value);
      if (proto !== Object.prototype && proto !== null) return false;
      for (const k in value) if (!plainJson((value as Record<string, unknown>)[k], depth + 1)) return false;
      return true;
    }
    default:
      return false;
  }
}

/** `JSON.stringify(wsJson(payload))`, remembered for the last payload. */
export function payloadJson(payload: PsonValue | undefined): string {
  if (payload === lastPayload && payload !== undefined) return lastJson;
  const json = plainJson(payload, 0) ? JSON.stringify(payload) : JSON.stringify(wsJson(payload));
  lastPayload = payload;
  lastJson = json;
  return json;
}
