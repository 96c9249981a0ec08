/**
 * The device half of the session benchmark, run as its own process:
 *   node bench/dist/session-device.js <port> <mode>
 * mode "rpc": serves resources and waits; mode "stream": pushes STREAM_DATA as fast as the
 * connection takes it once the server opens a stream on "sample".
 */
import { Device } from '@iotmp/device';

const port = Number(process.argv[2]);
const mode = process.argv[3] ?? 'rpc';
const SAMPLE = { temperature: 23.5, humidity: 60, pressure: 1013, label: 'outdoor' };

const device = new Device({
  host: '127.0.0.1',
  port,
  transport: 'tcp',
  username: 'bench',
  deviceId: 'bench-device',
  credential: 'bench-secret',
  reconnect: false,
});

device.resource('sum', {
  input: true,
  output: (v) => ({ result: (v as { a: number }).a + (v as { b: number }).b }),
});
device.resource('temperature', { output: () => SAMPLE });

let streaming = false;
device.resource('sample', {
  output: () => SAMPLE,
  streamEcho: false,
});

/** Pushes batches while the outgoing buffer has room; yields to the event loop between batches. */
function pump(): void {
  if (!streaming || !device.connected) return;
  for (let i = 0; i < 256 && device.bufferedAmount < 256 * 1024; i++) device.stream('sample', SAMPLE);
  setImmediate(pump);
}

process.on('message', (msg) => {
  if (msg === 'start-stream') {
    streaming = true;
    pump();
  } else if (msg === 'stop') {
    streaming = false;
    void device.close().then(() => process.exit(0));
  }
});

device
  .connect()
  .then(() => process.send?.('connected'))
  .catch((err: unknown) => {
    console.error('device could not connect:', err);
    process.exit(1);
  });
void mode;
