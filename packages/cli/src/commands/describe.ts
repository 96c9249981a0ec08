/** `iotmp describe <device> [resource]`: what a connected device offers (DESCRIBE). */
import type { Command } from 'commander';
import { encodePath } from '../api-client.js';
import { withClient } from '../context.js';
import { line, note, printJson, shortJson, table } from '../output.js';
import { checkId } from './common.js';

/** Resource kinds of DESCRIBE's `fn` (spec: 1 run, 2 input, 3 output, 4 input+output). */
const KINDS: Record<number, string> = { 1: 'run', 2: 'input', 3: 'output', 4: 'input+output' };

export function registerDescribe(program: Command): void {
  program
    .command('describe')
    .summary("list a connected device's resources")
    .description("list a connected device's resources, or show one resource's example input and output")
    .argument('<device>', 'device id')
    .argument('[resource]', 'one resource')
    .action(async (device: string, resource: string | undefined, _options: unknown, cmd: Command) =>
      withClient(cmd, async (client, json) => {
        const base = `${client.userPath(3)}/devices/${encodeURIComponent(checkId(device, 'device id'))}/resources`;
        if (resource !== undefined) {
          const res = await client.request('GET', `${base}/${encodePath(resource)}/api`);
          const api = (res.json ?? {}) as { in?: unknown; out?: unknown };
          if (json) return printJson(api);
          line(`in:  ${'in' in api ? JSON.stringify(api.in) : '-'}`);
          line(`out: ${'out' in api ? JSON.stringify(api.out) : '-'}`);
          return;
        }
        const res = await client.request('GET', base);
        const api = (res.json ?? {}) as Record<string, { fn?: number }>;
        if (json) return printJson(api);
        const names = Object.keys(api).sort();
        if (names.length === 0) return note(`${device} has no resources`);
        table(
          ['resource', 'kind'],
          names.map((n) => [n, KINDS[api[n]?.fn ?? 0] ?? shortJson(api[n])]),
        );
      }),
    );
}
