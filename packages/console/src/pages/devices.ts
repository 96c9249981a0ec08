/**
 * Devices: a paged list with live online/offline state (events socket) and traffic (stats
 * route); create (credentials typed or generated, shown once), edit, enable/disable, new
 * credentials, delete.
 */
import type { Api } from '../api.js';
import type { PageContext } from '../app.js';
import {
  formatAge,
  formatBytes,
  formatTime,
  h,
  ID_PATTERN,
  ID_REGEX,
  randomSecret,
  replace,
} from '../dom.js';
import { openEvents } from '../sockets.js';
import {
  busy,
  confirmAction,
  errorBox,
  field,
  linkSubmit,
  openDialog,
  secretBlock,
  showError,
  showInfo,
  stateBadge,
} from '../ui.js';

export interface DeviceRecord {
  device: string;
  name: string;
  description: string;
  enabled: boolean;
  created: number;
  updated: number;
  connection: { active: boolean; ts: number | null };
}

export interface DeviceStats {
  connected: boolean;
  connected_ts: number | null;
  ip_address: string | null;
  rx_bytes: number;
  tx_bytes: number;
}

const PAGE_SIZE = 20;
const STATS_REFRESH_MS = 5000;
/** Credentials the server accepts: 1–256 printable ASCII characters, no spaces. */
const CREDENTIAL = /^[\x21-\x7e]{1,256}$/;

/** Runs `work` over `items`, at most `limit` at a time. */
export async function eachLimited<T>(
  items: T[],
  limit: number,
  work: (item: T) => Promise<void>,
): Promise<void> {
  let next = 0;
  const runners = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) {
      const item = items[next++] as T;
      await work(item);
    }
  });
  await Promise.all(runners);
}

export function devicePath(api: Api, device: string): string {
  return `${api.userPath(1)}/devices/${encodeURIComponent(device)}`;
}

/** Generated or typed credentials; `read()` validates. */
function credentialsChooser(): { el: HTMLElement; read(): string } {
  const name = `cred-${Math.random().toString(36).slice(2)}`;
  const generate = h('input', {
    type: 'radio',
    name,
    value: 'generate',
    checked: true,
    testid: 'credentials-generate',
  });
  const typed = h('input', { type: 'radio', name, value: 'type', testid: 'credentials-type' });
  const input = h('input', {
    type: 'text',
    autocomplete: 'off',
    spellcheck: 'false',
    maxlength: 256,
    placeholder: 'printable characters, no spaces',
    testid: 'credentials-input',
    hidden: true,
  });
  const sync = () => {
    input.hidden = !typed.checked;
    if (typed.checked) input.focus();
  };
  generate.addEventListener('change', sync);
  typed.addEventListener('change', sync);
  const el = h(
    'div',
    { class: 'field' },
    h('span', { class: 'field-label' }, 'Credentials'),
    h(
      'div',
      { class: 'radio-row' },
      h('label', null, generate, ' Generate'),
      h('label', null, typed, ' Type them'),
    ),
    input,
    h('span', { class: 'field-hint' }, 'Shown once after saving: the device logs in with them.'),
  );
  return {
    el,
    read: () => {
      if (generate.checked) return randomSecret();
      if (!CREDENTIAL.test(input.value))
        throw new Error('credentials: 1–256 printable characters without spaces');
      return input.value;
    },
  };
}

function connectionHint(api: Api, device: string): HTMLElement {
  return h(
    'p',
    { class: 'muted small' },
    'Log in as user ',
    h('code', null, api.user),
    ', device ',
    h('code', null, device),
    ` (IOTMP on ${location.hostname}: TCP 25204, TLS 25206, or ws${location.protocol === 'https:' ? 's' : ''}://${location.host}/iotmp).`,
  );
}

export async function devicesPage(ctx: PageContext): Promise<void> {
  const { api, root, signal, query } = ctx;
  const pageIndex = Math.max(0, Number.parseInt(query.get('page') ?? '1', 10) - 1 || 0);
  const rows = new Map<string, { record: DeviceRecord; row: HTMLTableRowElement; stats?: DeviceStats }>();

  const eventsState = h('span', { class: 'live-state', testid: 'events-status' }, 'connecting');
  const totalLabel = h('span', { class: 'muted', testid: 'device-total' });
  const tbody = h('tbody');
  const table = h(
    'table',
    { class: 'table', testid: 'device-table' },
    h(
      'thead',
      null,
      h(
        'tr',
        null,
        h('th', null, 'State'),
        h('th', null, 'Device'),
        h('th', null, 'Description'),
        h('th', { title: 'Bytes the device sent (in) and received (out) on its connection' }, 'Traffic'),
        h('th', null, 'Connection'),
        h('th', null, 'Enabled'),
        h('th', { class: 'right' }, 'Actions'),
      ),
    ),
    tbody,
  );
  const pager = h('div', { class: 'pager', testid: 'pager' });
  const newButton = h('button', { type: 'button', class: 'btn primary', testid: 'new-device' }, 'New device');
  root.append(
    h(
      'div',
      { class: 'page-head' },
      h('h1', null, 'Devices'),
      totalLabel,
      h('div', { class: 'spacer' }),
      eventsState,
      newButton,
    ),
    h('div', { class: 'card flush' }, h('div', { class: 'table-wrap' }, table), pager),
  );

  const trafficCell = (stats: DeviceStats | undefined) =>
    stats
      ? h(
          'span',
          { class: 'traffic' },
          h('span', { title: 'sent by the device' }, `in ${formatBytes(stats.rx_bytes)}`),
          h('span', { class: 'sep' }, ' · '),
          h('span', { title: 'sent to the device' }, `out ${formatBytes(stats.tx_bytes)}`),
        )
      : h('span', { class: 'muted' }, '–');

  const connectionCell = (record: DeviceRecord, stats: DeviceStats | undefined) => {
    const online = stats?.connected ?? record.connection.active;
    const ts = stats?.connected_ts ?? record.connection.ts;
    if (online && ts)
      return h(
        'span',
        { title: `since ${formatTime(ts)}${stats?.ip_address ? ` from ${stats.ip_address}` : ''}` },
        `since ${formatTime(ts)} (${formatAge(ts)})`,
      );
    if (ts) return h('span', { class: 'muted', title: formatTime(ts) }, `last seen ${formatAge(ts)} ago`);
    return h('span', { class: 'muted' }, 'never connected');
  };

  const renderRow = (id: string) => {
    const entry = rows.get(id);
    if (!entry) return;
    const { record, stats, row } = entry;
    const online = stats?.connected ?? record.connection.active;
    const edit = h('button', { type: 'button', class: 'btn small', testid: 'device-edit' }, 'Edit');
    const creds = h(
      'button',
      { type: 'button', class: 'btn small', testid: 'device-credentials' },
      'Credentials',
    );
    const toggle = h(
      'button',
      { type: 'button', class: 'btn small', testid: 'device-toggle' },
      record.enabled ? 'Disable' : 'Enable',
    );
    const del = h('button', { type: 'button', class: 'btn small danger', testid: 'device-delete' }, 'Delete');
    edit.addEventListener('click', () => editDevice(record));
    creds.addEventListener('click', () => newCredentials(record));
    toggle.addEventListener('click', () =>
      busy(toggle, async () => {
        try {
          entry.record = await api.patch<DeviceRecord>(devicePath(api, id), { enabled: !record.enabled });
          renderRow(id);
          showInfo(`${id} ${entry.record.enabled ? 'enabled' : 'disabled'}.`);
        } catch (err) {
          showError(err, `Cannot change ${id}`);
        }
      }),
    );
    del.addEventListener('click', async () => {
      const ok = await confirmAction(
        'Delete device',
        ['Delete ', h('strong', null, id), '? Its properties go with it, and it is disconnected.'],
        'Delete',
        signal,
      );
      if (!ok) return;
      try {
        await api.delete(devicePath(api, id));
        showInfo(`Deleted ${id}.`);
        await load();
      } catch (err) {
        showError(err, `Cannot delete ${id}`);
      }
    });
    row.className = record.enabled ? '' : 'disabled';
    replace(
      row,
      h('td', null, stateBadge(online)),
      h(
        'td',
        null,
        h(
          'a',
          { href: `/devices/${encodeURIComponent(id)}`, class: 'strong nowrap', testid: 'device-link' },
          id,
        ),
        record.name && record.name !== id ? h('div', { class: 'muted small' }, record.name) : null,
      ),
      h(
        'td',
        { class: 'desc', title: record.description },
        record.description || h('span', { class: 'muted' }, '–'),
      ),
      h('td', { testid: 'device-traffic' }, trafficCell(stats)),
      h('td', { testid: 'device-connection' }, connectionCell(record, stats)),
      h(
        'td',
        null,
        h(
          'span',
          { class: `pill ${record.enabled ? 'ok' : 'off'}` },
          record.enabled ? 'enabled' : 'disabled',
        ),
      ),
      h('td', { class: 'actions' }, edit, creds, toggle, del),
    );
  };

  const loadStats = async (id: string) => {
    const entry = rows.get(id);
    if (!entry) return;
    try {
      entry.stats = await api.get<DeviceStats>(`${api.userPath(3)}/devices/${encodeURIComponent(id)}/stats`, {
        signal,
      });
      renderRow(id);
    } catch {
      if (!signal.aborted) entry.stats = undefined;
    }
  };

  const load = async () => {
    const res = await api.call('GET', `${api.userPath(1)}/devices`, {
      query: { count: PAGE_SIZE, index: pageIndex * PAGE_SIZE },
      signal,
    });
    const list = res.body as DeviceRecord[];
    const total = Number(res.headers.get('x-total-count') ?? list.length);
    totalLabel.textContent = `${total} device${total === 1 ? '' : 's'}`;
    rows.clear();
    tbody.replaceChildren();
    for (const record of list) {
      const row = h('tr', { testid: `device-row-${record.device}` });
      rows.set(record.device, { record, row });
      tbody.append(row);
      renderRow(record.device);
    }
    if (list.length === 0)
      tbody.append(
        h(
          'tr',
          null,
          h(
            'td',
            { colspan: 7, class: 'empty' },
            total > 0 ? 'No devices on this page.' : 'No devices yet: create one with “New device”.',
          ),
        ),
      );
    const first = pageIndex * PAGE_SIZE;
    const pages = Math.max(1, Math.ceil(total / PAGE_SIZE));
    replace(
      pager,
      h(
        'span',
        { class: 'muted' },
        list.length ? `${first + 1}–${first + list.length} of ${total}` : `page ${pageIndex + 1} of ${pages}`,
      ),
      h('div', { class: 'spacer' }),
      h(
        'a',
        {
          class: `btn small${pageIndex === 0 ? ' disabled' : ''}`,
          href: pageIndex === 0 ? undefined : `/devices?page=${pageIndex}`,
          testid: 'page-prev',
        },
        '← Previous',
      ),
      h(
        'a',
        {
          class: `btn small${pageIndex + 1 >= pages ? ' disabled' : ''}`,
          href: pageIndex + 1 >= pages ? undefined : `/devices?page=${pageIndex + 2}`,
          testid: 'page-next',
        },
        'Next →',
      ),
    );
    await eachLimited([...rows.keys()], 6, loadStats);
  };

  const createDevice = () => {
    const id = h('input', {
      type: 'text',
      required: true,
      pattern: ID_PATTERN,
      maxlength: 128,
      spellcheck: 'false',
      autocomplete: 'off',
      placeholder: 'greenhouse-1',
      testid: 'device-id',
    });
    const name = h('input', { type: 'text', maxlength: 256, testid: 'device-name' });
    const description = h('textarea', { rows: 2, maxlength: 4096, testid: 'device-description' });
    const credentials = credentialsChooser();
    const error = h('div');
    const submit = h(
      'button',
      { type: 'submit', class: 'btn primary', testid: 'device-create-submit' },
      'Create',
    );
    const form = h(
      'form',
      { class: 'form' },
      field('Device id', id, 'Letters, digits and _ . @ - (up to 128)'),
      field('Name', name),
      field('Description', description),
      credentials.el,
      error,
    );
    const d = openDialog('New device', form, { testid: 'device-create-dialog', signal });
    linkSubmit(form, submit);
    d.footer.append(
      h('button', { type: 'button', class: 'btn', onclick: () => d.close() }, 'Cancel'),
      submit,
    );
    id.focus();
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      error.replaceChildren();
      try {
        if (!ID_REGEX.test(id.value)) throw new Error('device id: letters, digits and _ . @ - (up to 128)');
        const secret = credentials.read();
        const body = {
          device: id.value,
          credentials: secret,
          ...(name.value.trim() ? { name: name.value.trim() } : {}),
          ...(description.value.trim() ? { description: description.value.trim() } : {}),
        };
        const created = await busy(submit, () => api.post<DeviceRecord>(`${api.userPath(1)}/devices`, body));
        replace(
          d.body,
          h('p', null, 'Device ', h('strong', null, created.device), ' created.'),
          secretBlock(
            secret,
            'created-credentials',
            'Its credentials, shown only now: copy them to the device.',
          ),
          connectionHint(api, created.device),
        );
        replace(
          d.footer,
          h(
            'button',
            { type: 'button', class: 'btn primary', testid: 'credentials-done', onclick: () => d.close() },
            'Done',
          ),
        );
        void load().catch((err) => showError(err));
      } catch (err) {
        error.replaceChildren(errorBox(err));
      }
    });
  };

  const editDevice = (record: DeviceRecord) => {
    const name = h('input', { type: 'text', maxlength: 256, value: record.name, testid: 'edit-name' });
    const description = h('textarea', {
      rows: 3,
      maxlength: 4096,
      value: record.description,
      testid: 'edit-description',
    });
    const error = h('div');
    const form = h('form', { class: 'form' }, field('Name', name), field('Description', description), error);
    const d = openDialog(`Edit ${record.device}`, form, { testid: 'device-edit-dialog', signal });
    const save = h('button', { type: 'submit', class: 'btn primary', testid: 'edit-save' }, 'Save');
    linkSubmit(form, save);
    d.footer.append(h('button', { type: 'button', class: 'btn', onclick: () => d.close() }, 'Cancel'), save);
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      try {
        const updated = await busy(save, () =>
          api.patch<DeviceRecord>(devicePath(api, record.device), {
            name: name.value,
            description: description.value,
          }),
        );
        const entry = rows.get(record.device);
        if (entry) {
          entry.record = updated;
          renderRow(record.device);
        }
        d.close();
      } catch (err) {
        error.replaceChildren(errorBox(err));
      }
    });
  };

  const newCredentials = (record: DeviceRecord) => {
    const credentials = credentialsChooser();
    const error = h('div');
    const form = h(
      'form',
      { class: 'form' },
      h('p', null, 'The device is disconnected and must log in with the new credentials.'),
      credentials.el,
      error,
    );
    const d = openDialog(`New credentials for ${record.device}`, form, {
      testid: 'device-credentials-dialog',
      signal,
    });
    const save = h(
      'button',
      { type: 'submit', class: 'btn primary', testid: 'credentials-save' },
      'Set credentials',
    );
    linkSubmit(form, save);
    d.footer.append(h('button', { type: 'button', class: 'btn', onclick: () => d.close() }, 'Cancel'), save);
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      try {
        const secret = credentials.read();
        await busy(save, () => api.patch(devicePath(api, record.device), { credentials: secret }));
        replace(d.body, secretBlock(secret, 'created-credentials', 'The new credentials, shown only now.'));
        replace(
          d.footer,
          h(
            'button',
            { type: 'button', class: 'btn primary', testid: 'credentials-done', onclick: () => d.close() },
            'Done',
          ),
        );
      } catch (err) {
        error.replaceChildren(errorBox(err));
      }
    });
  };

  newButton.addEventListener('click', createDevice);

  try {
    await load();
  } catch (err) {
    if (!signal.aborted) showError(err, 'Cannot list the devices');
    return;
  }

  // Opened once the list shows (and the session is known to be good).
  openEvents(
    api,
    [{ event: 'device_state_change' }],
    {
      onEvent: (_event, payload) => {
        const change = payload as { device: string; connected: boolean; ts: number; ip?: string };
        const entry = rows.get(change.device);
        if (!entry) return;
        entry.record.connection = { active: change.connected, ts: change.ts };
        entry.stats = entry.stats
          ? {
              ...entry.stats,
              connected: change.connected,
              connected_ts: change.ts,
              ip_address: change.ip ?? null,
            }
          : undefined;
        renderRow(change.device);
        void loadStats(change.device);
      },
      onState: (state) => {
        eventsState.textContent = state === 'live' ? 'live' : state;
        eventsState.className = `live-state ${state}`;
        eventsState.title =
          state === 'live'
            ? 'Device state updates arrive as they happen'
            : 'Reconnecting to the events socket';
      },
      // Changes may have been missed while the socket was down.
      onLive: () => void eachLimited([...rows.keys()], 6, loadStats),
    },
    signal,
  );

  const timer = setInterval(() => {
    const online = [...rows.values()].filter((r) => r.stats?.connected).map((r) => r.record.device);
    void eachLimited(online, 6, loadStats);
  }, STATS_REFRESH_MS);
  signal.addEventListener('abort', () => clearInterval(timer), { once: true });
}
