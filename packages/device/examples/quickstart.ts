/**
 * A complete device: a sensor, an actuator, an RPC, a path-parameter resource, an event
 * stream, and the server-side calls. Run it against an IOTMP server:
 *
 *   IOTMP_HOST=localhost IOTMP_PORT=25204 IOTMP_TRANSPORT=tcp \
 *   IOTMP_USER=user1 IOTMP_DEVICE=sensor1 IOTMP_CREDENTIAL=secret \
 *   node packages/device/dist/examples/quickstart.js
 */
import { Device, type DeviceTransportName } from '../src/node.js';

export async function main(env: Record<string, string | undefined> = process.env): Promise<Device> {
  const device = new Device({
    host: env.IOTMP_HOST ?? 'localhost',
    port: env.IOTMP_PORT ? Number(env.IOTMP_PORT) : undefined,
    transport: (env.IOTMP_TRANSPORT as DeviceTransportName | undefined) ?? 'tls',
    username: env.IOTMP_USER ?? 'user1',
    deviceId: env.IOTMP_DEVICE ?? 'sensor1',
    credential: env.IOTMP_CREDENTIAL ?? 'secret',
    // A development server's self-signed certificate: trust it explicitly in production.
    tls: { rejectUnauthorized: env.IOTMP_TLS_VERIFY !== '0' },
  });

  let led = false;
  const gpio = new Map<string, boolean>();

  // A sensor (output), an actuator (input), an RPC (input and output), a path pattern.
  device.resource('temperature', { output: () => ({ celsius: 22.5, humidity: 60 }) });
  device.resource('led', {
    input: (v) => {
      led = Boolean((v as { state?: boolean } | undefined)?.state);
    },
    output: () => ({ state: led }),
  });
  device.resource('sum', {
    input: true,
    output: (v) => {
      const { a, b } = v as { a: number; b: number };
      return { result: a + b };
    },
  });
  device.resource('gpio/:pin', { output: (_v, call) => gpio.get(call.params.pin ?? '') ?? false });
  device.resource('button', { output: () => ({ pressed: true }), streamEcho: false });

  device.onStatus((s) => console.log(`[device] ${s.state}${s.reason ? `: ${s.reason}` : ''}`));
  await device.connect();

  // Server-side resources.
  await device.properties.set('config', { interval: 10 });
  console.log('[device] config =', await device.properties.get('config'));
  await device.buckets.write('readings', { celsius: 22.5 });

  // An event: sent only if someone streams "button".
  device.stream('button');
  return device;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  main().catch((err: unknown) => {
    console.error(err instanceof Error ? err.message : err);
    process.exit(1);
  });
}
