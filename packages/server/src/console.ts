import { existsSync } from 'node:fs';
import type { IncomingMessage } from 'node:http';
import { join, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import fastifyStatic from '@fastify/static';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Logger } from 'pino';

/*
 * The web console (packages/console, built by Vite into packages/console/dist) served at "/":
 * hashed files under /assets/ with a year-long immutable cache, index.html revalidated every
 * time, and the single-page app's own paths (/devices/…) answered with index.html. API paths
 * never get the console: their 404s stay JSON.
 */

/** Path prefixes of the API and the device WebSocket. */
const API_PREFIXES = ['/v1', '/v2', '/v3', '/oauth', '/metrics', '/health', '/openapi.json', '/iotmp'];

/** The console's files next to this package: packages/server/dist/src → packages/console/dist. */
export const DEFAULT_CONSOLE_DIR = fileURLToPath(new URL('../../../console/dist/', import.meta.url));

export function isApiPath(path: string): boolean {
  return API_PREFIXES.some((p) => path === p || path.startsWith(`${p}/`));
}

/**
 * The console's pages: scripts and styles from this origin only (Vite emits no inline
 * script), API calls and WebSockets to this origin, images from here or data: URLs.
 */
export const CONSOLE_CSP = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'self'",
  "frame-ancestors 'none'",
].join('; ');

const NOT_BUILT_PAGE = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>iotmp console not built</title></head>
<body>
<h1>The iotmp console is not built</h1>
<p>Run <code>npm run build</code> in the repository (it builds the server and the console into
<code>packages/console/dist</code>), then restart the server. The API is running: see
<a href="/openapi.json">/openapi.json</a>.</p>
</body></html>
`;

export interface ConsoleSite {
  /** Where the console's files are (whether or not they exist). */
  readonly dir: string;
  readonly built: boolean;
  /**
   * Answers a request no route matched with the console's page when it is a browser
   * navigation (GET, accepts text/html, not an API path); false when it is not one.
   */
  fallback(request: FastifyRequest, reply: FastifyReply): boolean;
  /**
   * Whether the request is for the console's files: public (the console's data comes from
   * the API with the user's token). Decided on the matched route, not on the raw URL.
   */
  serves(request: FastifyRequest): boolean;
}

/** The console's one route: the static files (wildcard), or the "not built" page. */
const CONSOLE_ROUTE = '/*';

/**
 * A route constraint that keeps API paths away from the console's wildcard: the router then
 * never falls back to it for them, so e.g. an over-long device id still gets its 414.
 */
const CONSOLE_CONSTRAINT = 'iotmpConsolePath';
const consoleConstraint = { [CONSOLE_CONSTRAINT]: 'console' };

function addConsoleConstraint(app: FastifyInstance): void {
  if (app.hasConstraintStrategy(CONSOLE_CONSTRAINT)) return;
  app.addConstraintStrategy({
    name: CONSOLE_CONSTRAINT,
    mustMatchWhenDerived: false,
    storage() {
      const handlers = new Map<unknown, never>();
      return {
        get: (value: unknown) => handlers.get(value) ?? null,
        set: (value: unknown, handler: never) => {
          handlers.set(value, handler);
        },
      };
    },
    deriveConstraint: (req: IncomingMessage) =>
      isApiPath((req.url ?? '/').split('?')[0] as string) ? undefined : 'console',
  } as never);
}

function serves(request: FastifyRequest): boolean {
  return request.routeOptions.url === CONSOLE_ROUTE && !isApiPath(request.url.split('?')[0] as string);
}

function wantsPage(request: FastifyRequest): boolean {
  if (request.method !== 'GET') return false;
  const accept = request.headers.accept;
  if (typeof accept !== 'string' || !accept.includes('text/html')) return false;
  return !isApiPath(request.url.split('?')[0] as string);
}

function pageHeaders(reply: FastifyReply): void {
  reply.header('content-security-policy', CONSOLE_CSP);
  reply.header('x-content-type-options', 'nosniff');
  reply.header('referrer-policy', 'no-referrer');
  reply.header('x-frame-options', 'DENY');
}

/** Serves the console from `dir` (default: packages/console/dist beside this package). */
export async function registerConsole(
  app: FastifyInstance,
  options: { dir: string | undefined; log: Logger },
): Promise<ConsoleSite> {
  const dir = resolve(options.dir ?? DEFAULT_CONSOLE_DIR);
  const assets = join(dir, 'assets') + sep;
  const built = existsSync(join(dir, 'index.html'));
  addConsoleConstraint(app);

  if (!built) {
    options.log.warn(
      { consoleDir: dir },
      'the web console is not built (no index.html): run `npm run build`; "/" shows how',
    );
    const notBuilt = (reply: FastifyReply) => {
      pageHeaders(reply);
      reply
        .code(503)
        .header('cache-control', 'no-store')
        .type('text/html; charset=utf-8')
        .send(NOT_BUILT_PAGE);
    };
    app.get(CONSOLE_ROUTE, { schema: { hide: true }, constraints: consoleConstraint }, (request, reply) => {
      if (request.url === '/' || wantsPage(request)) notBuilt(reply);
      else reply.callNotFound();
    });
    return {
      dir,
      built,
      serves,
      fallback: (request, reply) => {
        if (!wantsPage(request)) return false;
        notBuilt(reply);
        return true;
      },
    };
  }

  await app.register(fastifyStatic, {
    root: dir,
    prefix: '/',
    wildcard: true,
    constraints: consoleConstraint,
    index: ['index.html'],
    // The headers below decide caching; dotfiles and API paths are never files.
    cacheControl: false,
    dotfiles: 'ignore',
    allowedPath: (pathname) => !isApiPath(pathname),
    setHeaders: (reply, path) => {
      // Vite's hashed file names change with their content: cache them for good.
      reply.header(
        'cache-control',
        path.startsWith(assets)
          ? 'public, max-age=31536000, immutable'
          : path.endsWith('.html')
            ? 'no-cache'
            : 'public, max-age=3600',
      );
      reply.header('x-content-type-options', 'nosniff');
      if (path.endsWith('.html')) {
        reply.header('content-security-policy', CONSOLE_CSP);
        reply.header('referrer-policy', 'no-referrer');
        reply.header('x-frame-options', 'DENY');
      }
    },
  });
  return {
    dir,
    built,
    serves,
    fallback: (request, reply) => {
      if (!wantsPage(request)) return false;
      reply.sendFile('index.html');
      return true;
    },
  };
}
