/** Small pieces several commands share: argument checks and parsers. */
import { randomBytes } from 'node:crypto';
import { InvalidArgumentError } from 'commander';
import { usageError } from '../errors.js';

/** The server's rule for user names, device ids, property and bucket ids. */
const ID = /^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$/;

export function checkId(value: string, what: string): string {
  if (!ID.test(value))
    throw usageError(
      `invalid ${what} ${JSON.stringify(value)}`,
      `${what}s are 1–128 characters: letters, digits, and _ . @ - (not first)`,
    );
  return value;
}

/** Commander parser for repeatable options: `--device a --device b` → ['a', 'b']. */
export function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

export function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError('expected a whole number of at least 1');
  return n;
}

export function nonNegativeNumber(value: string): number {
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n) || n < 0)
    throw new InvalidArgumentError('expected a number ≥ 0');
  return n;
}

export function port(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > 65535) throw new InvalidArgumentError('expected a port (1–65535)');
  return n;
}

/** Device credentials: 24 random characters, printable (the server's credential rule). */
export function generateCredentials(): string {
  return randomBytes(18).toString('base64url');
}

/** A time as ms since 1970: a number (ms) or an ISO 8601 date/time. */
export function timeArg(value: string): number {
  if (/^\d+$/.test(value)) return Number(value);
  const ms = Date.parse(value);
  if (Number.isNaN(ms))
    throw new InvalidArgumentError('expected ms since 1970 or an ISO date/time (e.g. 2025-01-31T12:00:00Z)');
  return ms;
}
