/**
 * The shell: top bar, message banner, and a small history-API router. Each page gets an
 * AbortSignal that aborts when it is left; sockets, timers, charts and dialogs of the page
 * close on it.
 */
import { Api } from './api.js';
import { h, replace } from './dom.js';
import { bucketPage, bucketsPage } from './pages/buckets.js';
import { devicePage } from './pages/device.js';
import { devicesPage } from './pages/devices.js';
import { loginPage } from './pages/login.js';
import { tokensPage } from './pages/tokens.js';
import { clearBanner, mountBanner, showError, showInfo } from './ui.js';

export interface PageContext {
  api: Api;
  root: HTMLElement;
  params: Record<string, string>;
  query: URLSearchParams;
  signal: AbortSignal;
  navigate(path: string, options?: { replace?: boolean }): void;
}

type Page = (ctx: PageContext) => void | Promise<void>;

interface Route {
  pattern: RegExp;
  names: string[];
  page: Page;
  nav?: string;
  title: string;
}

function route(path: string, page: Page, title: string, nav?: string): Route {
  const names: string[] = [];
  const source = path.replace(/:(\w+)/g, (_m, name: string) => {
    names.push(name);
    return '([^/]+)';
  });
  return { pattern: new RegExp(`^${source}/?$`), names, page, title, nav };
}

const ROUTES: Route[] = [
  route('/login', loginPage, 'Log in'),
  route('/devices', devicesPage, 'Devices', 'devices'),
  route('/devices/:device', devicePage, 'Device', 'devices'),
  route('/buckets', bucketsPage, 'Buckets', 'buckets'),
  route('/buckets/:bucket', bucketPage, 'Bucket', 'buckets'),
  route('/tokens', tokensPage, 'Access tokens', 'tokens'),
];

export function startApp(container: HTMLElement): void {
  const api = new Api();
  const view = h('main', { class: 'view', id: 'view' });
  const userLabel = h('span', { class: 'user', testid: 'current-user' });
  const navLinks = new Map<string, HTMLAnchorElement>();
  const nav = h(
    'nav',
    { class: 'nav' },
    ...[
      ['devices', 'Devices'],
      ['buckets', 'Buckets'],
      ['tokens', 'Tokens'],
    ].map(([key, label]) => {
      const a = h('a', { href: `/${key}`, testid: `nav-${key}` }, label as string);
      navLinks.set(key as string, a);
      return a;
    }),
  );
  const logout = h('button', { type: 'button', class: 'btn small ghost', testid: 'logout' }, 'Log out');
  const topbar = h(
    'header',
    { class: 'topbar' },
    h('a', { href: '/devices', class: 'brand' }, h('span', { class: 'brand-mark' }, '◆'), ' iotmp'),
    nav,
    h('div', { class: 'spacer' }),
    userLabel,
    logout,
  );
  const banner = h('div', { class: 'banner-holder', 'aria-live': 'polite' });
  mountBanner(banner);
  container.replaceChildren(topbar, banner, view);

  let current: AbortController | undefined;
  const navigate = (path: string, options?: { replace?: boolean }) => {
    if (options?.replace) history.replaceState(null, '', path);
    else history.pushState(null, '', path);
    void render();
  };

  api.onUnauthorized = (message) => {
    const here = location.pathname + location.search;
    const next = here.startsWith('/login') ? '' : `?next=${encodeURIComponent(here)}`;
    navigate(`/login${next}`, { replace: true });
    showError(new Error(message), 'Logged out');
  };

  logout.addEventListener('click', () => {
    api.logout();
    navigate('/login', { replace: true });
    showInfo('Logged out.');
  });

  const render = async () => {
    current?.abort();
    const controller = new AbortController();
    current = controller;
    const path = location.pathname;
    if (path === '/' || path === '') {
      navigate(api.session ? '/devices' : '/login', { replace: true });
      return;
    }
    let matched: { route: Route; params: Record<string, string> } | undefined;
    for (const r of ROUTES) {
      const m = r.pattern.exec(path);
      if (m) {
        const params: Record<string, string> = {};
        r.names.forEach((n, i) => {
          params[n] = decodeURIComponent(m[i + 1] ?? '');
        });
        matched = { route: r, params };
        break;
      }
    }
    if (matched && matched.route.page !== loginPage && !api.session) {
      navigate(`/login?next=${encodeURIComponent(path + location.search)}`, { replace: true });
      return;
    }
    const loggedIn = api.session !== undefined && matched?.route.page !== loginPage;
    topbar.hidden = !loggedIn;
    userLabel.textContent = api.user;
    for (const [key, a] of navLinks) a.classList.toggle('active', matched?.route.nav === key);
    document.title = `${matched?.route.title ?? 'Not found'} · iotmp console`;
    view.replaceChildren();
    view.className = `view page-${matched?.route.nav ?? 'plain'}`;
    if (!matched) {
      replace(
        view,
        h(
          'div',
          { class: 'card empty-state' },
          h('h1', null, 'Page not found'),
          h('a', { href: '/devices' }, 'Devices'),
        ),
      );
      return;
    }
    try {
      await matched.route.page({
        api,
        root: view,
        params: matched.params,
        query: new URLSearchParams(location.search),
        signal: controller.signal,
        navigate,
      });
    } catch (err) {
      if (!controller.signal.aborted) showError(err);
    }
  };

  // Links inside the app navigate without reloading.
  document.addEventListener('click', (e) => {
    if (e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
    const a = (e.target as Element | null)?.closest?.('a');
    if (!a || a.target || a.hasAttribute('download')) return;
    const url = new URL(a.href, location.href);
    if (url.origin !== location.origin) return;
    e.preventDefault();
    if (url.pathname + url.search !== location.pathname + location.search) {
      clearBanner();
      navigate(url.pathname + url.search);
    }
  });
  window.addEventListener('popstate', () => {
    clearBanner();
    void render();
  });
  void render();
}
