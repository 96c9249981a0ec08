import { randomBytes } from 'node:crypto';
import * as https from 'node:https';
import * as net from 'node:net';
import { join } from 'node:path';
import * as tls from 'node:tls';
import formbody from '@fastify/formbody';
import swagger from '@fastify/swagger';
import websocket from '@fastify/websocket';
import {
  acceptWebSocket,
  iotmpWebSocketServerOptions,
  SocketTransport,
  WEBSOCKET_PATH,
} from '@iotmp/protocol/node';
import { Ajv } from 'ajv';
import Fastify, {
  type FastifyBaseLogger,
  type FastifyError,
  type FastifyInstance,
  LogController,
} from 'fastify';
import pino, { type Logger } from 'pino';
import { registerAccountRoutes } from './api/account-routes.js';
import { registerBucketRoutes } from './api/bucket-routes.js';
import { type AppContext, bearerToken } from './api/context.js';
import { registerEndpointRoutes } from './api/endpoint-routes.js';
import { errorBody, HttpError } from './api/errors.js';
import { registerPropertyRoutes } from './api/property-routes.js';
import { registerResourceRoutes } from './api/resource-routes.js';
import { registerWsRoutes } from './api/ws-routes.js';
import { AuthFailure, TokenService } from './auth/tokens.js';
import { DeviceBucketSources } from './buckets/device-source.js';
import type { ServerConfig } from './config.js';
import { registerConsole } from './console.js';
import { DeviceHub } from './devices/hub.js';
import { ServerResources } from './devices/server-resources.js';
import { SyncManager } from './devices/syncs.js';
import { EndpointRunner } from './endpoints/runner.js';
import { EventBus } from './events/bus.js';
import { TopicBroker } from './events/topics.js';
import { Metrics } from './metrics.js';
import { AccountStore } from './storage/accounts.js';
import { BucketStore } from './storage/buckets.js';
import { type Db, openDatabase } from './storage/database.js';
import { EndpointStore } from './storage/endpoints.js';
import { PropertyStore } from './storage/properties.js';
import { SharedStreams } from './streams/shared-streams.js';
import { loadOrCreateTls } from './tls.js';

export const VERSION = '0.1.0';

export interface RunningServer {
  readonly config: ServerConfig;
  readonly httpPort: number;
  readonly tcpPort: number;
  readonly tlsPort: number;
  /** The HTTPS listener's port (0: off). */
  readonly httpsPort: number;
  /** PEM of the TLS certificate in use (to trust it in clients). */
  readonly tlsCert: string | undefined;
  readonly app: FastifyInstance;
  readonly hub: DeviceHub;
  readonly accounts: AccountStore;
  readonly tokens: TokenService;
  /** Data buckets (tests and tools: sweep, compact, count). */
  readonly buckets: BucketStore;
  /** Server events of each user (tests: who listens). */
  readonly events: EventBus;
  readonly log: Logger;
  /** Stops accepting, disconnects devices, finishes in-flight calls (bounded), closes storage. */
  close(): Promise<void>;
}

function listen(server: net.Server, port: number, host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve((server.address() as net.AddressInfo).port);
    });
  });
}

/**
 * Starts everything: storage, the device listeners (TCP, TLS, WebSocket /iotmp), the HTTP
 * API. Port 0 means "any free port" for HTTP and disables the TCP/TLS listeners.
 */
export async function startServer(
  config: ServerConfig,
  options?: { logger?: Logger },
): Promise<RunningServer> {
  const log = options?.logger ?? pino({ level: config.logLevel, base: { service: 'iotmp-server' } });
  const db: Db = openDatabase(join(config.dataDir, 'iotmp.db'));
  const accounts = new AccountStore(db);
  const tokens = new TokenService(accounts, config.accessTokenTtlSeconds, config.refreshTokenTtlSeconds);

  if (accounts.countUsers() === 0) {
    const password = config.adminPassword ?? randomBytes(12).toString('base64url');
    await tokens.createUser(config.adminUser, password);
    if (config.adminPassword) log.info({ user: config.adminUser }, 'created the first user');
    else {
      log.warn(
        { user: config.adminUser },
        'created the first user with a generated password (shown once below; set IOTMP_ADMIN_PASSWORD to choose it)',
      );
      process.stdout.write(`\n  first user: ${config.adminUser}\n  password:   ${password}\n\n`);
    }
  }

  // Server events and topics per user; property changes (REST or device) become events.
  const events = new EventBus((event, err) => log.warn({ err, event }, 'event listener failed'));
  const topics = new TopicBroker({
    onWarning: (message, details) => log.debug({ component: 'topics', ...details }, message),
  });
  const properties = new PropertyStore(db, {
    onChange: (username, change) => events.publish(username, 'device_property_update', change),
  });
  const syncs = new SyncManager();
  const hub: DeviceHub = new DeviceHub({
    accounts,
    log: log.child({ component: 'devices' }),
    session: { connectTimeoutMs: config.connectTimeoutMs, maxFrameSize: config.maxFrameSize },
    // Device → server calls and subscriptions (codes 1–8), set up below.
    serverResources: (live) => serverResources.for(live),
  });
  const metrics = new Metrics(hub);
  const buckets = new BucketStore(db, {
    onCommit: (records, seconds) => {
      metrics.bucketRecords.inc(records);
      metrics.bucketCommit.observe(seconds);
    },
    onWarning: (message, details) => log.warn({ component: 'buckets', ...details }, message),
    // Records as they are written become bucket_write events (only when someone listens).
    onWrite: (username, bucket) =>
      events.listenerCount(username, 'bucket_write') > 0
        ? (ts, data) => events.publish(username, 'bucket_write', { bucket, ts, data })
        : undefined,
  });
  const endpoints = new EndpointRunner({
    store: new EndpointStore(db),
    allowPrivate: config.endpointAllowPrivate,
    timeoutMs: config.endpointTimeoutMs,
    maxResponseBytes: config.endpointMaxResponseBytes,
    maxConcurrent: config.endpointMaxConcurrent,
    ratePerSecond: config.endpointRatePerSecond,
    rateBurst: config.endpointRateBurst,
    onOutcome: (outcome, seconds) => metrics.endpointCalls.observe({ outcome }, seconds),
  });
  const serverResources: ServerResources = new ServerResources({
    hub,
    accounts,
    properties,
    events,
    topics,
    syncs,
    buckets,
    endpoints,
    deviceCallTimeoutMs: config.deviceCallTimeoutMs,
    log: log.child({ component: 'server-resources' }),
    onCall: (code, ok) =>
      metrics.serverCalls.inc({
        code: code >= 1 && code <= 7 ? String(code) : 'other',
        outcome: ok ? 'ok' : 'error',
      }),
  });
  // One device stream per device resource, shared by WebSocket subscribers and device-sourced buckets.
  const streams = new SharedStreams({
    source: hub,
    openTimeoutMs: config.deviceCallTimeoutMs,
    onWarning: (message, details) => log.debug({ component: 'streams', ...details }, message),
  });
  // Device-sourced buckets subscribe to those streams (now, and as buckets change).
  const bucketSources = new DeviceBucketSources({
    store: buckets,
    streams,
    hub,
    onWarning: (message, details) => log.debug({ component: 'buckets', ...details }, message),
  });
  const ctx: AppContext = {
    config,
    accounts,
    tokens,
    hub,
    metrics,
    streams,
    properties,
    events,
    topics,
    endpoints,
    buckets,
  };

  // --- HTTP API
  const app = Fastify({
    loggerInstance: log.child({ component: 'http' }) as FastifyBaseLogger,
    bodyLimit: config.maxBodyBytes,
    routerOptions: { maxParamLength: 1024 }, // ids may be 128 characters (ID_PATTERN); the default is 100
    // Per-request log lines would dominate the log at device-call rates.
    logController: new LogController({ disableRequestLogging: true }),
    // Framework-level rejections (malformed URL, over-long parameter) in our error shape too.
    frameworkErrors: (err, _request, reply) => {
      const status = err.statusCode ?? 400;
      metrics.httpErrors.inc({ status: String(status) });
      const raw = reply as unknown as { code(n: number): { send(body: unknown): void } };
      raw.code(status).send(errorBody(status === 414 ? 'uri_too_long' : 'invalid_request', err.message));
    },
  });
  // Query strings and path parameters are text: coerce them to the schema's types. JSON
  // bodies are typed already: a number where a string belongs is an error, not a conversion.
  const coercing = new Ajv({
    coerceTypes: true,
    useDefaults: true,
    removeAdditional: false,
    allErrors: false,
  });
  const strict = new Ajv({
    coerceTypes: false,
    useDefaults: true,
    removeAdditional: false,
    allErrors: false,
  });
  app.setValidatorCompiler(
    ({ schema, httpPart }) =>
      (httpPart === 'body' ? strict : coercing).compile(schema) as ReturnType<typeof strict.compile>,
  );
  app.decorateRequest('principal', undefined);
  await app.register(formbody);
  app.addContentTypeParser('application/octet-stream', { parseAs: 'buffer' }, (_req, body, done) =>
    done(null, body),
  );
  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: { title: 'IOTMP server API', version: VERSION },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer', bearerFormat: 'JWT' } } },
      security: [{ bearer: [] }],
    },
  });
  await app.register(websocket, {
    // The @types/ws copies seen by ws and @fastify/websocket differ only in module format.
    options: iotmpWebSocketServerOptions({ maxPayload: config.maxFrameSize + 1024 }) as never,
  });

  app.setErrorHandler((err: FastifyError | HttpError | AuthFailure, request, reply) => {
    let status = 500;
    let code = 'internal_error';
    let message = 'internal error';
    if (err instanceof HttpError) {
      ({ status, code, message } = err);
    } else if (err instanceof AuthFailure) {
      ({ status, code, message } = err);
      if (status === 401) reply.header('www-authenticate', 'Bearer');
    } else if ((err as FastifyError).validation) {
      status = 400;
      code = 'invalid_request';
      message =
        `${(err as FastifyError).validationContext ?? 'request'} ${err.message.replace(/^(body|params|querystring|headers)(\/|\s+)?/, '')}`.trim();
    } else if (
      typeof (err as FastifyError).statusCode === 'number' &&
      ((err as FastifyError).statusCode as number) < 500
    ) {
      status = (err as FastifyError).statusCode as number;
      code =
        status === 413 ? 'payload_too_large' : status === 415 ? 'unsupported_media_type' : 'invalid_request';
      message = err.message;
    } else {
      request.log.error({ err }, 'request failed');
    }
    metrics.httpErrors.inc({ status: String(status) });
    reply.code(status).send(errorBody(code, message));
  });
  // The web console at "/" (its page for browser navigations no route matched).
  const consoleSite = await registerConsole(app, { dir: config.consoleDir, log });
  app.setNotFoundHandler((request, reply) => {
    if (consoleSite.fallback(request, reply)) return;
    metrics.httpErrors.inc({ status: '404' });
    reply.code(404).send(errorBody('not_found', `no route ${request.method} ${request.url.split('?')[0]}`));
  });

  // Every route needs a bearer token except these.
  const PUBLIC = new Set([
    '/oauth/token',
    '/v1/server/version',
    // Static metadata (asset kinds, event names) the Node-RED editor asks for without a token.
    '/v1/server/assets',
    '/v1/server/events',
    '/health',
    '/metrics',
    '/openapi.json',
    WEBSOCKET_PATH,
  ]);
  app.addHook('onRequest', async (request) => {
    const path = request.url.split('?')[0] as string;
    if (PUBLIC.has(path) || consoleSite.serves(request)) return;
    request.principal = await tokens.verify(bearerToken(request));
  });

  app.get('/v1/server/version', { schema: { summary: 'Server version' } }, async () => ({
    version: VERSION,
    server: 'iotmp',
  }));
  app.get('/health', { schema: { summary: 'Health' } }, async () => ({ status: 'ok', devices: hub.size }));
  app.get('/metrics', { schema: { hide: true } }, async (_request, reply) => {
    reply.type(metrics.registry.contentType);
    return metrics.registry.metrics();
  });
  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());

  app.post<{ Body: Record<string, string | undefined> }>(
    '/oauth/token',
    {
      schema: {
        summary: 'Log in (grant_type=password) or refresh (grant_type=refresh_token); form or JSON',
        body: {
          type: 'object',
          properties: {
            grant_type: { type: 'string', enum: ['password', 'refresh_token'] },
            username: { type: 'string', minLength: 1, maxLength: 128 },
            password: { type: 'string', minLength: 1, maxLength: 1024 },
            refresh_token: { type: 'string', minLength: 1, maxLength: 512 },
          },
          required: ['grant_type'],
        },
      },
    },
    async (request) => {
      const b = request.body;
      if (b.grant_type === 'password') {
        if (!b.username || !b.password)
          throw new HttpError(400, 'invalid_request', 'username and password are required');
        return tokens.login(b.username, b.password);
      }
      if (!b.refresh_token) throw new HttpError(400, 'invalid_request', 'refresh_token is required');
      return tokens.refresh(b.refresh_token);
    },
  );

  registerAccountRoutes(app, ctx);
  registerBucketRoutes(app, ctx, bucketSources);
  registerResourceRoutes(app, ctx);
  registerPropertyRoutes(app, ctx);
  registerEndpointRoutes(app, ctx);
  registerWsRoutes(app, ctx);

  // Devices over WebSocket on the HTTP port.
  app.get(WEBSOCKET_PATH, { websocket: true, schema: { hide: true } }, (socket, request) => {
    hub.accept(acceptWebSocket(socket, `${request.socket.remoteAddress}:${request.socket.remotePort}`));
  });

  const httpPort = await app
    .listen({ port: config.httpPort, host: config.host })
    .then(() => (app.server.address() as net.AddressInfo).port);

  // The TLS certificate of the TLS and HTTPS listeners: configured, or generated once.
  let material: ReturnType<typeof loadOrCreateTls> | undefined;
  const tlsMaterial = () => {
    if (!material) {
      material = loadOrCreateTls(config.dataDir, config.tlsCert, config.tlsKey);
      if (material.generated)
        log.warn(
          { cert: material.certFile },
          'generated a self-signed TLS certificate (ECDSA P-256); give --tls-cert/--tls-key for a real one',
        );
    }
    return material;
  };

  // The same API over HTTPS: requests go to the app's router, upgrades (WebSocket API, device
  // wss://…/iotmp) to the same WebSocket handling as on the HTTP port.
  let httpsPort = 0;
  let httpsServer: https.Server | undefined;
  if (config.httpsPort > 0) {
    const { cert, key } = tlsMaterial();
    const server = https.createServer({ cert, key, minVersion: 'TLSv1.2' }, (req, res) =>
      app.routing(req, res),
    );
    server.on('upgrade', (req, socket, head) => app.server.emit('upgrade', req, socket, head));
    server.on('tlsClientError', (err) => log.debug({ err: err.message }, 'HTTPS handshake failed'));
    httpsPort = await listen(server, config.httpsPort, config.host);
    httpsServer = server;
  }

  // --- IOTMP listeners
  const deviceServers: net.Server[] = [];
  let tcpPort = 0;
  let tlsPort = 0;
  if (config.tcpPort > 0) {
    const server = net.createServer({ noDelay: true }, (socket) =>
      hub.accept(new SocketTransport(socket, { noDelayIsSet: true })),
    );
    tcpPort = await listen(server, config.tcpPort, config.host);
    deviceServers.push(server);
  }
  if (config.tlsPort > 0) {
    const { cert, key } = tlsMaterial();
    const server = tls.createServer({ cert, key, minVersion: 'TLSv1.2' }, (socket) =>
      hub.accept(new SocketTransport(socket)),
    );
    server.on('tlsClientError', (err) => log.debug({ err: err.message }, 'TLS handshake failed'));
    tlsPort = await listen(server, config.tlsPort, config.host);
    deviceServers.push(server);
  }
  log.info(
    {
      http: httpPort,
      https: httpsPort || 'off',
      tcp: tcpPort || 'off',
      tls: tlsPort || 'off',
      ws: WEBSOCKET_PATH,
      dataDir: config.dataDir,
    },
    'iotmp server listening',
  );

  let closing: Promise<void> | undefined;
  const close = () => {
    closing ??= (async () => {
      log.info('shutting down');
      for (const s of deviceServers) s.close();
      httpsServer?.close();
      bucketSources.close();
      streams.close();
      hub.closeAll();
      serverResources.close();
      syncs.clear();
      await Promise.race([app.close(), new Promise((r) => setTimeout(r, config.shutdownGraceMs).unref())]);
      httpsServer?.closeAllConnections();
      await endpoints.close();
      accounts.flushConnections();
      await buckets.close();
      db.close();
      log.info('stopped');
    })();
    return closing;
  };

  const tlsCert = material?.cert;
  return {
    config,
    httpPort,
    httpsPort,
    tcpPort,
    tlsPort,
    tlsCert,
    app,
    hub,
    accounts,
    tokens,
    buckets,
    events,
    log,
    close,
  };
}
