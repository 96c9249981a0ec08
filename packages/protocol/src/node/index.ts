/**
 * Node.js transports: TCP, TLS and WebSocket (`ws`). Import from `@iotmp/protocol/node`;
 * the main entry stays free of `node:` imports for browsers.
 */
import * as net from 'node:net';
import * as tls from 'node:tls';
import WebSocket, { type ClientOptions, type ServerOptions } from 'ws';
import type { Transport, TransportHandler } from '../session/transport.js';
import { WebSocketTransport } from '../session/websocket-transport.js';

/** Default ports (spec §2). */
export const DEFAULT_TCP_PORT = 25204;
export const DEFAULT_TLS_PORT = 25206;
/** WebSocket path and sub-protocol (spec §2). */
export const WEBSOCKET_PATH = '/iotmp';
export const WEBSOCKET_PROTOCOL = 'iotmp';

/** A TCP or TLS socket as a transport. */
const TRANSPORT = Symbol('iotmp.transport');
type SocketWithTransport = net.Socket & { [TRANSPORT]?: SocketTransport };

function onSocketData(this: SocketWithTransport, chunk: Buffer): void {
  this[TRANSPORT]?.handler?.onData(chunk);
}
function onSocketError(this: SocketWithTransport, err: Error): void {
  const t = this[TRANSPORT];
  if (t) t.lastError = err;
}
function onSocketClose(this: SocketWithTransport): void {
  const t = this[TRANSPORT];
  if (!t || t.closed) return;
  t.closed = true;
  t.handler?.onClose(t.lastError);
}

export class SocketTransport implements Transport {
  readonly socket: net.Socket;
  readonly remoteAddress: string | undefined;

  /**
   * `noDelayIsSet`: the listener already disabled Nagle (`net.createServer({ noDelay: true })`),
   * which saves a system call per accepted connection.
   */
  constructor(socket: net.Socket, options?: { noDelayIsSet?: boolean }) {
    this.socket = socket;
    if (!options?.noDelayIsSet) socket.setNoDelay(true);
    this.remoteAddress =
      socket.remoteAddress === undefined ? undefined : `${socket.remoteAddress}:${socket.remotePort ?? ''}`;
  }

  get bufferedAmount(): number {
    return this.socket.writableLength;
  }

  attach(handler: TransportHandler): void {
    this.handler = handler;
    // Shared listeners that find the transport on the socket: no closures per connection.
    (this.socket as SocketWithTransport)[TRANSPORT] = this;
    this.socket.on('data', onSocketData);
    this.socket.on('error', onSocketError);
    this.socket.on('close', onSocketClose);
  }

  /** @internal */
  handler: TransportHandler | undefined;
  /** @internal The last socket error, reported with the close. */
  lastError: Error | undefined;
  /** @internal */
  closed = false;

  write(bytes: Uint8Array): void {
    if (!this.socket.destroyed && this.socket.writable) this.socket.write(bytes);
  }

  close(): void {
    this.socket.end();
    // A peer that never closes its side must not keep the socket forever.
    setTimeout(() => this.socket.destroy(), 5000).unref();
  }

  destroy(): void {
    this.socket.destroy();
  }

  pause(): void {
    this.socket.pause();
  }

  resume(): void {
    this.socket.resume();
  }
}

export interface ConnectOptions {
  host: string;
  port: number;
  /** Gives up after this long (default 10 s). */
  timeoutMs?: number;
  signal?: AbortSignal;
}

export interface TlsConnectOptions extends ConnectOptions {
  /** Verify the server certificate (default true). The reference clients do not; we do unless told. */
  rejectUnauthorized?: boolean;
  /** Extra trusted CA certificate(s), PEM. */
  ca?: string | Buffer | Array<string | Buffer>;
  /** SNI name (default: host, unless it is an IP address). */
  servername?: string;
}

function connectSocket(
  create: () => net.Socket,
  readyEvent: 'connect' | 'secureConnect',
  options: ConnectOptions,
): Promise<SocketTransport> {
  return new Promise((resolve, reject) => {
    const socket = create();
    const timeoutMs = options.timeoutMs ?? 10_000;
    const timer = setTimeout(
      () => fail(new Error(`connection to ${options.host}:${options.port} timed out after ${timeoutMs} ms`)),
      timeoutMs,
    );
    const onAbort = () => fail(new Error('connection aborted'));
    const cleanup = () => {
      clearTimeout(timer);
      socket.off('error', fail);
      socket.off(readyEvent, ready);
      options.signal?.removeEventListener('abort', onAbort);
    };
    function fail(err: Error) {
      cleanup();
      socket.destroy();
      reject(err);
    }
    function ready() {
      cleanup();
      resolve(new SocketTransport(socket));
    }
    socket.once('error', fail);
    socket.once(readyEvent, ready);
    if (options.signal?.aborted) onAbort();
    else options.signal?.addEventListener('abort', onAbort, { once: true });
  });
}

export function connectTcp(options: ConnectOptions): Promise<SocketTransport> {
  return connectSocket(() => net.connect({ host: options.host, port: options.port }), 'connect', options);
}

export function connectTls(options: TlsConnectOptions): Promise<SocketTransport> {
  const servername = options.servername ?? (net.isIP(options.host) ? undefined : options.host);
  return connectSocket(
    () =>
      tls.connect({
        host: options.host,
        port: options.port,
        servername,
        rejectUnauthorized: options.rejectUnauthorized ?? true,
        ca: options.ca,
        // The reference client speaks TLS 1.2 only (spec Appendix C); allow it.
        minVersion: 'TLSv1.2',
      }),
    'secureConnect',
    options,
  );
}

export interface WebSocketConnectOptions {
  /** `ws://host:port/iotmp` or `wss://…`. */
  url: string;
  rejectUnauthorized?: boolean;
  ca?: string | Buffer | Array<string | Buffer>;
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Cap on one received WebSocket message (default 16 MiB; frames themselves are limited by the session). */
  maxPayload?: number;
}

/** Opens a WebSocket (sub-protocol `iotmp`) with the `ws` library. */
export function connectWebSocket(options: WebSocketConnectOptions): Promise<WebSocketTransport> {
  return new Promise((resolve, reject) => {
    const wsOptions: ClientOptions = {
      rejectUnauthorized: options.rejectUnauthorized ?? true,
      handshakeTimeout: options.timeoutMs ?? 10_000,
      maxPayload: options.maxPayload ?? 16 * 1024 * 1024,
      skipUTF8Validation: true,
      perMessageDeflate: false,
    };
    if (options.ca !== undefined) wsOptions.ca = options.ca;
    const ws = new WebSocket(options.url, WEBSOCKET_PROTOCOL, wsOptions);
    const onAbort = () => {
      ws.terminate();
      fail(new Error('connection aborted'));
    };
    function fail(err: Error) {
      ws.off('open', open);
      ws.off('error', fail);
      options.signal?.removeEventListener('abort', onAbort);
      reject(err);
    }
    function open() {
      ws.off('error', fail);
      options.signal?.removeEventListener('abort', onAbort);
      const socket = (ws as unknown as { _socket?: net.Socket })._socket;
      socket?.setNoDelay(true);
      resolve(new WebSocketTransport(ws as never, options.url));
    }
    ws.once('open', open);
    ws.once('error', fail);
    options.signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * Options for a `ws` WebSocketServer that accepts IOTMP devices: sub-protocol `iotmp`, and
 * TEXT messages carrying raw bytes accepted (the reference client sends them so).
 */
export function iotmpWebSocketServerOptions(extra?: ServerOptions): ServerOptions {
  return {
    skipUTF8Validation: true,
    perMessageDeflate: false,
    maxPayload: 16 * 1024 * 1024,
    handleProtocols: (protocols) => (protocols.has(WEBSOCKET_PROTOCOL) ? WEBSOCKET_PROTOCOL : false),
    ...extra,
  };
}

/** Wraps a server-side `ws` connection. */
export function acceptWebSocket(ws: WebSocket, remoteAddress?: string): WebSocketTransport {
  const socket = (ws as unknown as { _socket?: net.Socket })._socket;
  socket?.setNoDelay(true);
  return new WebSocketTransport(ws as never, remoteAddress);
}

export { WebSocketTransport };
