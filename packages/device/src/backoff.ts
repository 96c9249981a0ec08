export interface ReconnectOptions {
  /** First delay after a lost connection (default 1000 ms). */
  initialDelayMs?: number;
  /** Upper bound of the delay (default 60 000 ms). */
  maxDelayMs?: number;
  /** Growth per failed attempt (default 2). */
  factor?: number;
  /** Random share of each delay, 0–1 (default 0.5): spreads a fleet's reconnects after a server restart. */
  jitter?: number;
}

/** Exponential backoff with jitter ("equal jitter": half fixed, half random by default). */
export function backoffDelay(
  attempt: number,
  options: ReconnectOptions,
  random: () => number = Math.random,
): number {
  const initial = options.initialDelayMs ?? 1000;
  const max = options.maxDelayMs ?? 60_000;
  const factor = options.factor ?? 2;
  const jitter = Math.min(1, Math.max(0, options.jitter ?? 0.5));
  const base = Math.min(max, initial * factor ** Math.max(0, attempt));
  return Math.round(base * (1 - jitter) + base * jitter * random());
}
