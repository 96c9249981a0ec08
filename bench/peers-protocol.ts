/**
 * What the peer benchmark (bench/peers.bench.ts) and its device generator processes
 * (bench/peers-devices.ts) share: topic names, the command payloads, and the IPC messages.
 * Device names, credentials, source addresses and the sample come from sim-protocol.ts, as
 * in the server benchmark.
 */

/** How a generator process speaks to the system under test. */
export type DeviceProtocol = 'mqtt' | 'iotmp';

/** MQTT topic (and IOTMP topic) a device publishes its telemetry to. */
export function telemetryTopic(i: number): string {
  return `dev/${i}/telemetry`;
}
export const TELEMETRY_FILTER = 'dev/+/telemetry';

/** MQTT: where an application sends a command to device `i`, and where the device answers. */
export function commandTopic(i: number): string {
  return `dev/${i}/cmd`;
}
export function responseTopic(i: number): string {
  return `dev/${i}/resp`;
}
export const RESPONSE_FILTER = 'dev/+/resp';

/**
 * MQTT 3.1.1 has no correlation data: the request payload carries it, `{"id":<n>,"method":"sample"}`,
 * and the answer repeats it: `{"id":<n>,"result":{"temperature":23.5,"humidity":60}}`.
 */
export const COMMAND_ID_PREFIX = '{"id":';
export const COMMAND_SUFFIX = ',"method":"sample"}';
export const RESPONSE_SUFFIX = ',"result":{"temperature":23.5,"humidity":60}}';

/** Parent → generator. */
export type GenCommand =
  | {
      op: 'init';
      protocol: DeviceProtocol;
      host: string;
      port: number;
      /** IOTMP user / MQTT username (ignored by brokers that allow anonymous clients). */
      user: string;
      keepAliveSeconds: number;
    }
  /**
   * Connect devices `indices` (TCP connect, CONNECT, wait for CONNACK/OK; MQTT with `subscribe`
   * also SUBSCRIBE to the device's command topic and wait for SUBACK), at most `inFlight`
   * pending at once; no new connection after `deadlineMs`.
   */
  | {
      op: 'connect';
      indices: number[];
      inFlight: number;
      timeoutMs: number;
      deadlineMs: number;
      subscribe: boolean;
    }
  /**
   * Every connected device gets ready to publish telemetry. MQTT: nothing to open (PUBLISH
   * QoS 0 to telemetryTopic). IOTMP: START_STREAM on server resource 8 (device_topic_publish,
   * scope publish, the same topic), wait for OK.
   */
  | { op: 'open-streams'; timeoutMs: number }
  /** Close every device connection. */
  | { op: 'disconnect' }
  /** The publishing devices may send `n` more telemetry messages (closed loop). */
  | { op: 'credit'; n: number }
  /** Forget the remaining credit. */
  | { op: 'stop-stream' }
  | { op: 'stats' };

export interface GenStats {
  connected: number;
  /** Devices ready to publish telemetry. */
  publishing: number;
  telemetrySent: number;
  commandsAnswered: number;
  writes: number;
  cpuUserUs: number;
  cpuSystemUs: number;
}

/** Generator → parent. */
export type GenEvent =
  | { op: 'ready' }
  | { op: 'progress'; done: number; failed: number }
  | {
      op: 'connected';
      ok: number;
      failed: number;
      /** Not attempted because the deadline passed. */
      skipped: number;
      /** ms from the first connect() to the last answer. */
      elapsedMs: number;
      /** Per-device latency (TCP connect → logged in), ms, unsorted. */
      latenciesMs: number[];
      errors: string[];
    }
  | { op: 'streams-open'; open: number; failed: number; errors: string[] }
  | { op: 'disconnected'; closed: number }
  | ({ op: 'stats' } & GenStats)
  | { op: 'error'; message: string };
