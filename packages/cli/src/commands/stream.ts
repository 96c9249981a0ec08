/** `iotmp stream <device> <resource>`: a resource's stream, one JSON line per data frame. */
import type { Command } from 'commander';
import { encodePath } from '../api-client.js';
import { withClient } from '../context.js';
import { CliError, ExitCode, usageError } from '../errors.js';
import { note, printJsonLine } from '../output.js';
import { checkId, nonNegativeNumber, positiveInt } from './common.js';
import { errorText, watchSocket } from './watch.js';

export function registerStream(program: Command): void {
  program
    .command('stream')
    .summary("follow a device resource's stream (WebSocket), one JSON line per frame")
    .description(
      'follow a device resource over the WebSocket API: what the device streams, or its output every --interval seconds. One JSON line per data frame on stdout; start, stop and errors on stderr. Runs until Ctrl-C or --count frames',
    )
    .argument('<device>', 'device id')
    .argument('<resource>', 'resource name')
    .option(
      '--interval <seconds>',
      "sample the resource's output every N seconds (≥ 0.1) instead",
      nonNegativeNumber,
    )
    .option('--count <n>', 'stop after n data frames', positiveInt)
    .action(
      async (
        device: string,
        resource: string,
        options: { interval?: number; count?: number },
        cmd: Command,
      ) =>
        withClient(cmd, async (client) => {
          checkId(device, 'device id');
          if (options.interval !== undefined && options.interval > 0 && options.interval < 0.1)
            throw usageError('--interval must be at least 0.1 s (or 0 for what the device streams)');
          // A plain request first: a missing device or refused token gets its own exit code.
          await client.request('GET', `${client.userPath()}/devices/${encodeURIComponent(device)}`);
          const ws = await client.webSocket(
            `${client.userPath(3)}/devices/${encodeURIComponent(device)}/resources/${encodePath(resource)}`,
            options.interval ? { interval: options.interval } : {},
          );
          await watchSocket(ws, {
            count: options.count,
            onFrame: (frame) => {
              if (frame.signal === 'data') printJsonLine(frame.payload ?? null);
              else if (frame.signal === 'start') {
                const interval = (frame.payload as { interval?: number | null } | undefined)?.interval;
                note(`streaming ${resource} of ${device}${interval ? ` every ${interval} s` : ''}`);
              } else if (frame.signal === 'stop') note(`stream stopped: ${errorText(frame.payload)}`);
              // error frames end the stream: errorExit reports them
            },
            errorExit: (frame) => {
              const code = (frame.payload as { code?: string } | undefined)?.code;
              return new CliError(
                code === 'resource_not_found'
                  ? ExitCode.NOT_FOUND
                  : code === 'forbidden'
                    ? ExitCode.AUTH
                    : ExitCode.FAILURE,
                `stream of ${resource} ended: ${errorText(frame.payload)}`,
                code === 'resource_not_found'
                  ? `\`iotmp describe ${device}\` lists its resources`
                  : undefined,
              );
            },
          });
        }),
    );
}
