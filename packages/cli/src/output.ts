/**
 * What commands print: data on stdout (tables and short lines for people, JSON with --json),
 * progress and notices on stderr, so that `iotmp … --json | jq` always gets clean JSON.
 */

/** Writes to stdout; resolves once written (large binary output to a pipe). */
export function writeStdout(data: string | Uint8Array): Promise<void> {
  return new Promise((resolve, reject) => {
    process.stdout.write(data, (err) => (err ? reject(err) : resolve()));
  });
}

export function line(text = ''): void {
  process.stdout.write(`${text}\n`);
}

/** A notice for the person at the terminal (stderr). */
export function note(text: string): void {
  process.stderr.write(`${text}\n`);
}

export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

/** One JSON value per line (streams of events and data). */
export function printJsonLine(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value)}\n`);
}

/** Columns aligned on the widest cell; the header in capitals. */
export function table(
  headers: string[],
  rows: Array<Array<string | number | boolean | null | undefined>>,
): void {
  const cells = rows.map((r) => r.map((c) => (c === null || c === undefined ? '-' : String(c))));
  const all = [headers.map((h) => h.toUpperCase()), ...cells];
  const widths = headers.map((_, i) => Math.max(...all.map((r) => (r[i] ?? '').length)));
  for (const r of all) {
    line(
      r
        .map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i] ?? 0)))
        .join('  ')
        .trimEnd(),
    );
  }
}

/** `key: value` lines, keys aligned. */
export function details(entries: Array<[string, string | number | boolean | null | undefined]>): void {
  const width = Math.max(...entries.map(([k]) => k.length)) + 1;
  for (const [k, v] of entries) line(`${`${k}:`.padEnd(width)} ${v === null || v === undefined ? '-' : v}`);
}

/** A JSON value on one line, cut to `max` characters. */
export function shortJson(value: unknown, max = 60): string {
  const text = value === undefined ? '' : JSON.stringify(value);
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

/** ms since 1970 → "2025-01-31 12:00:00" (UTC, ISO-like). */
export function time(ms: number | null | undefined): string | undefined {
  if (ms === null || ms === undefined) return undefined;
  return new Date(ms)
    .toISOString()
    .replace('T', ' ')
    .replace(/\.\d+Z$/, 'Z');
}

/** "3 s", "4 min", "2 h", "5 d" ago. */
export function ago(ms: number | null | undefined, now = Date.now()): string | undefined {
  if (ms === null || ms === undefined) return undefined;
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

/** Binary data for a terminal: size and the first bytes in hex. */
export function hexSummary(bytes: Uint8Array, max = 64): string {
  const shown = Buffer.from(bytes.subarray(0, max)).toString('hex').replace(/(..)/g, '$1 ').trim();
  return `${bytes.length} bytes (binary): ${shown}${bytes.length > max ? ' …' : ''}`;
}

/** 12345.6 → "12,346". */
export function num(n: number, digits = 0): string {
  return n.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits });
}
