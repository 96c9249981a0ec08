/** Shared pieces of the interface: the message banner, dialogs, confirmation, state badges. */
import { describeError } from './api.js';
import { type Child, h, replace } from './dom.js';

let banner: HTMLElement | undefined;
let bannerTimer: ReturnType<typeof setTimeout> | undefined;

export function mountBanner(el: HTMLElement): void {
  banner = el;
}

/** Shows an API (or any) error at the top of the page, with its code. */
export function showError(err: unknown, context?: string): void {
  const { message, code } = describeError(err);
  show('error', context ? `${context}: ${message}` : message, code);
}

export function showInfo(message: string): void {
  show('info', message);
}

export function clearBanner(): void {
  if (banner) replace(banner);
  if (bannerTimer) clearTimeout(bannerTimer);
}

function show(kind: 'error' | 'info', message: string, code?: string): void {
  if (!banner) return;
  if (bannerTimer) clearTimeout(bannerTimer);
  replace(
    banner,
    h(
      'div',
      { class: `banner ${kind}`, role: kind === 'error' ? 'alert' : 'status', testid: `banner-${kind}` },
      h(
        'span',
        { class: 'banner-text', testid: kind === 'error' ? 'error-message' : 'info-message' },
        message,
      ),
      code ? h('code', { class: 'banner-code', testid: 'error-code' }, code) : null,
      h(
        'button',
        { type: 'button', class: 'banner-close', 'aria-label': 'Dismiss', onclick: clearBanner },
        '×',
      ),
    ),
  );
  // Information goes away by itself; errors stay until dismissed or the next page.
  if (kind === 'info') bannerTimer = setTimeout(clearBanner, 5000);
}

/** An inline error box inside a form or card. */
export function errorBox(err: unknown, testid = 'form-error'): HTMLElement {
  const { message, code } = describeError(err);
  return h('div', { class: 'inline-error', role: 'alert', testid }, message, ' ', h('code', null, code));
}

export interface DialogHandle {
  dialog: HTMLDialogElement;
  body: HTMLElement;
  footer: HTMLElement;
  close(): void;
  closed: Promise<void>;
}

/** A modal dialog (native <dialog>), removed from the page when closed or when `signal` aborts. */
export function openDialog(
  title: string,
  content: Child,
  options: { testid?: string; signal?: AbortSignal; wide?: boolean } = {},
): DialogHandle {
  const body = h('div', { class: 'dialog-body' }, content);
  const footer = h('div', { class: 'dialog-footer' });
  const dialog = h(
    'dialog',
    { class: options.wide ? 'dialog wide' : 'dialog', testid: options.testid ?? 'dialog' },
    h(
      'header',
      { class: 'dialog-header' },
      h('h2', null, title),
      h('button', { type: 'button', class: 'icon-btn', 'aria-label': 'Close', onclick: () => close() }, '×'),
    ),
    body,
    footer,
  );
  let resolveClosed: () => void = () => {};
  const closed = new Promise<void>((resolve) => {
    resolveClosed = resolve;
  });
  const close = () => {
    if (dialog.open) dialog.close();
  };
  dialog.addEventListener('close', () => {
    dialog.remove();
    resolveClosed();
  });
  options.signal?.addEventListener('abort', close, { once: true });
  document.body.appendChild(dialog);
  dialog.showModal();
  return { dialog, body, footer, close, closed };
}

/** Asks before something that cannot be undone; resolves true when confirmed. */
export function confirmAction(
  title: string,
  message: Child,
  confirmLabel: string,
  signal?: AbortSignal,
): Promise<boolean> {
  const d = openDialog(title, h('p', null, message), { testid: 'confirm-dialog', signal });
  let confirmed = false;
  const ok = h(
    'button',
    {
      type: 'button',
      class: 'btn danger',
      testid: 'confirm-ok',
      onclick: () => {
        confirmed = true;
        d.close();
      },
    },
    confirmLabel,
  );
  d.footer.append(
    h(
      'button',
      { type: 'button', class: 'btn', testid: 'confirm-cancel', onclick: () => d.close() },
      'Cancel',
    ),
    ok,
  );
  ok.focus();
  return d.closed.then(() => confirmed);
}

/** A secret shown once (credentials, access token), with a copy button. */
export function secretBlock(secret: string, testid: string, note: string): HTMLElement {
  return h(
    'div',
    { class: 'secret' },
    h('p', { class: 'secret-note' }, note),
    h(
      'div',
      { class: 'secret-row' },
      h('code', { class: 'secret-value', testid }, secret),
      copyFor(secret, `${testid}-copy`),
    ),
  );
}

function copyFor(text: string, testid: string): HTMLButtonElement {
  const button = h('button', { type: 'button', class: 'btn small', testid }, 'Copy');
  button.addEventListener('click', async () => {
    try {
      await navigator.clipboard.writeText(text);
      button.textContent = 'Copied';
    } catch {
      const code = button.parentElement?.querySelector('code');
      if (code) window.getSelection()?.selectAllChildren(code);
      button.textContent = 'Selected: Ctrl+C';
    }
    setTimeout(() => {
      button.textContent = 'Copy';
    }, 2000);
  });
  return button;
}

export function stateBadge(online: boolean, testid = 'device-state'): HTMLElement {
  return h(
    'span',
    { class: `badge ${online ? 'online' : 'offline'}`, testid, 'data-online': String(online) },
    online ? 'online' : 'offline',
  );
}

/** A labelled form row. */
export function field(label: string, input: HTMLElement, hint?: string): HTMLElement {
  return h(
    'label',
    { class: 'field' },
    h('span', { class: 'field-label' }, label),
    input,
    hint ? h('span', { class: 'field-hint' }, hint) : null,
  );
}

/** Disables a button while `work` runs; returns its result. */
export async function busy<T>(button: HTMLButtonElement, work: () => Promise<T>): Promise<T> {
  button.disabled = true;
  button.classList.add('busy');
  try {
    return await work();
  } finally {
    button.disabled = false;
    button.classList.remove('busy');
  }
}

let formIds = 0;

/** Makes a button outside a form (in the dialog footer) submit it. */
export function linkSubmit(form: HTMLFormElement, button: HTMLButtonElement): void {
  if (!form.id) form.id = `form-${++formIds}`;
  button.setAttribute('form', form.id);
}
