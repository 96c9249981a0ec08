/** `iotmp buckets list|create|read|write|rm`: time-series data buckets. */
import { type Command, InvalidArgumentError } from 'commander';
import type { ApiClient } from '../api-client.js';
import { withClient } from '../context.js';
import { usageError } from '../errors.js';
import { readJsonInput } from '../input.js';
import { line, note, printJson, shortJson, table, time } from '../output.js';
import { checkId, positiveInt, timeArg } from './common.js';

interface BucketView {
  bucket: string;
  name: string;
  description: string;
  enabled: boolean;
  source: 'write' | 'device';
  config?: { device?: string; resource?: string; update?: string; interval?: number };
  retention: { period: number; unit: string } | null;
  created: number;
  updated: number;
  status?: { state: string; message?: string };
}

const RETENTION_UNITS: Record<string, string> = {
  min: 'minutes',
  h: 'hours',
  d: 'days',
  w: 'weeks',
  mo: 'months',
  y: 'years',
};

/** "30d" → {period: 30, unit: "days"}. */
function retention(value: string): { period: number; unit: string } {
  const m = /^(\d+)\s*(min|h|d|w|mo|y)$/.exec(value.trim());
  if (!m || Number(m[1]) < 1) throw new InvalidArgumentError('expected e.g. 90min, 12h, 30d, 8w, 6mo or 1y');
  return { period: Number(m[1]), unit: RETENTION_UNITS[m[2] as string] as string };
}

function path(client: ApiClient, bucket?: string): string {
  const base = `${client.userPath()}/buckets`;
  return bucket === undefined ? base : `${base}/${encodeURIComponent(checkId(bucket, 'bucket id'))}`;
}

function sourceText(b: BucketView): string {
  if (b.source === 'write') return 'write';
  const c = b.config ?? {};
  const how = c.update === 'events' ? 'streamed' : `every ${c.interval ?? '?'} s`;
  return `${c.device}/${c.resource} (${how})`;
}

export function registerBuckets(program: Command): void {
  const buckets = program
    .command('buckets')
    .description('time-series buckets: list, create, read, write, remove');

  buckets
    .command('list')
    .description('list your buckets')
    .action(async (_options: unknown, cmd: Command) =>
      withClient(cmd, async (client, json) => {
        const list = (await client.request('GET', path(client), { query: { count: 1000 } }))
          .json as BucketView[];
        if (json) return printJson(list);
        if (list.length === 0) return note('no buckets: create one with `iotmp buckets create <id>`');
        table(
          ['bucket', 'name', 'enabled', 'source', 'retention', 'status'],
          list.map((b) => [
            b.bucket,
            b.name,
            b.enabled ? 'yes' : 'no',
            sourceText(b),
            b.retention ? `${b.retention.period} ${b.retention.unit}` : 'forever',
            b.status?.state,
          ]),
        );
      }),
    );

  buckets
    .command('create')
    .description(
      'create a bucket: written through the API (`iotmp buckets write`, devices) by default, or filled from a device resource with --device and --resource',
    )
    .argument('<bucket>', 'bucket id')
    .option('--name <name>', 'display name')
    .option('--description <text>', 'description')
    .option('--device <id>', "store this device's resource")
    .option('--resource <name>', 'the resource to store (with --device)')
    .option(
      '--interval <seconds>',
      'sample the resource every N seconds (default: store what it streams)',
      positiveInt,
    )
    .option(
      '--retention <time>',
      'keep records this long: 90min, 12h, 30d, 8w, 6mo, 1y (default forever)',
      retention,
    )
    .action(
      async (
        bucket: string,
        options: {
          name?: string;
          description?: string;
          device?: string;
          resource?: string;
          interval?: number;
          retention?: { period: number; unit: string };
        },
        cmd: Command,
      ) =>
        withClient(cmd, async (client, json) => {
          if ((options.device === undefined) !== (options.resource === undefined))
            throw usageError('--device and --resource go together');
          if (options.interval !== undefined && options.device === undefined)
            throw usageError('--interval needs --device and --resource');
          const body = {
            bucket: checkId(bucket, 'bucket id'),
            source: options.device !== undefined ? 'device' : 'write',
            ...(options.name !== undefined ? { name: options.name } : {}),
            ...(options.description !== undefined ? { description: options.description } : {}),
            ...(options.device !== undefined
              ? {
                  config: {
                    device: checkId(options.device, 'device id'),
                    resource: options.resource,
                    ...(options.interval !== undefined
                      ? { update: 'interval', interval: options.interval }
                      : { update: 'events' }),
                  },
                }
              : {}),
            ...(options.retention ? { retention: options.retention } : {}),
          };
          const created = (await client.request('POST', path(client), { json: body })).json as BucketView;
          if (json) return printJson(created);
          line(`created bucket ${created.bucket} (${sourceText(created)})`);
        }),
    );

  buckets
    .command('read')
    .description('read records, newest first unless --sort asc')
    .argument('<bucket>', 'bucket id')
    .option('--items <n>', 'at most n records (1–1000, default 100)', positiveInt)
    .option('--from <time>', 'from this time: ms since 1970 or ISO (2025-01-31T12:00:00Z)', timeArg)
    .option('--to <time>', 'up to this time (inclusive)', timeArg)
    .option('--sort <order>', 'asc or desc (default desc)')
    .action(
      async (
        bucket: string,
        options: { items?: number; from?: number; to?: number; sort?: string },
        cmd: Command,
      ) =>
        withClient(cmd, async (client, json) => {
          if (options.sort !== undefined && options.sort !== 'asc' && options.sort !== 'desc')
            throw usageError('--sort is asc or desc');
          const res = await client.request('GET', `${path(client, bucket)}/data`, {
            query: { items: options.items, min_ts: options.from, max_ts: options.to, sort: options.sort },
          });
          const rows = res.json as Array<{ ts: number; val: unknown }>;
          if (json) return printJson(rows);
          if (rows.length === 0) return note(`no records in ${bucket} for this range`);
          table(
            ['time', 'ts', 'value'],
            rows.map((r) => [time(r.ts), r.ts, shortJson(r.val, 100)]),
          );
        }),
    );

  buckets
    .command('write')
    .description('write a record (a JSON object) or several (an array); "ts" (ms) in a record sets its time')
    .argument('<bucket>', 'bucket id')
    .argument('<data>', 'JSON, @file, or - for stdin')
    .action(async (bucket: string, data: string, _options: unknown, cmd: Command) =>
      withClient(cmd, async (client, json) => {
        const records = await readJsonInput(data, 'data');
        const res = await client.request('POST', `${path(client, bucket)}/data`, { json: records });
        const written = (res.json as { written?: number }).written ?? 0;
        if (json) return printJson({ written });
        line(`wrote ${written} record${written === 1 ? '' : 's'} to ${bucket}`);
      }),
    );

  buckets
    .command('rm')
    .alias('remove')
    .description('delete a bucket and its records')
    .argument('<bucket>', 'bucket id')
    .action(async (bucket: string, _options: unknown, cmd: Command) =>
      withClient(cmd, async (client, json) => {
        await client.request('DELETE', path(client, bucket));
        if (json) printJson({ deleted: bucket });
        else line(`deleted bucket ${bucket}`);
      }),
    );
}
