/**
 * Frame codec benchmark: how fast a connection's byte stream turns into messages.
 *
 * STREAM_DATA frames carrying the sensor sample are concatenated into one stream and cut
 * at random points (as a socket delivers them); the FrameDecoder is fed the chunks and
 * every message is counted. Also: tiny frames (OK with a stream id) and encoding.
 *
 *   node bench/dist/frames.bench.js [--json file]
 */
import { writeFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import {
  type DecodedMessage,
  encodeMessage,
  FrameDecoder,
  type Message,
  MessageType,
  writeMessage,
} from '@iotmp/protocol';
import { ByteWriter } from '@iotmp/pson';

const SAMPLE = { temperature: 23.5, humidity: 60, pressure: 1013, label: 'outdoor' };
const FRAMES = 20_000;
const RUN_MS = 1000;
const REPEATS = 5;

/** Deterministic PRNG (mulberry32) so every run cuts the stream the same way. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function buildStream(messages: Message[]): Uint8Array {
  const parts = messages.map((m) => encodeMessage(m));
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Cuts `stream` into chunks of random size in [1, maxChunk]. */
function cut(stream: Uint8Array, maxChunk: number, seed: number): Uint8Array[] {
  const rnd = prng(seed);
  const chunks: Uint8Array[] = [];
  for (let at = 0; at < stream.length; ) {
    const size = 1 + Math.floor(rnd() * maxChunk);
    chunks.push(stream.subarray(at, at + size));
    at += size;
  }
  return chunks;
}

interface Result {
  name: string;
  messagesPerSecond: number;
  megabytesPerSecond: number;
  frameBytes: number;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] as number;
}

function benchDecode(name: string, messages: Message[], maxChunk: number): Result {
  const stream = buildStream(messages);
  const chunks = cut(stream, maxChunk, 42);
  let count = 0;
  let check = 0;
  const handler = {
    onMessage(m: DecodedMessage) {
      count++;
      if (m.streamId !== undefined) check += m.streamId;
    },
  };
  const rates: number[] = [];
  // Warm-up, then timed passes over the whole stream.
  for (let round = 0; round < REPEATS + 1; round++) {
    let passes = 0;
    const start = process.hrtime.bigint();
    let elapsed = 0;
    count = 0;
    do {
      const decoder = new FrameDecoder(handler);
      for (const c of chunks) decoder.push(c);
      passes++;
      elapsed = Number(process.hrtime.bigint() - start) / 1e6;
    } while (elapsed < RUN_MS);
    if (count !== passes * messages.length)
      throw new Error(`${name}: decoded ${count}, expected ${passes * messages.length}`);
    if (round > 0) rates.push((count / elapsed) * 1000);
  }
  if (check === 0) throw new Error('unreachable');
  const mps = median(rates);
  return {
    name,
    messagesPerSecond: mps,
    megabytesPerSecond: (mps * stream.length) / messages.length / 1e6,
    frameBytes: stream.length / messages.length,
  };
}

function benchEncode(name: string, messages: Message[]): Result {
  const w = new ByteWriter(1 << 20);
  const rates: number[] = [];
  let bytes = 0;
  for (let round = 0; round < REPEATS + 1; round++) {
    let count = 0;
    const start = process.hrtime.bigint();
    let elapsed = 0;
    do {
      // As a connection would: frames appended to one output buffer, flushed per batch.
      w.pos = 0;
      for (const m of messages) writeMessage(w, m);
      count += messages.length;
      bytes = w.pos;
      elapsed = Number(process.hrtime.bigint() - start) / 1e6;
    } while (elapsed < RUN_MS);
    if (round > 0) rates.push((count / elapsed) * 1000);
  }
  const mps = median(rates);
  return {
    name,
    messagesPerSecond: mps,
    megabytesPerSecond: (mps * bytes) / messages.length / 1e6,
    frameBytes: bytes / messages.length,
  };
}

function main(): void {
  const jsonAt = process.argv.indexOf('--json');
  const jsonFile = jsonAt > 0 ? process.argv[jsonAt + 1] : undefined;

  const rnd = prng(7);
  const samples: Message[] = [];
  for (let i = 0; i < FRAMES; i++) {
    samples.push({
      type: MessageType.STREAM_DATA,
      streamId: 1 + (i % 1000),
      payload: {
        temperature: Math.round((15 + rnd() * 15) * 2) / 2,
        humidity: Math.floor(30 + rnd() * 50),
        pressure: 1000 + Math.floor(rnd() * 30),
        label: i % 2 ? 'outdoor' : 'indoor',
      },
    });
  }
  samples[0] = { type: MessageType.STREAM_DATA, streamId: 161, payload: SAMPLE };
  const tiny: Message[] = [];
  for (let i = 0; i < FRAMES; i++) tiny.push({ type: MessageType.OK, streamId: 1 + (i % 65535) });

  const cpu = cpus();
  console.log(
    `# IOTMP frame benchmark\nmachine: ${cpu[0]?.model ?? 'unknown'}, ${cpu.length} cores, node ${process.version}, load average ${loadavg()[0]?.toFixed(2)} (other load skews the numbers)\n`,
  );
  const results = [
    benchDecode('decode STREAM_DATA sensor sample, chunks 1–4096 B', samples, 4096),
    benchDecode('decode STREAM_DATA sensor sample, chunks 1–64 KiB', samples, 65536),
    benchDecode('decode STREAM_DATA sensor sample, chunks 1–64 B', samples, 64),
    benchDecode('decode OK (stream id only), chunks 1–4096 B', tiny, 4096),
    benchEncode('encode STREAM_DATA sensor sample (batched)', samples),
    benchEncode('encode OK (batched)', tiny),
  ];
  console.log('| case | messages/s | MB/s | bytes/frame |');
  console.log('|---|---:|---:|---:|');
  for (const r of results) {
    console.log(
      `| ${r.name} | ${Math.round(r.messagesPerSecond).toLocaleString('en-US')} | ${r.megabytesPerSecond.toFixed(1)} | ${r.frameBytes.toFixed(1)} |`,
    );
  }
  const target = results[0] as Result;
  const met = target.messagesPerSecond >= 2_000_000;
  console.log(
    `\ntarget: decode >= 2,000,000 small messages/s on one core (sensor-sample STREAM_DATA, random splits): ${met ? 'MET' : 'NOT MET'} (${Math.round(target.messagesPerSecond).toLocaleString('en-US')})`,
  );
  if (jsonFile) {
    writeFileSync(
      jsonFile,
      JSON.stringify(
        { machine: { cpu: cpu[0]?.model, cores: cpu.length, node: process.version }, results },
        null,
        2,
      ),
    );
  }
}

main();
