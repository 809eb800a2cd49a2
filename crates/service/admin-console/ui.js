// Building blocks shared by the console's views: headings, tables, badges, facts,
// "Load more" paging, the confirmation and the shown-once secret dialogs. Text always
// goes in through textContent (util.js `el`), never innerHTML, so API data cannot become
// markup.

import { $, copyText, el, formatDuration, formatTime } from './util.js';

/** The view's heading, focusable so that navigation can move focus to it. */
export function heading(text, level = 'h1') {
  return el(level, { id: 'view-title', tabindex: '-1', text });
}

/** An error line that screen readers announce; empty (and hidden by CSS) until set. */
export function errorLine(id) {
  return el('p', { id, class: 'error', role: 'alert' });
}

/** Says `text` to screen readers without moving focus. */
export function announce(text) {
  const region = $('#live-region');
  region.textContent = '';
  // A change after a tick is announced even when the text repeats.
  setTimeout(() => {
    region.textContent = text;
  }, 50);
}

export function badge(status) {
  const s = String(status || '').toLowerCase();
  return el('span', { class: `badge badge-${s}`, text: String(status || '—') });
}

export const num = (n) => (n === null || n === undefined ? '—' : Number(n).toLocaleString('en-US'));

/** Seconds as "42 s", "3 min 05 s", "1 h 02 min"; null as "—". */
export const age = (seconds) => (seconds === null || seconds === undefined ? '—' : formatDuration(seconds * 1000));

export const time = (iso) => (iso ? el('time', { datetime: iso, text: formatTime(iso) }) : '—');

/** A <dl> of [term, value] pairs; values may be nodes. */
export function facts(pairs, className = 'facts') {
  return el(
    'dl',
    { class: className },
    pairs.flatMap(([term, value]) => [el('dt', { text: term }), el('dd', {}, value ?? '—')]),
  );
}

/**
 * A table in a horizontally scrolling wrapper (a wide table scrolls on its own instead of
 * widening the page); at phone widths its rows become cards, each cell under its label. `columns`: [{ label, cell: (row) => node | string, className }].
 */
export function table(caption, columns, rows = [], { id, rowAttrs } = {}) {
  const body = el('tbody');
  const t = el(
    'table',
    { id },
    el('caption', { class: 'visually-hidden', text: caption }),
    el('thead', {}, el('tr', {}, columns.map((c) => el('th', { scope: 'col', class: c.className, text: c.label })))),
    body,
  );
  const add = (items) => {
    for (const row of items) {
      body.append(
        el('tr', rowAttrs ? rowAttrs(row) : {}, columns.map((c) => el('td', { class: c.className, 'data-label': c.label }, c.cell(row) ?? '—'))),
      );
    }
  };
  add(rows);
  // `stack`: on a phone each row is shown as a card of label: value lines (console.css).
  const wrap = el('div', { class: 'table-wrap stack', tabindex: '0', role: 'region', 'aria-label': caption }, t);
  return { wrap, table: t, body, add, clear: () => body.replaceChildren() };
}

/**
 * Pages of an admin list (`{data, nextCursor}`): `load(cursor)` fetches one, `add(items)`
 * shows it. Returns the "Load more" button (hidden when there is no next page), and
 * `reload()` to start again from the first page.
 */
export function pager({ load, add, clear, label = 'Load more', onError, onEmpty }) {
  let cursor = null;
  let generation = 0;
  const button = el('button', { type: 'button', class: 'secondary more', text: label, hidden: true });
  const next = async () => {
    const mine = generation;
    const first = cursor === null;
    button.disabled = true;
    try {
      const page = await load(cursor);
      if (mine !== generation) return;
      const items = page.data || [];
      add(items);
      cursor = page.nextCursor || null;
      button.hidden = !cursor;
      if (first && onEmpty) onEmpty(items.length === 0);
    } catch (e) {
      if (mine === generation && onError) onError(e);
    } finally {
      button.disabled = false;
    }
  };
  button.addEventListener('click', next);
  const reload = () => {
    generation += 1;
    cursor = null;
    button.hidden = true;
    clear();
    return next();
  };
  return { button, reload, next };
}

/** Asks the operator to confirm; resolves true on Confirm. */
export function confirmAction(title, text, okLabel = 'Confirm') {
  const dialog = $('#confirm-dialog');
  $('#confirm-title').textContent = title;
  $('#confirm-text').textContent = text;
  $('#confirm-ok').textContent = okLabel;
  return new Promise((resolve) => {
    const done = (answer) => {
      dialog.removeEventListener('close', onClose);
      $('#confirm-ok').removeEventListener('click', onOk);
      $('#confirm-cancel').removeEventListener('click', onCancel);
      if (dialog.open) dialog.close();
      resolve(answer);
    };
    const onOk = () => done(true);
    const onCancel = () => done(false);
    const onClose = () => done(false);
    $('#confirm-ok').addEventListener('click', onOk);
    $('#confirm-cancel').addEventListener('click', onCancel);
    dialog.addEventListener('close', onClose);
    dialog.showModal();
    $('#confirm-cancel').focus();
  });
}

/**
 * Shows a new key's secret once, in a modal dialog; resolves when the operator closes it,
 * and then the secret is gone from the page (nothing keeps it: not the DOM, not storage).
 */
export function showSecretOnce(secret) {
  const dialog = $('#secret-dialog');
  const input = $('#secret-value');
  input.value = secret;
  $('#secret-status').textContent = '';
  return new Promise((resolve) => {
    const copy = async () => {
      const ok = await copyText(input.value);
      if (!ok) input.select();
      $('#secret-status').textContent = ok ? 'Copied.' : 'Select the key and copy it (Ctrl+C).';
    };
    const close = () => dialog.close();
    const onClose = () => {
      input.value = '';
      $('#secret-status').textContent = '';
      $('#secret-copy').removeEventListener('click', copy);
      $('#secret-close').removeEventListener('click', close);
      dialog.removeEventListener('close', onClose);
      resolve();
    };
    $('#secret-copy').addEventListener('click', copy);
    $('#secret-close').addEventListener('click', close);
    dialog.addEventListener('close', onClose);
    dialog.showModal();
    input.focus();
    input.select();
  });
}

/** A labelled field: <div class="field"><label>…</label><control></div>. */
export function field(label, control, help) {
  const helpNode = help ? el('p', { class: 'help', id: `${control.id}-help`, text: help }) : null;
  if (helpNode) control.setAttribute('aria-describedby', helpNode.id);
  return el('div', { class: 'field' }, el('label', { for: control.id, text: label }), control, helpNode);
}

/** ISO time from a datetime-local input's value (local time), or '' when empty. */
export function localToIso(value) {
  if (!value) return '';
  const d = new Date(value);
  return Number.isNaN(d.getTime()) ? '' : d.toISOString();
}

/** A message for an API error, with the server's words when it gave some. */
export function explain(e, what) {
  if (e && e.status === 0) return e.message;
  if (e && e.status === 404) return `${what}: not found.`;
  return `${what}: ${e?.message || e}`;
}
