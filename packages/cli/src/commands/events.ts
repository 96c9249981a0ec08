/** `iotmp events`: server events of your devices, one JSON line each. */
import type { Command } from 'commander';
import { withClient } from '../context.js';
import { CliError, ExitCode, usageError } from '../errors.js';
import { note, printJsonLine } from '../output.js';
import { checkId, collect, positiveInt } from './common.js';
import { errorText, watchSocket } from './watch.js';

const EVENTS = ['device_state_change', 'device_property_update', 'device_topic_publish'];

export function registerEvents(program: Command): void {
  program
    .command('events')
    .summary('follow server events (device connections, property updates, topics)')
    .description(
      `follow server events over the events WebSocket: ${EVENTS.join(', ')}. One JSON line per event ({"event", …payload}) until Ctrl-C or --count`,
    )
    .option(
      '--event <name>',
      'an event to follow (repeatable; default device_state_change and device_property_update)',
      collect,
    )
    .option('--device <id>', 'only events of this device')
    .option('--property <name>', 'only updates of this property (device_property_update)')
    .option('--topic <filter>', 'topic filter of device_topic_publish, e.g. sensors/+/temperature')
    .option('--count <n>', 'stop after n events', positiveInt)
    .action(
      async (
        options: { event?: string[]; device?: string; property?: string; topic?: string; count?: number },
        cmd: Command,
      ) =>
        withClient(cmd, async (client) => {
          const events =
            options.event ??
            (options.topic !== undefined
              ? ['device_topic_publish']
              : ['device_state_change', 'device_property_update']);
          for (const e of events)
            if (!EVENTS.includes(e)) throw usageError(`unknown event ${e}`, `events: ${EVENTS.join(', ')}`);
          if (events.includes('device_topic_publish') && options.topic === undefined)
            throw usageError('device_topic_publish needs --topic', 'e.g. --topic "sensors/#"');
          if (options.device !== undefined) checkId(options.device, 'device id');
          // A plain request first: a refused token gets its own exit code.
          await client.request('GET', `${client.userPath()}/devices`, { query: { count: 1 } });
          const ws = await client.webSocket(`${client.userPath(2)}/events`);
          for (const event of events) {
            const filters: Record<string, string> = {};
            if (event === 'device_topic_publish') filters.topic = options.topic as string;
            else {
              if (options.device !== undefined) filters.device = options.device;
              if (options.property !== undefined && event === 'device_property_update')
                filters.property = options.property;
            }
            ws.send(JSON.stringify({ event, ...(Object.keys(filters).length > 0 ? { filters } : {}) }));
          }
          await watchSocket(ws, {
            count: options.count,
            onFrame: (frame) => {
              if (frame.signal === 'data') {
                const payload = frame.payload;
                printJsonLine(
                  typeof payload === 'object' && payload !== null && !Array.isArray(payload)
                    ? { event: frame.event, ...payload }
                    : { event: frame.event, payload },
                );
              } else if (frame.signal === 'start') note(`listening for ${frame.event}`);
              else if (frame.signal === 'stop') note(`${frame.event} stopped: ${errorText(frame.payload)}`);
              // error frames end the command: errorExit reports them
            },
            errorExit: (frame) =>
              new CliError(
                (frame.payload as { code?: string } | undefined)?.code === 'forbidden'
                  ? ExitCode.AUTH
                  : ExitCode.FAILURE,
                `${frame.event ?? 'subscription'} refused: ${errorText(frame.payload)}`,
              ),
          });
        }),
    );
}
