/**
 * Just enough MQTT 3.1.1 for the peer benchmark, by hand: the packets a device or an
 * application sends (CONNECT, SUBSCRIBE, PUBLISH QoS 0, PINGREQ, DISCONNECT), encoded once
 * into Buffers, and an incremental parser that hands out packets as offsets into the received
 * chunk (no objects per packet), so that the load generator stays cheap. Also a minimal client
 * for the application side (the telemetry consumer and the command caller).
 */
import * as net from 'node:net';

export const PacketType = {
  CONNECT: 1,
  CONNACK: 2,
  PUBLISH: 3,
  SUBSCRIBE: 8,
  SUBACK: 9,
  PINGREQ: 12,
  PINGRESP: 13,
  DISCONNECT: 14,
} as const;

export const PINGREQ = Buffer.from([0xc0, 0x00]);
export const DISCONNECT = Buffer.from([0xe0, 0x00]);

function remainingLength(n: number): number[] {
  const out: number[] = [];
  do {
    let b = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) b |= 0x80;
    out.push(b);
  } while (n > 0);
  return out;
}

function utf8Field(text: string): Buffer {
  const bytes = Buffer.from(text, 'utf8');
  const out = Buffer.allocUnsafe(2 + bytes.length);
  out.writeUInt16BE(bytes.length, 0);
  bytes.copy(out, 2);
  return out;
}

function packet(first: number, body: Buffer[]): Buffer {
  let size = 0;
  for (const b of body) size += b.length;
  return Buffer.concat([Buffer.from([first, ...remainingLength(size)]), ...body]);
}

/** CONNECT, clean session, with a username and password when given. */
export function encodeConnect(
  clientId: string,
  keepAliveSeconds: number,
  username?: string,
  password?: string,
): Buffer {
  let flags = 0x02; // clean session
  if (username !== undefined) flags |= 0x80;
  if (password !== undefined) flags |= 0x40;
  const header = Buffer.from([0x00, 0x04, 0x4d, 0x51, 0x54, 0x54, 0x04, flags, 0, 0]);
  header.writeUInt16BE(Math.min(keepAliveSeconds, 65_535), 8);
  const body = [header, utf8Field(clientId)];
  if (username !== undefined) body.push(utf8Field(username));
  if (password !== undefined) body.push(utf8Field(password));
  return packet(0x10, body);
}

export function encodeSubscribe(packetId: number, filter: string, qos = 0): Buffer {
  const id = Buffer.allocUnsafe(2);
  id.writeUInt16BE(packetId, 0);
  return packet(0x82, [id, utf8Field(filter), Buffer.from([qos])]);
}

/** PUBLISH QoS 0, not retained. */
export function encodePublish(topic: string, payload: Buffer | string): Buffer {
  return packet(0x30, [utf8Field(topic), typeof payload === 'string' ? Buffer.from(payload) : payload]);
}

/**
 * The bytes of a PUBLISH QoS 0 to `topic` up to its payload, for a payload of `payloadLength`
 * bytes: callers append the payload (two writes or one concat, no re-encoding of the topic).
 */
export function publishHead(topic: string, payloadLength: number): Buffer {
  const t = utf8Field(topic);
  return Buffer.concat([Buffer.from([0x30, ...remainingLength(t.length + payloadLength)]), t]);
}

/** One packet: its first byte (type << 4 | flags) and where its body is in `buf`. */
export type PacketHandler = (first: number, buf: Buffer, start: number, end: number) => void;

/** Incremental MQTT packet splitter: push chunks of any size, get whole packets back. */
export class MqttParser {
  private carry: Buffer | null = null;

  constructor(private readonly onPacket: PacketHandler) {}

  push(chunk: Buffer): void {
    let buf = chunk;
    if (this.carry) {
      buf = Buffer.concat([this.carry, chunk]);
      this.carry = null;
    }
    const n = buf.length;
    let p = 0;
    while (p + 2 <= n) {
      let q = p + 1;
      let size = 0;
      let mul = 1;
      let b = 0x80;
      while (q < n && b >= 0x80 && q - p <= 4) {
        b = buf[q++] as number;
        size += (b & 0x7f) * mul;
        mul *= 128;
      }
      if (b >= 0x80) {
        if (q - p > 4) throw new Error('MQTT remaining length longer than 4 bytes');
        break;
      }
      if (q + size > n) break;
      this.onPacket(buf[p] as number, buf, q, q + size);
      p = q + size;
    }
    if (p < n) this.carry = Buffer.from(buf.subarray(p));
  }
}

/** Where a PUBLISH body's topic and payload are (QoS from the packet's flags). */
export function publishParts(
  first: number,
  buf: Buffer,
  start: number,
  end: number,
): { topicStart: number; topicEnd: number; payloadStart: number } {
  const topicLength = buf.readUInt16BE(start);
  const topicStart = start + 2;
  const topicEnd = topicStart + topicLength;
  const qos = (first >> 1) & 3;
  return { topicStart, topicEnd, payloadStart: Math.min(end, topicEnd + (qos > 0 ? 2 : 0)) };
}

/** The decimal number at `at` in `buf` (ASCII digits), or -1. */
export function digitsAt(buf: Buffer, at: number, end: number): { value: number; end: number } {
  let value = 0;
  let p = at;
  while (p < end) {
    const c = buf[p] as number;
    if (c < 0x30 || c > 0x39) break;
    value = value * 10 + (c - 0x30);
    p++;
  }
  return p === at ? { value: -1, end: p } : { value, end: p };
}

type PublishListener = (
  buf: Buffer,
  topicStart: number,
  topicEnd: number,
  payloadStart: number,
  end: number,
) => void;

/**
 * A minimal MQTT 3.1.1 client connection for the application side: connect, subscribe with
 * QoS 0, write pre-encoded PUBLISH packets, and a callback per received PUBLISH.
 */
export class MqttClient {
  private readonly parser: MqttParser;
  private waiting: { type: number; resolve(body: Buffer): void; reject(e: Error): void } | null = null;
  private nextPacketId = 1;
  onPublish: PublishListener = () => {};
  closed = false;

  private constructor(readonly sock: net.Socket) {
    this.parser = new MqttParser((first, buf, start, end) => this.onPacket(first, buf, start, end));
    sock.on('data', (chunk: Buffer) => {
      try {
        this.parser.push(chunk);
      } catch (err) {
        this.fail(err as Error);
        sock.destroy();
      }
    });
    sock.on('error', (err) => this.fail(err));
    sock.on('close', () => {
      this.closed = true;
      this.fail(new Error('connection closed'));
    });
  }

  static async connect(port: number, clientId: string, keepAliveSeconds = 1800): Promise<MqttClient> {
    const sock = await new Promise<net.Socket>((resolve, reject) => {
      const s = net.connect({ host: '127.0.0.1', port, noDelay: true });
      s.once('connect', () => resolve(s));
      s.once('error', reject);
    });
    const client = new MqttClient(sock);
    const ack = await client.request(encodeConnect(clientId, keepAliveSeconds), PacketType.CONNACK);
    if (ack[1] !== 0) throw new Error(`CONNECT refused with return code ${ack[1]}`);
    return client;
  }

  private request(bytes: Buffer, type: number): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      this.waiting = { type, resolve, reject };
      this.sock.write(bytes);
    });
  }

  async subscribe(filter: string): Promise<void> {
    const ack = await this.request(encodeSubscribe(this.nextPacketId++, filter), PacketType.SUBACK);
    if (ack[2] === 0x80) throw new Error(`SUBSCRIBE ${filter} refused`);
  }

  write(bytes: Buffer): void {
    this.sock.write(bytes);
  }

  private fail(err: Error): void {
    const w = this.waiting;
    this.waiting = null;
    w?.reject(err);
  }

  private onPacket(first: number, buf: Buffer, start: number, end: number): void {
    const type = first >> 4;
    if (type === PacketType.PUBLISH) {
      const { topicStart, topicEnd, payloadStart } = publishParts(first, buf, start, end);
      this.onPublish(buf, topicStart, topicEnd, payloadStart, end);
      return;
    }
    const w = this.waiting;
    if (w && w.type === type) {
      this.waiting = null;
      w.resolve(Buffer.from(buf.subarray(start, end)));
    }
  }

  close(): void {
    if (!this.closed) this.sock.end(DISCONNECT);
    this.sock.destroy();
  }
}
