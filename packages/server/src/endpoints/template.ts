/**
 * Endpoint templates: pure functions that fill `{{…}}` placeholders from the caller's data.
 *
 * - `{{key}}`, `{{a.b}}`, `{{list.0.name}}`: a path into the data (object keys, array indexes).
 *   `{{payload}}` and `{{}}` are the whole data; `{{payload.a}}` is `{{a}}` (Thinger.io's
 *   spellings). Spaces inside the braces are ignored. Functions and defaults
 *   (`{{payload:fn=1}}`) are not supported and are refused when the endpoint is saved.
 * - Only the data's own keys are paths: `{{constructor}}` or `{{a.length}}` find nothing.
 * - A missing value is empty text; as a whole JSON value it is `null`.
 * - Text (URL, header values, a string body, placeholders inside a longer JSON string): a
 *   string value is inserted as it is, any other value as its JSON text. In the URL every
 *   inserted text is percent-encoded (encodeURIComponent), so data cannot add path segments,
 *   query parameters or change the host.
 * - JSON bodies: a string that is exactly one placeholder becomes the value itself (numbers,
 *   objects and arrays keep their type); object keys are literal.
 *
 * Output is bounded (`maxLength` characters): a template that repeats a large value fails
 * with `too_large` instead of growing memory.
 */

export type TemplateErrorCode = 'invalid_template' | 'invalid_data' | 'too_large';

export class TemplateError extends Error {
  override name = 'TemplateError';
  constructor(
    readonly code: TemplateErrorCode,
    message: string,
  ) {
    super(message);
  }
}

/** Deepest caller data accepted (the PSON decoder's default limit too). */
export const MAX_DATA_DEPTH = 64;
/** Deepest JSON body template accepted. */
export const MAX_TEMPLATE_DEPTH = 32;
const MAX_PATH_SEGMENTS = 32;
const MAX_SEGMENT_LENGTH = 256;

/** A placeholder: a path into the data ([] = the whole data) and its text in the template. */
export interface Placeholder {
  readonly path: readonly string[];
  readonly source: string;
}
export type TemplatePart = string | Placeholder;

const PLACEHOLDER = /\{\{([^{}]*)\}\}/g;
const SEGMENT = /^[^\s.:=|{}]+$/;
const ARRAY_INDEX = /^(?:0|[1-9][0-9]{0,8})$/;

function shown(text: string): string {
  return text.length > 64 ? `${text.slice(0, 61)}...` : text;
}

function parsePlaceholder(inner: string, source: string): Placeholder {
  const trimmed = inner.trim();
  if (trimmed === '') return { path: [], source };
  if (/[:=|]/.test(trimmed))
    throw new TemplateError(
      'invalid_template',
      `placeholder ${shown(source)}: functions and default values are not supported; write {{key}}, {{a.b}} or {{payload}}`,
    );
  const segments = trimmed.split('.');
  if (segments.length > MAX_PATH_SEGMENTS)
    throw new TemplateError(
      'invalid_template',
      `placeholder ${shown(source)}: more than ${MAX_PATH_SEGMENTS} path segments`,
    );
  for (const s of segments) {
    if (!SEGMENT.test(s) || s.length > MAX_SEGMENT_LENGTH)
      throw new TemplateError(
        'invalid_template',
        `placeholder ${shown(source)} is not a path like {{key}}, {{a.b}} or {{payload}}`,
      );
  }
  if (segments[0] === 'payload') segments.shift();
  return { path: segments, source };
}

/** Splits a template into literal text and placeholders; throws `invalid_template` on a malformed placeholder. */
export function parseTemplate(text: string): TemplatePart[] {
  const parts: TemplatePart[] = [];
  let last = 0;
  for (const m of text.matchAll(PLACEHOLDER)) {
    if (m.index > last) parts.push(text.slice(last, m.index));
    parts.push(parsePlaceholder(m[1] as string, m[0]));
    last = m.index + m[0].length;
  }
  if (last < text.length) parts.push(text.slice(last));
  return parts;
}

/** Checks every string of a JSON body template and its depth; throws `invalid_template`. */
export function checkJsonTemplate(node: unknown, depth = 0): void {
  if (depth > MAX_TEMPLATE_DEPTH)
    throw new TemplateError(
      'invalid_template',
      `the body is nested deeper than ${MAX_TEMPLATE_DEPTH} levels`,
    );
  if (typeof node === 'string') parseTemplate(node);
  else if (Array.isArray(node)) for (const item of node) checkJsonTemplate(item, depth + 1);
  else if (node !== null && typeof node === 'object')
    for (const value of Object.values(node)) checkJsonTemplate(value, depth + 1);
}

/**
 * Caller data as plain JSON values: bigints become numbers when exact (else decimal text),
 * bytes become base64, Maps become objects, non-finite numbers null. Throws `invalid_data`
 * when nested deeper than `maxDepth`.
 */
export function toTemplateData(value: unknown, maxDepth = MAX_DATA_DEPTH): unknown {
  const convert = (v: unknown, depth: number): unknown => {
    switch (typeof v) {
      case 'string':
      case 'boolean':
        return v;
      case 'number':
        return Number.isFinite(v) ? v : null;
      case 'bigint':
        return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER)
          ? Number(v)
          : v.toString();
      case 'object':
        break;
      default:
        return null;
    }
    if (v === null) return null;
    if (v instanceof Uint8Array) return Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('base64');
    if (depth >= maxDepth)
      throw new TemplateError('invalid_data', `the data is nested deeper than ${maxDepth} levels`);
    if (Array.isArray(v)) {
      const out: unknown[] = [];
      for (let i = 0; i < v.length; i++) out.push(convert(v[i], depth + 1));
      return out;
    }
    const entries: Iterable<[unknown, unknown]> = v instanceof Map ? v : Object.entries(v);
    const out: Record<string, unknown> = {};
    for (const [k, item] of entries) {
      // An own "__proto__" key stays a key; assigning it would set the prototype instead.
      Object.defineProperty(out, String(k), {
        value: convert(item, depth + 1),
        enumerable: true,
        writable: true,
        configurable: true,
      });
    }
    return out;
  };
  return convert(value, 0);
}

/** The value at `path` in `data`, or undefined when there is none. Own keys and array indexes only. */
export function lookup(data: unknown, path: readonly string[]): unknown {
  let current = data;
  for (const segment of path) {
    if (Array.isArray(current)) {
      if (!ARRAY_INDEX.test(segment)) return undefined;
      const i = Number(segment);
      if (i >= current.length) return undefined;
      current = current[i];
    } else if (current instanceof Map) {
      if (!current.has(segment)) return undefined;
      current = current.get(segment);
    } else if (current !== null && typeof current === 'object' && !(current instanceof Uint8Array)) {
      if (!Object.hasOwn(current, segment)) return undefined;
      current = (current as Record<string, unknown>)[segment];
    } else return undefined;
  }
  return current;
}

function jsonText(value: unknown): string {
  let text: string | undefined;
  try {
    text = JSON.stringify(value);
  } catch {
    throw new TemplateError(
      'invalid_data',
      'the data cannot be written as JSON (cyclic, too deep or not JSON)',
    );
  }
  return text ?? 'null';
}

/** Bounded output; `what` names it in the error. */
class Output {
  private readonly pieces: string[] = [];
  private length = 0;
  constructor(
    private readonly maxLength: number,
    private readonly what: string,
  ) {}
  push(text: string): void {
    this.length += text.length;
    if (this.length > this.maxLength)
      throw new TemplateError(
        'too_large',
        `the ${this.what} would be longer than ${this.maxLength} characters`,
      );
    this.pieces.push(text);
  }
  toString(): string {
    return this.pieces.join('');
  }
}

/** Renders placeholders to text and JSON, each path's JSON text computed once per render. */
class Filler {
  private readonly json = new Map<string, string>();
  constructor(private readonly data: unknown) {}

  /** The value as a whole JSON value: missing → null. */
  jsonOf(path: readonly string[]): string {
    const key = path.join('\u0000');
    let text = this.json.get(key);
    if (text === undefined) {
      const value = lookup(this.data, path);
      text = value === undefined ? 'null' : jsonText(value);
      this.json.set(key, text);
    }
    return text;
  }

  /** The value as text: missing → '', strings as they are, anything else as JSON. */
  textOf(path: readonly string[]): string {
    const value = lookup(this.data, path);
    if (value === undefined) return '';
    return typeof value === 'string' ? value : this.jsonOf(path);
  }

  text(parts: readonly TemplatePart[], out: Output, encode?: (text: string) => string): void {
    for (const part of parts) {
      if (typeof part === 'string') out.push(part);
      else {
        const text = this.textOf(part.path);
        out.push(encode ? encode(text) : text);
      }
    }
  }
}

export interface RenderOptions {
  /** Largest result, in characters. */
  maxLength: number;
  /** Names the result in errors ("URL", "body", "header X-Key"). */
  what?: string;
}

/** A text template filled from `data` (header values, string bodies). */
export function renderText(template: string, data: unknown, options: RenderOptions): string {
  const out = new Output(options.maxLength, options.what ?? 'text');
  new Filler(data).text(parseTemplate(template), out);
  return out.toString();
}

function percentEncode(text: string): string {
  try {
    return encodeURIComponent(text);
  } catch {
    throw new TemplateError('invalid_data', 'the data has text that is not valid Unicode (a lone surrogate)');
  }
}

/** A URL template: each inserted text is percent-encoded (encodeURIComponent); the literal parts are kept. */
export function renderUrl(template: string, data: unknown, options: RenderOptions): string {
  const out = new Output(options.maxLength, options.what ?? 'URL');
  new Filler(data).text(parseTemplate(template), out, percentEncode);
  return out.toString();
}

/**
 * A JSON template filled from `data`, as JSON text: a string that is exactly one placeholder
 * becomes that value (missing → null), other strings are text templates, the rest is kept.
 */
export function renderJson(template: unknown, data: unknown, options: RenderOptions): string {
  const what = options.what ?? 'body';
  const out = new Output(options.maxLength, what);
  const filler = new Filler(data);
  const emit = (node: unknown, depth: number): void => {
    if (depth > MAX_TEMPLATE_DEPTH)
      throw new TemplateError(
        'invalid_template',
        `the body is nested deeper than ${MAX_TEMPLATE_DEPTH} levels`,
      );
    if (typeof node === 'string') {
      const parts = parseTemplate(node);
      const only = parts.length === 1 ? parts[0] : undefined;
      if (only !== undefined && typeof only !== 'string') out.push(filler.jsonOf(only.path));
      else {
        const text = new Output(options.maxLength, what);
        filler.text(parts, text);
        out.push(JSON.stringify(text.toString()));
      }
    } else if (Array.isArray(node)) {
      out.push('[');
      node.forEach((item, i) => {
        if (i > 0) out.push(',');
        emit(item, depth + 1);
      });
      out.push(']');
    } else if (node !== null && typeof node === 'object') {
      out.push('{');
      let first = true;
      for (const [key, value] of Object.entries(node)) {
        if (!first) out.push(',');
        first = false;
        out.push(`${JSON.stringify(key)}:`);
        emit(value, depth + 1);
      }
      out.push('}');
    } else if (typeof node === 'number' || typeof node === 'boolean') {
      out.push(jsonText(node));
    } else out.push('null');
  };
  emit(template, 0);
  return out.toString();
}
