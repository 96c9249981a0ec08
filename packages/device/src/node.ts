/**
 * `@iotmp/device` for Node.js: TCP, TLS and WebSocket connections.
 *
 * ```ts
 * const device = new Device({ host: 'localhost', transport: 'tls', username, deviceId, credential });
 * device.resource('temperature', { output: () => ({ celsius: 22.5 }) });
 * await device.connect();
 * ```
 */
import type { Transport } from '@iotmp/protocol';
import {
  connectTcp,
  connectTls,
  connectWebSocket,
  DEFAULT_TCP_PORT,
  DEFAULT_TLS_PORT,
  WEBSOCKET_PATH,
} from '@iotmp/protocol/node';
import { DeviceCore, type DeviceOptions } from './device.js';

export class Device extends DeviceCore {
  constructor(options: DeviceOptions) {
    super(options);
    const transport = options.transport ?? 'tls';
    if (!['tcp', 'tls', 'ws', 'wss'].includes(transport)) {
      throw new TypeError(`unknown transport ${String(transport)}: use tcp, tls, ws or wss`);
    }
  }

  protected openTransport(signal: AbortSignal): Promise<Transport> {
    const o = this.options;
    const host = o.host ?? 'localhost';
    const transport = o.transport ?? 'tls';
    const timeoutMs = o.connectTimeoutMs ?? 10_000;
    const ca = o.tls?.ca as string | Buffer | Array<string | Buffer> | undefined;
    switch (transport) {
      case 'tcp':
        return connectTcp({ host, port: o.port ?? DEFAULT_TCP_PORT, timeoutMs, signal });
      case 'tls':
        return connectTls({
          host,
          port: o.port ?? DEFAULT_TLS_PORT,
          timeoutMs,
          signal,
          rejectUnauthorized: o.tls?.rejectUnauthorized ?? true,
          ca,
          servername: o.tls?.servername,
        });
      default: {
        const url =
          o.url ??
          `${transport}://${host}:${o.port ?? (transport === 'wss' ? 443 : 80)}${o.path ?? WEBSOCKET_PATH}`;
        return connectWebSocket({
          url,
          timeoutMs,
          signal,
          rejectUnauthorized: o.tls?.rejectUnauthorized ?? true,
          ca,
        });
      }
    }
  }
}

export * from './exports.js';
