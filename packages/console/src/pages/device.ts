/**
 * One device: its state and traffic, its resources (DESCRIBE) with a form per resource and
 * a Run button, a live view of any resource (WebSocket stream + uPlot chart), and its
 * properties.
 */
import { type Api, ApiError } from '../api.js';
import type { PageContext } from '../app.js';
import { TimeChart } from '../chart.js';
import {
  encodePath,
  formatAge,
  formatBytes,
  formatTime,
  h,
  hexDump,
  ID_PATTERN,
  ID_REGEX,
  replace,
  shortJson,
} from '../dom.js';
import { inputForm, jsonField, type ValueForm } from '../form.js';
import { openEvents, openResourceStream } from '../sockets.js';
import {
  busy,
  confirmAction,
  errorBox,
  field,
  linkSubmit,
  openDialog,
  showError,
  showInfo,
  stateBadge,
} from '../ui.js';
import { type DeviceRecord, type DeviceStats, devicePath, eachLimited } from './devices.js';

/** DESCRIBE kinds (`fn`). */
const KINDS: Record<number, string> = { 1: 'run', 2: 'input', 3: 'output', 4: 'input → output' };
/** A device call may take the server's device timeout (30 s by default). */
const RUN_TIMEOUT_MS = 35_000;
const STATS_REFRESH_MS = 3000;
/** Resources described at once (each DESCRIBE is a round trip to the device). */
const DESCRIBE_LIMIT = 100;

interface Property {
  property: string;
  value: unknown;
  created_ts: number;
  modified_ts: number;
}

function isPattern(name: string): boolean {
  return /(^|\/)[:*]/.test(name);
}

export async function devicePage(ctx: PageContext): Promise<void> {
  const { api, root, signal, params } = ctx;
  const id = params.device ?? '';
  const v3 = `${api.userPath(3)}/devices/${encodeURIComponent(id)}`;

  let record: DeviceRecord;
  try {
    record = await api.get<DeviceRecord>(devicePath(api, id), { signal });
  } catch (err) {
    if (signal.aborted) return;
    root.append(
      h(
        'div',
        { class: 'card empty-state' },
        h('h1', null, id),
        errorBox(err, 'device-error'),
        h('a', { href: '/devices' }, '← All devices'),
      ),
    );
    return;
  }

  let online = record.connection.active;
  const badge = h('span');
  const title = h('div', { class: 'page-title' });
  const renderTitle = () => {
    replace(badge, stateBadge(online, 'device-page-state'));
    replace(
      title,
      h('h1', { testid: 'device-title' }, id),
      record.name && record.name !== id ? h('span', { class: 'muted' }, record.name) : null,
    );
  };
  renderTitle();

  // --- stats
  const statsGrid = h('div', { class: 'stats', testid: 'device-stats' });
  const stat = (label: string, value: string, testid: string, hint?: string) =>
    h(
      'div',
      { class: 'stat', title: hint },
      h('div', { class: 'stat-label' }, label),
      h('div', { class: 'stat-value', testid }, value),
    );
  let stats: DeviceStats | undefined;
  const renderStats = () => {
    const s = stats;
    const connected = s?.connected ?? online;
    const ts = s?.connected_ts ?? record.connection.ts;
    replace(
      statsGrid,
      stat('State', connected ? 'online' : 'offline', 'stat-state'),
      stat(
        connected ? 'Connected since' : 'Last connected',
        ts ? `${formatTime(ts)} (${formatAge(ts)}${connected ? '' : ' ago'})` : 'never',
        'stat-since',
      ),
      stat('Address', s?.ip_address ?? '–', 'stat-ip'),
      stat('In', s ? formatBytes(s.rx_bytes) : '–', 'stat-rx', 'Bytes the device sent on this connection'),
      stat(
        'Out',
        s ? formatBytes(s.tx_bytes) : '–',
        'stat-tx',
        'Bytes sent to the device on this connection',
      ),
      stat('Enabled', record.enabled ? 'yes' : 'no', 'stat-enabled'),
    );
  };
  const loadStats = async () => {
    try {
      stats = await api.get<DeviceStats>(`${v3}/stats`, { signal });
      if (stats.connected !== online) {
        online = stats.connected;
        renderTitle();
      }
      renderStats();
    } catch (err) {
      if (!signal.aborted && !(err instanceof ApiError && err.status === 0)) showError(err, 'Stats');
    }
  };
  renderStats();

  // --- live view
  const live = liveView(api, id, signal);

  // --- resources
  const resourcesBody = h('div', { class: 'resources', testid: 'resources' });
  const reloadResources = h(
    'button',
    { type: 'button', class: 'btn small', testid: 'resources-reload' },
    'Reload',
  );
  let resourcesLoaded = false;
  const loadResources = async () => {
    if (!online) {
      resourcesLoaded = false;
      replace(
        resourcesBody,
        h(
          'p',
          { class: 'muted', testid: 'resources-offline' },
          'The device is offline: its resources are listed when it connects.',
        ),
      );
      live.setResources([]);
      return;
    }
    replace(resourcesBody, h('p', { class: 'muted' }, 'Asking the device…'));
    let api_: Record<string, { fn?: number }>;
    try {
      api_ =
        (await api.get<Record<string, { fn?: number }>>(`${v3}/resources`, {
          signal,
          timeoutMs: RUN_TIMEOUT_MS,
        })) ?? {};
    } catch (err) {
      if (signal.aborted) return;
      replace(resourcesBody, errorBox(err, 'resources-error'));
      return;
    }
    resourcesLoaded = true;
    const names = Object.keys(api_).sort();
    live.setResources(names.filter((n) => !isPattern(n)));
    if (names.length === 0) {
      replace(resourcesBody, h('p', { class: 'muted' }, 'The device has no resources.'));
      return;
    }
    const items = names.map((name) => resourceItem(api, v3, name, api_[name]?.fn ?? 0, live, signal));
    replace(resourcesBody, ...items.map((i) => i.el));
    await eachLimited(items.slice(0, DESCRIBE_LIMIT), 4, (i) => i.describe());
  };
  reloadResources.addEventListener('click', () => busy(reloadResources, loadResources));

  // --- properties
  const properties = propertiesCard(api, v3, signal);

  root.append(
    h(
      'div',
      { class: 'page-head' },
      h('a', { href: '/devices', class: 'back' }, '← Devices'),
      title,
      badge,
      h('div', { class: 'spacer' }),
    ),
    record.description ? h('p', { class: 'muted description' }, record.description) : '',
    h('section', { class: 'card' }, statsGrid),
    h(
      'div',
      { class: 'grid-2' },
      h(
        'section',
        { class: 'card' },
        h(
          'div',
          { class: 'card-head' },
          h('h2', null, 'Resources'),
          h('div', { class: 'spacer' }),
          reloadResources,
        ),
        resourcesBody,
      ),
      live.el,
    ),
    properties.el,
  );

  openEvents(
    api,
    [
      { event: 'device_state_change', filters: { device: id } },
      { event: 'device_property_update', filters: { device: id } },
    ],
    {
      onEvent: (event, payload) => {
        if (event === 'device_state_change') {
          const change = payload as { connected: boolean; ts: number };
          online = change.connected;
          record.connection = { active: change.connected, ts: change.ts };
          renderTitle();
          void loadStats();
          if (online && !resourcesLoaded) void loadResources();
          if (!online) void loadResources();
        } else properties.changed();
      },
      onLive: () => {
        void loadStats();
        properties.changed();
      },
    },
    signal,
  );
  const timer = setInterval(() => {
    if (online) void loadStats();
  }, STATS_REFRESH_MS);
  signal.addEventListener('abort', () => clearInterval(timer), { once: true });

  await Promise.all([loadStats(), loadResources(), properties.load()]);
}

interface LiveView {
  el: HTMLElement;
  setResources(names: string[]): void;
  start(resource: string): void;
}

/** The live view: a resource streamed at an interval, charted. */
function liveView(api: Api, device: string, signal: AbortSignal): LiveView {
  const select = h('select', { testid: 'live-resource' });
  const interval = h('input', {
    type: 'number',
    min: 0,
    max: 86400,
    step: 0.1,
    value: '1',
    testid: 'live-interval',
    title: 'Seconds between samples (at least 0.1); 0: whenever the device streams',
  });
  const toggle = h('button', { type: 'button', class: 'btn primary', testid: 'live-toggle' }, 'Start');
  const status = h('span', { class: 'muted', testid: 'live-status' }, 'stopped');
  const points = h('span', { class: 'count', testid: 'live-points' }, '0');
  const latest = h('pre', { class: 'output', testid: 'live-latest' }, '–');
  const chart = new TimeChart({
    testid: 'live-chart',
    maxPoints: 600,
    emptyText: 'Start a stream to chart its numbers',
  });
  let stop: (() => void) | undefined;
  let count = 0;

  const setRunning = (running: boolean) => {
    toggle.textContent = running ? 'Stop' : 'Start';
    toggle.classList.toggle('danger', running);
    toggle.classList.toggle('primary', !running);
  };
  const halt = () => {
    stop?.();
    stop = undefined;
    setRunning(false);
  };

  const start = async (resource: string) => {
    halt();
    const seconds = interval.valueAsNumber;
    if (!Number.isFinite(seconds) || seconds < 0 || (seconds > 0 && seconds < 0.1)) {
      status.textContent = 'interval: 0 (device events) or at least 0.1 s';
      return;
    }
    count = 0;
    points.textContent = '0';
    points.dataset.count = '0';
    latest.textContent = '–';
    chart.clear();
    status.textContent = `connecting to ${resource}…`;
    status.classList.remove('error-text');
    setRunning(true);
    try {
      const close = await openResourceStream(api, device, resource, seconds, {
        onStart: (s) => {
          status.textContent = s
            ? `streaming ${resource} every ${s} s`
            : `streaming ${resource} (device events)`;
        },
        onData: (payload) => {
          count++;
          points.textContent = String(count);
          points.dataset.count = String(count);
          latest.textContent = JSON.stringify(payload, null, 2);
          chart.push(Date.now(), payload);
        },
        onEnd: (reason, isError) => {
          status.textContent = `${isError ? 'error: ' : ''}${reason}`;
          status.classList.toggle('error-text', isError);
          stop = undefined;
          setRunning(false);
        },
      });
      if (signal.aborted) close();
      else stop = close;
    } catch (err) {
      status.textContent = `error: ${(err as Error).message}`;
      setRunning(false);
    }
  };

  toggle.addEventListener('click', () => {
    if (stop) {
      halt();
      status.textContent = 'stopped';
    } else if (select.value) void start(select.value);
  });
  signal.addEventListener('abort', () => {
    halt();
    chart.destroy();
  });

  const el = h(
    'section',
    { class: 'card', testid: 'live' },
    h(
      'div',
      { class: 'card-head' },
      h('h2', null, 'Live view'),
      h('div', { class: 'spacer' }),
      h('span', { class: 'muted small' }, 'points '),
      points,
    ),
    h('div', { class: 'toolbar' }, field('Resource', select), field('Interval (s)', interval), toggle),
    h('div', { class: 'live-status' }, status),
    chart.el,
    h('details', { class: 'latest', open: true }, h('summary', null, 'Latest value'), latest),
  );
  return {
    el,
    setResources: (names) => {
      const previous = select.value;
      replace(select, ...names.map((n) => h('option', { value: n }, n)));
      if (names.includes(previous)) select.value = previous;
      select.disabled = names.length === 0;
      toggle.disabled = names.length === 0 && !stop;
    },
    start: (resource) => {
      if (![...select.options].some((o) => o.value === resource))
        select.append(h('option', { value: resource }, resource));
      select.value = resource;
      el.scrollIntoView({ behavior: 'smooth', block: 'nearest' });
      void start(resource);
    },
  };
}

/** One resource: its kind, an input form from its DESCRIBE sample, Run, output, Live. */
function resourceItem(
  api: Api,
  v3: string,
  name: string,
  fn: number,
  live: LiveView,
  signal: AbortSignal,
): { el: HTMLElement; describe(): Promise<void> } {
  const takesInput = fn === 2 || fn === 4;
  const pattern = isPattern(name);
  const path = h('input', {
    type: 'text',
    value: name,
    spellcheck: 'false',
    testid: `path-${name}`,
    title: 'The path to call: fill in the :parameters',
  });
  const formHolder = h('div', { class: 'resource-form' });
  let form: ValueForm | undefined;
  if (takesInput) {
    form = inputForm(undefined, `form-${name}`);
    formHolder.append(form.el);
  }
  const output = h('pre', { class: 'output', testid: `output-${name}`, hidden: true });
  const meta = h('span', { class: 'muted small', testid: `meta-${name}` });
  const run = h('button', { type: 'submit', class: 'btn primary small', testid: `run-${name}` }, 'Run');
  const liveButton = h(
    'button',
    { type: 'button', class: 'btn small', testid: `live-${name}`, title: 'Stream it in the live view' },
    'Live',
  );
  // Streams carry output: run-only and input-only resources have none to show.
  liveButton.hidden = pattern || fn === 1 || fn === 2;
  liveButton.addEventListener('click', () => live.start(name));

  const show = (text: string, isError = false) => {
    output.hidden = false;
    output.textContent = text;
    output.classList.toggle('error-text', isError);
  };

  const el = h(
    'form',
    { class: 'resource', testid: `resource-${name}` },
    h(
      'div',
      { class: 'resource-head' },
      h('code', { class: 'resource-name' }, name),
      h('span', { class: `kind kind-${fn}` }, KINDS[fn] ?? `fn ${fn}`),
      h('div', { class: 'spacer' }),
      meta,
      liveButton,
      run,
    ),
    pattern ? field('Path', path) : null,
    formHolder,
    output,
  );

  el.addEventListener('submit', async (e) => {
    e.preventDefault();
    let input: unknown;
    try {
      input = form?.read();
    } catch (err) {
      show((err as Error).message, true);
      return;
    }
    const target = pattern ? path.value.trim() : name;
    if (!target) return;
    try {
      const res = await busy(run, () =>
        api.call(takesInput ? 'POST' : 'GET', `${v3}/resources/${encodePath(target)}`, {
          json: takesInput ? input : undefined,
          timeoutMs: RUN_TIMEOUT_MS,
          signal,
        }),
      );
      meta.textContent = `${res.status} · ${res.ms} ms`;
      if (res.body instanceof Uint8Array) show(`binary, ${res.body.length} bytes\n\n${hexDump(res.body)}`);
      else if (res.body === undefined || (res.body === null && (fn === 1 || fn === 2)))
        show('done (no output)');
      else show(JSON.stringify(res.body, null, 2));
    } catch (err) {
      if (signal.aborted) return;
      meta.textContent = err instanceof ApiError && err.status ? `${err.status}` : '';
      const code = err instanceof ApiError ? ` (${err.code})` : '';
      show(`${(err as Error).message}${code}`, true);
    }
  });

  return {
    el,
    describe: async () => {
      if (!takesInput || pattern) return;
      try {
        const d = await api.get<{ in?: unknown; out?: unknown }>(`${v3}/resources/${encodePath(name)}/api`, {
          signal,
          timeoutMs: RUN_TIMEOUT_MS,
        });
        if (d && d.in !== undefined) {
          form = inputForm(d.in, `form-${name}`);
          formHolder.replaceChildren(form.el);
        }
      } catch {
        // No description: the JSON textarea stays.
      }
    },
  };
}

/** The device's properties: list, add, edit as JSON, delete; follows changes live. */
function propertiesCard(
  api: Api,
  v3: string,
  signal: AbortSignal,
): { el: HTMLElement; load(): Promise<void>; changed(): void } {
  const tbody = h('tbody');
  const name = h('input', {
    type: 'text',
    pattern: ID_PATTERN,
    maxlength: 128,
    placeholder: 'name',
    spellcheck: 'false',
    testid: 'property-name',
  });
  const value = jsonField(undefined, 'property-value', 'Value (JSON)', true);
  const valueArea = value.el.querySelector('textarea');
  if (valueArea) {
    valueArea.dataset.testid = 'property-value';
    valueArea.rows = 2;
  }
  const add = h('button', { type: 'submit', class: 'btn primary', testid: 'property-add' }, 'Add');
  const addError = h('div');
  const addForm = h(
    'form',
    { class: 'property-add' },
    field('Property', name),
    value.el,
    h('div', { class: 'add-btn' }, add),
  );
  let timer: ReturnType<typeof setTimeout> | undefined;

  const load = async () => {
    let list: Property[];
    try {
      list = await api.get<Property[]>(`${v3}/properties`, { signal });
    } catch (err) {
      if (!signal.aborted)
        replace(tbody, h('tr', null, h('td', { colspan: 4 }, errorBox(err, 'properties-error'))));
      return;
    }
    if (list.length === 0) {
      replace(tbody, h('tr', null, h('td', { colspan: 4, class: 'empty' }, 'No properties yet.')));
      return;
    }
    replace(
      tbody,
      ...list.map((p) => {
        const edit = h('button', { type: 'button', class: 'btn small', testid: 'property-edit' }, 'Edit');
        const del = h(
          'button',
          { type: 'button', class: 'btn small danger', testid: 'property-delete' },
          'Delete',
        );
        edit.addEventListener('click', () => editProperty(p));
        del.addEventListener('click', async () => {
          if (
            !(await confirmAction(
              'Delete property',
              ['Delete ', h('strong', null, p.property), '?'],
              'Delete',
              signal,
            ))
          )
            return;
          try {
            await api.delete(`${v3}/properties/${encodeURIComponent(p.property)}`);
            await load();
          } catch (err) {
            showError(err, `Cannot delete ${p.property}`);
          }
        });
        return h(
          'tr',
          { testid: `property-${p.property}` },
          h('td', null, h('code', null, p.property)),
          h(
            'td',
            { class: 'json-cell', title: JSON.stringify(p.value, null, 2), testid: 'property-value-cell' },
            shortJson(p.value),
          ),
          h('td', { class: 'muted nowrap' }, formatTime(p.modified_ts)),
          h('td', { class: 'actions' }, edit, del),
        );
      }),
    );
  };

  const editProperty = (p: Property) => {
    const editor = h('textarea', {
      class: 'json',
      rows: 12,
      spellcheck: 'false',
      value: JSON.stringify(p.value, null, 2),
      testid: 'property-editor',
    });
    const error = h('div');
    const form = h('form', { class: 'form' }, field('Value (JSON)', editor), error);
    const d = openDialog(`Property ${p.property}`, form, { testid: 'property-dialog', signal, wide: true });
    const save = h('button', { type: 'submit', class: 'btn primary', testid: 'property-save' }, 'Save');
    linkSubmit(form, save);
    d.footer.append(h('button', { type: 'button', class: 'btn', onclick: () => d.close() }, 'Cancel'), save);
    editor.focus();
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      error.replaceChildren();
      let parsed: unknown;
      try {
        parsed = JSON.parse(editor.value);
      } catch (err) {
        error.replaceChildren(errorBox(new Error(`not valid JSON: ${(err as Error).message}`)));
        return;
      }
      try {
        await busy(save, () =>
          api.put(`${v3}/properties/${encodeURIComponent(p.property)}`, { value: parsed }),
        );
        d.close();
        showInfo(`Saved ${p.property}.`);
        await load();
      } catch (err) {
        error.replaceChildren(errorBox(err));
      }
    });
  };

  addForm.addEventListener('submit', async (e) => {
    e.preventDefault();
    addError.replaceChildren();
    try {
      if (!ID_REGEX.test(name.value))
        throw new Error('property name: letters, digits and _ . @ - (up to 128)');
      const v = value.read();
      await busy(add, () => api.post(`${v3}/properties`, { property: name.value, value: v }));
      name.value = '';
      if (valueArea) valueArea.value = '';
      await load();
    } catch (err) {
      addError.replaceChildren(errorBox(err, 'property-add-error'));
    }
  });

  const el = h(
    'section',
    { class: 'card', testid: 'properties' },
    h('div', { class: 'card-head' }, h('h2', null, 'Properties')),
    h(
      'div',
      { class: 'table-wrap' },
      h(
        'table',
        { class: 'table' },
        h(
          'thead',
          null,
          h(
            'tr',
            null,
            h('th', null, 'Property'),
            h('th', null, 'Value'),
            h('th', null, 'Modified'),
            h('th', { class: 'right' }, 'Actions'),
          ),
        ),
        tbody,
      ),
    ),
    addForm,
    addError,
  );
  signal.addEventListener('abort', () => clearTimeout(timer), { once: true });
  return {
    el,
    load,
    // Coalesces bursts of change events into one reload.
    changed: () => {
      clearTimeout(timer);
      timer = setTimeout(() => void load(), 150);
    },
  };
}
