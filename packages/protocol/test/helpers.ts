import type { FrameVector } from '@iotmp/spec-vectors';
import {
  type DecodedMessage,
  FrameDecoder,
  type FrameDecoderOptions,
  type FrameError,
  type Message,
} from '../src/index.js';

/** A message without the keys whose value is undefined, for deep comparison. */
export function plain(msg: Message | DecodedMessage): Record<string, unknown> {
  return Object.fromEntries(Object.entries(msg).filter(([, v]) => v !== undefined));
}

/** The message a vector describes: its fields by id, the last of repeated ids winning. */
export function messageOf(v: FrameVector): Message {
  const msg: Record<string, unknown> = { type: v.typeCode };
  for (const f of v.fields) {
    const key = ({ 1: 'streamId', 2: 'parameters', 3: 'payload', 4: 'resource' } as Record<number, string>)[
      f.id
    ];
    if (key) msg[key] = f.value;
  }
  return msg as unknown as Message;
}

export interface Collected {
  messages: DecodedMessage[];
  invalid: FrameError[];
}

/** Pushes `chunks` through one decoder and collects everything it reports. */
export function collect(chunks: Iterable<Uint8Array>, options?: FrameDecoderOptions): Collected {
  const out: Collected = { messages: [], invalid: [] };
  const decoder = new FrameDecoder(
    { onMessage: (m) => out.messages.push(m), onInvalidFrame: (e) => out.invalid.push(e) },
    options,
  );
  for (const c of chunks) decoder.push(c);
  return out;
}

export function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
