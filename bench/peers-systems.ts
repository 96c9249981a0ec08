/**
 * The systems the peer benchmark compares, each started as its own process on free loopback
 * ports: Mosquitto (the Debian package, a generated config), Aedes (bench/peers-aedes.ts),
 * our server (packages/server, default settings, SQLite storage; through startServerProcess)
 * and the Node.js floor for our wire exchange (bench/peers-floor.ts).
 */
import { type ChildProcess, fork, spawn, spawnSync } from 'node:child_process';
import { createWriteStream, readFileSync, writeFileSync } from 'node:fs';
import * as net from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { DeviceProtocol } from './peers-protocol.js';
import {
  freePort,
  Inspector,
  note,
  procStatusKb,
  RestClient,
  type ServerProcess,
  seedDevices,
  sleep,
  startServerProcess,
} from './server-harness.js';
import { BENCH_USER } from './sim-protocol.js';

export type PeerId = 'mosquitto' | 'aedes' | 'iotmp' | 'floor';
export const PEER_IDS: readonly PeerId[] = ['mosquitto', 'aedes', 'iotmp', 'floor'];
export const PEER_NAMES: Record<PeerId, string> = {
  mosquitto: 'Mosquitto',
  aedes: 'Aedes',
  iotmp: 'iotmp',
  floor: 'Node.js floor',
};

export interface MemoryReading {
  rssKb: number;
  /** V8 heap used (Node.js systems), bytes. */
  heapUsed?: number;
  /** Read after a forced GC. */
  gc: boolean;
}

export interface PeerSystem {
  readonly id: PeerId;
  /** Name and version, e.g. "Mosquitto 2.0.11". */
  readonly label: string;
  readonly protocol: DeviceProtocol;
  readonly pid: number;
  /** Where devices connect (MQTT or IOTMP over TCP). */
  readonly devicePort: number;
  /** How it was started, for the report. */
  readonly how: string;
  memory(): Promise<MemoryReading>;
  /** Connected devices as the system counts them, when it can tell. */
  connectedDevices(): Promise<number | undefined>;
  stop(): Promise<void>;
}

export interface IotmpSystem extends PeerSystem {
  readonly id: 'iotmp';
  readonly server: ServerProcess;
  readonly rest: RestClient;
  readonly inspector: Inspector | undefined;
}

/** The Node.js floor: speaks IOTMP to devices, HTTP and WebSocket to the application. */
export interface FloorSystem extends PeerSystem {
  readonly id: 'floor';
  readonly httpPort: number;
}

const RAISE_FILES = (n: number) =>
  `ulimit -n ${n} 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$0" "$@"`;

/** Resolves once something accepts TCP connections on 127.0.0.1:port. */
async function waitForPort(
  port: number,
  what: string,
  exited: () => boolean,
  timeoutMs = 15_000,
): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    if (exited()) throw new Error(`${what} exited during start-up`);
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect({ host: '127.0.0.1', port });
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (performance.now() > deadline)
      throw new Error(`${what} did not listen on ${port} within ${timeoutMs} ms`);
    await sleep(50);
  }
}

function stopChild(child: ChildProcess, exited: Promise<unknown>, graceMs = 10_000): Promise<void> {
  if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
  return exited.then(() => clearTimeout(timer));
}

// --- Mosquitto ------------------------------------------------------------------------------

export const MOSQUITTO = '/usr/sbin/mosquitto';

export function mosquittoVersion(path = MOSQUITTO): string {
  const r = spawnSync(path, ['-h'], { encoding: 'utf8' });
  const m = /mosquitto version (\S+)/.exec(`${r.stdout}${r.stderr}`);
  return m ? (m[1] as string) : 'unknown';
}

/**
 * A private Mosquitto: one listener on 127.0.0.1, anonymous clients, no persistence, no
 * connection limit, errors and warnings only in its log, TCP_NODELAY (as the other systems).
 */
export async function startMosquitto(dir: string, path = MOSQUITTO): Promise<PeerSystem> {
  const port = await freePort();
  const conf = join(dir, 'mosquitto.conf');
  const logFile = join(dir, 'mosquitto.log');
  writeFileSync(
    conf,
    [
      `listener ${port} 127.0.0.1`,
      'allow_anonymous true',
      'persistence false',
      'max_connections -1',
      'set_tcp_nodelay true',
      'log_dest stderr',
      'log_type error',
      'log_type warning',
      '',
    ].join('\n'),
  );
  const child = spawn('/bin/sh', ['-c', RAISE_FILES(65_536), path, '-c', conf], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const log = createWriteStream(logFile);
  child.stdout?.pipe(log, { end: false });
  child.stderr?.pipe(log, { end: false });
  const exited = new Promise((resolve) => child.once('exit', resolve));
  await waitForPort(port, 'mosquitto', () => child.exitCode !== null);
  const pid = child.pid as number;
  return {
    id: 'mosquitto',
    label: `Mosquitto ${mosquittoVersion(path)}`,
    protocol: 'mqtt',
    pid,
    devicePort: port,
    how: `${path} -c ${conf} (${readFileSync(conf, 'utf8').trim().split('\n').join('; ')})`,
    async memory() {
      return { rssKb: procStatusKb(pid, 'VmRSS'), gc: false };
    },
    async connectedDevices() {
      return undefined;
    },
    async stop() {
      await stopChild(child, exited);
      log.end();
    },
  };
}

// --- Aedes ----------------------------------------------------------------------------------

export function aedesVersion(): string {
  try {
    const main = fileURLToPath(import.meta.resolve('aedes'));
    return (JSON.parse(readFileSync(join(dirname(main), 'package.json'), 'utf8')) as { version: string })
      .version;
  } catch {
    return 'unknown';
  }
}

export async function startAedes(): Promise<PeerSystem> {
  const port = await freePort();
  const script = fileURLToPath(new URL('./peers-aedes.js', import.meta.url));
  const child = fork(script, [String(port)], {
    execArgv: ['--expose-gc'],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const exited = new Promise((resolve) => child.once('exit', resolve));
  type Reply = { op: string; gc?: boolean; usage?: NodeJS.MemoryUsage; clients?: number };
  let waiter: ((m: Reply) => void) | null = null;
  const listening = new Promise<void>((resolve, reject) => {
    child.on('message', (m: Reply) => {
      if (m.op === 'listening') resolve();
      else if (waiter) {
        const w = waiter;
        waiter = null;
        w(m);
      }
    });
    child.once('exit', (code) => reject(new Error(`aedes exited with ${code} during start-up`)));
  });
  await listening;
  const ask = () =>
    new Promise<Reply>((resolve) => {
      waiter = resolve;
      child.send({ op: 'memory' });
    });
  const pid = child.pid as number;
  return {
    id: 'aedes',
    label: `Aedes ${aedesVersion()}`,
    protocol: 'mqtt',
    pid,
    devicePort: port,
    how: `node --expose-gc bench/dist/peers-aedes.js ${port} (Aedes.createBroker() defaults, net.Server with noDelay)`,
    async memory() {
      const r = await ask();
      return { rssKb: procStatusKb(pid, 'VmRSS'), heapUsed: r.usage?.heapUsed, gc: r.gc === true };
    },
    async connectedDevices() {
      return (await ask()).clients;
    },
    async stop() {
      if (child.connected) child.disconnect();
      await stopChild(child, exited);
    },
  };
}

// --- the Node.js floor -----------------------------------------------------------------------

export async function startFloor(): Promise<FloorSystem> {
  const script = fileURLToPath(new URL('./peers-floor.js', import.meta.url));
  const child = fork(script, [], {
    execArgv: ['--expose-gc'],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const exited = new Promise((resolve) => child.once('exit', resolve));
  type Reply = {
    op: string;
    devicePort?: number;
    httpPort?: number;
    gc?: boolean;
    usage?: NodeJS.MemoryUsage;
    clients?: number;
  };
  let waiter: ((m: Reply) => void) | null = null;
  const listening = new Promise<Reply>((resolve, reject) => {
    child.on('message', (m: Reply) => {
      if (m.op === 'listening') resolve(m);
      else if (waiter) {
        const w = waiter;
        waiter = null;
        w(m);
      }
    });
    child.once('exit', (code) => reject(new Error(`the floor exited with ${code} during start-up`)));
  });
  const { devicePort, httpPort } = await listening;
  const ask = () =>
    new Promise<Reply>((resolve) => {
      waiter = resolve;
      child.send({ op: 'memory' });
    });
  const pid = child.pid as number;
  return {
    id: 'floor',
    label: `Node.js ${process.version} floor`,
    protocol: 'iotmp',
    pid,
    devicePort: devicePort as number,
    httpPort: httpPort as number,
    how: `node --expose-gc bench/dist/peers-floor.js (node:net devices + node:http + ws, pre-encoded frames, no framework, protocol engine, storage or authentication; HTTP on ${httpPort})`,
    async memory() {
      const r = await ask();
      return { rssKb: procStatusKb(pid, 'VmRSS'), heapUsed: r.usage?.heapUsed, gc: r.gc === true };
    },
    async connectedDevices() {
      return (await ask()).clients;
    },
    async stop() {
      if (child.connected) child.disconnect();
      await stopChild(child, exited);
    },
  };
}

// --- our server -------------------------------------------------------------------------------

export interface IotmpStartOptions {
  mainJs: string;
  dataDir: string;
  /** Devices 0 … seed-1 written into its database (low-cost hash) before the measured start. */
  seed: number;
  /** With the inspector (forced GC before memory readings, CPU profiles). */
  inspect: boolean;
  extraNodeFlags: string[];
}

export async function startIotmp(o: IotmpStartOptions): Promise<IotmpSystem> {
  const adminPassword = `bench-${Math.random().toString(36).slice(2)}`;
  // The server holds its database exclusively: devices are seeded between a first start
  // (which creates the schema and the user) and the measured one.
  const first = await startServerProcess({
    mainJs: o.mainJs,
    dataDir: o.dataDir,
    adminPassword,
    logFile: join(o.dataDir, 'server-init.log'),
    nodeFlags: [],
    openFiles: 1024,
  });
  await first.stop();
  seedDevices(
    join(o.dataDir, 'iotmp.db'),
    Array.from({ length: o.seed }, (_, i) => i),
  );
  const nodeFlags = [...(o.inspect ? ['--inspect=127.0.0.1:0'] : []), ...o.extraNodeFlags];
  const server = await startServerProcess({
    mainJs: o.mainJs,
    dataDir: o.dataDir,
    adminPassword,
    logFile: join(o.dataDir, 'server.log'),
    nodeFlags,
    openFiles: 65_536,
  });
  const rest = new RestClient(server.origin);
  await rest.login(BENCH_USER, adminPassword);
  let inspector: Inspector | undefined;
  if (server.inspectorUrl) inspector = await Inspector.connect(server.inspectorUrl);
  else if (o.inspect)
    note('warning: no inspector URL from our server; its memory is read without a forced GC');
  const version = (
    JSON.parse(readFileSync(join(dirname(o.mainJs), '../../package.json'), 'utf8')) as {
      version: string;
    }
  ).version;
  return {
    id: 'iotmp',
    label: `iotmp ${version}`,
    protocol: 'iotmp',
    pid: server.pid,
    devicePort: server.tcpPort,
    how: `node ${nodeFlags.join(' ')} ${o.mainJs} (default settings, SQLite in ${o.dataDir}; ${o.seed} devices seeded)`,
    server,
    rest,
    inspector,
    async memory() {
      if (inspector) {
        await inspector.gc();
        await sleep(300);
        const m = await inspector.memoryUsage();
        return { rssKb: procStatusKb(server.pid, 'VmRSS'), heapUsed: m.heapUsed, gc: true };
      }
      return { rssKb: procStatusKb(server.pid, 'VmRSS'), gc: false };
    },
    connectedDevices() {
      return rest.connectedDevices();
    },
    async stop() {
      inspector?.close();
      await rest.close().catch(() => undefined);
      const code = await server.stop();
      if (code !== 0) note(`our server exited with ${code}; its log: ${server.logFile}`);
    },
  };
}
