/**
 * The application side of the peer benchmark for our server: one WebSocket on the events API
 * (`/v2/users/{u}/events`) that receives every device's telemetry, subscribed either to
 * `device_resource_stream` (the server streams one resource of every device) or to
 * `device_topic_publish` with a topic filter; spoken by hand (frames counted in place, one
 * parsed to check its content), as cheap as the MQTT consumer.
 */
import { randomBytes } from 'node:crypto';
import * as net from 'node:net';
import { SAMPLE } from './sim-protocol.js';

const SIGNAL_KEY = Buffer.from('"signal":"');
/** Bytes of a frame's payload needed to read its signal. */
const PEEK = 192;

/** A client → server WebSocket text frame (masked, as clients must). */
function maskedTextFrame(text: string): Buffer {
  const payload = Buffer.from(text, 'utf8');
  const len = payload.length;
  const head =
    len < 126 ? Buffer.from([0x81, 0x80 | len]) : Buffer.from([0x81, 0x80 | 126, len >> 8, len & 255]);
  const mask = randomBytes(4);
  const body = Buffer.allocUnsafe(len);
  for (let i = 0; i < len; i++) body[i] = (payload[i] as number) ^ (mask[i & 3] as number);
  return Buffer.concat([head, mask, body]);
}

/** Checks the first data frame (parsed); returns a problem, or undefined if it is as expected. */
export type FrameCheck = (frame: unknown) => string | undefined;

/** A `device_topic_publish` frame of a telemetry topic carrying the sample. */
export const topicFrameCheck: FrameCheck = (f) => {
  const frame = f as { payload?: { topic?: string; payload?: typeof SAMPLE } };
  return /^dev\/\d+\/telemetry$/.test(frame.payload?.topic ?? '') &&
    frame.payload?.payload?.temperature === SAMPLE.temperature &&
    frame.payload.payload.humidity === SAMPLE.humidity
    ? undefined
    : 'unexpected data frame';
};

/** A `device_resource_stream` frame: a device and the sample as payload. */
export const resourceFrameCheck: FrameCheck = (f) => {
  const frame = f as { event?: string; device?: string; payload?: typeof SAMPLE };
  return frame.event === 'device_resource_stream' &&
    typeof frame.device === 'string' &&
    frame.payload?.temperature === SAMPLE.temperature &&
    frame.payload.humidity === SAMPLE.humidity
    ? undefined
    : 'unexpected data frame';
};

/** One events WebSocket counting `data` frames; the first is parsed and checked. */
export class EventsConsumer {
  delivered = 0;
  started = false;
  /** `start` frames: the subscription's acknowledgement, then one per device stream (fleet streams). */
  starts = 0;
  check: FrameCheck = topicFrameCheck;
  verified = false;
  problemCount = 0;
  readonly problems: string[] = [];
  private handshake: Buffer | null = Buffer.alloc(0);
  private carry: Buffer | null = null;
  private skip = 0;
  private closing = false;

  private constructor(private readonly sock: net.Socket) {
    sock.on('data', (chunk: Buffer) => this.onData(chunk));
    sock.on('error', (err) => this.problem(`socket error: ${err.message}`));
    sock.on('close', () => {
      if (!this.closing) this.problem('closed');
    });
  }

  /**
   * Connects to `path` (with `?authorization=<token>`), upgrades, sends `subscription` and
   * resolves once the server has answered it with `signal: start`.
   */
  static async open(
    port: number,
    path: string,
    subscription: unknown,
    timeoutMs = 10_000,
    check: FrameCheck = topicFrameCheck,
  ): Promise<EventsConsumer> {
    const sock = net.connect({ host: '127.0.0.1', port, noDelay: true });
    const consumer = new EventsConsumer(sock);
    consumer.check = check;
    await new Promise<void>((resolve, reject) => {
      sock.once('connect', () => resolve());
      sock.once('error', reject);
    });
    sock.write(
      `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
        `Sec-WebSocket-Key: ${randomBytes(16).toString('base64')}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
    );
    const deadline = performance.now() + timeoutMs;
    while (consumer.handshake) {
      if (performance.now() > deadline || consumer.problemCount > 0)
        throw new Error(`WebSocket upgrade failed: ${consumer.problems.join('; ') || 'timeout'}`);
      await new Promise((r) => setTimeout(r, 10));
    }
    sock.write(maskedTextFrame(JSON.stringify(subscription)));
    while (!consumer.started) {
      if (performance.now() > deadline || consumer.problemCount > 0)
        throw new Error(`subscription not started: ${consumer.problems.join('; ') || 'timeout'}`);
      await new Promise((r) => setTimeout(r, 10));
    }
    return consumer;
  }

  problem(text: string): void {
    this.problemCount++;
    if (this.problems.length < 5) this.problems.push(text);
  }

  private onData(chunk: Buffer): void {
    let buf = chunk;
    if (this.handshake) {
      const all = Buffer.concat([this.handshake, chunk]);
      const end = all.indexOf('\r\n\r\n');
      if (end < 0) {
        this.handshake = all;
        return;
      }
      const head = all.toString('latin1', 0, end);
      if (!head.startsWith('HTTP/1.1 101')) {
        this.problem(`upgrade refused: ${all.toString('utf8').slice(0, 400)}`);
        this.sock.destroy();
        return;
      }
      this.handshake = null;
      buf = all.subarray(end + 4);
    }
    if (this.carry) {
      buf = Buffer.concat([this.carry, buf]);
      this.carry = null;
    }
    const n = buf.length;
    let p = 0;
    if (this.skip > 0) {
      p = Math.min(this.skip, n);
      this.skip -= p;
    }
    while (p < n) {
      const avail = n - p;
      if (avail < 2) break;
      const b1 = buf[p + 1] as number;
      let len = b1 & 0x7f;
      let hdr = 2;
      if (len === 126) {
        if (avail < 4) break;
        len = buf.readUInt16BE(p + 2);
        hdr = 4;
      } else if (len === 127) {
        if (avail < 10) break;
        len = Number(buf.readBigUInt64BE(p + 2));
        hdr = 10;
      }
      if (b1 & 0x80) hdr += 4;
      if (avail < hdr + Math.min(len, PEEK)) break;
      this.onFrame((buf[p] as number) & 0x0f, buf, p + hdr, len, avail - hdr);
      const total = hdr + len;
      if (avail >= total) p += total;
      else {
        this.skip = total - avail;
        p = n;
      }
    }
    if (p < n) this.carry = Buffer.from(buf.subarray(p));
  }

  private onFrame(opcode: number, buf: Buffer, start: number, len: number, available: number): void {
    if (opcode === 8) {
      this.problem(
        `closed by the server: ${buf.toString('utf8', start + 2, start + Math.min(len, available))}`,
      );
      return;
    }
    if (opcode !== 1) return;
    const at = buf.indexOf(SIGNAL_KEY, start);
    const s =
      at >= 0 && at + SIGNAL_KEY.length + 2 < start + Math.min(len, PEEK) ? at + SIGNAL_KEY.length : -1;
    const c = s >= 0 ? buf[s] : 0;
    if (c === 0x64 /* d: data */) {
      this.delivered++;
      if (!this.verified && available >= len) {
        this.verified = true;
        const text = buf.toString('utf8', start, start + len);
        const problem = this.check(JSON.parse(text));
        if (problem) this.problem(`${problem}: ${text.slice(0, 300)}`);
      }
      return;
    }
    if (c === 0x73 /* s */ && buf[s + 2] === 0x61 /* start */) {
      this.started = true;
      this.starts++;
      return;
    }
    this.problem(`frame: ${buf.toString('utf8', start, start + Math.min(len, available, 300))}`);
  }

  close(): void {
    this.closing = true;
    this.sock.destroy();
  }
}

/**
 * One events WebSocket subscribed to `device_resource_stream` on `resource` of every device;
 * resolves once the subscription is acknowledged and `devices` device streams have started.
 */
export async function openFleetConsumer(
  port: number,
  path: string,
  resource: string,
  devices: number,
  timeoutMs = 60_000,
): Promise<EventsConsumer> {
  const c = await EventsConsumer.open(
    port,
    path,
    { event: 'device_resource_stream', filters: { resource } },
    10_000,
    resourceFrameCheck,
  );
  // The acknowledgement, then one start per device stream.
  const deadline = performance.now() + timeoutMs;
  while (c.starts < devices + 1) {
    if (performance.now() > deadline || c.problemCount > 0)
      throw new Error(
        `only ${c.starts - 1} of ${devices} device streams started within ${timeoutMs / 1000} s; ${c.problems.join('; ')}`,
      );
    await new Promise((r) => setTimeout(r, 20));
  }
  return c;
}
