import type { PageContext } from '../app.js';
import { h } from '../dom.js';
import { busy, clearBanner, errorBox, field } from '../ui.js';

export function loginPage({ api, root, query, navigate }: PageContext): void {
  const user = h('input', {
    type: 'text',
    name: 'username',
    autocomplete: 'username',
    required: true,
    maxlength: 128,
    testid: 'login-user',
    value: api.lastUser,
  });
  const password = h('input', {
    type: 'password',
    name: 'password',
    autocomplete: 'current-password',
    required: true,
    maxlength: 1024,
    testid: 'login-password',
  });
  const submit = h(
    'button',
    { type: 'submit', class: 'btn primary block', testid: 'login-submit' },
    'Log in',
  );
  const error = h('div', { class: 'form-error-holder' });
  const form = h(
    'form',
    { class: 'login-form', testid: 'login-form' },
    field('User', user),
    field('Password', password),
    error,
    submit,
  );
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    error.replaceChildren();
    try {
      await busy(submit, () => api.login(user.value.trim(), password.value));
    } catch (err) {
      error.replaceChildren(errorBox(err, 'login-error'));
      password.select();
      return;
    }
    clearBanner();
    const next = query.get('next');
    // Only paths of this console (no other origin, no API path).
    navigate(next?.startsWith('/') && !next.startsWith('//') ? next : '/devices', { replace: true });
  });
  root.append(
    h(
      'div',
      { class: 'login' },
      h(
        'div',
        { class: 'card login-card' },
        h('div', { class: 'login-brand' }, h('span', { class: 'brand-mark' }, '◆'), ' iotmp console'),
        h('p', { class: 'muted' }, 'Devices, resources, live data, properties, buckets and access tokens.'),
        form,
      ),
    ),
  );
  (api.lastUser ? password : user).focus();
}
