/**
 * Failed-login throttling per key (source address, device). After `maxFailures` failures
 * within `windowMs`, the key is blocked for `blockMs`: logins are refused without checking
 * the credential, so a flood costs no KDF work. Memory is bounded by `maxKeys`.
 */
export class LoginThrottle {
  private readonly entries = new Map<
    string,
    { failures: number; windowStart: number; blockedUntil: number }
  >();

  constructor(
    private readonly maxFailures = 10,
    private readonly windowMs = 60_000,
    private readonly blockMs = 60_000,
    private readonly maxKeys = 100_000,
  ) {}

  isBlocked(key: string, now = Date.now()): boolean {
    const e = this.entries.get(key);
    return e !== undefined && e.blockedUntil > now;
  }

  fail(key: string, now = Date.now()): void {
    let e = this.entries.get(key);
    if (!e || now - e.windowStart > this.windowMs) {
      if (!e && this.entries.size >= this.maxKeys) this.evict(now);
      e = { failures: 0, windowStart: now, blockedUntil: 0 };
      this.entries.set(key, e);
    }
    e.failures++;
    if (e.failures >= this.maxFailures) e.blockedUntil = now + this.blockMs;
  }

  succeed(key: string): void {
    this.entries.delete(key);
  }

  private evict(now: number): void {
    for (const [k, e] of this.entries) {
      if (e.blockedUntil <= now && now - e.windowStart > this.windowMs) this.entries.delete(k);
    }
    // Still full: forget the oldest entries rather than grow.
    while (this.entries.size >= this.maxKeys) {
      const first = this.entries.keys().next().value;
      if (first === undefined) break;
      this.entries.delete(first);
    }
  }
}
