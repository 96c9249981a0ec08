/**
 * What the session engine needs from a connection: a byte pipe. TCP, TLS, WebSocket (Node)
 * and the browser's WebSocket each implement it in a few lines; tests use an in-memory pair.
 */
export interface Transport {
  /** Queues bytes for sending. The engine calls it at most once per event-loop turn. */
  write(bytes: Uint8Array): void;
  /** Bytes accepted by `write` but not yet handed to the operating system / network. */
  readonly bufferedAmount: number;
  /** Flushes what is queued, then closes. */
  close(): void;
  /** Closes at once, dropping what is queued. */
  destroy(): void;
  /** Where received bytes, drain and close go. Called once, before any data flows. */
  attach(handler: TransportHandler): void;
  /** Remote address for logs ("127.0.0.1:51234"), if known. */
  readonly remoteAddress?: string | undefined;
  /**
   * Stops reading from the peer (TCP backpressure) until `resume`. Optional: a transport that
   * cannot (the browser's WebSocket) leaves it out and the engine's other limits apply.
   */
  pause?(): void;
  resume?(): void;
}

export interface TransportHandler {
  onData(chunk: Uint8Array): void;
  /** The connection is gone (either side closed it, or it failed). */
  onClose(error?: Error): void;
}
