/**
 * Browser fixture for test/browser.test.ts: bundled with esbuild and loaded in Chromium. It
 * imports nothing but `@iotmp/device/browser`, connects to the test server given by the
 * page's query string (`?port=`), and exposes its state and a few actions on
 * `window.iotmp` for the test to drive with `page.evaluate`.
 */
import { Device, type DeviceStatus, type PsonValue } from '@iotmp/device/browser';

export interface FixtureApi {
  device: Device;
  /** Every status the device went through, in order. */
  statuses: DeviceStatus['state'][];
  /** Resolves once connected; rejects with the error message otherwise. */
  ready: Promise<void>;
  connectError: string | undefined;
  /** Last value written to the `led` input. */
  led: PsonValue | undefined;
  /** Last input of `sum` and its answer. */
  lastSum: { a: number; b: number; result: number } | undefined;
  celsius: number;
  /** Sets the temperature and pushes it to whoever streams `temperature`; returns the listener count. */
  pushTemperature(celsius: number): Promise<number>;
  setProperty(name: string, value: PsonValue): Promise<void>;
  getProperty(name: string): Promise<PsonValue | undefined>;
  /** A failed call's error as plain data (name, message, returnCode). */
  getPropertyError(name: string): Promise<{ name: string; message: string; returnCode?: number } | null>;
  /** Uncaught errors seen by the page. */
  errors: string[];
}

declare global {
  interface Window {
    iotmp: FixtureApi;
  }
}

const query = new URLSearchParams(location.search);
const port = Number(query.get('port'));

function show(id: string, value: unknown): void {
  const el = document.getElementById(id);
  if (el) el.textContent = typeof value === 'string' ? value : JSON.stringify(value);
}

const device = new Device({
  transport: 'ws',
  host: '127.0.0.1',
  port,
  username: 'user1',
  deviceId: 'sensor1',
  credential: 'secret',
  reconnect: false,
  connectTimeoutMs: 5000,
  requestTimeoutMs: 5000,
});

const api: FixtureApi = {
  device,
  statuses: [],
  ready: Promise.resolve(),
  connectError: undefined,
  led: undefined,
  lastSum: undefined,
  celsius: 21.5,
  async pushTemperature(celsius) {
    api.celsius = celsius;
    show('temperature', `${celsius} °C`);
    return await device.stream('temperature');
  },
  async setProperty(name, value) {
    await device.properties.set(name, value);
    show('property', `${name} = ${JSON.stringify(value)} (set)`);
  },
  async getProperty(name) {
    const value = await device.properties.get(name);
    show('property', `${name} = ${JSON.stringify(value)} (read)`);
    return value;
  },
  async getPropertyError(name) {
    try {
      await device.properties.get(name);
      return null;
    } catch (err) {
      const e = err as Error & { returnCode?: number };
      return { name: e.name, message: e.message, returnCode: e.returnCode };
    }
  },
  errors: [],
};
window.iotmp = api;
window.addEventListener('error', (ev) => api.errors.push(String(ev.message)));
window.addEventListener('unhandledrejection', (ev) => api.errors.push(String(ev.reason)));

device
  .resource('temperature', { output: () => ({ celsius: api.celsius }) })
  .resource('sum', {
    input: true,
    output: (v) => {
      const { a, b } = v as { a: number; b: number };
      api.lastSum = { a, b, result: a + b };
      show('sum', `${a} + ${b} = ${a + b}`);
      return { result: a + b };
    },
  })
  .resource('led', {
    input: (v) => {
      api.led = v;
      show('led', v);
    },
  });

device.onStatus((s) => {
  api.statuses.push(s.state);
  show('status', s.reason ? `${s.state} (${s.reason})` : s.state);
});

show('temperature', `${api.celsius} °C`);
api.ready = device.connect().catch((err: unknown) => {
  api.connectError = err instanceof Error ? err.message : String(err);
  throw err;
});
// The test reads connectError; keep the rejection from counting as unhandled.
api.ready.catch(() => {});
