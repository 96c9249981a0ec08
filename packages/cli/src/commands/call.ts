/** `iotmp call <device> <resource> [input]`: runs a device resource once. */
import type { Command } from 'commander';
import { encodePath } from '../api-client.js';
import { withClient } from '../context.js';
import { usageError } from '../errors.js';
import { readInputBytes, readJsonInput } from '../input.js';
import { hexSummary, line, note, printJson, writeStdout } from '../output.js';
import { checkId, collect } from './common.js';

export function registerCall(program: Command): void {
  program
    .command('call')
    .summary('run a device resource once (GET, or POST with input)')
    .description(
      'run a resource of a connected device: GET without input, POST with input. The output is printed as JSON; binary output goes raw to stdout when it is not a terminal (a hex summary otherwise)',
    )
    .argument('<device>', 'device id')
    .argument('<resource>', 'resource name (may hold slashes: gpio/5)')
    .argument('[input]', 'JSON input (\'{"on": true}\', 42, \'"text"\'), @file, or - for stdin')
    .option('-p, --param <key=value>', 'a parameter of a call without input (repeatable)', collect)
    .option('--binary', 'send the input bytes as they are (application/octet-stream), not as JSON')
    .action(
      async (
        device: string,
        resource: string,
        input: string | undefined,
        options: { param?: string[]; binary?: boolean },
        cmd: Command,
      ) =>
        withClient(cmd, async (client, json) => {
          const path = `${client.userPath(3)}/devices/${encodeURIComponent(checkId(device, 'device id'))}/resources/${encodePath(resource)}`;
          if (input !== undefined && options.param) throw usageError('--param is for calls without input');
          if (options.binary && input === undefined) throw usageError('--binary needs an input');
          const query: Record<string, string> = {};
          for (const p of options.param ?? []) {
            const eq = p.indexOf('=');
            if (eq <= 0) throw usageError(`--param ${p}: expected key=value`);
            query[p.slice(0, eq)] = p.slice(eq + 1);
          }
          const res =
            input === undefined
              ? await client.request('GET', path, { query })
              : options.binary
                ? await client.request('POST', path, { body: await readInputBytes(input) })
                : await client.request('POST', path, { json: await readJsonInput(input) });
          if (res.isBinary) {
            if (process.stdout.isTTY) return line(hexSummary(res.bytes));
            return writeStdout(res.bytes);
          }
          // Resources without output (actuators) answer nothing, which the API sends as null.
          if (res.bytes.length === 0 || res.json === null) {
            if (json) return printJson(null);
            return note('ok (no output)');
          }
          printJson(res.json);
        }),
    );
}
