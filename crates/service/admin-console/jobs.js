// The job explorer: every account's jobs with filters (#/jobs?status=&model=&account=&key=
// &from=&to=, newest first, paged) and one job (#/jobs/<id>) with its timeline of stage
// changes, the upstream task, the webhook deliveries, and Cancel / Replay webhooks.
// From /admin/v1/jobs.

import { seg } from './api.js';
import {
  announce, badge, confirmAction, errorLine, explain, facts, field, heading, localToIso, num, pager, table, time,
} from './ui.js';
import { el, elapsed, formatTime } from './util.js';

const PAGE = 50;
const STATUSES = ['QUEUED', 'PROCESSING', 'COMPLETED', 'FAILED', 'CANCELLED'];
const FILTERS = ['status', 'model', 'account', 'key', 'from', 'to'];

/** An ISO time as a datetime-local input's value (local time). */
function isoToLocal(iso) {
  const d = new Date(iso);
  if (!iso || Number.isNaN(d.getTime())) return '';
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

const shortId = (id) => `${String(id).slice(0, 8)}…`;

export async function renderList(ctx) {
  ctx.setTitle('Jobs');
  const q = ctx.query;

  // Open one job by its id.
  const idInput = el('input', { id: 'job-id-input', type: 'text', autocomplete: 'off', spellcheck: 'false', placeholder: '3f1c…' });
  const idError = errorLine('job-id-error');
  const openForm = el('form', { id: 'job-open-form', class: 'search-row', novalidate: true },
    field('Job id', idInput), el('button', { type: 'submit', id: 'job-open', class: 'secondary', text: 'Open' }));
  openForm.addEventListener('submit', (event) => {
    event.preventDefault();
    const id = idInput.value.trim();
    if (!id) {
      idError.textContent = 'Paste a job id.';
      idInput.focus();
      return;
    }
    location.hash = `#/jobs/${seg(id)}`;
  });

  // Filters, applied by putting them in the hash (so Back and a reload keep them).
  const status = el('select', { id: 'filter-status' },
    el('option', { value: '', text: 'Any' }), STATUSES.map((s) => el('option', { value: s, text: s.charAt(0) + s.slice(1).toLowerCase() })));
  const model = el('input', { id: 'filter-model', type: 'text', autocomplete: 'off', placeholder: 'hailuo-2.3' });
  const account = el('input', { id: 'filter-account', type: 'text', autocomplete: 'off', spellcheck: 'false' });
  const key = el('input', { id: 'filter-key', type: 'text', autocomplete: 'off', spellcheck: 'false' });
  const from = el('input', { id: 'filter-from', type: 'datetime-local' });
  const to = el('input', { id: 'filter-to', type: 'datetime-local' });
  status.value = q.get('status') || '';
  model.value = q.get('model') || '';
  account.value = q.get('account') || '';
  key.value = q.get('key') || '';
  from.value = isoToLocal(q.get('from'));
  to.value = isoToLocal(q.get('to'));
  const filters = el('form', { id: 'job-filters', class: 'filters', novalidate: true },
    field('Status', status), field('Model', model), field('Customer id', account), field('Key id', key),
    field('Created from', from), field('Created until', to),
    el('div', { class: 'filter-actions' },
      el('button', { type: 'submit', id: 'filters-apply', class: 'primary', text: 'Apply filters' }),
      el('button', { type: 'button', id: 'filters-clear', class: 'secondary', text: 'Clear' })));
  const apply = (values) => {
    const params = new URLSearchParams();
    for (const name of FILTERS) if (values[name]) params.set(name, values[name]);
    const hash = params.toString() ? `#/jobs?${params}` : '#/jobs';
    // The same filters again: show the view anew (setting an unchanged hash does nothing).
    if (location.hash === hash) window.dispatchEvent(new HashChangeEvent('hashchange'));
    else location.hash = hash;
  };
  filters.addEventListener('submit', (event) => {
    event.preventDefault();
    apply({ status: status.value, model: model.value.trim(), account: account.value.trim(), key: key.value.trim(), from: localToIso(from.value), to: localToIso(to.value) });
  });
  filters.querySelector('#filters-clear').addEventListener('click', () => apply({}));

  const error = errorLine('jobs-error');
  const list = table('Jobs, newest first', [
    { label: 'Job', cell: (j) => el('a', { href: `#/jobs/${seg(j.id)}`, 'aria-label': `Job ${j.id}`, text: shortId(j.id) }), className: 'mono' },
    { label: 'Status', cell: (j) => badge(j.status) },
    { label: 'Model', cell: (j) => j.model },
    { label: 'Customer', cell: (j) => (j.accountId ? el('a', { href: `#/customers/${seg(j.accountId)}`, 'aria-label': `Customer ${j.accountId}`, text: shortId(j.accountId) }) : '—'), className: 'mono' },
    { label: 'Credits', cell: (j) => num(j.creditCost), className: 'num' },
    { label: 'Created', cell: (j) => time(j.createdAt) },
    { label: 'Took', cell: (j) => elapsed(j), className: 'num' },
  ], [], { id: 'job-list', rowAttrs: (j) => ({ 'data-job-id': j.id, 'data-status': j.status }) });
  const empty = el('p', { class: 'muted', id: 'jobs-empty', hidden: true, text: 'No job matches these filters.' });
  const query = Object.fromEntries(FILTERS.map((f) => [f, q.get(f) || '']));
  const pages = pager({
    load: (cursor) => ctx.api.get('/jobs', { ...query, limit: PAGE, cursor }),
    add: list.add,
    clear: list.clear,
    onError: (e) => {
      error.textContent = explain(e, 'Could not list the jobs');
    },
    onEmpty: (isEmpty) => {
      empty.hidden = !isEmpty;
    },
  });
  const active = FILTERS.filter((f) => query[f]).length;
  ctx.view.append(
    el('div', { class: 'view-head' }, heading('Jobs')),
    el('section', { class: 'panel' }, openForm, idError),
    el('details', { class: 'panel disclosure', id: 'job-filter-panel', open: active > 0 || window.innerWidth > 700 },
      el('summary', { text: active ? `Filters (${active} applied)` : 'Filters' }), filters),
    el('section', { class: 'panel', 'aria-label': 'Job list' }, error, list.wrap, empty, pages.button),
  );
  await pages.reload();
}

export async function renderDetail(ctx) {
  const id = ctx.id;
  ctx.setTitle(`Job ${shortId(id)}`);
  let job;
  try {
    job = await ctx.api.get(`/jobs/${seg(id)}`);
  } catch (e) {
    if (!ctx.isCurrent()) return;
    ctx.view.append(
      el('p', { class: 'crumbs' }, el('a', { href: '#/jobs', text: '← All jobs' })),
      el('div', { class: 'view-head' }, heading('Job')),
      el('p', { class: 'error', role: 'alert', id: 'job-error', text: explain(e, `Job ${id}`) }),
    );
    return;
  }
  if (!ctx.isCurrent()) return;
  const body = el('div', { id: 'job-detail', 'data-job-id': job.id, 'data-status': job.status });
  ctx.view.append(
    el('p', { class: 'crumbs' }, el('a', { href: '#/jobs', text: '← All jobs' })),
    el('div', { class: 'view-head' }, heading(`Job ${shortId(job.id)}`), badge(job.status)),
    body,
  );
  showJob(ctx, body, job);
}

function errorText(error) {
  if (!error) return null;
  if (typeof error === 'string') return error;
  return [error.code, error.message].filter(Boolean).join(': ') || JSON.stringify(error);
}

function showJob(ctx, body, job) {
  const upstream = job.upstream || {};
  const summary = el('section', { class: 'panel', 'aria-labelledby': 'job-facts-title' },
    el('h2', { id: 'job-facts-title', text: 'Job' }),
    facts([
      ['Id', el('code', { text: job.id })],
      ['Status', badge(job.status)],
      ['Stage', job.stage || '—'],
      ['Model', job.model],
      ['Customer', job.accountId ? el('a', { href: `#/customers/${seg(job.accountId)}`, text: job.accountId }) : '—'],
      ['Key', job.apiKeyId ? el('code', { text: job.apiKeyId }) : '—'],
      ['Credits', num(job.creditCost)],
      ['Progress', job.progress === null || job.progress === undefined ? '—' : `${job.progress} %`],
      ['Created', time(job.createdAt)],
      ['Completed', time(job.completedAt)],
      ['Took', elapsed(job) || '—'],
      ['Attempts', num(job.attempts)],
      ['Webhook', job.webhookStatus || 'none requested'],
      ['Error', errorText(job.error) || '—'],
    ]),
    jobActions(ctx, job),
  );
  const upstreamPanel = el('section', { class: 'panel', 'aria-labelledby': 'job-upstream-title' },
    el('h2', { id: 'job-upstream-title', text: 'Upstream' }),
    facts([
      ['Account', upstream.account || '—'],
      ['Task id', upstream.taskId ? el('code', { text: upstream.taskId }) : '—'],
      ['File id', upstream.fileId ? el('code', { text: upstream.fileId }) : '—'],
      ['Video', /^https?:\/\//.test(job.result?.videoUrl || '') ? el('a', { href: job.result.videoUrl, rel: 'noreferrer noopener', target: '_blank', text: 'Open the video' }) : '—'],
    ]),
  );
  body.append(
    el('div', { class: 'grid-2' }, summary, upstreamPanel),
    timelinePanel(job),
    webhooksPanel(job),
    el('section', { class: 'panel', 'aria-labelledby': 'job-input-title' },
      el('h2', { id: 'job-input-title', text: 'Request' }),
      el('pre', { class: 'json', tabindex: '0', 'aria-label': 'The job’s request as submitted', text: JSON.stringify(job.input ?? null, null, 2) })),
  );
}

function jobActions(ctx, job) {
  const error = errorLine('job-action-error');
  const buttons = [];
  if (job.status === 'QUEUED') {
    const cancel = el('button', { type: 'button', id: 'job-cancel', class: 'danger', text: 'Cancel job' });
    cancel.addEventListener('click', async () => {
      if (!(await confirmAction('Cancel this job?', 'It has not reached the upstream yet; its credits go back to the customer.', 'Cancel job'))) return;
      error.textContent = '';
      try {
        await ctx.api.post(`/jobs/${seg(job.id)}/cancel`);
        announce('Job cancelled.');
        window.dispatchEvent(new HashChangeEvent('hashchange'));
      } catch (e) {
        error.textContent = explain(e, 'Could not cancel the job');
      }
    });
    buttons.push(cancel);
  }
  if (hookEvents(job).length) {
    const replay = el('button', { type: 'button', id: 'job-replay', class: 'secondary', text: 'Replay webhooks' });
    const replayed = el('span', { class: 'ok', role: 'status' });
    replay.addEventListener('click', async () => {
      error.textContent = '';
      try {
        const r = await ctx.api.post(`/jobs/${seg(job.id)}/webhooks/replay`);
        announce(`${r.replayed} webhook${r.replayed === 1 ? '' : 's'} queued again.`);
        error.textContent = '';
        replayed.textContent = `Queued ${r.replayed} again.`;
      } catch (e) {
        error.textContent = e.status === 409 ? 'Nothing to replay: no delivery is finished or given up.' : explain(e, 'Could not replay');
      }
    });
    buttons.push(replay, replayed);
  }
  return buttons.length ? el('div', { class: 'actions' }, buttons, error) : error;
}

/** "+1.234 s" after the job's creation. */
function offset(at, created) {
  const ms = Date.parse(at) - Date.parse(created);
  if (Number.isNaN(ms)) return '';
  const sign = ms < 0 ? '−' : '+';
  const a = Math.abs(ms);
  return a < 1000 ? `${sign}${a} ms` : a < 120_000 ? `${sign}${(a / 1000).toFixed(1)} s` : `${sign}${Math.round(a / 60000)} min`;
}

/** A stage change's time of day to the millisecond (stages can follow each other within one second). */
function clock(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  return `${d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false })}.${String(d.getMilliseconds()).padStart(3, '0')}`;
}

function timelinePanel(job) {
  const steps = job.timeline || [];
  const list = el('ol', { id: 'timeline', class: 'timeline', 'aria-label': 'Stage changes, oldest first' },
    steps.map((s) => el('li', { class: `step step-${String(s.to).toLowerCase()}`, 'data-stage': s.to },
      el('div', { class: 'step-when' }, el('time', { datetime: s.at, title: formatTime(s.at), text: clock(s.at) }), el('span', { class: 'muted small', text: offset(s.at, job.createdAt) })),
      el('div', { class: 'step-what' },
        s.from ? el('span', { class: 'stage', text: s.from }) : el('span', { class: 'muted', text: 'new' }),
        el('span', { class: 'arrow', 'aria-hidden': 'true', text: ' → ' }),
        el('span', { class: 'visually-hidden', text: ' to ' }),
        el('span', { class: 'stage stage-to', text: s.to }),
        s.note ? el('p', { class: 'step-note muted', text: s.note }) : null))));
  return el('section', { class: 'panel', 'aria-labelledby': 'timeline-title' },
    el('h2', { id: 'timeline-title', text: 'Timeline' }),
    steps.length ? list : el('p', { class: 'muted', text: 'No stage changes recorded.' }));
}

/** The webhook events, whether the field holds the events or the whole /v2 answer. */
function hookEvents(job) {
  const w = job.webhooks;
  if (Array.isArray(w)) return w;
  return (w && w.events) || [];
}

function webhooksPanel(job) {
  const events = hookEvents(job);
  const rows = events.flatMap((e) => {
    const attempts = e.attempts || [];
    if (!attempts.length) return [{ e, a: null }];
    return attempts.map((a) => ({ e, a }));
  });
  const list = table('Webhook delivery attempts', [
    { label: 'Event', cell: (r) => r.e.event },
    { label: 'Delivery', cell: (r) => badge(r.e.status) },
    { label: 'Attempted', cell: (r) => (r.a ? time(r.a.attemptedAt) : 'not yet') },
    { label: 'Answer', cell: (r) => (r.a ? (r.a.statusCode ? `HTTP ${r.a.statusCode}` : r.a.error || 'no answer') : '—') },
    { label: 'Took', cell: (r) => (r.a && r.a.durationMs !== null && r.a.durationMs !== undefined ? `${r.a.durationMs} ms` : '—'), className: 'num' },
  ], rows, { id: 'webhook-list' });
  return el('section', { class: 'panel', 'aria-labelledby': 'webhooks-title' },
    el('h2', { id: 'webhooks-title', text: 'Webhook deliveries' }),
    events.length ? list.wrap : el('p', { class: 'muted', text: 'No webhook events: the job was submitted without a webhookUrl.' }),
    events.length ? el('p', { class: 'muted small', text: `To ${events[0].url}` }) : null);
}
