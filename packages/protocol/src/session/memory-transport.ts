import type { Transport, TransportHandler } from './transport.js';

/**
 * Two connected in-memory transports, for tests and for running a device and a server in
 * one process. Bytes written on one side arrive at the other in a microtask. `pause()`
 * stops a side from reading, so its peer's `bufferedAmount` grows (a slow reader).
 */
export class MemoryTransport implements Transport {
  private handler: TransportHandler | undefined;
  private peer!: MemoryTransport;
  private queue: Uint8Array[] = [];
  private queued = 0;
  private paused = false;
  private closed = false;
  private delivering = false;
  readonly remoteAddress: string | undefined;

  private constructor(remoteAddress: string) {
    this.remoteAddress = remoteAddress;
  }

  static pair(): [MemoryTransport, MemoryTransport] {
    const a = new MemoryTransport('memory:b');
    const b = new MemoryTransport('memory:a');
    a.peer = b;
    b.peer = a;
    return [a, b];
  }

  attach(handler: TransportHandler): void {
    this.handler = handler;
    this.peer.scheduleDelivery();
  }

  /** Bytes written by this side that the peer has not read yet. */
  get bufferedAmount(): number {
    return this.peer.queued;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  write(bytes: Uint8Array): void {
    if (this.closed || this.peer.closed) return;
    this.peer.queue.push(bytes);
    this.peer.queued += bytes.length;
    this.peer.scheduleDelivery();
  }

  /** Stop reading: writes to this side pile up. */
  pause(): void {
    this.paused = true;
  }

  resume(): void {
    this.paused = false;
    this.scheduleDelivery();
  }

  close(): void {
    if (this.closed) return;
    // Deliver what was written, then close both ends.
    queueMicrotask(() => this.destroy());
  }

  destroy(): void {
    if (this.closed) return;
    this.closed = true;
    this.queue = [];
    this.queued = 0;
    const peer = this.peer;
    queueMicrotask(() => {
      this.handler?.onClose();
      if (!peer.closed) {
        peer.closed = true;
        peer.queue = [];
        peer.queued = 0;
        peer.handler?.onClose();
      }
    });
  }

  private scheduleDelivery(): void {
    if (this.delivering || this.paused || !this.handler || this.queue.length === 0) return;
    this.delivering = true;
    queueMicrotask(() => {
      this.delivering = false;
      while (!this.paused && !this.closed && this.handler && this.queue.length > 0) {
        const chunk = this.queue.shift() as Uint8Array;
        this.queued -= chunk.length;
        this.handler.onData(chunk);
      }
    });
  }
}
