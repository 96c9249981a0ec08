/**
 * The Node.js floor of the peer benchmark: the least any Node.js 20 server can do for the
 * same wire exchange as ours, in its own process, with no framework, no protocol engine, no
 * storage and no authentication:
 *
 *   node --expose-gc bench/dist/peers-floor.js
 *
 * - Devices (plain net.Server, noDelay as ours): frames are split by their header (two
 *   varints); a CONNECT is decoded (the device id) and answered with the OK frame our server
 *   sends, pre-encoded. An OK (or ERROR) from a device answers the oldest of its pending
 *   RUNs (devices answer in order: a FIFO per device, no stream id bookkeeping).
 * - HTTP (bare node:http): GET /v3/users/<u>/devices/<d>/resources/<r> writes the RUN frame
 *   our server would send (pre-encoded once, a 3-byte stream id as most of ours) to device
 *   <d>, and ends the response with the device's answer as a fixed JSON body (the sample,
 *   the same bytes as ours) once the device answers: headers and body in one write.
 * - Telemetry: a device's START_STREAM is decoded (its topic) and answered with OK; each
 *   STREAM_DATA payload is decoded and sent as JSON, as our events API frames it, to the
 *   WebSocket consumers (`ws`, on any upgrade path, subscribed with their first message),
 *   writes batched per event-loop turn (corked) as ours.
 * - Memory: the sockets are held, nothing else.
 *
 * Over IPC it reports `{op: 'listening', devicePort, httpPort}` once it accepts
 * connections, and answers `{op: 'memory'}` with process.memoryUsage() after a forced GC
 * (when --expose-gc is set) and the number of logged-in devices.
 */
import * as http from 'node:http';
import * as net from 'node:net';
import { decodeBody, encodeMessage, MessageType } from '@iotmp/protocol';
import type { PsonValue } from '@iotmp/pson';
import { type WebSocket, WebSocketServer } from 'ws';
import { INVALID_FRAME, SAMPLE, splitFrames } from './sim-protocol.js';

/** A device frame larger than this closes the connection (bounded memory). */
const MAX_FRAME = 64 * 1024;
/** Bytes a consumer may leave unread before telemetry to it is dropped (ours: 1 MiB). */
const MAX_BUFFERED = 1024 * 1024;
/** The stream id of every RUN: random ids in 1…65535 as ours are mostly 3-byte varints. */
const RUN_SID = 0x8000;

const toBuffer = (bytes: Uint8Array) => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
const frameCache = new Map<string, Buffer>();
/** An OK (or KEEP_ALIVE) frame for `sid`, encoded once. */
function control(
  type: typeof MessageType.OK | typeof MessageType.KEEP_ALIVE,
  sid: number | undefined,
): Buffer {
  const key = `${type}:${sid}`;
  let f = frameCache.get(key);
  if (!f) {
    f = toBuffer(encodeMessage({ type, streamId: sid }));
    frameCache.set(key, f);
  }
  return f;
}
const runFrames = new Map<string, Buffer>();
/** The RUN our server sends for GET …/resources/<resource> (no query string), encoded once. */
function runFrame(resource: string): Buffer {
  let f = runFrames.get(resource);
  if (!f) {
    f = toBuffer(encodeMessage({ type: MessageType.RUN, streamId: RUN_SID, resource }));
    if (runFrames.size < 64) runFrames.set(resource, f);
  }
  return f;
}
/** What our server answers with the sample: its JSON. */
const ANSWER = JSON.stringify(SAMPLE);
const ANSWER_HEADERS = {
  'content-type': 'application/json; charset=utf-8',
  'content-length': Buffer.byteLength(ANSWER),
};
const ERROR_HEADERS = { 'content-type': 'application/json; charset=utf-8' };

// --- devices --------------------------------------------------------------------------------

const devices = new Map<string, FloorDevice>();
let consumers: WebSocket[] = [];
let dropped = 0;

class FloorDevice {
  id: string | null = null;
  /** HTTP responses waiting for this device's answers, oldest first. */
  readonly pending: http.ServerResponse[] = [];
  /** Topic of each stream the device opened (device_topic_publish). */
  private topics: Map<number, string> | null = null;
  private carry: Buffer | null = null;

  constructor(readonly sock: net.Socket) {
    sock.on('data', (chunk: Buffer) => this.receive(chunk));
    sock.on('error', () => undefined);
    sock.on('close', () => this.closed());
  }

  private receive(chunk: Buffer): void {
    const rest = splitFrames(this.carry, chunk, this, MAX_FRAME);
    if (rest === INVALID_FRAME) {
      this.sock.destroy();
      return;
    }
    this.carry = rest;
  }

  /** @internal (FrameSink) */
  onFrame(type: number, buf: Buffer, start: number, end: number): void {
    if (this.id === null) {
      if (type === MessageType.CONNECT) this.login(buf, start, end);
      else this.sock.destroy();
      return;
    }
    switch (type) {
      case MessageType.OK:
        this.pending.shift()?.writeHead(200, ANSWER_HEADERS).end(ANSWER);
        return;
      case MessageType.ERROR:
        this.pending
          .shift()
          ?.writeHead(500, ERROR_HEADERS)
          .end('{"error":{"message":"device reported an error","code":"device_error"}}');
        return;
      case MessageType.STREAM_DATA:
        this.publish(buf, start, end);
        return;
      case MessageType.START_STREAM:
        this.startStream(buf, start, end);
        return;
      case MessageType.STOP_STREAM: {
        const sid = this.decode(type, buf, start, end)?.streamId;
        if (sid !== undefined) {
          this.topics?.delete(sid);
          this.sock.write(control(MessageType.OK, sid));
        }
        return;
      }
      case MessageType.KEEP_ALIVE:
        this.sock.write(control(MessageType.KEEP_ALIVE, undefined));
        return;
      case MessageType.DISCONNECT:
        this.sock.end();
        return;
      default:
        return;
    }
  }

  private decode(type: number, buf: Buffer, start: number, end: number) {
    try {
      return decodeBody(type as MessageType, buf, start, end);
    } catch {
      return undefined;
    }
  }

  /** CONNECT: the device id out of [user, device, credential]; no check, OK at once. */
  private login(buf: Buffer, start: number, end: number): void {
    const m = this.decode(MessageType.CONNECT, buf, start, end);
    const creds = m?.payload;
    const id = Array.isArray(creds) ? creds[1] : undefined;
    if (typeof id !== 'string' || id.length === 0 || id.length > 64) {
      this.sock.destroy();
      return;
    }
    this.id = id;
    devices.get(id)?.sock.destroy();
    devices.set(id, this);
    this.sock.write(control(MessageType.OK, m?.streamId || undefined));
  }

  /** A stream on server resource 8 (device_topic_publish): remember its topic, OK. */
  private startStream(buf: Buffer, start: number, end: number): void {
    const m = this.decode(MessageType.START_STREAM, buf, start, end);
    const sid = m?.streamId;
    const params = m?.parameters as { topic?: unknown } | undefined;
    if (!sid || typeof params?.topic !== 'string') return;
    this.topics ??= new Map();
    if (this.topics.size < 16) this.topics.set(sid, params.topic);
    this.sock.write(control(MessageType.OK, sid));
  }

  private publish(buf: Buffer, start: number, end: number): void {
    const m = this.decode(MessageType.STREAM_DATA, buf, start, end);
    const topic = m?.streamId !== undefined ? this.topics?.get(m.streamId) : undefined;
    if (topic === undefined || consumers.length === 0) return;
    const text = JSON.stringify({
      event: 'device_topic_publish',
      signal: 'data',
      payload: { topic, payload: m?.payload as PsonValue },
    });
    for (const ws of consumers) send(ws, text);
  }

  private closed(): void {
    if (this.id !== null && devices.get(this.id) === this) devices.delete(this.id);
    for (const res of this.pending.splice(0))
      res
        .writeHead(404, ERROR_HEADERS)
        .end('{"error":{"message":"device disconnected during the call","code":"device_offline"}}');
  }
}

// --- WebSocket consumers: one write per socket per event-loop turn ---------------------------

type RawSocket = { cork(): void; uncork(): void };
let corked: RawSocket[] = [];
function uncorkAll(): void {
  const batch = corked;
  corked = [];
  for (const s of batch) s.uncork();
}

function send(ws: WebSocket, text: string): void {
  if (ws.readyState !== ws.OPEN) return;
  if (ws.bufferedAmount >= MAX_BUFFERED) {
    dropped++;
    return;
  }
  const raw = (ws as unknown as { _socket?: RawSocket })._socket;
  if (raw && !corked.includes(raw)) {
    raw.cork();
    if (corked.push(raw) === 1) setImmediate(uncorkAll);
  }
  ws.send(text);
}

const wss = new WebSocketServer({ noServer: true, maxPayload: 64 * 1024 });
wss.on('connection', (ws) => {
  let subscribed = false;
  ws.on('message', (data) => {
    let filters: unknown;
    try {
      filters = (JSON.parse(String(data)) as { filters?: unknown }).filters;
    } catch {
      ws.close(1003, 'not JSON');
      return;
    }
    ws.send(JSON.stringify({ event: 'device_topic_publish', signal: 'start', payload: { filters } }));
    if (!subscribed) {
      subscribed = true;
      consumers.push(ws);
    }
  });
  ws.on('close', () => {
    consumers = consumers.filter((c) => c !== ws);
  });
});

// --- HTTP -------------------------------------------------------------------------------------

const httpServer = http.createServer({ noDelay: true }, (req, res) => {
  // /v3/users/<u>/devices/<d>/resources/<r>
  const parts = (req.url ?? '').split('?', 1)[0]?.split('/') ?? [];
  const device =
    req.method === 'GET' && parts.length === 8 && parts[4] === 'devices' && parts[6] === 'resources'
      ? devices.get(parts[5] as string)
      : undefined;
  if (!device || !parts[7]) {
    res
      .writeHead(404, ERROR_HEADERS)
      .end('{"error":{"message":"device is not connected","code":"device_offline"}}');
    return;
  }
  device.pending.push(res);
  device.sock.write(runFrame(parts[7]));
});
// As fastify's default (our server): idle keep-alive connections stay 72 s.
httpServer.keepAliveTimeout = 72_000;
httpServer.on('upgrade', (req, socket, head) => {
  wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req));
});

const deviceServer = net.createServer({ noDelay: true }, (sock) => {
  new FloorDevice(sock);
});

for (const s of [deviceServer, httpServer])
  s.on('error', (err) => {
    console.error(`floor: ${err.message}`);
    process.exit(1);
  });

const listen = (s: net.Server) =>
  new Promise<number>((resolve) =>
    s.listen(0, '127.0.0.1', () => resolve((s.address() as net.AddressInfo).port)),
  );
const [devicePort, httpPort] = await Promise.all([listen(deviceServer), listen(httpServer)]);
process.send?.({ op: 'listening', devicePort, httpPort });

process.on('message', (m: { op: string }) => {
  if (m.op === 'memory') {
    const gc = (globalThis as { gc?: () => void }).gc;
    gc?.();
    gc?.();
    setTimeout(
      () =>
        process.send?.({
          op: 'memory',
          gc: gc !== undefined,
          usage: process.memoryUsage(),
          clients: devices.size,
          dropped,
        }),
      300,
    );
  }
});
process.on('disconnect', () => {
  for (const d of devices.values()) d.sock.destroy();
  for (const ws of consumers) ws.terminate();
  deviceServer.close();
  httpServer.close();
  httpServer.closeAllConnections();
  setImmediate(() => process.exit(0));
});
