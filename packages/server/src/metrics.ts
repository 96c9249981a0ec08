import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import type { DeviceHub } from './devices/hub.js';

/** Prometheus metrics, read at /metrics. Counters that live in the hub are read at scrape time. */
export class Metrics {
  readonly registry = new Registry();
  readonly callDuration: Histogram;
  readonly wsDropped: Counter;
  readonly httpErrors: Counter;
  readonly bucketRecords: Counter;
  readonly bucketCommit: Histogram;
  readonly serverCalls: Counter;
  readonly endpointCalls: Histogram;

  constructor(hub: DeviceHub) {
    collectDefaultMetrics({ register: this.registry });
    const reg = [this.registry];
    new Gauge({
      name: 'iotmp_devices_connected',
      help: 'Devices with a live, authenticated session',
      registers: reg,
      collect() {
        this.set(hub.size);
      },
    });
    const fromHub = (name: string, help: string, read: () => number) =>
      new Counter({
        name,
        help,
        registers: reg,
        collect() {
          this.reset();
          this.inc(read());
        },
      });
    fromHub('iotmp_device_connects_total', 'Successful device logins', () => hub.counters.connects);
    fromHub(
      'iotmp_device_auth_failures_total',
      'Refused device logins (bad credentials, disabled, throttled)',
      () => hub.counters.authFailures,
    );
    fromHub(
      'iotmp_device_auth_throttled_total',
      'Device logins refused by the failed-login throttle',
      () => hub.counters.throttled,
    );
    fromHub(
      'iotmp_device_closed_slow_peer_total',
      'Device connections closed because the device stopped reading',
      () => hub.counters.closedSlowPeer,
    );
    const traffic = (
      name: string,
      help: string,
      field: 'rxBytes' | 'txBytes' | 'rxMessages' | 'txMessages',
    ) => fromHub(name, help, () => hub.traffic[field]);
    traffic('iotmp_bytes_received_total', 'Bytes received from devices', 'rxBytes');
    traffic('iotmp_bytes_sent_total', 'Bytes sent to devices', 'txBytes');
    traffic('iotmp_messages_received_total', 'IOTMP messages received from devices', 'rxMessages');
    traffic('iotmp_messages_sent_total', 'IOTMP messages sent to devices', 'txMessages');
    this.callDuration = new Histogram({
      name: 'iotmp_device_call_duration_seconds',
      help: 'REST calls to device resources, from request to device answer',
      labelNames: ['outcome'],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers: reg,
    });
    this.wsDropped = new Counter({
      name: 'iotmp_ws_messages_dropped_total',
      help: 'WebSocket API messages dropped for consumers that do not keep up',
      registers: reg,
    });
    this.httpErrors = new Counter({
      name: 'iotmp_http_errors_total',
      help: 'HTTP API answers with status >= 400',
      labelNames: ['status'],
      registers: reg,
    });
    this.bucketRecords = new Counter({
      name: 'iotmp_bucket_records_written_total',
      help: 'Bucket records durably stored (device writes, API writes, device-sourced samples)',
      registers: reg,
    });
    this.bucketCommit = new Histogram({
      name: 'iotmp_bucket_commit_seconds',
      help: 'Bucket group commits, from the start of the transaction until it is on disk',
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
      registers: reg,
    });
    this.serverCalls = new Counter({
      name: 'iotmp_server_resource_calls_total',
      help: 'Device → server calls (codes 1–7: properties, device calls, endpoints, buckets, syncs)',
      labelNames: ['code', 'outcome'],
      registers: reg,
    });
    this.endpointCalls = new Histogram({
      name: 'iotmp_endpoint_call_duration_seconds',
      help: 'Endpoint calls (outbound HTTP), by outcome: completed (any upstream status) or an error code',
      labelNames: ['outcome'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers: reg,
    });
  }
}
