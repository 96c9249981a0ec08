/**
 * The SDK device over a real TCP socket against a scripted server that sends the reference
 * request frames byte for byte and checks that every answer is byte-identical to the
 * reference answer frames, in both protocol versions.
 */
import assert from 'node:assert/strict';
import * as net from 'node:net';
import { after, describe, it } from 'node:test';
import {
  type DecodedMessage,
  decodeMessage,
  encodeMessage,
  FrameDecoder,
  legacyFieldOrder,
  MessageType,
} from '@iotmp/protocol';
import { bytesToHex, type FrameVector, hexToBytes, loadFrameVectors } from '@iotmp/spec-vectors';
import { Device } from '../src/node.js';

const vectors = loadFrameVectors();
function vector(pv: 0 | 1, name: string): FrameVector {
  const v = vectors.find((x) => x.pv === pv && x.name === name);
  assert.ok(v, `vector pv${pv} ${name}`);
  return v;
}

/** A scripted server: hands out each complete frame the device sends, raw. */
class ScriptedServer {
  private server: net.Server;
  private socket: net.Socket | undefined;
  private readonly frames: Uint8Array[] = [];
  private readonly waiters: Array<(f: Uint8Array) => void> = [];
  port = 0;

  constructor() {
    this.server = net.createServer((socket) => {
      this.socket = socket;
      let pending = new Uint8Array(0);
      const decoder = new FrameDecoder({ onMessage: () => {} });
      socket.on('data', (chunk: Buffer) => {
        // Keep raw frames: split by re-reading headers as the decoder accepts them.
        const all = new Uint8Array(pending.length + chunk.length);
        all.set(pending);
        all.set(chunk, pending.length);
        let at = 0;
        for (;;) {
          const frame = nextFrame(all, at);
          if (!frame) break;
          decoder.push(frame);
          const w = this.waiters.shift();
          if (w) w(frame);
          else this.frames.push(frame);
          at += frame.length;
        }
        pending = all.slice(at);
      });
    });
  }

  async listen(): Promise<void> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    this.port = (this.server.address() as net.AddressInfo).port;
  }

  next(): Promise<Uint8Array> {
    const f = this.frames.shift();
    if (f) return Promise.resolve(f);
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  send(bytes: Uint8Array): void {
    this.socket?.write(bytes);
  }

  close(): void {
    this.socket?.destroy();
    this.server.close();
  }
}

/** The next whole frame at `at` (type, size varint, body), or undefined. */
function nextFrame(bytes: Uint8Array, at: number): Uint8Array | undefined {
  let p = at;
  if (p >= bytes.length) return undefined;
  p++; // type (single byte for every defined type)
  let size = 0;
  let shift = 0;
  for (;;) {
    if (p >= bytes.length) return undefined;
    const b = bytes[p++] as number;
    size |= (b & 0x7f) << shift;
    if (b < 0x80) break;
    shift += 7;
  }
  if (p + size > bytes.length) return undefined;
  return bytes.slice(at, p + size);
}

/** A reference frame with another stream id, in its version's field order. */
function withSid(frame: Uint8Array, sid: number): Uint8Array {
  const d = decodeMessage(frame) as DecodedMessage;
  const msg = {
    type: d.type,
    streamId: sid,
    parameters: d.parameters,
    payload: d.payload,
    resource: d.resource,
  };
  const version = d.psonVersion ?? 1;
  return encodeMessage(msg, version === 0 ? { version, fieldOrder: legacyFieldOrder(msg) } : { version });
}

const servers: ScriptedServer[] = [];
const devices: Device[] = [];
after(async () => {
  for (const d of devices) await d.close();
  for (const s of servers) s.close();
});

async function scripted(version: 0 | 1, setup: (d: Device) => void) {
  const server = new ScriptedServer();
  servers.push(server);
  await server.listen();
  const device = new Device({
    host: '127.0.0.1',
    port: server.port,
    transport: 'tcp',
    version,
    username: version === 1 ? 'user1' : 'username',
    deviceId: version === 1 ? 'sensor1' : 'device',
    credential: version === 1 ? 'secret123' : 'password',
    reconnect: false,
  });
  devices.push(device);
  setup(device);
  const connected = device.connect();
  const connect = await server.next();
  // CONNECT: the reference bytes, except for the random stream id.
  const sid = decodeMessage(connect).streamId as number;
  const expected = version === 1 ? vector(1, 'connect').hex : vector(0, 'connect').hex;
  assert.equal(bytesToHex(connect), bytesToHex(withSid(hexToBytes(expected), sid)));
  server.send(encodeMessage({ type: MessageType.OK, streamId: sid }, { version }));
  await connected;
  return { server, device };
}

async function exchange(server: ScriptedServer, request: string, answer: string): Promise<void> {
  server.send(hexToBytes(request));
  assert.equal(bytesToHex(await server.next()), answer);
}

describe('wire identity with the reference frames over TCP', () => {
  it('pv1: RUN, DESCRIBE all/one, stream start/data/stop', async () => {
    const { server, device } = await scripted(1, (d) => {
      d.resource('humidity', { output: () => 60 });
      d.resource('led', { input: () => {} });
      d.resource('reboot', { run: () => {} });
      d.resource('relay', { input: true, output: (v) => v ?? null });
      d.resource('temperature', { output: () => ({ temperature: 23.5 }) });
    });
    await exchange(server, vector(1, 'run_by_name').hex, vector(1, 'ok_with_payload').hex);
    await exchange(server, vector(1, 'describe_all').hex, vector(1, 'describe_all_response').hex);
    // Resources can be added while connected.
    device.resource('threshold', { input: true, output: () => 25, describe: { in: 0, out: 25 } });
    await exchange(server, vector(1, 'describe_one').hex, vector(1, 'describe_one_response').hex);
    // An id-less RUN gets no answer; the next request's answer comes next.
    server.send(hexToBytes(vector(1, 'run_no_stream_id').hex));
    await exchange(server, vector(1, 'run_by_name').hex, vector(1, 'ok_with_payload').hex);
  });

  it('pv1: a stream sends the reference STREAM_DATA right after OK, and stops', async () => {
    const { server } = await scripted(1, (d) => {
      d.resource('temperature', { output: () => ({ humidity: 60, temperature: 23.5 }) });
    });
    await exchange(
      server,
      vector(1, 'start_stream_interval').hex,
      bytesToHex(encodeMessage({ type: MessageType.OK, streamId: 161 })),
    );
    assert.equal(bytesToHex(await server.next()), vector(1, 'stream_data').hex);
    await exchange(
      server,
      vector(1, 'stop_stream').hex,
      bytesToHex(encodeMessage({ type: MessageType.OK, streamId: 161 })),
    );
  });

  it('pv0: legacy frames in, legacy frames out (field 3 resources, output marker, field order)', async () => {
    const { server } = await scripted(0, (d) => {
      d.resource('humidity', { output: () => 60 });
      d.resource('led', { input: () => {} });
      d.resource('temperature', { output: () => ({ humidity: 60, temperature: 23.5 }) });
      d.resource('threshold', { input: true, output: () => 25, describe: { in: 0, out: 25 } });
    });
    const ok4660 = bytesToHex(encodeMessage({ type: MessageType.OK, streamId: 4660 }, { version: 0 }));
    await exchange(server, vector(0, 'run_by_name_with_payload').hex, ok4660);
    server.send(encodeMessage({ type: MessageType.DESCRIBE, streamId: 16 }, { version: 0 }));
    // Our device has two more resources than the reference answer lists: compare the shape.
    const all = decodeMessage(await server.next());
    assert.deepEqual(all.payload, {
      humidity: { fn: 3 },
      led: { fn: 2 },
      temperature: { fn: 3 },
      threshold: { fn: 4 },
    });
    server.send(hexToBytes(vector(0, 'describe_one_field3').hex));
    assert.deepEqual(plainOk(await server.next()), {
      streamId: 17,
      payload: { in: 0, out: 25 },
      psonVersion: 0,
    });
    await exchange(
      server,
      vector(0, 'start_stream_field3').hex,
      bytesToHex(encodeMessage({ type: MessageType.OK, streamId: 161 }, { version: 0 })),
    );
    assert.equal(bytesToHex(await server.next()), vector(0, 'stream_data_output').hex);
    await exchange(
      server,
      vector(0, 'stop_stream').hex,
      bytesToHex(encodeMessage({ type: MessageType.OK, streamId: 161 }, { version: 0 })),
    );
  });

  it('pv0: the legacy describe-all answer is byte-identical for the same resources', async () => {
    const { server } = await scripted(0, (d) => {
      d.resource('humidity', { output: () => 60 });
      d.resource('led', { input: () => {} });
    });
    await exchange(
      server,
      bytesToHex(encodeMessage({ type: MessageType.DESCRIBE, streamId: 16 }, { version: 0 })),
      vector(0, 'describe_all_response').hex,
    );
  });

  it('server calls leave the device in the reference layout (pv1 and pv0)', async () => {
    for (const version of [1, 0] as const) {
      const { server, device } = await scripted(version, () => {});
      void device.buckets.write('sensor_data', { humidity: 60, temperature: 23.5 }, { confirm: false });
      const expected = version === 1 ? vector(1, 'srv_write_bucket').hex : vector(0, 'srv_write_bucket').hex;
      assert.equal(bytesToHex(await server.next()), expected);
      void device.call('device2', 'led', { state: true }, { confirm: false });
      assert.equal(
        bytesToHex(await server.next()),
        version === 1 ? vector(1, 'srv_call_device').hex : vector(0, 'srv_call_device').hex,
      );
      const read = device.properties.get('config');
      const frame = await server.next();
      const sid = decodeMessage(frame).streamId as number;
      const ref = version === 1 ? vector(1, 'srv_read_property') : vector(0, 'srv_read_property');
      assert.equal(bytesToHex(frame), bytesToHex(withSid(hexToBytes(ref.hex), sid)));
      server.send(
        encodeMessage({ type: MessageType.OK, streamId: sid, payload: { threshold: 42 } }, { version }),
      );
      assert.deepEqual(await read, { threshold: 42 });
    }
  });
});

function plainOk(frame: Uint8Array): Record<string, unknown> {
  const { type, ...rest } = decodeMessage(frame);
  assert.equal(type, MessageType.OK);
  return Object.fromEntries(Object.entries(rest).filter(([, v]) => v !== undefined));
}
