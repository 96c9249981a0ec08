/** Access tokens: list, create with a scope (shown once), delete. */
import type { PageContext } from '../app.js';
import { formatTime, h, replace } from '../dom.js';
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
} from '../ui.js';
import type { DeviceRecord } from './devices.js';

interface TokenScope {
  /** "admin": everything, account management included (Thinger.io's allow {"*": {"*": "*"}}). */
  access: 'read' | 'call' | 'admin';
  devices?: Record<string, { resources?: string[] }>;
}

interface Token {
  id: string;
  name: string;
  scope: TokenScope;
  created: number;
  expires: number | null;
}

const EXPIRY: Array<[string, number | undefined]> = [
  ['never', undefined],
  ['1 hour', 3600],
  ['1 day', 86_400],
  ['30 days', 30 * 86_400],
  ['1 year', 365 * 86_400],
];

/** The access pill: label and style. */
function accessPill(access: TokenScope['access']): { label: string; cls: string } {
  if (access === 'admin') return { label: 'admin', cls: 'pill bad' };
  if (access === 'call') return { label: 'full', cls: 'pill ok' };
  return { label: 'read-only', cls: 'pill off' };
}

function scopeText(scope: TokenScope): string {
  if (scope.access === 'admin') return 'everything, account management included';
  const devices = scope.devices ? Object.entries(scope.devices) : undefined;
  if (!devices) return 'all devices and resources';
  if (devices.length === 0) return 'no devices';
  return devices.map(([d, s]) => (s.resources?.length ? `${d} (${s.resources.join(', ')})` : d)).join('; ');
}

export async function tokensPage({ api, root, signal }: PageContext): Promise<void> {
  const base = `${api.userPath(1)}/tokens`;
  const tbody = h('tbody');
  const create = h('button', { type: 'button', class: 'btn primary', testid: 'new-token' }, 'New token');
  root.append(
    h('div', { class: 'page-head' }, h('h1', null, 'Access tokens'), h('div', { class: 'spacer' }), create),
    h(
      'p',
      { class: 'muted' },
      'Tokens for programs and dashboards: send one as ',
      h('code', null, 'Authorization: Bearer …'),
      ' (or ',
      h('code', null, '?authorization=…'),
      ' on WebSockets). A token can be limited to some devices and resources, and to reading.',
    ),
    h(
      'div',
      { class: 'card flush' },
      h(
        'div',
        { class: 'table-wrap' },
        h(
          'table',
          { class: 'table', testid: 'token-table' },
          h(
            'thead',
            null,
            h(
              'tr',
              null,
              h('th', null, 'Name'),
              h('th', null, 'Access'),
              h('th', null, 'Scope'),
              h('th', null, 'Created'),
              h('th', null, 'Expires'),
              h('th', { class: 'right' }, 'Actions'),
            ),
          ),
          tbody,
        ),
      ),
    ),
  );

  const load = async () => {
    const list = await api.get<Token[]>(base, { signal });
    if (list.length === 0) {
      replace(tbody, h('tr', null, h('td', { colspan: 6, class: 'empty' }, 'No access tokens.')));
      return;
    }
    replace(
      tbody,
      ...list.map((t) => {
        const del = h(
          'button',
          { type: 'button', class: 'btn small danger', testid: 'token-delete' },
          'Delete',
        );
        del.addEventListener('click', async () => {
          const ok = await confirmAction(
            'Delete token',
            ['Delete ', h('strong', null, t.name), '? Programs using it lose access at once.'],
            'Delete',
            signal,
          );
          if (!ok) return;
          try {
            await api.delete(`${base}/${encodeURIComponent(t.id)}`);
            showInfo(`Deleted ${t.name}.`);
            await load();
          } catch (err) {
            showError(err, `Cannot delete ${t.name}`);
          }
        });
        const expired = t.expires !== null && t.expires < Date.now();
        return h(
          'tr',
          { testid: `token-row-${t.id}`, class: expired ? 'disabled' : '' },
          h(
            'td',
            null,
            h('span', { class: 'strong' }, t.name),
            h('div', { class: 'muted small' }, h('code', null, t.id)),
          ),
          h(
            'td',
            null,
            h(
              'span',
              { class: accessPill(t.scope.access).cls, testid: 'token-access-pill' },
              accessPill(t.scope.access).label,
            ),
          ),
          h('td', { class: 'desc' }, scopeText(t.scope)),
          h('td', { class: 'nowrap' }, formatTime(t.created)),
          h(
            'td',
            { class: 'nowrap' },
            t.expires === null ? 'never' : `${formatTime(t.expires)}${expired ? ' (expired)' : ''}`,
          ),
          h('td', { class: 'actions' }, del),
        );
      }),
    );
  };

  create.addEventListener('click', async () => {
    const name = h('input', {
      type: 'text',
      required: true,
      maxlength: 256,
      testid: 'token-name',
      placeholder: 'dashboard',
    });
    const access = h(
      'select',
      { testid: 'token-access' },
      h('option', { value: 'call' }, 'Full: read and run resources, write'),
      h('option', { value: 'read' }, 'Read-only'),
    );
    const scope = h(
      'select',
      { testid: 'token-scope' },
      h('option', { value: 'all' }, 'All devices and resources'),
      h('option', { value: 'devices' }, 'Only the devices chosen below'),
    );
    const expiry = h(
      'select',
      { testid: 'token-expiry' },
      ...EXPIRY.map(([label], i) => h('option', { value: String(i) }, label)),
    );
    const deviceList = h(
      'div',
      { class: 'device-picks', hidden: true, testid: 'token-devices' },
      h('p', { class: 'muted' }, 'Loading devices…'),
    );
    const picks: Array<{ device: string; box: HTMLInputElement; resources: HTMLInputElement }> = [];
    scope.addEventListener('change', () => {
      deviceList.hidden = scope.value !== 'devices';
    });
    const error = h('div');
    const form = h(
      'form',
      { class: 'form' },
      field('Name', name),
      field('Access', access),
      field('Scope', scope),
      deviceList,
      field('Expires', expiry),
      error,
    );
    const d = openDialog('New access token', form, { testid: 'token-create-dialog', signal, wide: true });
    const save = h('button', { type: 'submit', class: 'btn primary', testid: 'token-create' }, 'Create');
    linkSubmit(form, save);
    d.footer.append(h('button', { type: 'button', class: 'btn', onclick: () => d.close() }, 'Cancel'), save);
    name.focus();

    api
      .get<DeviceRecord[]>(`${api.userPath(1)}/devices`, { query: { count: 1000 }, signal })
      .then((devices) => {
        if (devices.length === 0) {
          replace(deviceList, h('p', { class: 'muted' }, 'No devices yet.'));
          return;
        }
        replace(
          deviceList,
          ...devices.map((dev) => {
            const box = h('input', {
              type: 'checkbox',
              value: dev.device,
              testid: `token-device-${dev.device}`,
            });
            const resources = h('input', {
              type: 'text',
              placeholder: 'all resources (or: temperature, led)',
              spellcheck: 'false',
              testid: `token-resources-${dev.device}`,
            });
            picks.push({ device: dev.device, box, resources });
            return h(
              'div',
              { class: 'device-pick' },
              h('label', null, box, ' ', h('code', null, dev.device)),
              resources,
            );
          }),
        );
      })
      .catch((err) => replace(deviceList, errorBox(err)));

    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      error.replaceChildren();
      const tokenScope: TokenScope = { access: access.value as 'read' | 'call' };
      if (scope.value === 'devices') {
        const chosen = picks.filter((p) => p.box.checked);
        if (chosen.length === 0) {
          error.replaceChildren(errorBox(new Error('choose at least one device, or “All devices”')));
          return;
        }
        tokenScope.devices = Object.fromEntries(
          chosen.map((p) => {
            const resources = p.resources.value
              .split(',')
              .map((r) => r.trim())
              .filter(Boolean);
            return [p.device, resources.length ? { resources } : {}];
          }),
        );
      }
      const expiresIn = EXPIRY[Number(expiry.value)]?.[1];
      try {
        const created = await busy(save, () =>
          api.post<Token & { access_token: string }>(base, {
            name: name.value.trim(),
            scope: tokenScope,
            ...(expiresIn ? { expires_in: expiresIn } : {}),
          }),
        );
        replace(
          d.body,
          h('p', null, 'Token ', h('strong', null, created.name), ` created (${scopeText(created.scope)}).`),
          secretBlock(created.access_token, 'created-token', 'The token, shown only now: copy it.'),
        );
        replace(
          d.footer,
          h(
            'button',
            { type: 'button', class: 'btn primary', testid: 'token-done', onclick: () => d.close() },
            'Done',
          ),
        );
        await load();
      } catch (err) {
        error.replaceChildren(errorBox(err));
      }
    });
  });

  try {
    await load();
  } catch (err) {
    if (!signal.aborted) showError(err, 'Cannot list the tokens');
  }
}
