/**
 * `@iotmp/device/browser`: the device SDK over the browser's WebSocket (no Node.js modules).
 */
import { openBrowserWebSocket, type Transport } from '@iotmp/protocol';
import { DeviceCore, type DeviceOptions } from './device.js';

export class Device extends DeviceCore {
  constructor(options: DeviceOptions) {
    super(options);
    const t = options.transport ?? 'wss';
    if (t !== 'ws' && t !== 'wss') throw new TypeError(`browsers can only use ws or wss, not ${t}`);
  }

  protected openTransport(signal: AbortSignal): Promise<Transport> {
    const o = this.options;
    const scheme = o.transport ?? 'wss';
    const url =
      o.url ?? `${scheme}://${o.host ?? 'localhost'}${o.port ? `:${o.port}` : ''}${o.path ?? '/iotmp'}`;
    return openBrowserWebSocket(url, { signal });
  }
}

export * from './exports.js';
