/**
 * Buckets: the list (create, delete), and one bucket's records over a time range as a
 * uPlot chart of their numeric fields and a table.
 */
import type { PageContext } from '../app.js';
import { TimeChart } from '../chart.js';
import { formatTime, h, ID_PATTERN, ID_REGEX, replace, shortJson } from '../dom.js';
import { busy, confirmAction, errorBox, field, linkSubmit, openDialog, showError, showInfo } from '../ui.js';

interface Bucket {
  bucket: string;
  name: string;
  description: string;
  enabled: boolean;
  source: 'write' | 'device';
  config?: { device?: string; resource?: string; update?: string; interval?: number };
  retention?: { period: number; unit: string } | null;
  created: number;
  updated: number;
  status?: { state: string; message?: string };
}

interface BucketRow {
  ts: number;
  val: unknown;
}

const PAGE_SIZE = 50;
const UNITS = ['minutes', 'hours', 'days', 'weeks', 'months', 'years'];
/** Columns of the data table (flattened fields); the rest shows as JSON. */
const MAX_COLUMNS = 8;

function bucketPath(user: string, bucket?: string): string {
  return `/v1/users/${encodeURIComponent(user)}/buckets${bucket === undefined ? '' : `/${encodeURIComponent(bucket)}`}`;
}

function sourceText(b: Bucket): string {
  if (b.source === 'write') return 'written (REST, devices)';
  const c = b.config ?? {};
  const what = `${c.device ?? '?'} / ${c.resource ?? '?'}`;
  return c.update === 'events' ? `${what}, as it streams` : `${what}, every ${c.interval ?? '?'} s`;
}

export async function bucketsPage({ api, root, signal, query }: PageContext): Promise<void> {
  const pageIndex = Math.max(0, Number.parseInt(query.get('page') ?? '1', 10) - 1 || 0);
  const tbody = h('tbody');
  const total = h('span', { class: 'muted', testid: 'bucket-total' });
  const pager = h('div', { class: 'pager' });
  const create = h('button', { type: 'button', class: 'btn primary', testid: 'new-bucket' }, 'New bucket');
  root.append(
    h('div', { class: 'page-head' }, h('h1', null, 'Buckets'), total, h('div', { class: 'spacer' }), create),
    h(
      'div',
      { class: 'card flush' },
      h(
        'div',
        { class: 'table-wrap' },
        h(
          'table',
          { class: 'table', testid: 'bucket-table-list' },
          h(
            'thead',
            null,
            h(
              'tr',
              null,
              h('th', null, 'Bucket'),
              h('th', null, 'Source'),
              h('th', null, 'Retention'),
              h('th', null, 'Status'),
              h('th', { class: 'right' }, 'Actions'),
            ),
          ),
          tbody,
        ),
      ),
      pager,
    ),
  );

  const load = async () => {
    const res = await api.call('GET', bucketPath(api.user), {
      query: { count: PAGE_SIZE, index: pageIndex * PAGE_SIZE },
      signal,
    });
    const list = res.body as Bucket[];
    const count = Number(res.headers.get('x-total-count') ?? list.length);
    total.textContent = `${count} bucket${count === 1 ? '' : 's'}`;
    if (list.length === 0) {
      replace(tbody, h('tr', null, h('td', { colspan: 5, class: 'empty' }, 'No buckets yet.')));
    } else {
      replace(
        tbody,
        ...list.map((b) => {
          const del = h(
            'button',
            { type: 'button', class: 'btn small danger', testid: 'bucket-delete' },
            'Delete',
          );
          del.addEventListener('click', async () => {
            const ok = await confirmAction(
              'Delete bucket',
              ['Delete ', h('strong', null, b.bucket), ' and all its records?'],
              'Delete',
              signal,
            );
            if (!ok) return;
            try {
              await api.delete(bucketPath(api.user, b.bucket));
              showInfo(`Deleted ${b.bucket}.`);
              await load();
            } catch (err) {
              showError(err, `Cannot delete ${b.bucket}`);
            }
          });
          const state = b.enabled ? (b.status?.state ?? 'running') : 'disabled';
          return h(
            'tr',
            { testid: `bucket-row-${b.bucket}`, class: b.enabled ? '' : 'disabled' },
            h(
              'td',
              null,
              h(
                'a',
                { href: `/buckets/${encodeURIComponent(b.bucket)}`, class: 'strong', testid: 'bucket-link' },
                b.bucket,
              ),
              b.name && b.name !== b.bucket ? h('div', { class: 'muted small' }, b.name) : null,
            ),
            h('td', null, sourceText(b)),
            h('td', null, b.retention ? `${b.retention.period} ${b.retention.unit}` : 'forever'),
            h(
              'td',
              null,
              h(
                'span',
                {
                  class: `pill ${state === 'running' ? 'ok' : state === 'error' ? 'bad' : 'off'}`,
                  title: b.status?.message,
                },
                state,
              ),
            ),
            h('td', { class: 'actions' }, del),
          );
        }),
      );
    }
    const pages = Math.max(1, Math.ceil(count / PAGE_SIZE));
    replace(
      pager,
      h('span', { class: 'muted' }, `page ${pageIndex + 1} of ${pages}`),
      h('div', { class: 'spacer' }),
      h(
        'a',
        {
          class: `btn small${pageIndex === 0 ? ' disabled' : ''}`,
          href: pageIndex === 0 ? undefined : `/buckets?page=${pageIndex}`,
        },
        '← Previous',
      ),
      h(
        'a',
        {
          class: `btn small${pageIndex + 1 >= pages ? ' disabled' : ''}`,
          href: pageIndex + 1 >= pages ? undefined : `/buckets?page=${pageIndex + 2}`,
        },
        'Next →',
      ),
    );
  };

  create.addEventListener('click', () => {
    const id = h('input', {
      type: 'text',
      required: true,
      pattern: ID_PATTERN,
      maxlength: 128,
      testid: 'bucket-id',
      spellcheck: 'false',
    });
    const name = h('input', { type: 'text', maxlength: 256 });
    const source = h(
      'select',
      { testid: 'bucket-source' },
      h('option', { value: 'write' }, 'Written by devices or REST'),
      h('option', { value: 'device' }, 'Sampled from a device resource'),
    );
    const device = h('input', { type: 'text', pattern: ID_PATTERN, spellcheck: 'false' });
    const resource = h('input', { type: 'text', maxlength: 256, spellcheck: 'false' });
    const update = h(
      'select',
      null,
      h('option', { value: 'interval' }, 'every interval'),
      h('option', { value: 'events' }, 'whenever the device streams'),
    );
    const interval = h('input', { type: 'number', min: 1, max: 604800, value: '60' });
    const period = h('input', { type: 'number', min: 1, placeholder: 'forever' });
    const unit = h('select', null, ...UNITS.map((u) => h('option', { value: u, selected: u === 'days' }, u)));
    const deviceFields = h(
      'div',
      { class: 'fields', hidden: true },
      field('Device', device),
      field('Resource', resource),
      field('Update', update),
      field('Interval (s)', interval),
    );
    source.addEventListener('change', () => {
      deviceFields.hidden = source.value !== 'device';
    });
    update.addEventListener('change', () => {
      interval.disabled = update.value === 'events';
    });
    const error = h('div');
    const form = h(
      'form',
      { class: 'form' },
      field('Bucket id', id),
      field('Name', name),
      field('Source', source),
      deviceFields,
      h(
        'div',
        { class: 'field' },
        h('span', { class: 'field-label' }, 'Keep records for'),
        h('div', { class: 'row' }, period, unit),
      ),
      error,
    );
    const d = openDialog('New bucket', form, { testid: 'bucket-create-dialog', signal });
    const save = h(
      'button',
      { type: 'submit', class: 'btn primary', testid: 'bucket-create-submit' },
      'Create',
    );
    linkSubmit(form, save);
    d.footer.append(h('button', { type: 'button', class: 'btn', onclick: () => d.close() }, 'Cancel'), save);
    id.focus();
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      error.replaceChildren();
      try {
        if (!ID_REGEX.test(id.value)) throw new Error('bucket id: letters, digits and _ . @ - (up to 128)');
        const body: Record<string, unknown> = { bucket: id.value, source: source.value };
        if (name.value.trim()) body.name = name.value.trim();
        if (source.value === 'device') {
          body.config =
            update.value === 'events'
              ? { device: device.value, resource: resource.value, update: 'events' }
              : {
                  device: device.value,
                  resource: resource.value,
                  update: 'interval',
                  interval: interval.valueAsNumber,
                };
        }
        if (period.value) body.retention = { period: period.valueAsNumber, unit: unit.value };
        await busy(save, () => api.post(bucketPath(api.user), body));
        d.close();
        await load();
      } catch (err) {
        error.replaceChildren(errorBox(err));
      }
    });
  });

  try {
    await load();
  } catch (err) {
    if (!signal.aborted) showError(err, 'Cannot list the buckets');
  }
}

/** `datetime-local` text for a time (local). */
function localInput(ms: number): string {
  const d = new Date(ms - new Date(ms).getTimezoneOffset() * 60_000);
  return d.toISOString().slice(0, 16);
}

export async function bucketPage({ api, root, signal, params }: PageContext): Promise<void> {
  const id = params.bucket ?? '';
  let bucket: Bucket;
  try {
    bucket = await api.get<Bucket>(bucketPath(api.user, id), { signal });
  } catch (err) {
    if (signal.aborted) return;
    root.append(
      h(
        'div',
        { class: 'card empty-state' },
        h('h1', null, id),
        errorBox(err),
        h('a', { href: '/buckets' }, '← Buckets'),
      ),
    );
    return;
  }
  const from = h('input', { type: 'datetime-local', testid: 'bucket-from' });
  const to = h('input', { type: 'datetime-local', testid: 'bucket-to' });
  const items = h('input', { type: 'number', min: 1, max: 1000, value: '100', testid: 'bucket-items' });
  const sort = h(
    'select',
    { testid: 'bucket-sort' },
    h('option', { value: 'desc' }, 'newest first'),
    h('option', { value: 'asc' }, 'oldest first'),
  );
  const loadButton = h('button', { type: 'submit', class: 'btn primary', testid: 'bucket-load' }, 'Load');
  const quick = (label: string, ms: number | undefined) => {
    const b = h('button', { type: 'button', class: 'btn small ghost' }, label);
    b.addEventListener('click', () => {
      from.value = ms === undefined ? '' : localInput(Date.now() - ms);
      to.value = '';
      void load();
    });
    return b;
  };
  const info = h('span', { class: 'muted', testid: 'bucket-count' });
  const chart = new TimeChart({
    testid: 'bucket-chart',
    maxPoints: 1000,
    emptyText: 'No numeric fields in this range',
  });
  const thead = h('thead');
  const tbody = h('tbody');
  const form = h(
    'form',
    { class: 'toolbar wrap' },
    field('From', from),
    field('To', to),
    field('Items', items),
    field('Order', sort),
    loadButton,
    h(
      'div',
      { class: 'quick' },
      quick('1 h', 3600_000),
      quick('24 h', 86_400_000),
      quick('7 d', 7 * 86_400_000),
      quick('all', undefined),
    ),
  );
  signal.addEventListener('abort', () => chart.destroy(), { once: true });

  root.append(
    h(
      'div',
      { class: 'page-head' },
      h('a', { href: '/buckets', class: 'back' }, '← Buckets'),
      h(
        'div',
        { class: 'page-title' },
        h('h1', { testid: 'bucket-title' }, id),
        bucket.name !== id ? h('span', { class: 'muted' }, bucket.name) : null,
      ),
      h('div', { class: 'spacer' }),
      h('span', { class: 'muted' }, sourceText(bucket)),
    ),
    h('section', { class: 'card' }, form, h('div', { class: 'live-status' }, info), chart.el),
    h(
      'section',
      { class: 'card flush' },
      h('div', { class: 'table-wrap' }, h('table', { class: 'table', testid: 'bucket-table' }, thead, tbody)),
    ),
  );

  const load = async () => {
    const q: Record<string, string | number | undefined> = {
      items: Math.min(1000, Math.max(1, items.valueAsNumber || 100)),
      sort: sort.value,
    };
    if (from.value) q.min_ts = new Date(from.value).getTime();
    if (to.value) q.max_ts = new Date(to.value).getTime();
    if (q.min_ts !== undefined && q.max_ts !== undefined && Number(q.min_ts) > Number(q.max_ts)) {
      info.textContent = '“From” is after “To”.';
      return;
    }
    let rows: BucketRow[];
    try {
      rows = await busy(loadButton, () =>
        api.get<BucketRow[]>(`${bucketPath(api.user, id)}/data`, { query: q, signal }),
      );
    } catch (err) {
      if (!signal.aborted) showError(err, 'Cannot read the bucket');
      return;
    }
    info.textContent = rows.length
      ? `${rows.length} record${rows.length === 1 ? '' : 's'}, ${formatTime(Math.min(...rows.map((r) => r.ts)))} – ${formatTime(Math.max(...rows.map((r) => r.ts)))}`
      : 'No records in this range.';
    const values = rows.map((r) => withoutTs(r));
    chart.setAll(rows.map((r, i) => ({ ts: r.ts, value: values[i] })).sort((a, b) => a.ts - b.ts));
    // Columns: the scalar fields seen, in order of appearance.
    const columns: string[] = [];
    const flat = values.map((v) => scalarFields(v));
    for (const f of flat)
      for (const k of f.keys()) if (!columns.includes(k) && columns.length < MAX_COLUMNS) columns.push(k);
    replace(
      thead,
      h(
        'tr',
        null,
        h('th', null, 'Time'),
        ...columns.map((c) => h('th', null, c)),
        h('th', null, columns.length ? 'Other' : 'Value'),
      ),
    );
    replace(
      tbody,
      ...rows.map((r, i) => {
        const f = flat[i] ?? new Map<string, unknown>();
        const rest = [...f.keys()].filter((k) => !columns.includes(k));
        return h(
          'tr',
          { testid: 'bucket-record' },
          h('td', { class: 'nowrap' }, formatTime(r.ts)),
          ...columns.map((c) =>
            h('td', { class: typeof f.get(c) === 'number' ? 'num' : '' }, f.has(c) ? String(f.get(c)) : ''),
          ),
          h(
            'td',
            { class: 'json-cell' },
            columns.length
              ? rest.length
                ? shortJson(Object.fromEntries(rest.map((k) => [k, f.get(k)])))
                : ''
              : shortJson(values[i]),
          ),
        );
      }),
    );
  };
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    void load();
  });
  await load();
}

/** A record's value without its own `ts` (the time column shows it). */
function withoutTs(row: BucketRow): unknown {
  const v = row.val;
  if (typeof v !== 'object' || v === null || Array.isArray(v) || (v as { ts?: unknown }).ts !== row.ts)
    return v;
  const { ts: _, ...rest } = v as Record<string, unknown>;
  return rest;
}

/** Scalar leaves of a record, flattened (`a.b`); objects/arrays past depth 4 count as one value. */
function scalarFields(value: unknown): Map<string, unknown> {
  const out = new Map<string, unknown>();
  const walk = (v: unknown, path: string, depth: number) => {
    if (out.size >= 64) return;
    if (typeof v === 'object' && v !== null && depth < 4) {
      const entries = Array.isArray(v) ? v.map((x, i) => [String(i), x] as const) : Object.entries(v);
      if (entries.length === 0) out.set(path || 'value', v);
      for (const [k, x] of entries) walk(x, path ? `${path}.${k}` : k, depth + 1);
    } else out.set(path || 'value', typeof v === 'object' ? JSON.stringify(v) : v);
  };
  walk(value, '', 0);
  return out;
}
