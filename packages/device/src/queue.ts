/**
 * A bounded queue read as an async iterator. When the reader falls behind by more than
 * `capacity` items, the oldest are dropped (and counted): memory stays bounded whatever
 * the producer does. `return()` (a `break` in `for await`) runs `onReturn` once.
 */
export class EventQueue<T> implements AsyncIterableIterator<T> {
  private readonly items: T[] = [];
  private readonly waiters: Array<{
    resolve(r: IteratorResult<T>): void;
    reject(error: Error): void;
  }> = [];
  private ended = false;
  private failure: Error | undefined;
  /** Items dropped because the reader was too slow. */
  dropped = 0;
  /** Resolves once the source is in place (e.g. the server accepted the subscription). */
  readonly ready: Promise<void>;
  private settleReady!: (error?: Error) => void;

  constructor(
    private readonly capacity = 1000,
    private readonly onReturn?: () => void,
  ) {
    this.ready = new Promise<void>((resolve, reject) => {
      this.settleReady = (error) => (error ? reject(error) : resolve());
    });
    this.ready.catch(() => {}); // a rejection is also reported through next()
  }

  /** Marks the source as in place (or failed). */
  markReady(error?: Error): void {
    this.settleReady(error);
  }

  push(item: T): void {
    if (this.ended) return;
    const waiter = this.waiters.shift();
    if (waiter) {
      waiter.resolve({ value: item, done: false });
      return;
    }
    this.items.push(item);
    if (this.items.length > this.capacity) {
      this.items.shift();
      this.dropped++;
    }
  }

  /** Ends the iteration (after the buffered items), with an error if given. */
  end(error?: Error): void {
    this.settleReady(error ?? new Error('ended before it was ready'));
    if (this.ended) return;
    this.ended = true;
    this.failure = error;
    if (this.items.length === 0) this.flushWaiters();
  }

  /** Ends the readers waiting in next(): the first gets the failure, if any (as next() would). */
  private flushWaiters(): void {
    for (const w of this.waiters.splice(0)) {
      if (this.failure) {
        const err = this.failure;
        this.failure = undefined;
        w.reject(err);
      } else {
        w.resolve({ value: undefined, done: true });
      }
    }
  }

  next(): Promise<IteratorResult<T>> {
    if (this.items.length > 0) return Promise.resolve({ value: this.items.shift() as T, done: false });
    if (this.ended) {
      if (this.failure) {
        const err = this.failure;
        this.failure = undefined;
        return Promise.reject(err);
      }
      return Promise.resolve({ value: undefined, done: true });
    }
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  return(): Promise<IteratorResult<T>> {
    if (!this.ended) {
      this.ended = true;
      this.items.length = 0;
      this.failure = undefined;
      this.flushWaiters();
      this.onReturn?.();
    }
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<T> {
    return this;
  }
}
