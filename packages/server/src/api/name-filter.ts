import { HttpError } from './errors.js';
import { compilePattern, isPattern, PatternError } from './ws-pattern.js';

/*
 * The `name` filter of list routes (devices, buckets, endpoints), as Thinger.io clients use
 * it: a case-insensitive regular expression searched in an asset's id and its name
 * (thinr-cli: `device list "^revpi|jetson"`; the Node-RED editor: what the user typed).
 * Plain text is a case-insensitive substring. Patterns go through the non-backtracking
 * matcher of ws-pattern.ts (time linear in text × pattern); what it cannot match (groups,
 * `{n}`, …) is refused with 400.
 */

export interface NameFilter {
  /** The filter when it is plain text (no pattern characters): a substring, any case. */
  readonly text: string | undefined;
  /** Whether an asset with this id and name passes. */
  matches(id: string, name: string): boolean;
}

/** Longest `name` filter (characters). */
export const MAX_NAME_FILTER_LENGTH = 128;

/** The querystring schema of `name`. */
export const nameFilterSchema = {
  type: 'string',
  maxLength: MAX_NAME_FILTER_LENGTH,
  description:
    'Those whose id or name matches: a case-insensitive regular expression searched in both (`.`, `[…]`, `*`, `+`, `?`, `|`, `^`, `$`, `\\` escapes; no groups or `{n}`); plain text is a substring. Empty: no filter',
} as const;

/** The filter for a `name` query parameter (undefined or "": none); HttpError 400 for a pattern not supported. */
export function nameFilter(name: string | undefined): NameFilter | undefined {
  if (name === undefined || name === '') return undefined;
  let match: (value: string) => boolean;
  try {
    match = compilePattern(name, { search: true, ignoreCase: true });
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
    matches: (id, assetName) => match(id) || match(assetName),
  };
}
