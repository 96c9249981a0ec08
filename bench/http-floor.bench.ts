/**
 * The floor under the REST benchmark: what HTTP alone costs on this machine. A server process
 * answers GET with a fixed small JSON body (no device behind it), once with fastify (the
 * server's framework) and once with bare node:http; the same minimal keep-alive client as the
 * server benchmark (RawHttpConnection) drives it at concurrency 1 and 100.
 *
 *   node bench/dist/http-floor.bench.js [--seconds 5]
 *
 * The REST call → device → response case does all of this plus a device round trip (two more
 * socket writes and reads per call), so its calls/s cannot exceed these numbers.
 */
import { fork } from 'node:child_process';
import { cpus, loadavg } from 'node:os';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { machineCpuMs, percentile, processCpuMs, RawHttpConnection } from './server-harness.js';

const { values: args } = parseArgs({
  options: { seconds: { type: 'string', default: '5' }, serve: { type: 'string' } },
});
const BODY = JSON.stringify({ celsius: 23.5, humidity: 60 });

async function serve(kind: string): Promise<void> {
  let port: number;
  if (kind === 'fastify') {
    const { default: Fastify } = await import('fastify');
    const app = Fastify({ logger: false });
    app.get('/v3/users/:user/devices/:device/resources/*', async (_req, reply) => {
      reply.type('application/json; charset=utf-8');
      return BODY;
    });
    await app.listen({ port: 0, host: '127.0.0.1' });
    port = (app.server.address() as { port: number }).port;
  } else {
    const http = await import('node:http');
    const server = http.createServer((_req, res) => {
      res.writeHead(200, {
        'content-type': 'application/json; charset=utf-8',
        'content-length': BODY.length,
      });
      res.end(BODY);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    port = (server.address() as { port: number }).port;
  }
  process.send?.({ port });
}

async function measure(port: number, pid: number, concurrency: number, seconds: number) {
  const conns = await Promise.all(Array.from({ length: concurrency }, () => RawHttpConnection.connect(port)));
  const request = Buffer.from(
    `GET /v3/users/bench/devices/d1/resources/sample HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer x\r\n\r\n`,
  );
  // Warm-up, then the measured window.
  const run = async (ms: number, latencies: number[] | null) => {
    const end = performance.now() + ms;
    let calls = 0;
    await Promise.all(
      conns.map(async (c) => {
        while (performance.now() < end) {
          const t = performance.now();
          await c.request(request);
          latencies?.push(performance.now() - t);
          calls++;
        }
      }),
    );
    return calls;
  };
  await run(1000, null);
  const latencies: number[] = [];
  const cpu0 = processCpuMs(pid);
  const m0 = machineCpuMs();
  const t0 = performance.now();
  const calls = await run(seconds * 1000, latencies);
  const elapsed = performance.now() - t0;
  const serverCpu = ((processCpuMs(pid) - cpu0) / elapsed) * 100;
  const m1 = machineCpuMs();
  for (const c of conns) c.close();
  latencies.sort((a, b) => a - b);
  return {
    callsPerSecond: (calls * 1000) / elapsed,
    p50: percentile(latencies, 0.5),
    p99: percentile(latencies, 0.99),
    serverCpu,
    machineBusy: ((m1.processes + m1.interrupts - m0.processes - m0.interrupts) / elapsed) * 100,
  };
}

async function main(): Promise<void> {
  if (args.serve) return serve(args.serve);
  const seconds = Number(args.seconds);
  console.log('# HTTP floor: a fixed JSON answer, no device behind it');
  console.log(
    `machine: ${cpus()[0]?.model ?? 'unknown'}, ${cpus().length} cores, node ${process.version}, load average ${loadavg()
      .map((l) => l.toFixed(2))
      .join(' ')}; client: minimal keep-alive HTTP client in this process`,
  );
  console.log(
    '\n| server | concurrency | calls/s | p50 | p99 | server CPU | machine busy, all processes (of 200 %) |',
  );
  console.log('|---|---:|---:|---:|---:|---:|---:|');
  for (const kind of ['fastify', 'node:http']) {
    const child = fork(fileURLToPath(import.meta.url), ['--serve', kind === 'fastify' ? 'fastify' : 'http']);
    const port = await new Promise<number>((resolve) =>
      child.once('message', (m: { port: number }) => resolve(m.port)),
    );
    for (const c of [1, 100]) {
      const r = await measure(port, child.pid as number, c, seconds);
      console.log(
        `| ${kind} | ${c} | ${Math.round(r.callsPerSecond).toLocaleString('en-US')} | ${Math.round(r.p50 * 1000)} µs | ${Math.round(r.p99 * 1000)} µs | ${Math.round(r.serverCpu)} % | ${Math.round(r.machineBusy)} % |`,
      );
    }
    child.kill();
  }
}

await main();
