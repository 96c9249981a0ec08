/**
 * Aedes (the Node.js MQTT broker) in its own process for the peer benchmark, with its
 * defaults (in-memory persistence and message queue) behind a plain net.Server:
 *
 *   node --expose-gc bench/dist/peers-aedes.js <port>
 *
 * Over IPC it reports `{op: 'listening'}` once it accepts connections and answers
 * `{op: 'memory'}` with process.memoryUsage() after a forced GC (when --expose-gc is set).
 */
import * as net from 'node:net';
import { Aedes } from 'aedes';

const port = Number(process.argv[2]);
const aedes = await Aedes.createBroker();
// Nagle off, as the other systems (Mosquitto: set_tcp_nodelay; our server) have it.
const server = net.createServer({ noDelay: true }, aedes.handle);
server.on('error', (err) => {
  console.error(`aedes: ${err.message}`);
  process.exit(1);
});
server.listen(port, '127.0.0.1', () => process.send?.({ op: 'listening' }));

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
          clients: aedes.connectedClients,
        }),
      300,
    );
  }
});
process.on('disconnect', () => {
  server.close();
  aedes.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
});
