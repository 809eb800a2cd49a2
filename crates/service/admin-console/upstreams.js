// The upstream accounts' health (#/upstreams): for each configured MiniMax account, its
// create budget in the rate window, jobs in flight, whether it is in rotation (and until
// when it is out, and why), and its errors in the last hour by code; an operator can take
// one out of rotation for a while (a hold, obeyed by every node) or release the hold. From /admin/v1/upstreams,
// read again every 15 s while shown.

import { seg } from './api.js';
import { announce, badge, errorLine, explain, facts, field, heading, num, time } from './ui.js';
import { el } from './util.js';

const REFRESH_MS = 15_000;

export async function render(ctx) {
  ctx.setTitle('Upstreams');
  const error = errorLine('upstreams-error');
  const list = el('div', { id: 'upstream-list', class: 'cards' });
  const refresh = el('button', { type: 'button', id: 'upstreams-refresh', class: 'secondary', text: 'Refresh' });
  ctx.view.append(
    el('div', { class: 'view-head' }, heading('Upstream accounts'), el('div', { class: 'head-actions' }, refresh)),
    error,
    list,
  );
  const load = async () => {
    let data;
    try {
      data = await ctx.api.get('/upstreams');
    } catch (e) {
      if (ctx.isCurrent()) error.textContent = explain(e, 'Could not read the upstream accounts');
      return;
    }
    if (!ctx.isCurrent()) return;
    error.textContent = '';
    // Keep a bench form the operator is filling in: only redraw cards whose data changed.
    const upstreams = data.data || [];
    if (!upstreams.length) {
      list.replaceChildren(el('p', { class: 'muted', text: 'No upstream account is configured (the sandbox or simulator renders jobs).' }));
      return;
    }
    const cards = upstreams.map((u) => {
      const json = JSON.stringify(u);
      const old = list.querySelector(`[data-upstream="${CSS.escape(u.name)}"]`);
      if (old && old.dataset.json === json) return old;
      return card(ctx, u, json, load);
    });
    list.replaceChildren(...cards);
  };
  refresh.addEventListener('click', load);
  const timer = setInterval(load, REFRESH_MS);
  ctx.onLeave(() => clearInterval(timer));
  await load();
}

function card(ctx, u, json, reload) {
  const errors = Object.entries(u.errorsLastHour || {}).sort((a, b) => b[1] - a[1]);
  const errorTotal = errors.reduce((n, [, c]) => n + c, 0);
  const used = u.createRpm ? Math.min(100, Math.round((u.createsInWindow / u.createRpm) * 100)) : 0;
  const id = `up-${u.name.replace(/[^a-zA-Z0-9_-]/g, '_')}`;
  const status = u.inRotation ? badge('in rotation') : badge('out of rotation');
  status.classList.add(u.inRotation ? 'badge-completed' : 'badge-failed');
  const error = errorLine(`${id}-error`);
  const node = el('article', { class: 'panel upstream', 'data-upstream': u.name, 'data-json': json, 'aria-labelledby': `${id}-title` },
    el('div', { class: 'view-head' }, el('h2', { id: `${id}-title`, text: u.name }), status),
    facts([
      ['Creates this minute', `${num(u.createsInWindow)} of ${num(u.createRpm)} (${num(u.createsLeft)} left)`],
      ['In flight', `${num(u.inFlight)} of ${num(u.maxInFlight)}`],
      ['Errors last hour', errorTotal ? errors.map(([code, n]) => `${code}: ${n}`).join(', ') : 'none'],
      ...(u.inRotation ? [] : [['Out until', time(u.outOfRotationUntil)], ['Reason', u.outOfRotationReason || '—']]),
    ]),
    el('div', { class: 'meter', role: 'meter', 'aria-label': `Create budget used on ${u.name}`, 'aria-valuemin': '0', 'aria-valuemax': '100', 'aria-valuenow': String(used) },
      el('span', { class: 'meter-fill', 'data-percent': used })),
    // Out of rotation by an operator's hold (`held`): it can be released here. Benched by the
    // engine after an account error: it comes back by itself when the cool-off ends.
    u.inRotation
      ? benchForm(ctx, u, id, error, reload)
      : u.held === false
        ? el('p', { class: 'muted small', text: 'Benched by the engine after an account error; it returns by itself.' })
        : unbenchButton(ctx, u, error, reload),
    error,
  );
  // The meter's width is set through the CSSOM, which the CSP allows (a style attribute it does not).
  node.querySelector('.meter-fill').style.width = `${used}%`;
  return node;
}

function benchForm(ctx, u, id, error, reload) {
  const minutes = el('input', { id: `${id}-minutes`, type: 'number', min: '1', max: '10080', step: '1', value: '60', inputmode: 'numeric' });
  const reason = el('input', { id: `${id}-reason`, type: 'text', autocomplete: 'off', placeholder: 'e.g. quota exhausted' });
  const form = el('form', { class: 'inline-form bench-form', novalidate: true },
    field('Minutes', minutes), field('Reason', reason),
    el('div', { class: 'field submit-field' }, el('button', { type: 'submit', class: 'secondary', 'aria-label': `Take ${u.name} out of rotation`, text: 'Take out of rotation' })));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    error.textContent = '';
    const body = { minutes: Math.max(1, Math.floor(Number(minutes.value) || 60)) };
    if (reason.value.trim()) body.reason = reason.value.trim();
    try {
      await ctx.api.post(`/upstreams/${seg(u.name)}/bench`, body);
      announce(`${u.name} is out of rotation for ${body.minutes} minutes.`);
      await reload();
    } catch (e) {
      error.textContent = explain(e, `Could not take ${u.name} out of rotation`);
    }
  });
  return el('details', { class: 'disclosure' }, el('summary', { text: 'Take out of rotation…' }), form);
}

function unbenchButton(ctx, u, error, reload) {
  const button = el('button', { type: 'button', class: 'secondary', 'aria-label': `Put ${u.name} back in rotation`, text: 'Put back in rotation' });
  button.addEventListener('click', async () => {
    error.textContent = '';
    try {
      await ctx.api.post(`/upstreams/${seg(u.name)}/unbench`);
      announce(`${u.name} is back in rotation.`);
      await reload();
    } catch (e) {
      error.textContent = explain(e, `Could not put ${u.name} back`);
    }
  });
  return el('div', { class: 'actions' }, button);
}
