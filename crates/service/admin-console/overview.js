// The overview (#/overview): jobs by status now, the queue's depth and its oldest job's
// age, completions and failures per minute over the last hour as a chart, and the
// credits charged today. From GET /admin/v1/overview, read again every 15 s while shown.

import { barChart } from './chart.js';
import { age, errorLine, explain, heading, num } from './ui.js';
import { el } from './util.js';

const REFRESH_MS = 15_000;
const STATUSES = ['QUEUED', 'PROCESSING', 'COMPLETED', 'FAILED', 'CANCELLED'];

const hhmm = (iso) => new Date(iso).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });

export async function render(ctx) {
  ctx.setTitle('Overview');
  const updated = el('span', { id: 'overview-updated', class: 'muted small', 'aria-live': 'off' });
  const refresh = el('button', { type: 'button', id: 'overview-refresh', class: 'secondary', text: 'Refresh' });
  const error = errorLine('overview-error');
  const body = el('div', { id: 'overview-body' });
  ctx.view.append(el('div', { class: 'view-head' }, heading('Overview'), el('div', { class: 'head-actions' }, updated, refresh)), error, body);

  let chart = null;
  const load = async () => {
    let data;
    try {
      data = await ctx.api.get('/overview');
    } catch (e) {
      if (ctx.isCurrent()) error.textContent = explain(e, 'Could not read the overview');
      return;
    }
    if (!ctx.isCurrent()) return;
    error.textContent = '';
    chart?.stop();
    // Redrawn every 15 s: keep "Show the numbers" open for whoever opened it.
    const numbersOpen = body.querySelector('.chart-table')?.open === true;
    chart = show(body, data);
    if (numbersOpen) body.querySelector('.chart-table').open = true;
    updated.textContent = `Updated ${new Date().toLocaleTimeString()}`;
  };
  refresh.addEventListener('click', load);
  const timer = setInterval(load, REFRESH_MS);
  ctx.onLeave(() => {
    clearInterval(timer);
    chart?.stop();
  });
  await load();
}

function show(body, data) {
  const byStatus = data.jobsByStatus || {};
  const statusTiles = el(
    'ul',
    { class: 'tiles', 'aria-label': 'Jobs by status now' },
    STATUSES.map((s) =>
      el(
        'li',
        { class: `tile tile-${s.toLowerCase()}`, 'data-status': s },
        el('a', { href: `#/jobs?status=${s}`, 'aria-label': `${num(byStatus[s] ?? 0)} ${s.toLowerCase()} jobs: list them` },
          el('span', { class: 'tile-value', text: num(byStatus[s] ?? 0) }),
          el('span', { class: 'tile-label', text: s.charAt(0) + s.slice(1).toLowerCase() })),
      ),
    ),
  );
  const queue = el(
    'ul',
    { class: 'tiles', 'aria-label': 'Queue and credits' },
    el('li', { class: 'tile', id: 'queue-depth' }, el('span', { class: 'tile-value', text: num(data.queueDepth) }), el('span', { class: 'tile-label', text: 'Queue depth' })),
    el('li', { class: 'tile', id: 'oldest-queued' }, el('span', { class: 'tile-value', text: age(data.oldestQueuedAgeSeconds) }), el('span', { class: 'tile-label', text: 'Oldest queued job' })),
    el('li', { class: 'tile', id: 'credits-today' }, el('span', { class: 'tile-value', text: num(data.creditsChargedToday) }), el('span', { class: 'tile-label', text: 'Credits charged today (UTC)' })),
    el('li', { class: 'tile', id: 'refunded-today' }, el('span', { class: 'tile-value', text: num(data.creditsRefundedToday) }), el('span', { class: 'tile-label', text: 'Credits refunded today' })),
  );

  const minutes = data.perMinute || [];
  const completed = minutes.reduce((n, m) => n + (m.completed || 0), 0);
  const failed = minutes.reduce((n, m) => n + (m.failed || 0), 0);
  const chartBox = el('div', { id: 'throughput' });
  body.replaceChildren(
    el('section', { class: 'panel', 'aria-labelledby': 'jobs-now-title' }, el('h2', { id: 'jobs-now-title', text: 'Jobs now' }), statusTiles),
    el('section', { class: 'panel', 'aria-labelledby': 'queue-title' }, el('h2', { id: 'queue-title', text: 'Queue and credits' }), queue),
    el(
      'section',
      { class: 'panel', 'aria-labelledby': 'throughput-title' },
      el('h2', { id: 'throughput-title', text: 'Completions and failures per minute, last hour' }),
      el('p', { class: 'muted small', id: 'throughput-totals', text: `${num(completed)} completed, ${num(failed)} failed in the last hour.` }),
      chartBox,
    ),
  );
  return barChart(chartBox, {
    id: 'throughput-chart',
    title: 'Completions and failures per minute over the last hour',
    summary: `${completed} completed and ${failed} failed in the last ${minutes.length} minutes; the busiest minute had ${Math.max(0, ...minutes.map((m) => (m.completed || 0) + (m.failed || 0)))}.`,
    points: minutes.map((m) => ({ label: hhmm(m.minute), tick: hhmm(m.minute), values: { completed: m.completed || 0, failed: m.failed || 0 } })),
    series: [
      { key: 'completed', label: 'Completed', className: 'bar-completed' },
      { key: 'failed', label: 'Failed', className: 'bar-failed' },
    ],
    empty: 'No job finished in the last hour',
  });
}
