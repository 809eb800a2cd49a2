// The audit log (#/audit): every change made through the admin API or the admin CLI,
// newest first, with who made it, what it was done to, and the target before and after.
// From /admin/v1/audit.

import { seg } from './api.js';
import { errorLine, explain, heading, pager, table, time } from './ui.js';
import { el } from './util.js';

const PAGE = 50;

/** `account:<id>` and `key:<id>` link to where the console shows them. */
function target(t) {
  const [kind, id] = String(t || '').split(/:(.*)/s);
  if (kind === 'account' && id) return el('a', { href: `#/customers/${seg(id)}`, text: t });
  if (kind === 'job' && id) return el('a', { href: `#/jobs/${seg(id)}`, text: t });
  return el('span', { class: 'mono', text: t || '—' });
}

function change(r) {
  if (r.before === null && r.after === null) return '—';
  return el('details', { class: 'change' },
    el('summary', { text: 'Before and after', 'aria-label': `Before and after of ${r.action} on ${r.target}` }),
    el('div', { class: 'change-body' },
      side('Before', r.before, 'None before this change.'),
      side('After', r.after, 'None after this change.')));
}

function side(title, value, none) {
  return el('div', {}, el('h3', { text: title }),
    value === null || value === undefined
      ? el('p', { class: 'muted small', text: none })
      : el('pre', { class: 'json', tabindex: '0', 'aria-label': `${title}, as JSON`, text: JSON.stringify(value, null, 2) }));
}

export async function render(ctx) {
  ctx.setTitle('Audit log');
  const error = errorLine('audit-error');
  const list = table('Audit log, newest first', [
    { label: 'When', cell: (r) => time(r.createdAt) },
    { label: 'Who', cell: (r) => r.actor },
    { label: 'Action', cell: (r) => el('code', { text: r.action }) },
    { label: 'Target', cell: (r) => target(r.target) },
    { label: 'Change', cell: change },
    { label: 'Request', cell: (r) => (r.requestId ? el('code', { text: r.requestId }) : '—') },
  ], [], { id: 'audit-list', rowAttrs: (r) => ({ 'data-action': r.action }) });
  const empty = el('p', { class: 'muted', id: 'audit-empty', hidden: true, text: 'Nothing changed through the admin API or CLI yet.' });
  const pages = pager({
    load: (cursor) => ctx.api.get('/audit', { limit: PAGE, cursor }),
    add: list.add,
    clear: list.clear,
    onError: (e) => {
      error.textContent = explain(e, 'Could not read the audit log');
    },
    onEmpty: (isEmpty) => {
      empty.hidden = !isEmpty;
    },
  });
  ctx.view.append(el('div', { class: 'view-head' }, heading('Audit log')), el('section', { class: 'panel' }, error, list.wrap, empty, pages.button));
  await pages.reload();
}
