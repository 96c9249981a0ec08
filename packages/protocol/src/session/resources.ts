import type { PsonValue } from '@iotmp/pson';

/**
 * Resource kinds, as DESCRIBE reports them in `fn` (spec §8.2):
 * 1 run (no input, no output), 2 input, 3 output, 4 input and output.
 */
export const ResourceKind = {
  RUN: 1,
  INPUT: 2,
  OUTPUT: 3,
  INPUT_OUTPUT: 4,
} as const;

export type ResourceKind = (typeof ResourceKind)[keyof typeof ResourceKind];

/** What a handler learns about the call it serves. */
export interface ResourceCall {
  /** The concrete path called ("gpio/5"). */
  readonly path: string;
  /** Values of the pattern's `:name` and `*name` segments ({ pin: "5" }). */
  readonly params: Readonly<Record<string, string>>;
  /** The request's PARAMETERS field, if any. */
  readonly parameters: PsonValue | undefined;
  /** Set to send a numeric return code with the answer (PARAMETERS of OK), like the reference `set_return_code`. */
  returnCode?: number;
}

export type InputHandler = (value: PsonValue | undefined, call: ResourceCall) => unknown;
export type OutputHandler = (input: PsonValue | undefined, call: ResourceCall) => unknown;
export type RunHandler = (call: ResourceCall) => unknown;

/**
 * A resource. Which handlers it has decides its kind:
 * - `{ run }` — no input, no output (reboot);
 * - `{ input }` — takes input (an actuator);
 * - `{ output }` — produces output (a sensor); the handler's first argument is undefined;
 * - `{ input: true, output }` or `{ input: fn, output }` — an RPC: `output` receives the input
 *   (after `input` ran, when it is a function).
 * Handlers may be async. Throw `ResourceError(code, message)` to answer ERROR with a code.
 */
export interface ResourceDefinition {
  run?: RunHandler;
  input?: InputHandler | true;
  output?: OutputHandler;
  /** Example values for DESCRIBE of this resource; default: output() for output-only resources, nothing for input. */
  describe?: { in?: PsonValue; out?: PsonValue };
  /** Send the current state on a stream right after START_STREAM and after input (default true). */
  streamEcho?: boolean;
}

/** Thrown by a handler: the peer receives ERROR with PARAMETERS = code and PAYLOAD {"error": message}. */
export class ResourceError extends Error {
  override name = 'ResourceError';
  readonly code: number | undefined;

  constructor(code: number | undefined, message: string) {
    super(message);
    this.code = code;
  }
}

export function resourceKind(def: ResourceDefinition): ResourceKind {
  const takesInput = def.input !== undefined;
  if (def.output) return takesInput ? ResourceKind.INPUT_OUTPUT : ResourceKind.OUTPUT;
  if (takesInput) return ResourceKind.INPUT;
  return ResourceKind.RUN;
}

interface Segment {
  kind: 'literal' | 'param' | 'rest';
  text: string;
}

export interface RegisteredResource {
  readonly pattern: string;
  readonly definition: ResourceDefinition;
  readonly kind: ResourceKind;
  readonly segments: readonly Segment[];
}

export interface ResourceMatch {
  resource: RegisteredResource;
  params: Record<string, string>;
  path: string;
}

/**
 * Turns a RESOURCE field into a path: a string as is, an array of segments joined with
 * "/" (as IOTMP-Embedded does). Anything else (numbers are server resources) → undefined.
 */
export function resourcePath(resource: PsonValue | undefined): string | undefined {
  if (typeof resource === 'string') return resource;
  if (Array.isArray(resource) && resource.length > 0 && resource.every((s) => typeof s === 'string')) {
    return resource.join('/');
  }
  return undefined;
}

function parsePattern(pattern: string): Segment[] {
  const parts = pattern.split('/');
  return parts.map((text, i) => {
    if (text.startsWith(':') && text.length > 1) return { kind: 'param', text: text.slice(1) };
    if (text.startsWith('*') && text.length > 1) {
      if (i !== parts.length - 1)
        throw new Error(`resource pattern ${pattern}: *${text.slice(1)} must be the last segment`);
      return { kind: 'rest', text: text.slice(1) };
    }
    return { kind: 'literal', text };
  });
}

/**
 * The resources one side exposes. Exact names are found by one map lookup; patterns are
 * tried in registration order (as the reference clients do).
 */
export class ResourceRegistry {
  private readonly exact = new Map<string, RegisteredResource>();
  private readonly patterns: RegisteredResource[] = [];
  private readonly ordered: RegisteredResource[] = [];

  add(pattern: string, definition: ResourceDefinition): RegisteredResource {
    if (typeof pattern !== 'string' || pattern.length === 0)
      throw new TypeError('resource name must be a non-empty string');
    if (this.exact.has(pattern) || this.patterns.some((p) => p.pattern === pattern)) {
      throw new Error(`resource ${pattern} is already registered`);
    }
    const segments = parsePattern(pattern);
    const entry: RegisteredResource = { pattern, definition, kind: resourceKind(definition), segments };
    if (segments.every((s) => s.kind === 'literal')) this.exact.set(pattern, entry);
    else this.patterns.push(entry);
    this.ordered.push(entry);
    return entry;
  }

  remove(pattern: string): boolean {
    const i = this.ordered.findIndex((r) => r.pattern === pattern);
    if (i < 0) return false;
    this.ordered.splice(i, 1);
    this.exact.delete(pattern);
    const j = this.patterns.findIndex((r) => r.pattern === pattern);
    if (j >= 0) this.patterns.splice(j, 1);
    return true;
  }

  get size(): number {
    return this.ordered.length;
  }

  all(): readonly RegisteredResource[] {
    return this.ordered;
  }

  match(path: string): ResourceMatch | undefined {
    const exact = this.exact.get(path);
    if (exact) return { resource: exact, params: {}, path };
    if (this.patterns.length === 0) return undefined;
    const parts = path.split('/');
    for (const candidate of this.patterns) {
      const params = matchSegments(candidate.segments, parts);
      if (params) return { resource: candidate, params, path };
    }
    return undefined;
  }
}

function matchSegments(segments: readonly Segment[], parts: string[]): Record<string, string> | undefined {
  const params: Record<string, string> = {};
  for (let i = 0; i < segments.length; i++) {
    const seg = segments[i] as Segment;
    if (seg.kind === 'rest') {
      if (i >= parts.length) return undefined;
      params[seg.text] = parts.slice(i).join('/');
      return params;
    }
    const part = parts[i];
    if (part === undefined) return undefined;
    if (seg.kind === 'literal') {
      if (part !== seg.text) return undefined;
    } else {
      if (part.length === 0) return undefined;
      params[seg.text] = part;
    }
  }
  return segments.length === parts.length ? params : undefined;
}
