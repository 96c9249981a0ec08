/**
 * Session benchmark: RUN round trips between two processes over TCP loopback, and
 * STREAM_DATA throughput from one device. The server side (this process) is a bare
 * session engine on a TCP listener; the device is the SDK in a child process.
 *
 *   node bench/dist/session.bench.js [--json file]
 */
import { type ChildProcess, fork } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import * as net from 'node:net';
import { cpus, loadavg } from 'node:os';
import { fileURLToPath } from 'node:url';
import { Session } from '@iotmp/protocol';
import { SocketTransport } from '@iotmp/protocol/node';

const RUN_MS = 3000;

interface RpcResult {
  name: string;
  concurrency: number;
  callsPerSecond: number;
  p50us: number;
  p99us: number;
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] as number;
}

async function startServer(onSession: (s: Session) => void): Promise<{ port: number; close: () => void }> {
  const server = net.createServer((socket) => {
    const session: Session = new Session({
      role: 'server',
      transport: new SocketTransport(socket),
      authenticate: (info) => info.credential === 'bench-secret',
      onOpen: () => onSession(session),
    });
    session.start();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { port: (server.address() as net.AddressInfo).port, close: () => server.close() };
}

function startDevice(port: number, mode: string): Promise<ChildProcess> {
  const child = fork(fileURLToPath(new URL('./session-device.js', import.meta.url)), [String(port), mode], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  return new Promise((resolve, reject) => {
    child.once('message', (m) => (m === 'connected' ? resolve(child) : reject(new Error(String(m)))));
    child.once('exit', (code) => reject(new Error(`device process exited with ${code}`)));
  });
}

async function rpc(session: Session, concurrency: number): Promise<RpcResult> {
  const latencies: number[] = [];
  let calls = 0;
  // Warm-up.
  for (let i = 0; i < 2000; i++) await session.run('sum', { a: i, b: 1 });
  const start = performance.now();
  const deadline = start + RUN_MS;
  async function worker(): Promise<void> {
    let i = 0;
    while (performance.now() < deadline) {
      const t0 = performance.now();
      const out = (await session.run('sum', { a: i, b: 1 })) as { result: number };
      latencies.push(performance.now() - t0);
      if (out.result !== i + 1) throw new Error('wrong answer');
      i++;
      calls++;
    }
  }
  await Promise.all(Array.from({ length: concurrency }, worker));
  const elapsed = performance.now() - start;
  latencies.sort((a, b) => a - b);
  return {
    name: `RUN round trip, concurrency ${concurrency}`,
    concurrency,
    callsPerSecond: (calls / elapsed) * 1000,
    p50us: percentile(latencies, 0.5) * 1000,
    p99us: percentile(latencies, 0.99) * 1000,
  };
}

async function streamThroughput(
  session: Session,
  device: ChildProcess,
): Promise<{ messagesPerSecond: number }> {
  let count = 0;
  let first = 0;
  await session.openStream(
    'sample',
    {},
    {
      onData: () => {
        if (count++ === 0) first = performance.now();
      },
    },
  );
  device.send('start-stream');
  await new Promise((r) => setTimeout(r, RUN_MS + 500));
  const elapsed = performance.now() - first;
  return { messagesPerSecond: (count / elapsed) * 1000 };
}

async function main(): Promise<void> {
  const jsonAt = process.argv.indexOf('--json');
  const jsonFile = jsonAt > 0 ? process.argv[jsonAt + 1] : undefined;
  const cpu = cpus();
  console.log(
    `# IOTMP session benchmark\nmachine: ${cpu[0]?.model ?? 'unknown'}, ${cpu.length} cores, node ${process.version}, load average ${loadavg()[0]?.toFixed(2)}`,
  );
  console.log('server: session engine in this process; device: SDK in a child process; TCP loopback\n');

  let sessionResolve: (s: Session) => void = () => {};
  let next = new Promise<Session>((r) => {
    sessionResolve = r;
  });
  const server = await startServer((s) => sessionResolve(s));

  const rpcDevice = await startDevice(server.port, 'rpc');
  const rpcSession = await next;
  const results = [await rpc(rpcSession, 1), await rpc(rpcSession, 100)];
  rpcDevice.send('stop');

  next = new Promise<Session>((r) => {
    sessionResolve = r;
  });
  const streamDevice = await startDevice(server.port, 'stream');
  const streamSession = await next;
  const stream = await streamThroughput(streamSession, streamDevice);
  streamDevice.send('stop');
  server.close();

  console.log('| case | calls/s | p50 | p99 |');
  console.log('|---|---:|---:|---:|');
  for (const r of results) {
    console.log(
      `| ${r.name} | ${Math.round(r.callsPerSecond).toLocaleString('en-US')} | ${r.p50us.toFixed(0)} µs | ${r.p99us.toFixed(0)} µs |`,
    );
  }
  console.log(
    `\nSTREAM_DATA from one device (sensor sample): ${Math.round(stream.messagesPerSecond).toLocaleString('en-US')} messages/s`,
  );
  const c1 = results[0] as RpcResult;
  const c100 = results[1] as RpcResult;
  console.log(
    `\ntargets: concurrency 1 p50 < 100 µs: ${c1.p50us < 100 ? 'MET' : 'NOT MET'} (${c1.p50us.toFixed(0)} µs); concurrency 100 >= 40,000 calls/s: ${c100.callsPerSecond >= 40_000 ? 'MET' : 'NOT MET'} (${Math.round(c100.callsPerSecond).toLocaleString('en-US')})`,
  );
  if (jsonFile) {
    writeFileSync(
      jsonFile,
      JSON.stringify(
        { machine: { cpu: cpu[0]?.model, cores: cpu.length, node: process.version }, rpc: results, stream },
        null,
        2,
      ),
    );
  }
  setTimeout(() => process.exit(0), 200).unref();
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
