// reelgate Studio, the entry module. Plain JavaScript modules served as they are: there
// is no build step (no Node, npm, bundler or transpiler) and nothing may be loaded from
// another origin; the Content-Security-Policy (api/studio.rs) enforces both, and forbids
// inline script and style. New modules must also be listed in ASSETS in api/studio.rs.
//
// The page is a client of the public API only (/v2/...), with the key the user pastes:
// it works against any reelgate node, and against any Apiframe-compatible server for the
// parts that server has (streams, the sandbox banner and webhook details are optional).

import { Api, HttpError, watchAllJobs } from './api.js';
import { CodePanel } from './code.js';
import { GenerateForm } from './generate.js';
import { History } from './history.js';
import { Progress } from './progress.js';
import { $, TERMINAL, plural } from './util.js';

const STORAGE_KEY = 'reelgate.studio.apiKey';
const ME_REFRESH_MS = 30_000;

const state = {
  api: null,
  me: null,
  catalog: null,
  liveFeed: null,
  meTimer: null,
};

const getApi = () => state.api;
const balance = () => (state.me?.team ? Number(state.me.team.credits) : null);

const code = new CodePanel(() => state.api?.key || '');
const form = new GenerateForm({
  getApi,
  getBalance: balance,
  onChange: (body) => code.update(body),
  onSubmitted: (jobId, body, price) => {
    progress.track(jobId, body, price);
    history.upsert({ id: jobId, status: 'QUEUED', model: body.model, progress: 0, creditCost: price ?? 0, createdAt: new Date().toISOString(), input: body });
    refreshMe();
  },
  onBalanceStale: () => refreshMe(),
});
const progress = new Progress({
  getApi,
  onUpdate: (job) => history.upsert(job),
  onSettled: () => refreshMe(),
});
const history = new History({
  getApi,
  watched: () => new Set(progress.cards.keys()),
  onSettled: () => refreshMe(),
  onReuse: (input) => {
    form.fill(input);
    $('#generate').scrollIntoView({ block: 'start' });
    $('#prompt').focus();
  },
});

async function loadServerInfo() {
  try {
    const response = await fetch('/v2/server', { cache: 'no-store' });
    if (!response.ok) return;
    const info = await response.json();
    $('#sandbox-banner').hidden = info.sandbox !== true;
  } catch {
    // not a reelgate server, or no such route: no banner
  }
}

async function loadCatalog() {
  try {
    const catalog = await new Api('').request('GET', '/v2/models?modality=video', { auth: false });
    state.catalog = catalog.models || [];
    form.setCatalog(state.catalog);
    history.setModels(state.catalog.map((m) => m.id));
  } catch (e) {
    $('#form-error').textContent = `Could not load the models: ${e.message}`;
  }
}

function showCredits() {
  const credits = balance();
  $('#credits').textContent = credits === null ? '—' : plural(credits, 'credit');
  form.updatePrice();
}

async function refreshMe() {
  if (!state.api) return;
  const api = state.api;
  try {
    const me = await api.get('/v2/me');
    if (state.api !== api) return;
    state.me = me;
    showCredits();
  } catch (e) {
    if (e instanceof HttpError && (e.status === 401 || e.status === 403) && state.api === api) {
      signOut(`Signed out: ${e.message}.`);
    }
  }
}

async function signIn(key, remember) {
  const api = new Api(key);
  const me = await api.get('/v2/me');
  state.api = api;
  state.me = me;
  if (remember) localStorage.setItem(STORAGE_KEY, key);
  else localStorage.removeItem(STORAGE_KEY);
  $('#signin').hidden = true;
  $('#workspace').hidden = false;
  $('#account').hidden = false;
  $('#key-name').textContent = me.apiKey ? `${me.apiKey.name} (${me.apiKey.prefix}…)` : '';
  showCredits();
  form.changed();
  history.reload();
  state.liveFeed = watchAllJobs(api, {
    onJob: (job) => {
      history.upsert(job);
      progress.offer(job);
      if (TERMINAL.has(job.status)) refreshMe();
    },
    onReset: () => history.reload(),
    onMode: (mode) => {
      history.live = mode === 'live';
      $('#live-status').textContent = { live: 'Live', reconnecting: 'Reconnecting…', off: '' }[mode] ?? '';
    },
  });
  state.meTimer = setInterval(refreshMe, ME_REFRESH_MS);
}

function signOut(message = '') {
  state.liveFeed?.stop();
  clearInterval(state.meTimer);
  state.api = null;
  state.me = null;
  state.liveFeed = null;
  history.live = false;
  localStorage.removeItem(STORAGE_KEY);
  progress.clear();
  history.reset();
  form.reset();
  $('#workspace').hidden = true;
  $('#account').hidden = true;
  $('#signin').hidden = false;
  $('#api-key').value = '';
  $('#signin-error').textContent = message;
  $('#api-key').focus();
}

$('#signin-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const key = $('#api-key').value.trim();
  const error = $('#signin-error');
  if (!key) {
    error.textContent = 'Paste your API key.';
    $('#api-key').focus();
    return;
  }
  const button = $('#signin-submit');
  button.disabled = true;
  error.textContent = '';
  try {
    await signIn(key, $('#remember').checked);
    $('#api-key').value = '';
    $('#prompt').focus();
  } catch (e) {
    error.textContent =
      e.status === 401 ? 'This key is not valid here.' : e.status === 403 ? 'This key is inactive.' : `Could not sign in: ${e.message}`;
    $('#api-key').focus();
  } finally {
    button.disabled = false;
  }
});
$('#sign-out').addEventListener('click', () => signOut());
window.addEventListener('focus', () => refreshMe());

async function start() {
  await Promise.all([loadServerInfo(), loadCatalog()]);
  const saved = localStorage.getItem(STORAGE_KEY);
  if (saved) {
    try {
      $('#remember').checked = true;
      await signIn(saved, true);
      return;
    } catch {
      localStorage.removeItem(STORAGE_KEY);
    }
  }
  $('#signin').hidden = false;
  document.body.dataset.ready = 'true';
}

start().finally(() => {
  document.body.dataset.ready = 'true';
});
