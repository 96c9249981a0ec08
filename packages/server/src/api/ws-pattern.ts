/*
 * The "basic regular expressions" Thinger.io clients send: filters of the v1 events API (the
 * Node-RED server-events node documents `.*8266` or `esp_.*2.*` for a device, and subscribes
 * to every event with `.*`), matched against the whole value; and list `name` filters
 * (thinr-cli's `device list "^revpi|jetson"`: a case-insensitive search in ids and names).
 * Matching takes time linear in value × pattern (a set of positions is advanced character
 * by character; no backtracking, so no pattern can make the server spin).
 *
 * Supported: literal characters, `.`, classes `[a-z0-9_]` / `[^…]`, `\` escapes (`\.`, `\d`,
 * `\w`, `\s`), the quantifiers `*`, `+`, `?` after one of those, `|` between alternatives,
 * and `^` / `$` at the ends of an alternative (redundant when the whole value must match;
 * anchors in a search). Anything else (groups, `{n}`, back references) is refused with a
 * message.
 */

const MAX_PATTERN_LENGTH = 256;

type CharTest = (c: string) => boolean;

interface Item {
  test: CharTest;
  /** May be skipped. */
  optional: boolean;
  /** May repeat. */
  repeat: boolean;
}

export type Matcher = (value: string) => boolean;

export class PatternError extends Error {}

export interface PatternOptions {
  /**
   * Find the pattern anywhere in the value (as a regular expression search does) unless an
   * alternative is anchored with `^` / `$`; default: the whole value must match.
   */
  search?: boolean;
  /** Letters match in either case. */
  ignoreCase?: boolean;
}

/** One alternative: its items, and whether it is anchored at the start / end. */
interface Sequence {
  items: Item[];
  start: boolean;
  end: boolean;
}

const META = /[.*+?|[\]()\\^${}]/;

/** Whether `pattern` has pattern characters (else it is matched as plain text). */
export function isPattern(pattern: string): boolean {
  return META.test(pattern);
}

/** `test`, also trying the other case of `c`. */
function eitherCase(test: CharTest): CharTest {
  return (c) => test(c) || test(c.toLowerCase()) || test(c.toUpperCase());
}

function escapeClass(ch: string): CharTest | undefined {
  switch (ch) {
    case 'd':
      return (c) => c >= '0' && c <= '9';
    case 'w':
      return (c) => /^[A-Za-z0-9_]$/.test(c);
    case 's':
      return (c) => /^\s$/.test(c);
    default:
      return undefined;
  }
}

function parseClass(p: string, start: number, ignoreCase: boolean): { test: CharTest; end: number } {
  let i = start + 1;
  let negate = false;
  if (p[i] === '^') {
    negate = true;
    i++;
  }
  const ranges: Array<[string, string]> = [];
  const tests: CharTest[] = [];
  let first = true;
  while (i < p.length && (p[i] !== ']' || first)) {
    first = false;
    let lo = p[i] as string;
    if (lo === '\\') {
      const next = p[i + 1];
      if (next === undefined) throw new PatternError('pattern ends inside a character class');
      const cls = escapeClass(next);
      i += 2;
      if (cls) {
        tests.push(cls);
        continue;
      }
      lo = next;
    } else i++;
    if (p[i] === '-' && p[i + 1] !== undefined && p[i + 1] !== ']') {
      let hi = p[i + 1] as string;
      i += 2;
      if (hi === '\\') {
        hi = p[i] as string;
        if (hi === undefined) throw new PatternError('pattern ends inside a character class');
        i++;
      }
      if (hi < lo) throw new PatternError(`bad range ${lo}-${hi} in a character class`);
      ranges.push([lo, hi]);
    } else ranges.push([lo, lo]);
  }
  if (p[i] !== ']') throw new PatternError('character class without a closing ]');
  let member: CharTest = (c) => {
    for (const [lo, hi] of ranges) if (c >= lo && c <= hi) return true;
    return tests.some((t) => t(c));
  };
  // Case folding applies to membership, before negation: [^a] does not match "A".
  if (ignoreCase) member = eitherCase(member);
  const test: CharTest = negate ? (c) => !member(c) : member;
  return { test, end: i + 1 };
}

/** Whether `$` at `index` ends the pattern as an anchor (not escaped by an odd run of `\`). */
function isEndAnchor(p: string, index: number): boolean {
  if (p[index] !== '$') return false;
  let backslashes = 0;
  for (let j = index - 1; j >= 0 && p[j] === '\\'; j--) backslashes++;
  return backslashes % 2 === 0;
}

function literal(ch: string, ignoreCase: boolean): CharTest {
  if (!ignoreCase) return (c) => c === ch;
  const lower = ch.toLowerCase();
  const upper = ch.toUpperCase();
  if (lower === upper) return (c) => c === ch;
  return (c) => c === lower || c === upper || c.toLowerCase() === lower;
}

function parseSequence(p: string, ignoreCase: boolean): Sequence {
  const items: Item[] = [];
  let i = 0;
  const anchoredStart = p[0] === '^';
  if (anchoredStart) i = 1;
  let end = p.length;
  const anchoredEnd = end > i && isEndAnchor(p, end - 1);
  if (anchoredEnd) end--;
  while (i < end) {
    const ch = p[i] as string;
    let test: CharTest;
    if (ch === '.') {
      test = () => true;
      i++;
    } else if (ch === '[') {
      const cls = parseClass(p, i, ignoreCase);
      test = cls.test;
      i = cls.end;
    } else if (ch === '\\') {
      const next = p[i + 1];
      if (next === undefined) throw new PatternError('pattern ends with a lone \\');
      test = escapeClass(next) ?? literal(next, ignoreCase);
      i += 2;
    } else if ('*+?'.includes(ch)) {
      throw new PatternError(`quantifier ${ch} with nothing to repeat`);
    } else if ('(){}^$]'.includes(ch)) {
      throw new PatternError(`"${ch}" is not supported in filter patterns (only . [] * + ? | and \\)`);
    } else {
      test = literal(ch, ignoreCase);
      i++;
    }
    const q = i < end ? p[i] : undefined;
    if (q === '*') {
      items.push({ test, optional: true, repeat: true });
      i++;
    } else if (q === '+') {
      items.push({ test, optional: false, repeat: false }, { test, optional: true, repeat: true });
      i++;
    } else if (q === '?') {
      items.push({ test, optional: true, repeat: false });
      i++;
    } else items.push({ test, optional: false, repeat: false });
    if (i < end && '*+?'.includes(p[i] as string))
      throw new PatternError('stacked quantifiers are not supported');
  }
  return { items, start: anchoredStart, end: anchoredEnd };
}

/** Splits on `|` outside classes and escapes. */
function alternatives(p: string): string[] {
  const out: string[] = [];
  let start = 0;
  let inClass = false;
  for (let i = 0; i < p.length; i++) {
    const ch = p[i];
    if (ch === '\\') {
      i++;
      continue;
    }
    if (inClass) {
      if (ch === ']' && i > 0) inClass = false;
      continue;
    }
    if (ch === '[') {
      inClass = true;
      if (p[i + 1] === '^') i++;
      i++; // a ] right after [ (or [^) is a literal
      continue;
    }
    if (ch === '|') {
      out.push(p.slice(start, i));
      start = i + 1;
    }
  }
  out.push(p.slice(start));
  return out;
}

/**
 * Whether the sequence matches `value`: from its start (or, unanchored, from any position)
 * to its end (or, unanchored, to any position).
 */
function matches(seq: Sequence, value: string): boolean {
  const { items } = seq;
  const n = items.length;
  let current = new Uint8Array(n + 1);
  let next = new Uint8Array(n + 1);
  const close = (set: Uint8Array) => {
    for (let i = 0; i < n; i++) if (set[i] && (items[i] as Item).optional) set[i + 1] = 1;
  };
  current[0] = 1;
  close(current);
  if (!seq.end && current[n]) return true;
  for (const c of value) {
    next.fill(0);
    let any = false;
    for (let i = 0; i < n; i++) {
      if (!current[i]) continue;
      const item = items[i] as Item;
      if (!item.test(c)) continue;
      any = true;
      if (item.repeat) next[i] = 1;
      else next[i + 1] = 1;
    }
    if (!seq.start)
      next[0] = 1; // a match may also begin after this character
    else if (!any) return false;
    close(next);
    if (!seq.end && next[n]) return true;
    [current, next] = [next, current];
  }
  return current[n] === 1;
}

/**
 * A matcher for `pattern`: plain text (no pattern characters) is compared as text, else the
 * pattern is matched. By default the whole value must match (v1 event filters); with
 * `search`, a match anywhere counts unless anchored. Throws PatternError for what is not
 * supported.
 */
export function compilePattern(pattern: string, options: PatternOptions = {}): Matcher {
  const { search = false, ignoreCase = false } = options;
  if (pattern.length > MAX_PATTERN_LENGTH)
    throw new PatternError(`pattern longer than ${MAX_PATTERN_LENGTH} characters`);
  if (!META.test(pattern)) {
    if (!ignoreCase) return search ? (value) => value.includes(pattern) : (value) => value === pattern;
    const lower = pattern.toLowerCase();
    return search ? (value) => value.toLowerCase().includes(lower) : (value) => value.toLowerCase() === lower;
  }
  const sequences = alternatives(pattern).map((p) => {
    const seq = parseSequence(p, ignoreCase);
    // Matching the whole value: both ends are anchored.
    return search ? seq : { ...seq, start: true, end: true };
  });
  return (value) => sequences.some((seq) => matches(seq, value));
}
