// reelgate operator console, the entry module: sign-in, the session, and hash-based
// navigation between the views (#/overview, #/customers, #/customers/<id>, #/jobs,
// #/jobs/<id>, #/upstreams, #/audit; a view's filters ride along as a query, as in
// #/jobs?status=FAILED). Plain JavaScript modules served as they are: no build step, and
// nothing from another origin (the Content-Security-Policy in api/embedded.rs forbids
// both, and inline script and style). New modules must also be listed in ASSETS in
// api/console.rs.
//
// The token lives in sessionStorage (this tab only), or in localStorage when the operator
// ticks "Remember me"; it is sent as `Authorization: Bearer` and never put in a URL.

import { AdminApi } from './api.js';
import * as audit from './audit.js';
import * as customers from './customers.js';
import * as jobs from './jobs.js';
import * as overview from './overview.js';
import { explain } from './ui.js';
import * as upstreams from './upstreams.js';
import { $, $$, el } from './util.js';

const STORAGE_KEY = 'reelgate.console.adminToken';

const state = {
  api: null,
  session: null,
  /** Incremented on every navigation: a view's late answers for an old route are dropped. */
  route: 0,
  /** Functions the current view asked to run when it is left (timers, observers). */
  leaving: [],
};

/** Section name -> [view for the list, view for one item (#/section/<id>)]. */
const ROUTES = {
  overview: [overview.render, null],
  customers: [customers.renderList, customers.renderDetail],
  jobs: [jobs.renderList, jobs.renderDetail],
  upstreams: [upstreams.render, null],
  audit: [audit.render, null],
};

/** `#/jobs/abc?status=FAILED` -> { section: 'jobs', id: 'abc', query }; null for a hash that is no route. */
function parseHash(hash) {
  if (!hash.startsWith('#/')) return null;
  const [path, qs = ''] = hash.slice(2).split('?');
  const [section = '', id = ''] = path.split('/').map((p) => decodeURIComponent(p));
  return { section, id, query: new URLSearchParams(qs) };
}

function leaveView() {
  for (const f of state.leaving.splice(0)) {
    try {
      f();
    } catch {
      // a view's cleanup failing must not stop the next view
    }
  }
}

async function showRoute({ focus = true } = {}) {
  if (!state.api) return;
  const route = parseHash(location.hash);
  if (!route) return; // e.g. the skip link's #view: stay where we are
  const entry = ROUTES[route.section];
  const view = entry && (route.id ? entry[1] : entry[0]);
  if (!view) {
    location.replace('#/overview');
    return;
  }
  leaveView();
  state.route += 1;
  const mine = state.route;
  for (const a of $$('#nav a')) {
    if (a.dataset.section === route.section) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  const container = $('#view');
  container.replaceChildren();
  container.dataset.view = route.id ? `${route.section}-detail` : route.section;
  container.dataset.ready = 'false';
  const ctx = {
    api: state.api,
    view: container,
    id: route.id,
    query: route.query,
    isCurrent: () => state.route === mine && state.api !== null,
    onLeave: (f) => state.leaving.push(f),
    setTitle: (t) => {
      document.title = `${t} · reelgate console`;
    },
  };
  try {
    await view(ctx);
  } catch (e) {
    if (ctx.isCurrent()) container.append(el('p', { class: 'error', role: 'alert', text: explain(e, 'Could not show this page') }));
  }
  if (!ctx.isCurrent()) return;
  container.dataset.ready = 'true';
  if (focus) $('#view-title')?.focus();
}

async function signIn(token, remember) {
  const api = new AdminApi(token, () => {
    if (state.api === api) signOut('Signed out: the admin token is no longer accepted.');
  });
  const session = await api.get('/session');
  state.api = api;
  state.session = session;
  sessionStorage.removeItem(STORAGE_KEY);
  localStorage.removeItem(STORAGE_KEY);
  (remember ? localStorage : sessionStorage).setItem(STORAGE_KEY, token);
  const t = session.token || {};
  $('#session-name').textContent = `${t.name || 'admin'}${t.prefix ? ` (${t.prefix}…)` : ''}`;
  $('#session-name').title = session.server?.version ? `reelgate ${session.server.version}` : '';
  $('#sandbox-badge').hidden = session.server?.sandbox !== true;
  $('#signin').hidden = true;
  $('#session').hidden = false;
  $('#nav').hidden = false;
  $('#view').hidden = false;
  // Without a route, the hash change that follows shows the overview.
  if (!parseHash(location.hash)) location.replace('#/overview');
  else await showRoute();
}

function signOut(message = '') {
  leaveView();
  state.route += 1;
  state.api = null;
  state.session = null;
  sessionStorage.removeItem(STORAGE_KEY);
  localStorage.removeItem(STORAGE_KEY);
  for (const d of $$('dialog')) if (d.open) d.close();
  $('#view').replaceChildren();
  $('#view').hidden = true;
  $('#nav').hidden = true;
  $('#session').hidden = true;
  $('#signin').hidden = false;
  $('#admin-token').value = '';
  $('#signin-error').textContent = message;
  document.title = 'reelgate console';
  $('#admin-token').focus();
}

$('#signin-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const token = $('#admin-token').value.trim();
  const error = $('#signin-error');
  if (!token) {
    error.textContent = 'Paste an admin token.';
    $('#admin-token').focus();
    return;
  }
  const button = $('#signin-submit');
  button.disabled = true;
  error.textContent = '';
  try {
    await signIn(token, $('#remember').checked);
    $('#admin-token').value = '';
  } catch (e) {
    error.textContent = e.status === 401 ? 'This admin token is not valid here.' : explain(e, 'Could not sign in');
    $('#admin-token').focus();
  } finally {
    button.disabled = false;
  }
});
$('#sign-out').addEventListener('click', () => signOut());
window.addEventListener('hashchange', () => showRoute());
// The skip link moves focus to the view without touching the hash (which is the route).
$('.skip-link').addEventListener('click', (event) => {
  event.preventDefault();
  $('#view').hidden ? $('#admin-token').focus() : $('#view').focus();
});

async function start() {
  const remembered = localStorage.getItem(STORAGE_KEY);
  const saved = sessionStorage.getItem(STORAGE_KEY) || remembered;
  if (saved) {
    try {
      $('#remember').checked = Boolean(remembered);
      await signIn(saved, Boolean(remembered));
      return;
    } catch (e) {
      if (e.status === 401) {
        sessionStorage.removeItem(STORAGE_KEY);
        localStorage.removeItem(STORAGE_KEY);
      }
      $('#signin-error').textContent = e.status === 401 ? '' : explain(e, 'Could not sign in');
    }
  }
  $('#signin').hidden = false;
  $('#admin-token').focus();
}

start().finally(() => {
  document.body.dataset.ready = 'true';
});
