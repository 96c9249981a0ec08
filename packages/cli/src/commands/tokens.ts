/** `iotmp tokens list|add|rm`: access tokens for scripts, dashboards and other programs. */
import { type Command, InvalidArgumentError } from 'commander';
import { withClient } from '../context.js';
import { usageError } from '../errors.js';
import { line, note, printJson, table, time } from '../output.js';
import { checkId, collect } from './common.js';

interface TokenView {
  id: string;
  name: string;
  /** "admin": everything, account management included (Thinger.io's allow {"*": {"*": "*"}}). */
  scope: { access: 'read' | 'call' | 'admin'; devices?: Record<string, { resources?: string[] }> };
  created: number;
  expires: number | null;
}

const UNITS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86400, w: 7 * 86400, y: 365 * 86400 };

/** "3600", "90m", "12h", "30d", "1y" → seconds. */
function duration(value: string): number {
  const m = /^(\d+)\s*([smhdwy]?)$/.exec(value.trim());
  if (!m) throw new InvalidArgumentError('expected seconds or a number with s, m, h, d, w or y (e.g. 30d)');
  return Number(m[1]) * (UNITS[m[2] || 's'] ?? 1);
}

/** What the token may do: "admin", "read+call" or "read". */
function accessText(access: TokenView['scope']['access']): string {
  return access === 'admin' ? 'admin' : access === 'call' ? 'read+call' : 'read';
}

function scopeText(scope: TokenView['scope']): string {
  if (scope.access === 'admin') return 'everything (account included)';
  if (!scope.devices) return 'all devices';
  return Object.entries(scope.devices)
    .map(([d, g]) => (g.resources ? `${d} (${g.resources.join(', ')})` : d))
    .join(', ');
}

export function registerTokens(program: Command): void {
  const tokens = program
    .command('tokens')
    .description('access tokens for programs (full access, or limited to devices, resources, reading)');

  tokens
    .command('list')
    .description('list your access tokens (the tokens themselves are not stored)')
    .action(async (_options: unknown, cmd: Command) =>
      withClient(cmd, async (client, json) => {
        const list = (await client.request('GET', `${client.userPath()}/tokens`)).json as TokenView[];
        if (json) return printJson(list);
        if (list.length === 0) return note('no access tokens: create one with `iotmp tokens add <name>`');
        table(
          ['id', 'name', 'access', 'devices', 'created', 'expires'],
          list.map((t) => [
            t.id,
            t.name,
            accessText(t.scope.access),
            scopeText(t.scope),
            time(t.created),
            t.expires === null ? 'never' : time(t.expires),
          ]),
        );
      }),
    );

  tokens
    .command('add')
    .summary('create an access token (printed once)')
    .description(
      'create an access token, printed once. Without --device it covers all your devices; --resource limits each --device to those resources; --read-only allows reading (GET, streams, events) but not calls with input or changes',
    )
    .argument('<name>', 'a name to recognise it by')
    .option('--device <id>', 'limit to this device (repeatable)', collect)
    .option('--resource <name>', 'limit the devices to this resource (repeatable; needs --device)', collect)
    .option('--read-only', 'read access only')
    .option(
      '--expires-in <time>',
      'lifetime: seconds, or e.g. 90m, 12h, 30d, 1y (default: no expiry)',
      duration,
    )
    .action(
      async (
        name: string,
        options: { device?: string[]; resource?: string[]; readOnly?: boolean; expiresIn?: number },
        cmd: Command,
      ) =>
        withClient(cmd, async (client, json) => {
          if (options.resource && !options.device)
            throw usageError(
              '--resource needs --device',
              'e.g. --device greenhouse-1 --resource temperature',
            );
          const devices = options.device?.map((d) => checkId(d, 'device id'));
          const scope = {
            access: options.readOnly ? 'read' : 'call',
            ...(devices
              ? {
                  devices: Object.fromEntries(
                    devices.map((d) => [d, options.resource ? { resources: options.resource } : {}]),
                  ),
                }
              : {}),
          };
          const res = await client.request('POST', `${client.userPath()}/tokens`, {
            json: {
              name,
              scope,
              ...(options.expiresIn !== undefined ? { expires_in: options.expiresIn } : {}),
            },
          });
          const created = res.json as TokenView & { access_token: string };
          if (json) return printJson(created);
          note(
            `created token ${created.id} (${name}; ${scopeText(created.scope)}; ${created.scope.access === 'admin' ? 'admin' : created.scope.access === 'call' ? 'read and call' : 'read only'}). It is shown once:`,
          );
          line(created.access_token);
        }),
    );

  tokens
    .command('rm')
    .alias('remove')
    .description('revoke an access token (it stops working at once)')
    .argument('<id>', 'token id (from `iotmp tokens list`)')
    .action(async (id: string, _options: unknown, cmd: Command) =>
      withClient(cmd, async (client, json) => {
        await client.request(
          'DELETE',
          `${client.userPath()}/tokens/${encodeURIComponent(checkId(id, 'token id'))}`,
        );
        if (json) printJson({ deleted: id });
        else line(`revoked token ${id}`);
      }),
    );
}
