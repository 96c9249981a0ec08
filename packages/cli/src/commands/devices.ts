/** `iotmp devices list|add|show|update|rm`. */
import type { Command } from 'commander';
import type { ApiClient } from '../api-client.js';
import { withClient } from '../context.js';
import { usageError } from '../errors.js';
import { ago, details, line, note, printJson, table, time } from '../output.js';
import { checkId, generateCredentials, positiveInt } from './common.js';

export interface DeviceView {
  device: string;
  name: string;
  description: string;
  enabled: boolean;
  created: number;
  updated: number;
  connection: { active: boolean; ts: number | null };
}

/** Most devices one list request returns (the server's maximum). */
const PAGE = 1000;

/** All of the user's devices (or the first `limit`), page by page. */
export async function listDevices(
  client: ApiClient,
  limit = Number.POSITIVE_INFINITY,
): Promise<DeviceView[]> {
  const all: DeviceView[] = [];
  for (;;) {
    const count = Math.min(PAGE, limit - all.length);
    if (count <= 0) break;
    const res = await client.request('GET', `${client.userPath()}/devices`, {
      query: { count, index: all.length },
    });
    const page = res.json as DeviceView[];
    all.push(...page);
    if (page.length < count) break;
  }
  return all;
}

function devicePath(client: ApiClient, id: string): string {
  return `${client.userPath()}/devices/${encodeURIComponent(checkId(id, 'device id'))}`;
}

function showDevice(d: DeviceView, extra: Array<[string, string | number | boolean | undefined]> = []): void {
  details([
    ['device', d.device],
    ['name', d.name],
    ['description', d.description || undefined],
    ['enabled', d.enabled],
    ['connected', d.connection.active],
    [d.connection.active ? 'connected since' : 'last connected', time(d.connection.ts)],
    ['created', time(d.created)],
    ['updated', time(d.updated)],
    ...extra,
  ]);
}

export function registerDevices(program: Command): void {
  const devices = program.command('devices').description('list, add, show, update and remove devices');

  devices
    .command('list')
    .description('list your devices')
    .option('--limit <n>', 'at most this many', positiveInt)
    .action(async (options: { limit?: number }, cmd: Command) =>
      withClient(cmd, async (client, json) => {
        const list = await listDevices(client, options.limit);
        if (json) return printJson(list);
        if (list.length === 0) return note('no devices yet: add one with `iotmp devices add <id>`');
        table(
          ['device', 'name', 'enabled', 'connected', 'last connection'],
          list.map((d) => [
            d.device,
            d.name,
            d.enabled ? 'yes' : 'no',
            d.connection.active ? 'yes' : 'no',
            d.connection.active ? `since ${ago(d.connection.ts)?.replace(' ago', '')}` : ago(d.connection.ts),
          ]),
        );
      }),
    );

  devices
    .command('add')
    .description('create a device; without --credentials they are generated and shown once')
    .argument('<id>', 'device id')
    .option('--credentials <secret>', 'the credentials the device logs in with (printable, 1–256 characters)')
    .option('--name <name>', 'display name (default: the id)')
    .option('--description <text>', 'description')
    .option('--disabled', 'create it disabled (it cannot connect until enabled)')
    .action(
      async (
        id: string,
        options: { credentials?: string; name?: string; description?: string; disabled?: boolean },
        cmd: Command,
      ) =>
        withClient(cmd, async (client, json) => {
          checkId(id, 'device id');
          const credentials = options.credentials ?? generateCredentials();
          const res = await client.request('POST', `${client.userPath()}/devices`, {
            json: {
              device: id,
              credentials,
              ...(options.name !== undefined ? { name: options.name } : {}),
              ...(options.description !== undefined ? { description: options.description } : {}),
              ...(options.disabled ? { enabled: false } : {}),
            },
          });
          const device = res.json as DeviceView;
          const generated = options.credentials === undefined;
          if (json) return printJson(generated ? { ...device, credentials } : device);
          line(`created device ${device.device}`);
          if (generated) {
            line(`credentials: ${credentials}`);
            note(
              `(shown once: the device logs in as user ${client.user}, device ${device.device}, with these credentials)`,
            );
          }
        }),
    );

  devices
    .command('show')
    .description("a device's details and connection")
    .argument('<id>', 'device id')
    .action(async (id: string, _options: unknown, cmd: Command) =>
      withClient(cmd, async (client, json) => {
        const path = devicePath(client, id);
        const device = (await client.request('GET', path)).json as DeviceView;
        // Traffic counters, when the token may read them.
        const statsPath = `${client.userPath(3)}/devices/${encodeURIComponent(id)}/stats`;
        const statsRes = await client.request('GET', statsPath, { allowError: true });
        const stats = statsRes.ok
          ? (statsRes.json as { ip_address: string | null; rx_bytes: number; tx_bytes: number })
          : undefined;
        if (json) return printJson(stats ? { ...device, stats } : device);
        showDevice(
          device,
          stats
            ? [
                ['address', stats.ip_address ?? undefined],
                ['bytes in', stats.rx_bytes],
                ['bytes out', stats.tx_bytes],
              ]
            : [],
        );
      }),
    );

  devices
    .command('update')
    .description("change a device's name, description, enabled state or credentials")
    .argument('<id>', 'device id')
    .option('--name <name>', 'display name')
    .option('--description <text>', 'description')
    .option('--enable', 'allow it to connect')
    .option('--disable', 'disconnect it and refuse its logins')
    .option('--credentials <secret>', 'new credentials (disconnects it)')
    .option('--new-credentials', 'generate new credentials, shown once (disconnects it)')
    .action(
      async (
        id: string,
        options: {
          name?: string;
          description?: string;
          enable?: boolean;
          disable?: boolean;
          credentials?: string;
          newCredentials?: boolean;
        },
        cmd: Command,
      ) =>
        withClient(cmd, async (client, json) => {
          if (options.enable && options.disable) throw usageError('give --enable or --disable, not both');
          if (options.credentials !== undefined && options.newCredentials)
            throw usageError('give --credentials or --new-credentials, not both');
          const credentials = options.newCredentials ? generateCredentials() : options.credentials;
          const body = {
            ...(options.name !== undefined ? { name: options.name } : {}),
            ...(options.description !== undefined ? { description: options.description } : {}),
            ...(options.enable ? { enabled: true } : options.disable ? { enabled: false } : {}),
            ...(credentials !== undefined ? { credentials } : {}),
          };
          if (Object.keys(body).length === 0)
            throw usageError(
              'nothing to update',
              'give --name, --description, --enable, --disable, --credentials or --new-credentials',
            );
          const device = (await client.request('PATCH', devicePath(client, id), { json: body }))
            .json as DeviceView;
          if (json) return printJson(options.newCredentials ? { ...device, credentials } : device);
          line(`updated device ${device.device}`);
          if (options.newCredentials) line(`credentials: ${credentials}`);
        }),
    );

  devices
    .command('rm')
    .alias('remove')
    .description('delete a device (and its properties); it is disconnected')
    .argument('<id>', 'device id')
    .action(async (id: string, _options: unknown, cmd: Command) =>
      withClient(cmd, async (client, json) => {
        await client.request('DELETE', devicePath(client, id));
        if (json) printJson({ deleted: id });
        else line(`deleted device ${id}`);
      }),
    );
}
