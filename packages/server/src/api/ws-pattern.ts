/*
 * The "basic regular expressions" Thinger.io clients send: filters of the v1 events API (the
 * Node-RED server-events node documents `.*8266` or `esp_.*2.*` for a device, and subscribes
 * to every event with `.*`), matched against the whole value; and list `name` filters
 * (thinr-cli's `device list "^revpi|jetson"`: a case-insensitive search in ids and names).
 * Matching takes time linear in value × pattern at worst (a set of positions is advanced
 * character by character; no backtracking, so no pattern can make the server spin), and
 * usually one table read per character: the sets met are cached as a deterministic
 * automaton. Matchers count their work, so that callers matching many values (list
 * filters) can bound the total.
 *
 * Supported: literal characters, `.`, classes `[a-z0-9_]` / `[^…]`, `\` escapes (`\.`, `\d`,
 * `\w`, `\s`), the quantifiers `*`, `+`, `?` after one of those, `|` between alternatives,
 * and `^` / `$` at the ends of an alternative (redundant when the whole value must match;
 * anchors in a search). Anything else (groups, `{n}`, back references) is refused with a
 * message.
 */

const MAX_PATTERN_LENGTH = 256;

/** Whether a character is in a set (case-sensitive). */
type CharTest = (c: string) => boolean;
/** Whether an item passes a character, given it in lower and upper case too (computed once). */
type ItemTest = (c: string, lower: string, upper: string) => boolean;

interface Item {
  test: ItemTest;
  /** The item's text in the pattern: items with the same text pass the same characters. */
  atom: string;
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
  /** Longest pattern accepted (default and most: 256 characters). */
  maxLength?: number;
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

/** `member`, also trying the other case of `c`. */
function eitherCase(member: CharTest): ItemTest {
  return (c, lower, upper) => member(c) || member(lower) || member(upper);
}

function isWordCode(code: number): boolean {
  return (
    (code >= 48 && code <= 57) || (code >= 65 && code <= 90) || (code >= 97 && code <= 122) || code === 95
  );
}

function escapeClass(ch: string): CharTest | undefined {
  switch (ch) {
    case 'd':
      return (c) => c >= '0' && c <= '9';
    case 'w':
      return (c) => c.length === 1 && isWordCode(c.charCodeAt(0));
    case 's':
      return (c) => /^\s$/.test(c);
    default:
      return undefined;
  }
}

function parseClass(p: string, start: number, ignoreCase: boolean): { test: ItemTest; end: number } {
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
  const member: CharTest = (c) => {
    for (const [lo, hi] of ranges) if (c >= lo && c <= hi) return true;
    return tests.some((t) => t(c));
  };
  // Case folding applies to membership, before negation: [^a] does not match "A".
  const folded: ItemTest = ignoreCase ? eitherCase(member) : (c) => member(c);
  const test: ItemTest = negate ? (c, lower, upper) => !folded(c, lower, upper) : folded;
  return { test, end: i + 1 };
}

/** Whether `$` at `index` ends the pattern as an anchor (not escaped by an odd run of `\`). */
function isEndAnchor(p: string, index: number): boolean {
  if (p[index] !== '$') return false;
  let backslashes = 0;
  for (let j = index - 1; j >= 0 && p[j] === '\\'; j--) backslashes++;
  return backslashes % 2 === 0;
}

function literal(ch: string, ignoreCase: boolean): ItemTest {
  if (!ignoreCase) return (c) => c === ch;
  const lower = ch.toLowerCase();
  const upper = ch.toUpperCase();
  if (lower === upper) return (c) => c === ch;
  return (c, cLower) => c === lower || c === upper || cLower === lower;
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
    const atomStart = i;
    let test: ItemTest;
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
      const cls = escapeClass(next);
      test = cls ? (c) => cls(c) : literal(next, ignoreCase);
      i += 2;
    } else if ('*+?'.includes(ch)) {
      throw new PatternError(`quantifier ${ch} with nothing to repeat`);
    } else if ('(){}^$]'.includes(ch)) {
      throw new PatternError(`"${ch}" is not supported in filter patterns (only . [] * + ? | and \\)`);
    } else {
      test = literal(ch, ignoreCase);
      i++;
    }
    const atom = p.slice(atomStart, i);
    const q = i < end ? p[i] : undefined;
    if (q === '*') {
      items.push({ test, atom, optional: true, repeat: true });
      i++;
    } else if (q === '+') {
      items.push(
        { test, atom, optional: false, repeat: false },
        { test, atom, optional: true, repeat: true },
      );
      i++;
    } else if (q === '?') {
      items.push({ test, atom, optional: true, repeat: false });
      i++;
    } else items.push({ test, atom, optional: false, repeat: false });
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

// --- matching

/** Cached automaton states per matcher (then the cache starts over). */
const MAX_DFA_STATES = 128;
/** Character classes first met in characters outside ASCII (ASCII has at most 128). */
const MAX_EXTRA_CLASSES = 16;
const MAX_CLASSES = 128 + MAX_EXTRA_CLASSES;
/** Characters outside ASCII whose class a matcher remembers. */
const MAX_CACHED_CODE_POINTS = 2048;
/** Work charged for a step the cache did not know, beyond one per position. */
const UNCACHED_STEP_COST = 64;
/** Work charged to classify a character (once per character, mostly), plus per distinct item tested. */
const CLASSIFY_COST = 96;
const ATOM_TEST_COST = 8;

/** State flags: a match is found (search, end not anchored); a match needs the value's end; no match can follow. */
const ACCEPT_NOW = 1;
const ACCEPT_AT_END = 2;
const DEAD = 4;

function setBit(set: Uint32Array, p: number): void {
  set[p >>> 5] = (set[p >>> 5] as number) | (1 << (p & 31));
}

function hasBit(set: Uint32Array, p: number): boolean {
  return (((set[p >>> 5] as number) >>> (p & 31)) & 1) === 1;
}

function intersects(a: Uint32Array, b: Uint32Array): boolean {
  for (let w = 0; w < a.length; w++) if (((a[w] as number) & (b[w] as number)) !== 0) return true;
  return false;
}

/** A set of positions as a string (a map key). */
function keyOf(set: Uint32Array): string {
  let key = '';
  for (let w = 0; w < set.length; w++) {
    const v = set[w] as number;
    key += String.fromCharCode(v & 0xffff, v >>> 16);
  }
  return key;
}

/** A pattern compiled for repeated matching, counting the work its matches took. */
export interface CountingMatcher {
  /** Whether `value` matches. */
  test(value: string): boolean;
  /**
   * Work done by test() so far: about one unit per character matched, plus about one per
   * pattern item for a character met in a state the matcher had not cached.
   */
  readonly work: number;
}

/**
 * The alternatives as one automaton over positions (each alternative's items, then its
 * accepting position), simulated as a set of positions (no backtracking) and cached as a
 * deterministic automaton: a state is a set of positions, a transition is taken per
 * character class (characters every item treats alike). A character met in a state for the
 * first time costs a step of the position set (time linear in the pattern); after that, one
 * table read. The cache is bounded (states, classes); when full it starts over, so patterns
 * with very many states (e.g. `a.........`) cost a position-set step per character, which
 * `work` counts.
 */
class Automaton implements CountingMatcher {
  work = 0;
  /** Positions: items plus one accepting position per alternative. */
  private readonly size: number;
  private readonly words: number;
  /** The distinct items (by their text) and the positions each is at. */
  private readonly atoms: Array<{ test: ItemTest; positions: Uint32Array }> = [];
  /** Positions whose item may repeat. */
  private readonly repeats: Uint32Array;
  /** Positions whose item may be skipped, ascending. */
  private readonly skippable: number[] = [];
  /** Start positions entered again after every character (alternatives not anchored at the start). */
  private readonly seeds: Uint32Array;
  /** Accepting positions of alternatives not anchored at the end (a search stops there). */
  private readonly acceptsNow: Uint32Array;
  /** Every accepting position. */
  private readonly accepts: Uint32Array;
  private readonly initial: Uint32Array;

  /** Character class of each ASCII character (-1: not classified yet). */
  private readonly ascii = new Int16Array(128).fill(-1);
  /** The positions whose item each class passes. */
  private readonly classSets: Uint32Array[] = [];
  private readonly classOfSet = new Map<string, number>();
  private readonly classOfCodePoint = new Map<number, number>();
  /** Classes first met outside ASCII. */
  private extraClasses = 0;
  private readonly classCap = MAX_CLASSES;
  /** Positions passing the last character that got no class (the class table was full). */
  private unclassified: Uint32Array;

  private readonly stateSets: Uint32Array[] = [];
  private readonly stateOfSet = new Map<string, number>();
  private flags: Uint8Array;
  /** Transitions: state × class → state, -1 when not computed yet. */
  private next: Int32Array;
  /** Bumped when the cache starts over (state ids from before are void). */
  private generation = 0;

  constructor(sequences: Sequence[]) {
    let size = 0;
    for (const seq of sequences) size += seq.items.length + 1;
    this.size = size;
    this.words = Math.ceil(size / 32);
    this.repeats = new Uint32Array(this.words);
    this.seeds = new Uint32Array(this.words);
    this.acceptsNow = new Uint32Array(this.words);
    this.accepts = new Uint32Array(this.words);
    this.unclassified = new Uint32Array(this.words);
    const starts = new Uint32Array(this.words);
    const atomOf = new Map<string, { test: ItemTest; positions: Uint32Array }>();
    let offset = 0;
    for (const seq of sequences) {
      seq.items.forEach((item, i) => {
        let atom = atomOf.get(item.atom);
        if (!atom) {
          atom = { test: item.test, positions: new Uint32Array(this.words) };
          atomOf.set(item.atom, atom);
          this.atoms.push(atom);
        }
        setBit(atom.positions, offset + i);
        if (item.repeat) setBit(this.repeats, offset + i);
        if (item.optional) this.skippable.push(offset + i);
      });
      const accepting = offset + seq.items.length;
      setBit(this.accepts, accepting);
      if (!seq.end) setBit(this.acceptsNow, accepting);
      setBit(starts, offset);
      if (!seq.start) setBit(this.seeds, offset);
      offset = accepting + 1;
    }
    this.initial = this.close(starts);
    // Characters are classified when first met: compiling takes time linear in the pattern.
    const capacity = 8;
    this.flags = new Uint8Array(capacity);
    this.next = new Int32Array(capacity * this.classCap).fill(-1);
    this.intern(this.initial); // state 0
  }

  test(value: string): boolean {
    let s = 0;
    let flags = this.flags;
    let f = flags[0] as number;
    if ((f & (ACCEPT_NOW | DEAD)) !== 0) return (f & ACCEPT_NOW) !== 0;
    const n = value.length;
    const cap = this.classCap;
    const ascii = this.ascii;
    let next = this.next;
    let steps = 0;
    for (let i = 0; i < n; i++) {
      let c = value.charCodeAt(i);
      let cls: number;
      if (c < 128) {
        cls = ascii[c] as number;
        if (cls < 0) cls = this.classOf(c);
      } else {
        // A surrogate pair is one character (as `.` sees it); a lone surrogate is one too.
        if (c >= 0xd800 && c <= 0xdbff && i + 1 < n) {
          const low = value.charCodeAt(i + 1);
          if (low >= 0xdc00 && low <= 0xdfff) {
            c = (c - 0xd800) * 0x400 + (low - 0xdc00) + 0x10000;
            i++;
          }
        }
        cls = this.classOf(c);
      }
      let t = cls >= 0 ? (next[s * cap + cls] as number) : -1;
      if (t < 0) {
        t = this.step(s, cls);
        // The cache may have grown or started over.
        next = this.next;
        flags = this.flags;
      }
      s = t;
      steps++;
      f = flags[s] as number;
      if ((f & (ACCEPT_NOW | DEAD)) !== 0) {
        this.work += steps;
        return (f & ACCEPT_NOW) !== 0;
      }
    }
    this.work += steps;
    return (f & ACCEPT_AT_END) !== 0;
  }

  /** Adds the positions reachable by skipping optional items. */
  private close(set: Uint32Array): Uint32Array {
    // Ascending: a run of optional items is crossed in one pass.
    for (const p of this.skippable) if (hasBit(set, p)) setBit(set, p + 1);
    return set;
  }

  /** The positions whose item passes `c`. */
  private passing(c: string): Uint32Array {
    const set = new Uint32Array(this.words);
    const lower = c.toLowerCase();
    const upper = c.toUpperCase();
    for (const atom of this.atoms)
      if (atom.test(c, lower, upper))
        for (let w = 0; w < this.words; w++) set[w] = (set[w] as number) | (atom.positions[w] as number);
    return set;
  }

  /**
   * The class of a character not classified yet (or, outside ASCII, not remembered); -1 (and
   * `unclassified` set) when no class is left for it.
   */
  private classOf(codePoint: number): number {
    const ascii = codePoint < 128;
    if (!ascii) {
      const known = this.classOfCodePoint.get(codePoint);
      if (known !== undefined) return known;
    }
    const set = this.passing(String.fromCodePoint(codePoint));
    this.work += CLASSIFY_COST + this.atoms.length * ATOM_TEST_COST;
    const key = keyOf(set);
    let cls = this.classOfSet.get(key);
    if (cls === undefined) {
      // ASCII characters always find a class (128 at most); others share the rest.
      if (!ascii && this.extraClasses >= MAX_EXTRA_CLASSES) {
        this.unclassified = set;
        return -1;
      }
      if (!ascii) this.extraClasses++;
      cls = this.classSets.length;
      this.classSets.push(set);
      this.classOfSet.set(key, cls);
    }
    if (ascii) this.ascii[codePoint] = cls;
    else if (this.classOfCodePoint.size < MAX_CACHED_CODE_POINTS) this.classOfCodePoint.set(codePoint, cls);
    return cls;
  }

  /** The state after a character of class `cls` (-1: `unclassified`) in state `s`; cached. */
  private step(s: number, cls: number): number {
    const from = this.stateSets[s] as Uint32Array;
    const pass = cls >= 0 ? (this.classSets[cls] as Uint32Array) : this.unclassified;
    const to = new Uint32Array(this.words);
    let carry = 0;
    for (let w = 0; w < this.words; w++) {
      const moved = (from[w] as number) & (pass[w] as number);
      const stay = moved & (this.repeats[w] as number);
      const advance = moved & ~(this.repeats[w] as number);
      to[w] = stay | (advance << 1) | carry | (this.seeds[w] as number);
      carry = advance >>> 31;
    }
    this.close(to);
    this.work += this.size + UNCACHED_STEP_COST;
    const generation = this.generation;
    const t = this.intern(to);
    if (cls >= 0 && generation === this.generation) this.next[s * this.classCap + cls] = t;
    return t;
  }

  /** The state of a set of positions, added to the cache if new. */
  private intern(set: Uint32Array): number {
    const key = keyOf(set);
    const known = this.stateOfSet.get(key);
    if (known !== undefined) return known;
    if (this.stateSets.length >= MAX_DFA_STATES) {
      // Start over: forget every state but the initial one.
      this.generation++;
      this.stateSets.length = 0;
      this.stateOfSet.clear();
      this.next.fill(-1);
      this.work += this.next.length >>> 4;
      this.intern(this.initial);
      return this.intern(set);
    }
    const id = this.stateSets.length;
    if (id >= this.flags.length) {
      const capacity = Math.min(this.flags.length * 2, MAX_DFA_STATES);
      const flags = new Uint8Array(capacity);
      flags.set(this.flags);
      this.flags = flags;
      const next = new Int32Array(capacity * this.classCap).fill(-1);
      next.set(this.next);
      this.next = next;
    }
    this.stateSets.push(set);
    this.stateOfSet.set(key, id);
    let f = 0;
    if (intersects(set, this.acceptsNow)) f |= ACCEPT_NOW;
    if (intersects(set, this.accepts)) f |= ACCEPT_AT_END;
    if (!set.some((w) => w !== 0)) f |= DEAD;
    this.flags[id] = f;
    return id;
  }
}

/** Plain text: compared as text (or searched), counting one unit per character. */
class TextMatcher implements CountingMatcher {
  work = 0;
  private readonly text: string;
  constructor(
    text: string,
    private readonly search: boolean,
    private readonly ignoreCase: boolean,
  ) {
    this.text = ignoreCase ? text.toLowerCase() : text;
  }
  test(value: string): boolean {
    this.work += value.length;
    const v = this.ignoreCase ? value.toLowerCase() : value;
    return this.search ? v.includes(this.text) : v === this.text;
  }
}

/**
 * A matcher for `pattern` that counts its work (see compilePattern); for callers that
 * match many values and bound the total.
 */
export function compileCountingMatcher(pattern: string, options: PatternOptions = {}): CountingMatcher {
  const { search = false, ignoreCase = false } = options;
  const maxLength = Math.min(options.maxLength ?? MAX_PATTERN_LENGTH, MAX_PATTERN_LENGTH);
  if (pattern.length > maxLength) throw new PatternError(`pattern longer than ${maxLength} characters`);
  if (!META.test(pattern)) return new TextMatcher(pattern, search, ignoreCase);
  const sequences = alternatives(pattern).map((p) => {
    const seq = parseSequence(p, ignoreCase);
    // Matching the whole value: both ends are anchored.
    return search ? seq : { ...seq, start: true, end: true };
  });
  return new Automaton(sequences);
}

/**
 * A matcher for `pattern`: plain text (no pattern characters) is compared as text, else the
 * pattern is matched. By default the whole value must match (v1 event filters); with
 * `search`, a match anywhere counts unless anchored. Throws PatternError for what is not
 * supported.
 */
export function compilePattern(pattern: string, options: PatternOptions = {}): Matcher {
  const m = compileCountingMatcher(pattern, options);
  return (value) => m.test(value);
}
