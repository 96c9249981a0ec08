/** `iotmp properties list|get|set|rm <device> [property] [value]`: a device's stored properties. */
import type { Command } from 'commander';
import type { ApiClient } from '../api-client.js';
import { withClient } from '../context.js';
import { readJsonInput } from '../input.js';
import { line, note, printJson, shortJson, table, time } from '../output.js';
import { checkId } from './common.js';

interface PropertyView {
  property: string;
  value: unknown;
  created_ts: number;
  modified_ts: number;
}

function path(client: ApiClient, device: string, property?: string): string {
  const base = `${client.userPath(3)}/devices/${encodeURIComponent(checkId(device, 'device id'))}/properties`;
  return property === undefined ? base : `${base}/${encodeURIComponent(checkId(property, 'property'))}`;
}

export function registerProperties(program: Command): void {
  const properties = program
    .command('properties')
    .description(
      "a device's properties: JSON values stored on the server that the device can read and watch",
    );

  properties
    .command('list')
    .description("list a device's properties")
    .argument('<device>', 'device id')
    .action(async (device: string, _options: unknown, cmd: Command) =>
      withClient(cmd, async (client, json) => {
        const list = (await client.request('GET', path(client, device))).json as PropertyView[];
        if (json) return printJson(list);
        if (list.length === 0)
          return note(`${device} has no properties: set one with \`iotmp properties set\``);
        table(
          ['property', 'value', 'modified'],
          list.map((p) => [p.property, shortJson(p.value), time(p.modified_ts)]),
        );
      }),
    );

  properties
    .command('get')
    .description("print a property's value (--json: the whole record)")
    .argument('<device>', 'device id')
    .argument('<property>', 'property name')
    .action(async (device: string, property: string, _options: unknown, cmd: Command) =>
      withClient(cmd, async (client, json) => {
        const record = (await client.request('GET', path(client, device, property))).json as PropertyView;
        if (json) return printJson(record);
        line(JSON.stringify(record.value, null, 2));
      }),
    );

  properties
    .command('set')
    .description('create or replace a property (the device sees the change if it watches it)')
    .argument('<device>', 'device id')
    .argument('<property>', 'property name')
    .argument('<value>', 'JSON value, @file, or - for stdin')
    .action(async (device: string, property: string, value: string, _options: unknown, cmd: Command) =>
      withClient(cmd, async (client, json) => {
        const parsed = await readJsonInput(value, 'value');
        const record = (
          await client.request('PUT', path(client, device, property), { json: { value: parsed } })
        ).json as PropertyView;
        if (json) return printJson(record);
        line(`${device}: ${property} = ${shortJson(record.value, 200)}`);
      }),
    );

  properties
    .command('rm')
    .alias('remove')
    .description('delete a property')
    .argument('<device>', 'device id')
    .argument('<property>', 'property name')
    .action(async (device: string, property: string, _options: unknown, cmd: Command) =>
      withClient(cmd, async (client, json) => {
        await client.request('DELETE', path(client, device, property));
        if (json) printJson({ deleted: property, device });
        else line(`deleted property ${property} of ${device}`);
      }),
    );
}
