/**
 * The reference client sends IOTMP bytes in WebSocket TEXT frames (spec Appendix C). The
 * server side must treat their content as the byte stream, whatever the bytes are.
 */
import assert from 'node:assert/strict';
import { after, before, it } from 'node:test';
import { decodeMessage, encodeMessage, MessageType } from '@iotmp/protocol';
import { hexToBytes } from '@iotmp/spec-vectors';
import WebSocket from 'ws';
import { TestServer } from './test-server.js';

let server: TestServer;
before(async () => {
  server = await new TestServer().start();
});
after(() => server.stop());

it('accepts CONNECT and requests in TEXT frames carrying raw, non-UTF-8 bytes, split anywhere', async () => {
  const ws = new WebSocket(`ws://127.0.0.1:${server.wsPort}/iotmp`, 'iotmp');
  const received: Uint8Array[] = [];
  const gotFrame = new Promise<void>((resolve) => {
    ws.on('message', (data: Buffer) => {
      received.push(new Uint8Array(data));
      resolve();
    });
  });
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('error', reject);
  });
  assert.equal(ws.protocol, 'iotmp');
  const connect = encodeMessage({
    type: MessageType.CONNECT,
    streamId: 0x8b8b,
    payload: ['user1', 'sensor1', 'secret'],
  });
  // 0x8b is not valid UTF-8 on its own: a server validating TEXT frames would drop us.
  ws.send(connect.subarray(0, 5), { binary: false });
  ws.send(connect.subarray(5), { binary: false });
  await gotFrame;
  const ok = decodeMessage(received[0] as Uint8Array);
  assert.equal(ok.type, MessageType.OK);
  assert.equal(ok.streamId, 0x8b8b);
  // A keep-alive in a text frame is echoed.
  const echo = new Promise<Uint8Array>((resolve) =>
    ws.once('message', (d: Buffer) => resolve(new Uint8Array(d))),
  );
  ws.send(hexToBytes('0500'), { binary: false });
  assert.deepEqual([...(await echo)], [5, 0]);
  ws.close();
});
