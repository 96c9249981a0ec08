/**
 * The device side of the peer benchmark's load generator, run as child processes (fork) and
 * driven over IPC (peers-protocol.ts): many devices per process, one net.Socket each from its
 * own loopback source address (127.1.x.y), frames and packets pre-encoded per device, received
 * chunks scanned in place. One protocol adapter per system:
 * - MQTT 3.1.1 (Mosquitto, Aedes): CONNECT → CONNACK (then SUBSCRIBE dev/<i>/cmd → SUBACK
 *   when the device must be callable); telemetry is PUBLISH QoS 0 to dev/<i>/telemetry; a
 *   PUBLISH on dev/<i>/cmd is answered on dev/<i>/resp with its correlation id.
 * - IOTMP (our server): CONNECT → OK; telemetry is STREAM_DATA on a stream the device opens
 *   (START_STREAM on server resource 8, device_topic_publish, scope publish, dev/<i>/telemetry)
 *   or on a stream the server opens on the device's `sample` resource (START_STREAM from the
 *   server, for WebSocket consumers of that resource); RUN is answered with OK + the sample.
 * Telemetry is closed-loop: the parent grants credit for what the consumer has received.
 */
import * as net from 'node:net';
import { decodeBody, encodeMessage, MessageType, type MessageType as MessageTypeCode } from '@iotmp/protocol';
import {
  DISCONNECT,
  digitsAt,
  encodeConnect,
  encodePublish,
  encodeSubscribe,
  MqttParser,
  PacketType,
  publishParts,
} from './peers-mqtt.js';
import {
  COMMAND_ID_PREFIX,
  commandTopic,
  type DeviceProtocol,
  type GenCommand,
  type GenEvent,
  type GenStats,
  RESPONSE_SUFFIX,
  responseTopic,
  telemetryTopic,
} from './peers-protocol.js';
import {
  deviceCredential,
  deviceName,
  deviceSourceAddress,
  INVALID_FRAME,
  SAMPLE,
  splitFrames,
} from './sim-protocol.js';

/** Telemetry messages per write when publishing. */
const BATCH = 8;
/** A device socket with more than this unsent is skipped by the telemetry pump. */
const MAX_UNSENT = 16 * 1024;
/** The stream id an IOTMP device opens its publish stream with (CONNECT used 1). */
const PUBLISH_SID = 2;
const SAMPLE_JSON = Buffer.from(JSON.stringify(SAMPLE));
const ID_PREFIX = Buffer.from(COMMAND_ID_PREFIX);
const RESPONSE_TAIL = Buffer.from(RESPONSE_SUFFIX);

let protocol: DeviceProtocol = 'mqtt';
let host = '127.0.0.1';
let port = 0;
let user = '';
let keepAliveSeconds = 1800;

const stats: Omit<GenStats, 'connected' | 'publishing' | 'cpuUserUs' | 'cpuSystemUs'> = {
  telemetrySent: 0,
  commandsAnswered: 0,
  writes: 0,
};

function send(event: GenEvent): void {
  process.send?.(event);
}

function toBuffer(bytes: Uint8Array): Buffer {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

type Outcome = { ok: true; ms: number } | { ok: false; error: string };

/** One device connection; the protocol adapters below say what goes on the wire. */
abstract class GenDevice {
  sock: net.Socket | null = null;
  state: 'connecting' | 'open' | 'closed' = 'connecting';
  protected readonly out: Buffer[] = [];
  protected subscribe = false;
  protected started = 0;
  private onLogin: ((r: Outcome) => void) | null = null;
  private onStream: ((error?: string) => void) | null = null;
  private timer: NodeJS.Timeout | undefined;
  /** Pre-built telemetry batch (BATCH messages) while publishing, else null. */
  batch: Buffer | null = null;
  messageLength = 0;

  constructor(readonly index: number) {}

  /** What the device sends once the TCP connection is up. */
  protected abstract hello(): Buffer;
  /** Handles received bytes (whole packets; the rest is kept for the next chunk). */
  protected abstract receive(chunk: Buffer): void;
  /** Asks the system for what publishing needs (IOTMP: a stream); calls streamReady/streamFailed. */
  protected abstract requestStream(): void;

  login(timeoutMs: number, subscribe: boolean): Promise<Outcome> {
    this.subscribe = subscribe;
    return new Promise((resolve) => {
      this.onLogin = resolve;
      this.started = performance.now();
      const frame = this.hello();
      const sock = net.connect({ host, port, localAddress: deviceSourceAddress(this.index), noDelay: true });
      this.sock = sock;
      sock.on('connect', () => sock.write(frame));
      sock.on('data', (chunk: Buffer) => {
        this.receive(chunk);
        this.flush();
      });
      sock.on('error', (err) => this.loginDone({ ok: false, error: `socket error: ${err.message}` }));
      sock.on('close', () => this.onClose());
      this.timer = setTimeout(
        () => this.loginDone({ ok: false, error: `not logged in within ${timeoutMs} ms` }),
        timeoutMs,
      );
    });
  }

  protected loginDone(result: Outcome): void {
    const cb = this.onLogin;
    if (!cb) return;
    this.onLogin = null;
    clearTimeout(this.timer);
    this.timer = undefined;
    if (result.ok) this.state = 'open';
    else this.close();
    cb(result);
  }

  openStream(timeoutMs: number): Promise<string | undefined> {
    if (this.state !== 'open') return Promise.resolve('not connected');
    if (this.batch) return Promise.resolve(undefined);
    return new Promise((resolve) => {
      const timer = setTimeout(() => this.streamDone(`no answer within ${timeoutMs} ms`), timeoutMs);
      this.onStream = (error) => {
        clearTimeout(timer);
        resolve(error);
      };
      this.requestStream();
      this.flush();
    });
  }

  protected streamDone(error?: string): void {
    const cb = this.onStream;
    this.onStream = null;
    cb?.(error);
  }

  /** Publishing starts with `message` (one telemetry message, pre-encoded). */
  protected startPublishing(message: Buffer): void {
    if (!this.batch) publishing.push(this);
    this.messageLength = message.length;
    this.batch = Buffer.concat(Array.from({ length: BATCH }, () => message));
    this.streamDone();
  }

  protected stopPublishing(): void {
    if (!this.batch) return;
    this.batch = null;
    const i = publishing.indexOf(this);
    if (i >= 0) publishing.splice(i, 1);
  }

  protected flush(): void {
    const out = this.out;
    if (out.length > 0 && this.sock) {
      this.sock.write(out.length === 1 ? (out[0] as Buffer) : Buffer.concat(out));
      stats.writes++;
    }
    out.length = 0;
  }

  /** Polite close: the protocol's goodbye, then the socket. */
  abstract goodbye(): void;

  close(): void {
    this.state = 'closed';
    this.sock?.destroy();
  }

  private onClose(): void {
    this.state = 'closed';
    this.sock = null;
    this.stopPublishing();
    this.loginDone({ ok: false, error: 'connection closed before being logged in' });
    this.streamDone('connection closed');
    if (devices.get(this.index) === this) devices.delete(this.index);
  }
}

// --- MQTT 3.1.1 -------------------------------------------------------------------------

class MqttDevice extends GenDevice {
  private readonly parser = new MqttParser((first, buf, start, end) => this.onPacket(first, buf, start, end));
  private responseHead: Buffer | null = null;

  protected hello(): Buffer {
    return encodeConnect(deviceName(this.index), keepAliveSeconds, user, deviceCredential(this.index));
  }

  protected receive(chunk: Buffer): void {
    try {
      this.parser.push(chunk);
    } catch (err) {
      this.loginDone({ ok: false, error: String(err) });
      this.close();
    }
  }

  protected requestStream(): void {
    this.startPublishing(encodePublish(telemetryTopic(this.index), SAMPLE_JSON));
  }

  goodbye(): void {
    this.sock?.end(DISCONNECT);
    this.state = 'closed';
  }

  private onPacket(first: number, buf: Buffer, start: number, end: number): void {
    switch (first >> 4) {
      case PacketType.CONNACK: {
        const rc = buf[start + 1];
        if (rc !== 0) this.loginDone({ ok: false, error: `CONNECT refused with return code ${rc}` });
        else if (this.subscribe) this.out.push(encodeSubscribe(1, commandTopic(this.index)));
        else this.loginDone({ ok: true, ms: this.elapsed() });
        return;
      }
      case PacketType.SUBACK:
        if (buf[start + 2] === 0x80) this.loginDone({ ok: false, error: 'SUBSCRIBE refused' });
        else this.loginDone({ ok: true, ms: this.elapsed() });
        return;
      case PacketType.PUBLISH:
        this.onCommand(first, buf, start, end);
        return;
      default:
        return; // PINGRESP
    }
  }

  /** A command on dev/<i>/cmd: answer on dev/<i>/resp with its id and the sample. */
  private onCommand(first: number, buf: Buffer, start: number, end: number): void {
    const { payloadStart } = publishParts(first, buf, start, end);
    const at = buf.indexOf(ID_PREFIX, payloadStart);
    if (at < 0 || at >= end) return;
    const idStart = at + ID_PREFIX.length;
    const id = digitsAt(buf, idStart, end);
    if (id.value < 0) return;
    const idLength = id.end - idStart;
    const payloadLength = ID_PREFIX.length + idLength + RESPONSE_TAIL.length;
    const topic = this.responseTopicField();
    const body = topic.length + payloadLength;
    // Remaining length < 16,384: at most two bytes.
    const lengthBytes = body < 128 ? 1 : 2;
    const out = Buffer.allocUnsafe(1 + lengthBytes + body);
    out[0] = 0x30;
    if (lengthBytes === 1) out[1] = body;
    else {
      out[1] = (body & 0x7f) | 0x80;
      out[2] = body >> 7;
    }
    let p = 1 + lengthBytes;
    p += topic.copy(out, p);
    p += ID_PREFIX.copy(out, p);
    p += buf.copy(out, p, idStart, id.end);
    RESPONSE_TAIL.copy(out, p);
    this.out.push(out);
    stats.commandsAnswered++;
  }

  private responseTopicField(): Buffer {
    if (!this.responseHead) {
      const t = Buffer.from(responseTopic(this.index));
      const field = Buffer.allocUnsafe(2 + t.length);
      field.writeUInt16BE(t.length, 0);
      t.copy(field, 2);
      this.responseHead = field;
    }
    return this.responseHead;
  }

  private elapsed(): number {
    return performance.now() - this.started;
  }
}

// --- IOTMP ------------------------------------------------------------------------------

const okSampleCache: Array<Buffer | undefined> = [];
const okEmptyCache: Array<Buffer | undefined> = [];

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

/** The stream id of a frame: field 1 first (key 0x08) when the server wrote it, else the decoder. */
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

class IotmpDevice extends GenDevice {
  private carry: Buffer | null = null;
  private publishSid = 0;

  protected hello(): Buffer {
    return toBuffer(
      encodeMessage({
        type: MessageType.CONNECT,
        streamId: 1,
        parameters: { ka: keepAliveSeconds },
        payload: [user, deviceName(this.index), deviceCredential(this.index)],
      }),
    );
  }

  protected requestStream(): void {
    this.out.push(
      toBuffer(
        encodeMessage({
          type: MessageType.START_STREAM,
          streamId: PUBLISH_SID,
          resource: 8,
          parameters: { event: 'device_topic_publish', scope: 'publish', topic: telemetryTopic(this.index) },
        }),
      ),
    );
  }

  goodbye(): void {
    this.sock?.end(toBuffer(encodeMessage({ type: MessageType.DISCONNECT })));
    this.state = 'closed';
  }

  protected receive(chunk: Buffer): void {
    const rest = splitFrames(this.carry, chunk, this);
    // A stream this generator cannot read: drop what it holds (the server would be at fault).
    this.carry = rest === INVALID_FRAME ? null : rest;
  }

  /** @internal (FrameSink) */
  onFrame(type: number, buf: Buffer, start: number, end: number): void {
    switch (type) {
      case MessageType.RUN: {
        const sid = streamIdOf(type, buf, start, end);
        if (sid) this.out.push(okSample(sid));
        stats.commandsAnswered++;
        return;
      }
      case MessageType.OK:
        if (this.state === 'connecting') this.loginDone({ ok: true, ms: performance.now() - this.started });
        else if (!this.batch && streamIdOf(type, buf, start, end) === PUBLISH_SID) {
          this.publishSid = PUBLISH_SID;
          this.startPublishing(this.streamData(PUBLISH_SID));
        }
        return;
      case MessageType.ERROR: {
        let detail: unknown;
        try {
          const m = decodeBody(type, buf, start, end);
          detail = { parameters: m.parameters, payload: m.payload };
        } catch {
          detail = '?';
        }
        if (this.state === 'connecting')
          this.loginDone({ ok: false, error: `CONNECT refused with ERROR ${JSON.stringify(detail)}` });
        else this.streamDone(`START_STREAM refused with ERROR ${JSON.stringify(detail)}`);
        return;
      }
      case MessageType.START_STREAM: {
        // The server opens a stream on the device's resource (a WebSocket consumer of it).
        const sid = streamIdOf(type, buf, start, end);
        if (!sid) return;
        this.out.push(okEmpty(sid));
        this.publishSid = sid;
        this.startPublishing(this.streamData(sid));
        return;
      }
      case MessageType.STOP_STREAM: {
        const sid = streamIdOf(type, buf, start, end);
        if (!sid) return;
        this.out.push(okEmpty(sid));
        if (sid === this.publishSid) this.stopPublishing();
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
        return; // KEEP_ALIVE answers
    }
  }

  private streamData(sid: number): Buffer {
    return toBuffer(encodeMessage({ type: MessageType.STREAM_DATA, streamId: sid, payload: SAMPLE }));
  }
}

const devices = new Map<number, GenDevice>();

function newDevice(index: number): GenDevice {
  return protocol === 'mqtt' ? new MqttDevice(index) : new IotmpDevice(index);
}

async function connectAll(cmd: Extract<GenCommand, { op: 'connect' }>): Promise<void> {
  const { indices, inFlight, timeoutMs, deadlineMs, subscribe } = cmd;
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
      const d = newDevice(index);
      devices.set(index, d);
      const r = await d.login(timeoutMs, subscribe);
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

async function openStreams(timeoutMs: number): Promise<void> {
  const errors: string[] = [];
  let open = 0;
  let failed = 0;
  const all = [...devices.values()].filter((d) => d.state === 'open');
  // 100 at a time: the same pace for every system.
  for (let k = 0; k < all.length; k += 100) {
    const results = await Promise.all(all.slice(k, k + 100).map((d) => d.openStream(timeoutMs)));
    results.forEach((error, j) => {
      if (error === undefined) open++;
      else {
        failed++;
        if (errors.length < 5) errors.push(`${deviceName((all[k + j] as GenDevice).index)}: ${error}`);
      }
    });
  }
  send({ op: 'streams-open', open, failed, errors });
}

// --- telemetry, closed loop ---------------------------------------------------------------

const publishing: GenDevice[] = [];
let credit = 0;
let rr = 0;
let pumpTimer: NodeJS.Timeout | undefined;

/** Spends the credit round-robin over the publishing devices, a batch per write. */
function pump(): void {
  pumpTimer = undefined;
  let idle = 0;
  while (credit > 0 && publishing.length > 0 && idle < publishing.length) {
    if (rr >= publishing.length) rr = 0;
    const d = publishing[rr++] as GenDevice;
    const sock = d.sock;
    if (!sock || !d.batch || sock.writableLength > MAX_UNSENT) {
      idle++;
      continue;
    }
    const k = Math.min(BATCH, credit);
    sock.write(k === BATCH ? d.batch : d.batch.subarray(0, k * d.messageLength));
    credit -= k;
    stats.telemetrySent += k;
    stats.writes++;
    idle = 0;
  }
  // Credit left but every socket full (or nobody publishing yet): try again shortly.
  if (credit > 0 && pumpTimer === undefined) pumpTimer = setTimeout(pump, 1);
}

// --- IPC ----------------------------------------------------------------------------------

process.on('message', (cmd: GenCommand) => {
  switch (cmd.op) {
    case 'init':
      protocol = cmd.protocol;
      host = cmd.host;
      port = cmd.port;
      user = cmd.user;
      keepAliveSeconds = cmd.keepAliveSeconds;
      send({ op: 'ready' });
      return;
    case 'connect':
      connectAll(cmd).catch((err: unknown) => send({ op: 'error', message: String(err) }));
      return;
    case 'open-streams':
      openStreams(cmd.timeoutMs).catch((err: unknown) => send({ op: 'error', message: String(err) }));
      return;
    case 'disconnect': {
      let closed = 0;
      for (const d of [...devices.values()]) {
        d.goodbye();
        closed++;
      }
      devices.clear();
      publishing.length = 0;
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
        publishing: publishing.length,
        cpuUserUs: cpu.user,
        cpuSystemUs: cpu.system,
        ...stats,
      });
      return;
    }
  }
});

// The parent went away: nothing left to generate for.
process.on('disconnect', () => process.exit(0));
