/**
 * Bucket write benchmark (`npm run bench:buckets`). Target: ≥ 50,000 bucket records/s
 * sustained from 1,000 devices, every record acknowledged only once durable.
 *
 * 1. In process: BucketStore.write from 1,000 closed-loop writers (one bucket each, a small
 *    window of writes in flight each) on a SQLite database as the server opens it (WAL,
 *    synchronous = FULL): the storage alone.
 * 2. End to end: the real server process; 1,000 simulated devices in child processes (one
 *    socket each, pre-encoded frames, this same file run with `sim`) send RUN code 5 (write
 *    bucket) with a stream id, closed loop with a window each, and count the OKs. Reported:
 *    records/s acknowledged, records in the database at the end (counted after the server
 *    stopped), server CPU, p50/p99 acknowledgement latency.
 *
 * Options: --devices N (1000), --window N (4 writes in flight per device), --seconds N (10),
 * --sims N (2 simulator processes), --fire RATE (fire-and-forget writes at RATE records/s
 * instead of the closed loop; throughput is then what the server made durable, from its
 * metrics), --only store|e2e, --profile DIR (a CPU profile of the server
 * during the measured seconds goes there; its summary to stderr).
 */
import { type ChildProcess, fork } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as net from 'node:net';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { encodeMessage, MessageType } from '@iotmp/protocol';
import { BucketStore, openDatabase } from '@iotmp/server';
import {
  type CpuProfile,
  Inspector,
  machineCpuMs,
  note,
  percentile,
  processCpuMs,
  RestClient,
  seedDevices,
  sleep,
  startServerProcess,
  summarizeProfile,
} from './server-harness.js';
import { BENCH_USER, deviceCredential, deviceName, deviceSourceAddress, SAMPLE } from './sim-protocol.js';

const TARGET = 50_000;
/** Server resource code 5: write bucket (spec §11.1). */
const WRITE_BUCKET = 5;

/**
 * Records in a stopped server's database: a BucketStore opened on it reads the log, moves it
 * into bucket_data, and the rows are counted.
 */
async function countRecords(file: string): Promise<number> {
  const db = openDatabase(file);
  try {
    const store = new BucketStore(db, { compactIntervalMs: 0, sweepIntervalMs: 0 });
    await store.compact();
    await store.close();
    return (db.prepare('SELECT count(*) AS n FROM bucket_data').get() as { n: number }).n;
  } finally {
    db.close();
  }
}

function bucketName(i: number): string {
  return `bucket-${i}`;
}

/** Keeps at most `capacity` latency samples, evenly thinned (every k-th once full). */
class LatencySamples {
  private readonly values: Float64Array;
  private n = 0;
  private seen = 0;
  private stride = 1;

  constructor(private readonly capacity = 200_000) {
    this.values = new Float64Array(capacity);
  }

  add(ms: number): void {
    if (this.seen++ % this.stride !== 0) return;
    if (this.n === this.capacity) {
      // Keep every second sample, take half as many from now on.
      for (let i = 0; i < this.capacity / 2; i++) this.values[i] = this.values[2 * i] as number;
      this.n = this.capacity / 2;
      this.stride *= 2;
    }
    this.values[this.n++] = ms;
  }

  sorted(): Float64Array {
    return this.values.slice(0, this.n).sort();
  }

  toArray(): number[] {
    return Array.from(this.values.subarray(0, this.n));
  }

  reset(): void {
    this.n = 0;
    this.seen = 0;
    this.stride = 1;
  }
}

// --- simulator (child process) -----------------------------------------------------------

type SimCommand =
  /** `fireRate` > 0: fire-and-forget writes (no stream id) at this many records/s in all. */
  | { op: 'init'; port: number; indices: number[]; window: number; fireRate: number }
  | { op: 'go' }
  | { op: 'mark' }
  | { op: 'stop' };

type SimEvent =
  | { op: 'ready'; connected: number; errors: string[] }
  | { op: 'mark'; acked: number; sent: number; errors: number; cpuMs: number }
  | { op: 'stopped'; acked: number; errors: number; inFlight: number; cpuMs: number; latenciesMs: number[] }
  | { op: 'error'; message: string };

function toBuffer(bytes: Uint8Array): Buffer {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function simulator(): void {
  const send = (e: SimEvent) => process.send?.(e);
  const latencies = new LatencySamples(100_000);
  let running = false;
  let acked = 0;
  let errors = 0;
  /** Fire-and-forget writes sent. */
  let sent = 0;
  let fireRate = 0;
  let fireTimer: NodeJS.Timeout | undefined;
  const writers: SimWriter[] = [];
  const cpuMs = () => {
    const c = process.cpuUsage();
    return (c.user + c.system) / 1000;
  };

  class SimWriter {
    sock: net.Socket | null = null;
    private carry: Buffer | null = null;
    /** One pre-encoded RUN per slot; slot k uses stream id k + 1. */
    private readonly frames: Buffer[];
    /** The same write without a stream id (fire-and-forget), repeated for one write() of many. */
    private readonly fireFrames: Buffer;
    private readonly fireFrameLength: number;
    private readonly sentAt: Float64Array;
    inFlight = 0;
    private onLogin: ((ok: boolean) => void) | null = null;
    open = false;

    constructor(
      readonly index: number,
      window: number,
    ) {
      const bucket = bucketName(index);
      this.frames = Array.from({ length: window }, (_, k) =>
        toBuffer(
          encodeMessage({
            type: MessageType.RUN,
            streamId: k + 1,
            resource: WRITE_BUCKET,
            parameters: bucket,
            payload: SAMPLE,
          }),
        ),
      );
      this.sentAt = new Float64Array(window);
      const fire = toBuffer(
        encodeMessage({ type: MessageType.RUN, resource: WRITE_BUCKET, parameters: bucket, payload: SAMPLE }),
      );
      this.fireFrameLength = fire.length;
      this.fireFrames = Buffer.concat(Array.from({ length: 16 }, () => fire));
    }

    /** Sends `n` (≤ 16) fire-and-forget writes in one socket write. */
    fire(n: number): void {
      if (!this.sock || !this.open || this.sock.writableLength > 64 * 1024) return;
      this.sock.write(this.fireFrames.subarray(0, n * this.fireFrameLength));
      sent += n;
    }

    login(port: number): Promise<boolean> {
      return new Promise((resolve) => {
        this.onLogin = resolve;
        const sock = net.connect({
          host: '127.0.0.1',
          port,
          localAddress: deviceSourceAddress(this.index),
          noDelay: true,
        });
        this.sock = sock;
        sock.on('connect', () =>
          sock.write(
            toBuffer(
              encodeMessage({
                type: MessageType.CONNECT,
                streamId: 1,
                parameters: { ka: 1800 },
                payload: [BENCH_USER, deviceName(this.index), deviceCredential(this.index)],
              }),
            ),
          ),
        );
        sock.on('data', (chunk: Buffer) => this.onData(chunk));
        sock.on('error', () => this.loginDone(false));
        sock.on('close', () => {
          this.open = false;
          this.loginDone(false);
        });
      });
    }

    private loginDone(ok: boolean): void {
      const cb = this.onLogin;
      this.onLogin = null;
      cb?.(ok);
    }

    /** Fills the window. */
    start(): void {
      if (!this.sock || !this.open) return;
      const now = performance.now();
      for (let k = 0; k < this.frames.length; k++) this.sentAt[k] = now;
      this.inFlight = this.frames.length;
      this.sock.write(Buffer.concat(this.frames));
    }

    private onData(chunk: Buffer): void {
      let buf = chunk;
      if (this.carry) {
        buf = Buffer.concat([this.carry, chunk]);
        this.carry = null;
      }
      const out: Buffer[] = [];
      const n = buf.length;
      let p = 0;
      while (p < n) {
        let q = p;
        let type = 0;
        let size = 0;
        let shift = 0;
        let b = 0x80;
        while (q < n && b >= 0x80) {
          b = buf[q++] as number;
          type += (b & 0x7f) * 2 ** shift;
          shift += 7;
        }
        if (b >= 0x80) break;
        b = 0x80;
        shift = 0;
        while (q < n && b >= 0x80) {
          b = buf[q++] as number;
          size += (b & 0x7f) * 2 ** shift;
          shift += 7;
        }
        if (b >= 0x80 || q + size > n) break;
        const end = q + size;
        if (!this.open) {
          if (type === MessageType.OK) {
            this.open = true;
            this.loginDone(true);
          } else if (type === MessageType.ERROR) this.loginDone(false);
        } else if (type === MessageType.OK || type === MessageType.ERROR) {
          // The stream id is field 1 (key 0x08), first: the server writes fields in order.
          let sid = 0;
          if (q < end && buf[q] === 0x08) {
            let s = 0;
            for (let r = q + 1, sh = 0; r < end; r++, sh += 7) {
              const c = buf[r] as number;
              s += (c & 0x7f) * 2 ** sh;
              if (c < 0x80) break;
            }
            sid = s;
          }
          const slot = sid - 1;
          if (slot >= 0 && slot < this.frames.length) {
            if (type === MessageType.OK) acked++;
            else errors++;
            const now = performance.now();
            latencies.add(now - (this.sentAt[slot] as number));
            if (running) {
              this.sentAt[slot] = now;
              out.push(this.frames[slot] as Buffer);
            } else this.inFlight--;
          }
        }
        p = end;
      }
      if (p < n) this.carry = Buffer.from(buf.subarray(p));
      if (out.length > 0 && this.sock)
        this.sock.write(out.length === 1 ? (out[0] as Buffer) : Buffer.concat(out));
    }
  }

  process.on('message', (cmd: SimCommand) => {
    switch (cmd.op) {
      case 'init': {
        fireRate = cmd.fireRate;
        const errorsSeen: string[] = [];
        let next = 0;
        let connected = 0;
        const worker = async () => {
          while (next < cmd.indices.length) {
            const w = new SimWriter(cmd.indices[next++] as number, cmd.window);
            if (await w.login(cmd.port)) {
              writers.push(w);
              connected++;
            } else if (errorsSeen.length < 5) errorsSeen.push(`${deviceName(w.index)}: login failed`);
          }
        };
        Promise.all(Array.from({ length: 32 }, worker)).then(
          () => send({ op: 'ready', connected, errors: errorsSeen }),
          (err: unknown) => send({ op: 'error', message: String(err) }),
        );
        return;
      }
      case 'go': {
        running = true;
        if (fireRate <= 0) {
          for (const w of writers) w.start();
          return;
        }
        // Paced: every 20 ms what is due, spread round-robin, a few frames per device write.
        const t0 = performance.now();
        let due = 0;
        let rr = 0;
        fireTimer = setInterval(() => {
          due = Math.floor(((performance.now() - t0) / 1000) * fireRate);
          let left = due - sent;
          let idle = 0;
          while (left > 0 && writers.length > 0 && idle < writers.length) {
            const w = writers[rr++ % writers.length] as SimWriter;
            const before = sent;
            w.fire(Math.min(left, Math.max(1, Math.ceil(left / writers.length)), 16));
            if (sent === before) idle++;
            left -= sent - before;
          }
        }, 20);
        return;
      }
      case 'mark':
        latencies.reset();
        send({ op: 'mark', acked, sent, errors, cpuMs: cpuMs() });
        return;
      case 'stop': {
        running = false;
        clearInterval(fireTimer);
        const deadline = performance.now() + 10_000;
        const check = () => {
          const inFlight = writers.reduce((s, w) => s + (w.open ? w.inFlight : 0), 0);
          if (inFlight === 0 || performance.now() > deadline) {
            send({
              op: 'stopped',
              acked,
              errors,
              inFlight,
              cpuMs: cpuMs(),
              latenciesMs: latencies.toArray(),
            });
            for (const w of writers) w.sock?.destroy();
          } else setTimeout(check, 20);
        };
        check();
        return;
      }
    }
  });
  process.on('disconnect', () => process.exit(0));
}

class Sim {
  private readonly child: ChildProcess;
  private readonly waiting = new Map<string, (e: SimEvent) => void>();

  constructor() {
    this.child = fork(fileURLToPath(import.meta.url), ['sim'], {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    this.child.on('message', (e: SimEvent) => {
      if (e.op === 'error') note(`simulator: ${e.message}`);
      const w = this.waiting.get(e.op);
      if (w) {
        this.waiting.delete(e.op);
        w(e);
      }
    });
  }

  ask<T extends SimEvent>(cmd: SimCommand, reply: T['op']): Promise<T> {
    return new Promise((resolve) => {
      this.waiting.set(reply, resolve as (e: SimEvent) => void);
      this.child.send(cmd);
    });
  }

  tell(cmd: SimCommand): void {
    this.child.send(cmd);
  }

  kill(): void {
    if (this.child.connected) this.child.disconnect();
    this.child.kill();
  }
}

// --- the two cases -------------------------------------------------------------------------

interface Result {
  recordsPerSecond: number;
  acknowledged: number;
  inDatabase: number;
  p50Ms: number;
  p99Ms: number;
  cpu: string;
}

/** BucketStore.write in this process, closed loop, `window` writes in flight per writer. */
async function storeCase(devices: number, window: number, seconds: number): Promise<Result> {
  const dir = mkdtempSync(join(tmpdir(), 'iotmp-bucket-store-bench-'));
  const db = openDatabase(join(dir, 'iotmp.db'));
  try {
    db.prepare('INSERT INTO users (username, password_hash, created_at) VALUES (?, ?, ?)').run(
      BENCH_USER,
      'x',
      0,
    );
    const store = new BucketStore(db);
    for (let i = 0; i < devices; i++) store.create(BENCH_USER, { bucket: bucketName(i), source: 'write' });
    const latencies = new LatencySamples();
    let running = true;
    let acked = 0;
    const lane = async (i: number) => {
      const bucket = bucketName(i);
      while (running) {
        const t0 = performance.now();
        await store.write(BENCH_USER, bucket, { temperature: 23.5, humidity: 60 });
        latencies.add(performance.now() - t0);
        acked++;
      }
    };
    const lanes: Promise<void>[] = [];
    for (let i = 0; i < devices; i++) for (let k = 0; k < window; k++) lanes.push(lane(i));
    await sleep(1000); // warm-up
    latencies.reset();
    const a0 = acked;
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    await sleep(seconds * 1000);
    const elapsed = (performance.now() - t0) / 1000;
    const c = process.cpuUsage(c0);
    const measured = acked - a0;
    running = false;
    await Promise.all(lanes);
    await store.close();
    db.close();
    const inDatabase = await countRecords(join(dir, 'iotmp.db'));
    const sorted = latencies.sorted();
    return {
      recordsPerSecond: measured / elapsed,
      acknowledged: acked,
      inDatabase,
      p50Ms: percentile(sorted, 0.5),
      p99Ms: percentile(sorted, 0.99),
      cpu: `${Math.round(((c.user + c.system) / 1000 / (elapsed * 1000)) * 100)} % (one process)`,
    };
  } finally {
    if (db.open) db.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

async function metricValue(origin: string, name: string): Promise<number> {
  const text = await (await fetch(`${origin}/metrics`)).text();
  return Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(text)?.[1] ?? Number.NaN);
}

/** Group commits as the server's metrics saw them: how many, records per commit, time to durable. */
async function commitSummary(origin: string): Promise<string> {
  const text = await (await fetch(`${origin}/metrics`)).text();
  const value = (name: string) => Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(text)?.[1] ?? Number.NaN);
  const commits = value('iotmp_bucket_commit_seconds_count');
  const seconds = value('iotmp_bucket_commit_seconds_sum');
  const records = value('iotmp_bucket_records_written_total');
  const within = (le: string) =>
    Number(new RegExp(`^iotmp_bucket_commit_seconds_bucket\\{le="${le}"\\} (\\S+)$`, 'm').exec(text)?.[1]);
  return `${commits} commits, ${(records / commits).toFixed(0)} records each, mean ${((seconds / commits) * 1000).toFixed(1)} ms to durable, ${((within('0.01') / commits) * 100).toFixed(0)} % within 10 ms, ${((within('0.05') / commits) * 100).toFixed(0)} % within 50 ms`;
}

/** The real server; simulated devices write with code 5. */
async function endToEndCase(
  devices: number,
  window: number,
  seconds: number,
  simCount: number,
  fireRate: number,
  profileDir: string | undefined,
): Promise<Result> {
  const dataDir = mkdtempSync(join(tmpdir(), 'iotmp-bucket-bench-'));
  const mainJs = fileURLToPath(new URL('../../packages/server/dist/src/main.js', import.meta.url));
  const adminPassword = `bench-${Math.random().toString(36).slice(2)}`;
  const indices = Array.from({ length: devices }, (_, i) => i);
  const sims: Sim[] = [];
  // The server holds its database exclusively: devices are seeded between a first start
  // (schema and user) and the measured one.
  const first = await startServerProcess({
    mainJs,
    dataDir,
    adminPassword,
    logFile: join(dataDir, 'server-init.log'),
    nodeFlags: [],
    openFiles: 1024,
  });
  await first.stop();
  seedDevices(join(dataDir, 'iotmp.db'), indices);
  const server = await startServerProcess({
    mainJs,
    dataDir,
    adminPassword,
    logFile: join(dataDir, 'server.log'),
    // --profile: an inspector session takes a CPU profile of the measured seconds.
    nodeFlags: profileDir ? ['--inspect=127.0.0.1:0'] : [],
    openFiles: devices + 4096,
  });
  let stopped = false;
  try {
    const rest = new RestClient(server.origin);
    await rest.login(BENCH_USER, adminPassword);
    let next = 0;
    await Promise.all(
      Array.from({ length: 16 }, async () => {
        while (next < devices) {
          const i = next++;
          const { statusCode, body } = await rest.pool.request({
            method: 'POST',
            path: `/v1/users/${BENCH_USER}/buckets`,
            headers: { authorization: `Bearer ${rest.token}`, 'content-type': 'application/json' },
            body: JSON.stringify({ bucket: bucketName(i), source: 'write' }),
          });
          const text = await body.text();
          if (statusCode !== 201) throw new Error(`creating ${bucketName(i)}: ${statusCode} ${text}`);
        }
      }),
    );
    await rest.close();
    for (let k = 0; k < simCount; k++) sims.push(new Sim());
    const ready = await Promise.all(
      sims.map((s, k) =>
        s.ask<Extract<SimEvent, { op: 'ready' }>>(
          {
            op: 'init',
            port: server.tcpPort,
            indices: indices.filter((i) => i % simCount === k),
            window,
            fireRate: fireRate / simCount,
          },
          'ready',
        ),
      ),
    );
    const connected = ready.reduce((s, r) => s + r.connected, 0);
    note(
      `${connected} of ${devices} devices connected${ready.some((r) => r.errors.length) ? `: ${ready.flatMap((r) => r.errors).join('; ')}` : ''}`,
    );
    if (connected < devices) throw new Error('not every device could log in');

    for (const s of sims) s.tell({ op: 'go' });
    await sleep(1500); // warm-up
    const m0 = await Promise.all(
      sims.map((s) => s.ask<Extract<SimEvent, { op: 'mark' }>>({ op: 'mark' }, 'mark')),
    );
    const inspector =
      profileDir && server.inspectorUrl ? await Inspector.connect(server.inspectorUrl) : undefined;
    await inspector?.startProfile();
    const server0 = processCpuMs(server.pid);
    const machine0 = machineCpuMs();
    const stored0 = await metricValue(server.origin, 'iotmp_bucket_records_written_total');
    const t0 = performance.now();
    await sleep(seconds * 1000);
    const m1 = await Promise.all(
      sims.map((s) => s.ask<Extract<SimEvent, { op: 'mark' }>>({ op: 'mark' }, 'mark')),
    );
    const stored1 = await metricValue(server.origin, 'iotmp_bucket_records_written_total');
    const elapsedMs = performance.now() - t0;
    const serverMs = processCpuMs(server.pid) - server0;
    if (inspector && profileDir) {
      const profile = await inspector.stopProfile();
      inspector.close();
      mkdirSync(profileDir, { recursive: true });
      const file = join(profileDir, `buckets-e2e-${Date.now()}.cpuprofile`);
      writeFileSync(file, JSON.stringify(profile));
      printProfile(file, profile);
    }
    const machine1 = machineCpuMs();
    // Confirmed: OKs the devices received. Fire-and-forget: records the server made durable.
    const measured =
      fireRate > 0
        ? stored1 - stored0
        : m1.reduce((s, m) => s + m.acked, 0) - m0.reduce((s, m) => s + m.acked, 0);
    const offered = m1.reduce((s, m) => s + m.sent, 0) - m0.reduce((s, m) => s + m.sent, 0);
    if (fireRate > 0)
      note(
        `offered ${Math.round((offered / elapsedMs) * 1000).toLocaleString('en-US')} records/s (fire-and-forget)`,
      );
    const simMs = m1.reduce((s, m) => s + m.cpuMs, 0) - m0.reduce((s, m) => s + m.cpuMs, 0);
    const errors = m1.reduce((s, m) => s + m.errors, 0);
    const end = await Promise.all(
      sims.map((s) => s.ask<Extract<SimEvent, { op: 'stopped' }>>({ op: 'stop' }, 'stopped')),
    );
    let acknowledged = end.reduce((s, e) => s + e.acked, 0);
    if (fireRate > 0) {
      // What the server stored once the last writes arrived (the count stops moving).
      let last = -1;
      for (;;) {
        const now = await metricValue(server.origin, 'iotmp_bucket_records_written_total');
        if (now === last) break;
        last = now;
        await sleep(300);
      }
      acknowledged = last;
    }
    const unanswered = end.reduce((s, e) => s + e.inFlight, 0);
    if (errors > 0) note(`${errors} writes answered ERROR`);
    if (unanswered > 0) note(`${unanswered} writes unanswered at the end`);
    const latencies = Float64Array.from(end.flatMap((e) => e.latenciesMs)).sort();
    note(`server group commits: ${await commitSummary(server.origin)}`);
    await server.stop();
    stopped = true;
    const inDatabase = await countRecords(join(dataDir, 'iotmp.db'));
    const pct = (ms: number) => `${Math.round((ms / elapsedMs) * 100)} %`;
    const interrupts = machine1.interrupts - machine0.interrupts;
    return {
      recordsPerSecond: (measured / elapsedMs) * 1000,
      acknowledged,
      inDatabase,
      p50Ms: percentile(latencies, 0.5),
      p99Ms: percentile(latencies, 0.99),
      cpu: `server ${pct(serverMs)}, simulators ${pct(simMs)}, softirq ${pct(interrupts)}`,
    };
  } catch (err) {
    note(`the server's log ends with:\n${readFileSync(server.logFile, 'utf8').slice(-4000)}`);
    throw err;
  } finally {
    for (const s of sims) s.kill();
    if (!stopped) await server.stop();
    rmSync(dataDir, { recursive: true, force: true });
  }
}

// --- main ----------------------------------------------------------------------------------

function printProfile(file: string, profile: CpuProfile): void {
  const summary = summarizeProfile(profile, 25);
  note(`server CPU profile of the measured seconds (${file}):`);
  for (const a of summary.areas) note(`  ${a.selfPct.toFixed(1).padStart(5)} %  ${a.area}`);
  for (const f of summary.functions) note(`  ${f.selfPct.toFixed(1).padStart(5)} %  ${f.name} ${f.location}`);
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      devices: { type: 'string', default: '1000' },
      window: { type: 'string', default: '4' },
      seconds: { type: 'string', default: '10' },
      sims: { type: 'string', default: '2' },
      only: { type: 'string' },
      profile: { type: 'string' },
      fire: { type: 'string', default: '0' },
    },
  });
  const devices = Number(values.devices);
  const window = Number(values.window);
  const seconds = Number(values.seconds);
  const simCount = Number(values.sims);
  const fireRate = Number(values.fire);
  console.log('# Bucket write benchmark');
  console.log(
    `machine: ${cpus()[0]?.model ?? '?'}, ${cpus().length} cores, node ${process.version}, load average at start ${loadavg()
      .map((l) => l.toFixed(2))
      .join(' ')}`,
  );
  console.log(
    `${devices} writers/devices, one bucket each, ${window} writes in flight each, ${seconds} s measured after a warm-up; record ${JSON.stringify(SAMPLE)}`,
  );
  console.log('');
  console.log('| case | records/s acknowledged | acknowledged | in the database | p50 | p99 | CPU |');
  console.log('|---|---:|---:|---:|---:|---:|---|');
  const row = (name: string, r: Result) =>
    console.log(
      `| ${name} | ${Math.round(r.recordsPerSecond).toLocaleString('en-US')} | ${r.acknowledged.toLocaleString('en-US')} | ${r.inDatabase.toLocaleString('en-US')} | ${ms(r.p50Ms)} | ${ms(r.p99Ms)} | ${r.cpu} |`,
    );
  const results: Array<[string, Result]> = [];
  function ms(v: number): string {
    return Number.isFinite(v) ? `${v.toFixed(2)} ms` : '–';
  }
  if (values.only !== 'e2e') {
    const r = await storeCase(devices, window, seconds);
    row('BucketStore.write in process', r);
    results.push(['in process', r]);
  }
  if (values.only !== 'store') {
    const r = await endToEndCase(devices, window, seconds, simCount, fireRate, values.profile);
    row(
      fireRate > 0
        ? `devices → server (RUN code 5, fire-and-forget, ${fireRate.toLocaleString('en-US')}/s offered), ${simCount} simulator processes`
        : `devices → server (RUN code 5, confirmed), ${simCount} simulator processes`,
      r,
    );
    results.push(['end to end', r]);
  }
  console.log('');
  for (const [name, r] of results) {
    const lost = r.acknowledged - r.inDatabase;
    console.log(
      `${name}: target ≥ ${TARGET.toLocaleString('en-US')} records/s: ${r.recordsPerSecond >= TARGET ? 'MET' : 'NOT MET'} (${Math.round(r.recordsPerSecond).toLocaleString('en-US')}); acknowledged records in the database: ${lost <= 0 ? 'all' : `${lost} MISSING`}`,
    );
  }
  console.log(
    `load average at end ${loadavg()
      .map((l) => l.toFixed(2))
      .join(' ')}`,
  );
}

if (process.argv[2] === 'sim') simulator();
else
  main().catch((err: unknown) => {
    console.error(err);
    process.exit(1);
  });
