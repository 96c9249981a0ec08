/** `iotmp simulate`: a fleet of simulated devices, for demos and load tests. */
import { type Command, InvalidArgumentError, Option } from 'commander';
import { ApiClient } from '../api-client.js';
import { globals, store, withClient } from '../context.js';
import { CliError, ExitCode, usageError } from '../errors.js';
import { details, note, num, printJson } from '../output.js';
import type { Counters, SimTransport, SimulationReport } from '../simulator.js';
import { nonNegativeNumber, port, positiveInt } from './common.js';

interface SimulateOptions {
  devices: number;
  rate: number;
  transport: SimTransport;
  duration?: number;
  prefix: string;
  deviceHost?: string;
  devicePort?: number;
  version: '0' | '1';
  concurrency: number;
}

const DEFAULT_PORTS: Record<SimTransport, number | undefined> = {
  tcp: 25204,
  tls: 25206,
  ws: undefined,
  wss: undefined,
};

function prefixArg(value: string): string {
  if (!/^[A-Za-z0-9][A-Za-z0-9_.@-]{0,100}$/.test(value))
    throw new InvalidArgumentError('letters, digits, and _ . @ - (not first); at most 101 characters');
  return value;
}

function printReport(r: SimulationReport): void {
  details([
    ['devices', `${r.connected} of ${r.devices} connected at the end (${r.failed} never connected)`],
    ['created', `${r.created} new, ${r.credentialsReset} credentials reset`],
    ['connecting took', `${r.connectSeconds} s`],
    ['ran for', `${r.durationSeconds} s`],
    ['messages out', `${num(r.messages)} (${num(r.messagesPerSecond, 1)}/s; rate ${r.rate}/s per device)`],
    ['calls served', `${num(r.calls)} (${num(r.callsPerSecond, 1)}/s)`],
    ['property updates', num(r.propertyUpdates)],
    ['errors', num(r.errors)],
    ['reconnects', num(r.reconnects)],
    ['samples skipped', num(r.skipped)],
  ]);
}

export function registerSimulate(program: Command): void {
  program
    .command('simulate')
    .summary('run a fleet of simulated devices (demos, load tests)')
    .description(
      `run simulated devices <prefix>-1 … <prefix>-N: created if missing (credentials derived from a secret in the config directory, so re-runs reuse them), connected with the device SDK. Each has resources telemetry (output: temperature, humidity, pressure), led (input {on}), sum and echo (input → output), streams telemetry at --rate messages per second to whoever listens (\`iotmp stream <prefix>-1 telemetry\`), and logs changes of its property config. Ends after --duration or on Ctrl-C with a report (--json for scripts)`,
    )
    .option('--devices <n>', 'how many devices', positiveInt, 10)
    .option(
      '--rate <r>',
      'telemetry stream messages per second per device, while someone listens (0.5 = one every 2 s)',
      nonNegativeNumber,
      1,
    )
    .addOption(
      new Option('--transport <t>', 'how devices connect')
        .choices(['tcp', 'tls', 'ws', 'wss'])
        .default('tcp'),
    )
    .option(
      '--duration <seconds>',
      'stop after this many seconds once connected (default: until Ctrl-C)',
      nonNegativeNumber,
    )
    .option('--prefix <prefix>', 'device id prefix', prefixArg, 'sim')
    .option('--device-host <host>', "device connection host (default: the server URL's host)")
    .option(
      '--device-port <port>',
      "device port (default 25204 tcp, 25206 tls, the server URL's port for ws/wss)",
      port,
    )
    .addOption(new Option('--version <v>', 'IOTMP protocol version').choices(['0', '1']).default('1'))
    .option('--concurrency <n>', 'connections being opened at once', positiveInt, 100)
    .action(async (options: SimulateOptions, cmd: Command) =>
      withClient(cmd, async (client, json) => {
        const { Simulator } = await import('../simulator.js');
        const g = globals(cmd);
        const serverUrl = new URL(client.server);
        const host = options.deviceHost ?? serverUrl.hostname.replace(/^\[|\]$/g, '');
        const transport = options.transport;
        const urlPort = Number(serverUrl.port) || (serverUrl.protocol === 'https:' ? 443 : 80);
        const devicePort = options.devicePort ?? DEFAULT_PORTS[transport] ?? urlPort;
        const url =
          transport === 'ws' || transport === 'wss'
            ? `${transport}://${host.includes(':') ? `[${host}]` : host}:${devicePort}/iotmp`
            : undefined;
        let ca: string | undefined;
        const caFile = g.ca ?? (process.env.IOTMP_CA || undefined);
        try {
          ca = ApiClient.readCa(caFile);
        } catch (err) {
          throw usageError(`cannot read the CA file ${caFile}: ${(err as Error).message}`);
        }
        const tty = process.stderr.isTTY === true;
        const status = (text: string) => {
          if (tty) process.stderr.write(`\r\x1b[2K${text}`);
        };
        const log = (text: string) => {
          if (tty) process.stderr.write('\r\x1b[2K');
          note(text);
        };
        const sim = new Simulator({
          client,
          secret: store().simulatorSecret(),
          devices: options.devices,
          rate: options.rate,
          transport,
          version: options.version === '0' ? 0 : 1,
          prefix: options.prefix,
          host,
          port: devicePort,
          url,
          tls: { ca, rejectUnauthorized: !(g.insecure || process.env.IOTMP_INSECURE === '1') },
          concurrency: options.concurrency,
          log,
          progress: (phase, done, total) =>
            status(`${phase === 'create' ? 'creating devices' : 'connecting'} ${done}/${total}`),
        });

        let stopRequested: () => void = () => {};
        const stopSignal = new Promise<void>((resolve) => {
          stopRequested = resolve;
        });
        let interrupts = 0;
        const onSignal = () => {
          if (++interrupts > 1) process.exit(130); // a second Ctrl-C: do not wait for a clean close
          stopRequested();
        };
        process.on('SIGINT', onSignal);
        process.on('SIGTERM', onSignal);

        let ticker: NodeJS.Timeout | undefined;
        let failure: unknown;
        try {
          const setup = (async () => {
            await sim.prepare();
            await sim.connect();
          })();
          setup.catch(() => {}); // rethrown by the race below unless Ctrl-C came first
          // Ctrl-C while setting up stops at once (what is connected gets closed).
          await Promise.race([setup, stopSignal]);
          const c = sim.counters;
          if (!tty) note(`${c.connected} of ${options.devices} devices connected; running`);
          sim.run();
          let last: Counters = { ...c };
          let seconds = 0;
          ticker = setInterval(() => {
            seconds++;
            status(
              `connected ${c.connected}/${options.devices} | out ${num(c.messages - last.messages)} msg/s | calls ${num(c.calls - last.calls)}/s | errors ${c.errors} | reconnects ${c.reconnects} | ${seconds} s`,
            );
            last = { ...c };
          }, 1000);
          const waits: Promise<unknown>[] = [stopSignal];
          if (options.duration !== undefined)
            waits.push(new Promise((r) => setTimeout(r, (options.duration as number) * 1000)));
          await Promise.race(waits);
        } catch (err) {
          failure = err;
        }
        if (ticker) clearInterval(ticker);
        status('closing…');
        const report = await sim.stop();
        status('');
        process.off('SIGINT', onSignal);
        process.off('SIGTERM', onSignal);
        if (failure !== undefined) throw failure;
        if (json) printJson(report);
        else printReport(report);
        if (report.devices > 0 && report.failed === report.devices)
          throw new CliError(
            ExitCode.UNREACHABLE,
            `no device could connect to ${url ?? `${transport}://${host}:${devicePort}`}`,
            'check --transport, --device-host and --device-port (the server prints its device ports when it starts)',
          );
      }),
    );
}
