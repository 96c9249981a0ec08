import { HttpError } from './errors.js';
import { type CountingMatcher, compileCountingMatcher, isPattern, PatternError } from './ws-pattern.js';

/*
 * The `name` filter of list routes (devices, buckets, endpoints), as Thinger.io clients use
 * it: a case-insensitive regular expression searched in an asset's id and its name
 * (thinr-cli: `device list "^revpi|jetson"`; the Node-RED editor: what the user typed).
 * Plain text is a case-insensitive substring. Patterns go through the non-backtracking
 * matcher of ws-pattern.ts (time linear in text × pattern at worst, usually one step per
 * character); what it cannot match (groups, `{n}`, …) is refused with 400. A list is matched
 * synchronously, so one request's matching work is bounded (MAX_NAME_FILTER_WORK): a pattern
 * that would take longer over the list is refused with 400 rather than stall the server.
 */

export interface NameFilter {
  /** The filter when it is plain text (no pattern characters): a substring, any case. */
  readonly text: string | undefined;
  /** Whether an asset with this id and name passes. */
  matches(id: string, name: string): boolean;
}

/** Longest `name` filter (characters). */
export const MAX_NAME_FILTER_LENGTH = 128;

/**
 * Matching work (CountingMatcher.work: about one unit per character, more for a pattern
 * whose states do not fit the matcher's cache) one request's filter may do, summed over the
 * ids and names it tests: some tens of milliseconds at worst. Ordinary patterns cost about
 * one unit per character: 10,000 buckets with 256-character names take under 4 million.
 */
export const MAX_NAME_FILTER_WORK = 16_000_000;

/** The querystring schema of `name`. */
export const nameFilterSchema = {
  type: 'string',
  maxLength: MAX_NAME_FILTER_LENGTH,
  description:
    'Those whose id or name matches: a case-insensitive regular expression searched in both (`.`, `[…]`, `*`, `+`, `?`, `|`, `^`, `$`, `\\` escapes; no groups or `{n}`); plain text is a substring. Empty: no filter',
} as const;

/** The querystring properties of a filtered, paged list (devices, buckets, endpoints). */
export const filteredListQuery = {
  count: { type: 'integer', minimum: 1, maximum: 1000, default: 100 },
  index: { type: 'integer', minimum: 0, default: 0 },
  name: nameFilterSchema,
  authorization: { type: 'string' },
} as const;

/**
 * The filter for a `name` query parameter (undefined or "": none); HttpError 400 for a
 * pattern not supported, and from `matches` once the request's matching work exceeds
 * `maxWork` (`what`: the assets listed, for the message).
 */
export function nameFilter(
  name: string | undefined,
  what = 'assets',
  maxWork = MAX_NAME_FILTER_WORK,
): NameFilter | undefined {
  if (name === undefined || name === '') return undefined;
  let matcher: CountingMatcher;
  try {
    matcher = compileCountingMatcher(name, { search: true, ignoreCase: true });
  } catch (err) {
    if (err instanceof PatternError)
      throw new HttpError(
        400,
        'invalid_request',
        `name: ${err.message} (escape pattern characters with \\ to match them literally)`,
      );
    throw err;
  }
  return {
    text: isPattern(name) ? undefined : name,
    matches: (id, assetName) => {
      const found = matcher.test(id) || matcher.test(assetName);
      if (matcher.work > maxWork)
        throw new HttpError(
          400,
          'invalid_request',
          `name: pattern too costly to search this many ${what}; use a simpler pattern or plain text`,
        );
      return found;
    },
  };
}
