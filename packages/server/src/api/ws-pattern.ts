/*
 * The "basic regular expressions" Thinger.io's v1 events API takes as filters (the Node-RED
 * server-events node documents `.*8266` or `esp_.*2.*` for a device, and subscribes to every
 * event with `.*`): matched against the whole value, in time linear in value × pattern (a
 * set of positions is advanced character by character; no backtracking, so no pattern can
 * make the server spin).
 *
 * Supported: literal characters, `.`, classes `[a-z0-9_]` / `[^…]`, `\` escapes (`\.`, `\d`,
 * `\w`, `\s`), the quantifiers `*`, `+`, `?` after one of those, `|` between alternatives,
 * and `^` / `$` at the ends (redundant: the whole value must match). Anything else (groups,
 * `{n}`, back references) is refused with a message.
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

const META = /[.*+?|[\]()\\^${}]/;

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

function parseClass(p: string, start: number): { test: CharTest; end: number } {
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
  const test: CharTest = (c) => {
    let hit = false;
    for (const [lo, hi] of ranges) {
      if (c >= lo && c <= hi) {
        hit = true;
        break;
      }
    }
    if (!hit) hit = tests.some((t) => t(c));
    return hit !== negate;
  };
  return { test, end: i + 1 };
}

function parseSequence(p: string): Item[] {
  const items: Item[] = [];
  let i = 0;
  if (p[0] === '^') i = 1;
  let end = p.length;
  if (end > i && p[end - 1] === '$' && p[end - 2] !== '\\') end--;
  while (i < end) {
    const ch = p[i] as string;
    let test: CharTest;
    if (ch === '.') {
      test = () => true;
      i++;
    } else if (ch === '[') {
      const cls = parseClass(p, i);
      test = cls.test;
      i = cls.end;
    } else if (ch === '\\') {
      const next = p[i + 1];
      if (next === undefined) throw new PatternError('pattern ends with a lone \\');
      test = escapeClass(next) ?? ((c) => c === next);
      i += 2;
    } else if ('*+?'.includes(ch)) {
      throw new PatternError(`quantifier ${ch} with nothing to repeat`);
    } else if ('(){}^$]'.includes(ch)) {
      throw new PatternError(`"${ch}" is not supported in filter patterns (only . [] * + ? | and \\)`);
    } else {
      test = (c) => c === ch;
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
  return items;
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

function matches(items: readonly Item[], value: string): boolean {
  const n = items.length;
  let current = new Uint8Array(n + 1);
  let next = new Uint8Array(n + 1);
  const close = (set: Uint8Array) => {
    for (let i = 0; i < n; i++) if (set[i] && (items[i] as Item).optional) set[i + 1] = 1;
  };
  current[0] = 1;
  close(current);
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
    if (!any) return false;
    close(next);
    [current, next] = [next, current];
  }
  return current[n] === 1;
}

/**
 * A matcher for a v1 filter value: exact comparison when it has no pattern characters,
 * else the pattern against the whole value. Throws PatternError for what is not supported.
 */
export function compilePattern(pattern: string): Matcher {
  if (pattern.length > MAX_PATTERN_LENGTH)
    throw new PatternError(`filter pattern longer than ${MAX_PATTERN_LENGTH} characters`);
  if (!META.test(pattern)) return (value) => value === pattern;
  const sequences = alternatives(pattern).map(parseSequence);
  return (value) => sequences.some((items) => matches(items, value));
}
