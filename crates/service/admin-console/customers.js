// Customers: the list with search (#/customers) and one customer (#/customers/<id>) with
// their keys, a usage chart, the credit ledger, a form to create a key (its secret shown
// once) and one to grant or deduct credits. From /admin/v1/accounts, /keys and /usage.

import { seg, withQuery } from './api.js';
import { barChart } from './chart.js';
import {
  announce, badge, confirmAction, errorLine, explain, facts, field, heading, num, pager, showSecretOnce, table, time,
} from './ui.js';
import { el } from './util.js';

const PAGE = 50;

/** A fresh Idempotency-Key (crypto.randomUUID needs a secure context; this does not). */
function newIdempotencyKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return `console-${Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('')}`;
}

export async function renderList(ctx) {
  ctx.setTitle('Customers');
  const error = errorLine('customers-error');
  const search = el('input', { id: 'customer-search', type: 'search', name: 'search', autocomplete: 'off', placeholder: 'Name, e-mail or id' });
  const searchForm = el(
    'form',
    { id: 'customer-search-form', class: 'search-row', role: 'search', novalidate: true },
    field('Search customers', search),
    el('button', { type: 'submit', class: 'secondary', text: 'Search' }),
  );
  search.value = ctx.query.get('search') || '';

  const list = table('Customers', [
    { label: 'Name', cell: (a) => el('a', { href: `#/customers/${seg(a.id)}`, text: a.name || a.id }) },
    { label: 'E-mail', cell: (a) => a.email || '—' },
    { label: 'Credits', cell: (a) => num(a.credits), className: 'num' },
    { label: 'Plan', cell: (a) => a.plan || '—' },
    { label: 'Status', cell: (a) => badge(a.disabled ? 'disabled' : 'active') },
    { label: 'Created', cell: (a) => time(a.createdAt) },
  ], [], { id: 'customer-list', rowAttrs: (a) => ({ 'data-account-id': a.id }) });
  const empty = el('p', { class: 'muted', id: 'customers-empty', hidden: true, text: 'No customer matches.' });
  const pages = pager({
    load: (cursor) => ctx.api.get('/accounts', { search: search.value.trim(), limit: PAGE, cursor }),
    add: list.add,
    clear: list.clear,
    onError: (e) => {
      error.textContent = explain(e, 'Could not list the customers');
    },
    onEmpty: (isEmpty) => {
      empty.hidden = !isEmpty;
    },
  });
  let typing = 0;
  const run = () => {
    clearTimeout(typing);
    error.textContent = '';
    const q = search.value.trim();
    // The search rides in the hash, so Back returns to it; replaceState fires no hashchange.
    history.replaceState(null, '', q ? `#/customers?search=${encodeURIComponent(q)}` : '#/customers');
    return pages.reload();
  };
  searchForm.addEventListener('submit', (event) => {
    event.preventDefault();
    run();
  });
  search.addEventListener('input', () => {
    clearTimeout(typing);
    typing = setTimeout(run, 350);
  });
  ctx.onLeave(() => clearTimeout(typing));

  ctx.view.append(
    el('div', { class: 'view-head' }, heading('Customers')),
    el('section', { class: 'panel' }, searchForm, error, list.wrap, empty, pages.button),
    newCustomerForm(ctx),
  );
  await pages.reload();
}

function newCustomerForm(ctx) {
  const name = el('input', { id: 'new-customer-name', type: 'text', required: true, autocomplete: 'off' });
  const email = el('input', { id: 'new-customer-email', type: 'email', autocomplete: 'off' });
  const credits = el('input', { id: 'new-customer-credits', type: 'number', min: '0', step: '1', value: '0', inputmode: 'numeric' });
  const error = errorLine('new-customer-error');
  const submit = el('button', { type: 'submit', id: 'new-customer-submit', class: 'primary', text: 'Create customer' });
  const form = el('form', { id: 'new-customer-form', novalidate: true },
    el('div', { class: 'row3' }, field('Name', name), field('E-mail (optional)', email), field('Starting credits', credits)),
    error, submit);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    error.textContent = '';
    if (!name.value.trim()) {
      error.textContent = 'Give the customer a name.';
      name.focus();
      return;
    }
    submit.disabled = true;
    try {
      const body = { name: name.value.trim() };
      if (email.value.trim()) body.email = email.value.trim();
      if (Number(credits.value) > 0) body.credits = Math.floor(Number(credits.value));
      const account = await ctx.api.post('/accounts', body);
      location.hash = `#/customers/${seg(account.id)}`;
    } catch (e) {
      error.textContent = explain(e, 'Could not create the customer');
    } finally {
      submit.disabled = false;
    }
  });
  return el('details', { class: 'panel disclosure', id: 'new-customer' }, el('summary', { text: 'New customer' }), form);
}

export async function renderDetail(ctx) {
  const id = ctx.id;
  ctx.setTitle('Customer');
  let account;
  try {
    account = await ctx.api.get(`/accounts/${seg(id)}`);
  } catch (e) {
    if (!ctx.isCurrent()) return;
    ctx.view.append(
      el('div', { class: 'view-head' }, heading('Customer')),
      el('p', { class: 'error', role: 'alert', text: explain(e, `Customer ${id}`) }),
      el('a', { href: '#/customers', text: '← All customers' }),
    );
    return;
  }
  if (!ctx.isCurrent()) return;
  ctx.setTitle(account.name || 'Customer');

  const credits = el('strong', { id: 'customer-credits', text: num(account.credits) });
  const statusBadge = el('span', { id: 'customer-status' }, badge(account.disabled ? 'disabled' : 'active'));
  const summary = el('section', { class: 'panel', 'aria-labelledby': 'summary-title' },
    el('h2', { id: 'summary-title', text: 'Account' }),
    el('p', { class: 'balance' }, el('span', { class: 'muted', text: 'Credits ' }), credits),
    facts([
      ['Id', el('code', { text: account.id })],
      ['E-mail', account.email || '—'],
      ['Plan', account.plan || '—'],
      ['Jobs at once', num(account.maxConcurrentJobs)],
      ['Status', statusBadge],
      ['Created', time(account.createdAt)],
    ]),
    el('p', {}, el('a', { href: `#/jobs?account=${seg(account.id)}`, id: 'customer-jobs-link', text: 'This customer’s jobs →' })),
    accountToggle(ctx, account, statusBadge),
  );

  const ledger = ledgerPanel(ctx, account.id);
  const grant = grantPanel(ctx, account, (after) => {
    credits.textContent = num(after.credits);
    ledger.reload();
  });
  const keys = keysPanel(ctx, account);
  const usage = usagePanel(ctx, account);

  ctx.view.append(
    el('p', { class: 'crumbs' }, el('a', { href: '#/customers', text: '← All customers' })),
    el('div', { class: 'view-head' }, heading(account.name || account.id)),
    el('div', { class: 'grid-2' }, summary, grant),
    keys,
    usage.section,
    ledger.section,
  );
  await Promise.all([ledger.reload(), usage.load()]);
}

function accountToggle(ctx, account, statusBadge) {
  const button = el('button', { type: 'button', id: 'account-toggle', class: 'secondary' });
  const error = errorLine('account-toggle-error');
  const label = () => {
    button.textContent = account.disabled ? 'Enable account' : 'Disable account';
  };
  label();
  button.addEventListener('click', async () => {
    const disabling = !account.disabled;
    if (disabling) {
      const ok = await confirmAction('Disable this account?', `${account.name}: every key of this account is refused (403) until you enable it again.`, 'Disable account');
      if (!ok) return;
    }
    error.textContent = '';
    button.disabled = true;
    try {
      const after = await ctx.api.patch(`/accounts/${seg(account.id)}`, { disabled: disabling });
      account.disabled = Boolean(after.disabled);
      statusBadge.replaceChildren(badge(account.disabled ? 'disabled' : 'active'));
      label();
      announce(account.disabled ? 'Account disabled.' : 'Account enabled.');
    } catch (e) {
      error.textContent = explain(e, 'Could not change the account');
    } finally {
      button.disabled = false;
    }
  });
  return el('div', { class: 'actions' }, button, error);
}

function grantPanel(ctx, account, onApplied) {
  const amount = el('input', { id: 'grant-amount', type: 'number', step: '1', inputmode: 'numeric', required: true });
  const note = el('input', { id: 'grant-note', type: 'text', autocomplete: 'off', maxlength: '200' });
  const submit = el('button', { type: 'submit', id: 'grant-submit', class: 'primary', text: 'Grant credits' });
  const error = errorLine('grant-error');
  const result = el('p', { id: 'grant-result', class: 'ok', 'aria-live': 'polite' });
  // One key per intended change: kept when a request may or may not have arrived (so a
  // retry cannot apply twice), replaced after an answer or when the form changes.
  let idempotencyKey = newIdempotencyKey();
  const form = el('form', { id: 'grant-form', novalidate: true },
    field('Credits', amount, 'A positive number grants; a negative one deducts (never below zero).'),
    field('Note (optional)', note),
    error, result, submit);
  const changed = () => {
    idempotencyKey = newIdempotencyKey();
    const n = Number(amount.value);
    submit.textContent = n < 0 ? 'Deduct credits' : 'Grant credits';
  };
  amount.addEventListener('input', changed);
  note.addEventListener('input', changed);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    error.textContent = '';
    result.textContent = '';
    const n = Number(amount.value);
    if (!amount.value || !Number.isInteger(n) || n === 0) {
      error.textContent = 'Enter a whole number of credits other than 0.';
      amount.setAttribute('aria-invalid', 'true');
      amount.focus();
      return;
    }
    amount.removeAttribute('aria-invalid');
    const body = { amount: n };
    if (note.value.trim()) body.note = note.value.trim();
    submit.disabled = true;
    try {
      const answer = await ctx.api.post(`/accounts/${seg(account.id)}/credits`, body, { 'Idempotency-Key': idempotencyKey });
      idempotencyKey = newIdempotencyKey();
      const after = answer.account || {};
      const verb = n > 0 ? `Granted ${num(n)}` : `Deducted ${num(-n)}`;
      result.textContent = `${verb} credits${answer.replayed ? ' (already applied before)' : ''}. Balance: ${num(after.credits)}.`;
      amount.value = '';
      note.value = '';
      submit.textContent = 'Grant credits';
      onApplied(after);
    } catch (e) {
      // A refusal (4xx but a timeout or rate limit) changed nothing: a new attempt is a
      // new change. A network failure, a timeout or a 5xx (a proxy's 502 may follow a
      // commit) keeps the key, so retrying cannot apply the change twice.
      const mayHaveApplied = e.status === 0 || e.status === 408 || e.status === 429 || e.status >= 500;
      if (!mayHaveApplied) idempotencyKey = newIdempotencyKey();
      error.textContent =
        e.status === 409 && e.body.creditsAvailable !== undefined
          ? `Not deducted: the balance is ${num(e.body.creditsAvailable)} credits, and it cannot go below zero.`
          : explain(e, 'Could not change the credits');
    } finally {
      submit.disabled = false;
    }
  });
  return el('section', { class: 'panel', id: 'grant', 'aria-labelledby': 'grant-title' }, el('h2', { id: 'grant-title', text: 'Grant credits' }), form);
}

function keysPanel(ctx, account) {
  let keys = account.keys || [];
  const error = errorLine('keys-error');
  const list = table('API keys', [
    { label: 'Name', cell: (k) => k.name || '—' },
    { label: 'Prefix', cell: (k) => el('code', { text: `${k.prefix}…` }) },
    { label: 'Status', cell: (k) => badge(k.status) },
    { label: 'Created', cell: (k) => time(k.createdAt) },
    { label: 'Actions', cell: (k) => keyActions(k) },
  ], [], { id: 'key-list', rowAttrs: (k) => ({ 'data-key-id': k.id, 'data-status': k.status }) });
  const empty = el('p', { class: 'muted', id: 'keys-empty', text: 'No keys yet.' });
  const show = () => {
    list.clear();
    list.add(keys);
    empty.hidden = keys.length > 0;
  };
  const act = async (key, action) => {
    if (action === 'revoke') {
      const ok = await confirmAction('Revoke this key?', `${key.name} (${key.prefix}…) stops working for good; this cannot be undone.`, 'Revoke key');
      if (!ok) return;
    }
    error.textContent = '';
    try {
      const after = await ctx.api.post(`/keys/${seg(key.id)}/${action}`);
      keys = keys.map((k) => (k.id === after.id ? after : k));
      show();
      announce(`Key ${after.name} is ${after.status}.`);
    } catch (e) {
      error.textContent = explain(e, `Could not ${action} the key`);
    }
  };
  const keyActions = (k) => {
    if (k.status === 'revoked') return el('span', { class: 'muted', text: '—' });
    const toggle = k.status === 'disabled' ? 'enable' : 'disable';
    return el('div', { class: 'row-actions' },
      el('button', { type: 'button', class: 'secondary small-button', 'aria-label': `${toggle === 'enable' ? 'Enable' : 'Disable'} key ${k.name}`, text: toggle === 'enable' ? 'Enable' : 'Disable', onclick: () => act(k, toggle) }),
      el('button', { type: 'button', class: 'danger-link small-button', 'aria-label': `Revoke key ${k.name}`, text: 'Revoke', onclick: () => act(k, 'revoke') }));
  };

  const name = el('input', { id: 'key-name', type: 'text', autocomplete: 'off', required: true, maxlength: '200' });
  const email = el('input', { id: 'key-email', type: 'email', autocomplete: 'off' });
  const submit = el('button', { type: 'submit', id: 'key-submit', class: 'primary', text: 'Create key' });
  const formError = errorLine('key-form-error');
  const form = el('form', { id: 'key-form', class: 'inline-form', novalidate: true },
    field('Key name', name), field('E-mail (optional)', email), el('div', { class: 'field submit-field' }, submit), formError);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    formError.textContent = '';
    if (!name.value.trim()) {
      formError.textContent = 'Name the key (for example after the customer’s app).';
      name.focus();
      return;
    }
    submit.disabled = true;
    try {
      const body = { name: name.value.trim() };
      if (email.value.trim()) body.email = email.value.trim();
      const created = await ctx.api.post(`/accounts/${seg(account.id)}/keys`, body);
      keys = [created.key, ...keys.filter((k) => k.id !== created.key.id)];
      show();
      name.value = '';
      email.value = '';
      await showSecretOnce(created.secret);
      announce(`Key ${created.key.name} created.`);
      name.focus();
    } catch (e) {
      formError.textContent = explain(e, 'Could not create the key');
    } finally {
      submit.disabled = false;
    }
  });
  show();
  return el('section', { class: 'panel', id: 'keys', 'aria-labelledby': 'keys-title' },
    el('h2', { id: 'keys-title', text: 'API keys' }), error, list.wrap, empty,
    el('h3', { text: 'Create a key' }), form);
}

/** Days from `from` to `to` (or today, whichever is first), as YYYY-MM-DD in UTC. */
function days(from, to) {
  const out = [];
  const start = new Date(`${String(from).slice(0, 10)}T00:00:00Z`);
  const endAt = Math.min(Date.parse(to.length <= 10 ? `${to}T23:59:59Z` : to) || Date.now(), Date.now());
  for (let d = start; d.getTime() <= endAt && out.length < 400; d = new Date(d.getTime() + 86_400_000)) {
    out.push(d.toISOString().slice(0, 10));
  }
  return out;
}

function usagePanel(ctx, account) {
  const box = el('div', { id: 'usage-chart-box' });
  const error = errorLine('usage-error');
  const totals = el('div', { id: 'usage-totals' });
  const section = el('section', { class: 'panel', id: 'usage', 'aria-labelledby': 'usage-title' },
    el('h2', { id: 'usage-title', text: 'Usage' }), el('h3', { text: 'This month' }), totals,
    el('h3', { text: 'Net credits charged per day, last 30 days' }), error, box);
  let chart = null;
  ctx.onLeave(() => chart?.stop());
  const load = async () => {
    const m = account.usageThisMonth || {};
    const tiles = [
      ['Jobs submitted', m.submitted],
      ['Completed', m.completed],
      ['Failed', m.failed],
      ['Cancelled', m.cancelled],
      ['Credits charged', m.creditsCharged],
      ['Credits refunded', m.creditsRefunded],
      ['Net credits', m.netCredits],
    ];
    totals.replaceChildren(el('ul', { class: 'tiles tiles-small', 'aria-label': 'Usage this month' },
      tiles.map(([label, n]) => el('li', { class: 'tile' }, el('span', { class: 'tile-value', text: num(n) }), el('span', { class: 'tile-label', text: label })))));
    let usage;
    try {
      // 30 whole UTC days, today included: a month's trend even early in a month.
      const from = new Date(Date.now() - 29 * 86_400_000).toISOString().slice(0, 10);
      usage = await ctx.api.get(withQuery('/usage', { group_by: 'account', bucket: 'day', account: account.id, from }));
    } catch (e) {
      if (ctx.isCurrent()) error.textContent = explain(e, 'Could not read the usage');
      return;
    }
    if (!ctx.isCurrent()) return;
    const byDay = new Map();
    for (const row of usage.data || []) {
      const day = String(row.bucketStart).slice(0, 10);
      byDay.set(day, (byDay.get(day) || 0) + (Number(row.netCredits) || 0));
    }
    const list = usage.from ? days(usage.from, usage.to || new Date().toISOString()) : [...byDay.keys()].sort();
    const points = list.map((d) => ({ label: d, tick: d.slice(5), values: { net: Math.max(0, byDay.get(d) || 0) } }));
    const total = points.reduce((n, p) => n + p.values.net, 0);
    chart?.stop();
    chart = barChart(box, {
      id: 'usage-chart',
      title: `Net credits charged per day over the last 30 days, ${account.name}`,
      summary: `${total} net credits over ${points.length} days.`,
      points,
      series: [{ key: 'net', label: 'Net credits', className: 'bar-credits' }],
      empty: 'No usage in the last 30 days',
    });
  };
  return { section, load };
}

function ledgerPanel(ctx, accountId) {
  const error = errorLine('ledger-error');
  const list = table('Credit ledger, newest first', [
    { label: 'When', cell: (e) => time(e.createdAt) },
    { label: 'Kind', cell: (e) => badge(e.kind) },
    { label: 'Amount', cell: (e) => el('span', { class: e.amount < 0 ? 'neg' : 'pos', text: `${e.amount > 0 ? '+' : ''}${num(e.amount)}` }), className: 'num' },
    { label: 'Note', cell: (e) => e.note || '—' },
    { label: 'Job', cell: (e) => (e.jobId ? el('a', { href: `#/jobs/${seg(e.jobId)}`, text: `${e.jobId.slice(0, 8)}…`, 'aria-label': `Job ${e.jobId}` }) : '—') },
  ], [], { id: 'ledger', rowAttrs: (e) => ({ 'data-kind': e.kind, 'data-amount': e.amount }) });
  const empty = el('p', { class: 'muted', id: 'ledger-empty', hidden: true, text: 'No ledger entries.' });
  const pages = pager({
    load: (cursor) => ctx.api.get(`/accounts/${seg(accountId)}/ledger`, { limit: PAGE, cursor }),
    add: list.add,
    clear: list.clear,
    onError: (e) => {
      error.textContent = explain(e, 'Could not read the ledger');
    },
    onEmpty: (isEmpty) => {
      empty.hidden = !isEmpty;
    },
  });
  const section = el('section', { class: 'panel', id: 'ledger-panel', 'aria-labelledby': 'ledger-title' },
    el('h2', { id: 'ledger-title', text: 'Credit ledger' }), error, list.wrap, empty, pages.button);
  return { section, reload: pages.reload };
}
