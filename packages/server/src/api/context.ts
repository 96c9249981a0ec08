import type { FastifyRequest } from 'fastify';
import type { Principal, TokenService } from '../auth/tokens.js';
import type { ServerConfig } from '../config.js';
import type { DeviceHub } from '../devices/hub.js';
import type { EndpointRunner } from '../endpoints/runner.js';
import type { EventBus } from '../events/bus.js';
import type { TopicBroker } from '../events/topics.js';
import type { Metrics } from '../metrics.js';
import type { AccountStore } from '../storage/accounts.js';
import type { BucketStore } from '../storage/buckets.js';
import type { PropertyStore } from '../storage/properties.js';
import type { SharedStreams } from '../streams/shared-streams.js';

export interface AppContext {
  config: ServerConfig;
  accounts: AccountStore;
  tokens: TokenService;
  hub: DeviceHub;
  metrics: Metrics;
  /** Shared device streams (WebSocket subscribers, device-sourced buckets). */
  streams: SharedStreams;
  /** Device properties (REST, and devices through codes 1 and 2). */
  properties: PropertyStore;
  /** Server events of each user (device state changes, property updates). */
  events: EventBus;
  /** MQTT-style topics of each user (devices and the events WebSocket). */
  topics: TopicBroker;
  /** Users' endpoints: definitions (`store`) and calls (REST, and devices through code 4). */
  endpoints: EndpointRunner;
  /** Data buckets: definitions, durable writes (REST, and devices through code 5), reads. */
  buckets: BucketStore;
}

declare module 'fastify' {
  interface FastifyRequest {
    principal: Principal | undefined;
  }
}

/** The bearer token of a request: `Authorization: Bearer …` or `?authorization=…`. */
export function bearerToken(request: FastifyRequest): string | undefined {
  const header = request.headers.authorization;
  if (typeof header === 'string') {
    const m = /^Bearer\s+(\S+)$/i.exec(header.trim());
    if (m) return m[1];
  }
  const q = (request.query as Record<string, unknown> | undefined)?.authorization;
  return typeof q === 'string' && q.length > 0 ? q : undefined;
}

/** Identifier rules for user names, device ids and token ids in paths and bodies. */
export const ID_PATTERN = '^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$';

export const userParams = {
  type: 'object',
  properties: { user: { type: 'string', pattern: ID_PATTERN } },
  required: ['user'],
} as const;

export const deviceParams = {
  type: 'object',
  properties: {
    user: { type: 'string', pattern: ID_PATTERN },
    device: { type: 'string', pattern: ID_PATTERN },
  },
  required: ['user', 'device'],
} as const;
