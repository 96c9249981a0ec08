interface Entry {
  failures: number;
  inFlight: number;
  windowStart: number;
  blockedUntil: number;
}

/**
 * Failed-login throttling per key (source address, device from an address). After
 * `maxFailures` failures within `windowMs`, the key is blocked for `blockMs`: logins are
 * refused without checking the credential. Checks still running count as possible failures,
 * so a burst of concurrent bad logins cannot slip past the limit either. Memory is bounded
 * by `maxKeys`.
 */
export class LoginThrottle {
  private readonly entries = new Map<string, Entry>();

  constructor(
    private readonly maxFailures = 10,
    private readonly windowMs = 60_000,
    private readonly blockMs = 60_000,
    private readonly maxKeys = 100_000,
  ) {}

  private entry(key: string, now: number): Entry {
    let e = this.entries.get(key);
    if (!e || (now - e.windowStart > this.windowMs && e.inFlight === 0 && e.blockedUntil <= now)) {
      if (!e && this.entries.size >= this.maxKeys) this.evict(now);
      e = { failures: 0, inFlight: 0, windowStart: now, blockedUntil: 0 };
      this.entries.set(key, e);
    }
    return e;
  }

  /**
   * Blocked after too many failures; with `countInFlight`, checks still running count as
   * failures too (per device: a concurrent burst of guesses cannot pass the limit). Per
   * address they do not, so a fleet behind one NAT address may log in all at once.
   */
  isBlocked(key: string, now = Date.now(), countInFlight = false): boolean {
    const e = this.entries.get(key);
    if (e === undefined) return false;
    return e.blockedUntil > now || e.failures + (countInFlight ? e.inFlight : 0) >= this.maxFailures;
  }

  /** Starts a credential check: false (and nothing started) when the key is blocked. */
  begin(key: string, countInFlight: boolean, now = Date.now()): boolean {
    if (this.isBlocked(key, now, countInFlight)) return false;
    this.entry(key, now).inFlight++;
    return true;
  }

  fail(key: string, now = Date.now()): void {
    const e = this.entry(key, now);
    if (e.inFlight > 0) e.inFlight--;
    e.failures++;
    if (e.failures >= this.maxFailures) e.blockedUntil = now + this.blockMs;
  }

  succeed(key: string): void {
    const e = this.entries.get(key);
    if (!e) return;
    if (e.inFlight > 0) e.inFlight--;
    if (e.failures === 0 && e.inFlight === 0) this.entries.delete(key);
  }

  /** Ends a check that neither failed nor succeeded (e.g. the connection went away). */
  end(key: string): void {
    const e = this.entries.get(key);
    if (e && e.inFlight > 0) e.inFlight--;
  }

  private evict(now: number): void {
    for (const [k, e] of this.entries) {
      if (e.inFlight === 0 && e.blockedUntil <= now && now - e.windowStart > this.windowMs)
        this.entries.delete(k);
    }
    // Still full: forget the oldest entries rather than grow.
    while (this.entries.size >= this.maxKeys) {
      const first = this.entries.keys().next().value;
      if (first === undefined) break;
      this.entries.delete(first);
    }
  }
}
