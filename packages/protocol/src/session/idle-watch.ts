import type { Clock, TimerHandle } from './clock.js';

/** Something with deadlines checked by an {@link IdleWatch}. */
export interface IdleWatched {
  /** Called about once per period with the clock's time. */
  idleTick(now: number): void;
}

/** How often keep-alive deadlines are checked: they are tens of seconds; a second late is fine. */
export const IDLE_WATCH_PERIOD_MS = 1000;

/**
 * Keep-alive deadlines of every session on one clock, checked by one periodic timer instead
 * of a timer (and a closure) per connection: thousands of idle devices cost one timer.
 */
export class IdleWatch {
  private readonly members = new Set<IdleWatched>();
  private timer: TimerHandle | undefined;
  private readonly run = () => {
    this.timer = undefined;
    const now = this.clock.now();
    // Members may leave (or join) during the loop; a Set iterator copes with both.
    for (const m of this.members) m.idleTick(now);
    if (this.members.size > 0 && this.timer === undefined) this.arm();
  };

  constructor(
    private readonly clock: Clock,
    private readonly periodMs = IDLE_WATCH_PERIOD_MS,
  ) {}

  get size(): number {
    return this.members.size;
  }

  add(member: IdleWatched): void {
    this.members.add(member);
    if (this.timer === undefined) this.arm();
  }

  delete(member: IdleWatched): void {
    this.members.delete(member);
    if (this.members.size === 0 && this.timer !== undefined) {
      this.clock.clearTimeout(this.timer);
      this.timer = undefined;
    }
  }

  private arm(): void {
    this.timer = this.clock.setTimeout(this.run, this.periodMs);
  }
}

const watches = new WeakMap<Clock, IdleWatch>();

/** The one IdleWatch of a clock. */
export function idleWatchFor(clock: Clock): IdleWatch {
  let watch = watches.get(clock);
  if (!watch) {
    watch = new IdleWatch(clock);
    watches.set(clock, watch);
  }
  return watch;
}
