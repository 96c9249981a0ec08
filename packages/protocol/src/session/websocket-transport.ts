import type { Transport, TransportHandler } from './transport.js';

/** The part of the WebSocket API (browser or `ws`) this transport uses. */
interface WebSocketLike {
  binaryType: string;
  readonly readyState: number;
  readonly bufferedAmount: number;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code?: number; reason?: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  onopen?: (() => void) | null;
}

const OPEN = 1;
const textEncoder = new TextEncoder();

function toBytes(data: unknown): Uint8Array | undefined {
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  // A text message: the reference client sends IOTMP bytes in TEXT frames (spec Appendix C).
  if (typeof data === 'string') return textEncoder.encode(data);
  if (Array.isArray(data)) {
    // `ws` with fragmented messages: an array of Buffers.
    const parts = data.filter((p): p is Uint8Array => p instanceof Uint8Array);
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }
  return undefined;
}

/**
 * IOTMP over an open WebSocket, in the browser (native WebSocket) or in Node (`ws`). One
 * frame batch per binary message; received messages are a continuous byte stream (a frame
 * may span messages).
 */
export class WebSocketTransport implements Transport {
  private readonly ws: WebSocketLike;
  readonly remoteAddress: string | undefined;

  constructor(ws: WebSocketLike, remoteAddress?: string) {
    this.ws = ws;
    this.remoteAddress = remoteAddress;
    ws.binaryType = 'arraybuffer';
  }

  get bufferedAmount(): number {
    return this.ws.bufferedAmount;
  }

  attach(handler: TransportHandler): void {
    let closed = false;
    const closeOnce = (error?: Error) => {
      if (closed) return;
      closed = true;
      handler.onClose(error);
    };
    const nodeWs = this.ws as unknown as { on?: (event: string, fn: (data: unknown) => void) => void };
    if (typeof nodeWs.on === 'function') {
      // `ws` (Node): its 'message' event hands over the raw bytes of TEXT messages too, where
      // onmessage would decode them as UTF-8 and corrupt the IOTMP bytes inside.
      nodeWs.on('message', (data) => {
        const bytes = toBytes(data);
        if (bytes) handler.onData(bytes);
      });
    } else {
      this.ws.onmessage = (ev) => {
        const bytes = toBytes(ev.data);
        if (bytes) handler.onData(bytes);
      };
    }
    this.ws.onclose = (ev) =>
      closeOnce(
        ev.code && ev.code !== 1000 && ev.code !== 1005
          ? new Error(`WebSocket closed (${ev.code}${ev.reason ? ` ${ev.reason}` : ''})`)
          : undefined,
      );
    this.ws.onerror = (ev) => {
      const message =
        (ev as { message?: string; error?: Error }).error?.message ?? (ev as { message?: string }).message;
      closeOnce(new Error(message ?? 'WebSocket error'));
    };
  }

  write(bytes: Uint8Array): void {
    if (this.ws.readyState === OPEN) this.ws.send(bytes);
  }

  close(): void {
    this.ws.close(1000);
  }

  /** `ws` (Node) can stop reading its socket; the browser's WebSocket cannot (a no-op there). */
  pause(): void {
    (this.ws as unknown as { pause?: () => void }).pause?.();
  }

  resume(): void {
    (this.ws as unknown as { resume?: () => void }).resume?.();
  }

  destroy(): void {
    const terminate = (this.ws as unknown as { terminate?: () => void }).terminate;
    if (terminate) terminate.call(this.ws);
    else this.ws.close(1000);
  }
}

/** Opens a WebSocket with the global (browser / Node 22+) WebSocket and resolves when it is open. */
export function openBrowserWebSocket(
  url: string,
  options?: { signal?: AbortSignal },
): Promise<WebSocketTransport> {
  const Ctor = (
    globalThis as { WebSocket?: new (url: string, protocols?: string | string[]) => WebSocketLike }
  ).WebSocket;
  if (!Ctor) return Promise.reject(new Error('no global WebSocket in this environment'));
  const signal = options?.signal;
  if (signal?.aborted) return Promise.reject(new Error('connection aborted'));
  return new Promise((resolve, reject) => {
    const ws = new Ctor(url, 'iotmp');
    const detach = () => {
      ws.onopen = null;
      ws.onerror = null;
      ws.onclose = null;
      signal?.removeEventListener('abort', onAbort);
    };
    const fail = (message: string) => {
      detach();
      reject(new Error(message));
    };
    // Only while opening: once open, the session owns the socket's lifetime.
    const onAbort = () => {
      fail('connection aborted');
      ws.close();
    };
    ws.onopen = () => {
      detach();
      resolve(new WebSocketTransport(ws, url));
    };
    ws.onerror = () => fail(`cannot open WebSocket ${url}`);
    ws.onclose = (ev) => fail(`WebSocket ${url} closed before opening (${ev.code ?? ''})`);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
