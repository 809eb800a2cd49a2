// The History panel: the key's jobs from GET /v2/jobs (newest first, keyset pages via
// nextCursor), filtered by status and model on the server, searched by prompt here in
// the page over the pages loaded so far (list items carry no input, so each listed job's
// prompt is read from GET /v2/jobs/{id} and kept). A detail dialog shows one job with
// its webhook deliveries and can put its settings back into the form.

import { $, TERMINAL, el, elapsed, formatTime, mediaAllowed, plural } from './util.js';

const PAGE_SIZE = 12;
/** Job detail reads in flight at once while filling in prompts. */
const DETAIL_READS = 4;
/** Without the all-jobs stream, how often unfinished jobs in the list are re-read. */
const REFRESH_MS = 5000;

export class History {
  /** @param {object} hooks getApi(); onReuse(input); watched() -> ids the Progress panel follows; onSettled(job). */
  constructor(hooks) {
    this.hooks = hooks;
    this.list = $('#history-list');
    this.more = $('#history-more');
    this.status = $('#filter-status');
    this.model = $('#filter-model');
    this.search = $('#filter-search');
    this.dialog = $('#job-detail');
    this.jobs = new Map();
    this.inputs = new Map();
    this.cursor = null;
    this.loading = 0;
    this.queue = [];
    this.reading = 0;
    /** Whether the all-jobs stream keeps the list current; without it, unfinished rows are re-read. */
    this.live = false;
    this.refreshTimer = setInterval(() => this.refreshUnfinished(), REFRESH_MS);
    this.status.addEventListener('change', () => this.reload());
    this.model.addEventListener('change', () => this.reload());
    // `search` is the type=search field's clear button; `change` catches scripted clears.
    for (const type of ['input', 'change', 'search']) this.search.addEventListener(type, () => this.applySearch());
    this.more.addEventListener('click', () => this.loadPage());
    $('#detail-close').addEventListener('click', () => this.dialog.close());
    this.dialog.addEventListener('click', (event) => {
      if (event.target === this.dialog) this.dialog.close();
    });
  }

  setModels(ids) {
    const current = this.model.value;
    const known = new Set(Array.from(this.model.options).map((o) => o.value));
    for (const id of ids) {
      if (!known.has(id)) this.model.append(el('option', { value: id, text: id }));
    }
    this.model.value = current;
  }

  reset() {
    this.jobs.clear();
    this.inputs.clear();
    this.queue = [];
    this.cursor = null;
    this.list.replaceChildren();
    $('#history-empty').hidden = true;
    this.more.hidden = true;
    if (this.dialog.open) this.dialog.close();
  }

  async reload() {
    this.jobs.clear();
    this.cursor = null;
    this.queue = [];
    await this.loadPage(true);
  }

  query(first) {
    const q = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (this.status.value) q.set('status', this.status.value);
    if (this.model.value) q.set('model', this.model.value);
    if (first) q.set('include_models', 'true');
    else if (this.cursor) q.set('cursor', this.cursor);
    return q;
  }

  async loadPage(first = false) {
    const ticket = ++this.loading;
    const errorLine = $('#history-error');
    this.more.disabled = true;
    try {
      const page = await this.hooks.getApi().get(`/v2/jobs?${this.query(first)}`);
      if (ticket !== this.loading) return;
      errorLine.textContent = '';
      if (first) this.list.replaceChildren();
      if (page.models) this.setModels(page.models);
      for (const job of page.jobs) this.put(job, false);
      this.cursor = page.nextCursor || null;
      this.more.hidden = !page.hasMore;
      $('#history-empty').hidden = this.jobs.size > 0;
      this.applySearch();
    } catch (e) {
      if (ticket === this.loading) errorLine.textContent = `Could not load your jobs: ${e.message}`;
    } finally {
      if (ticket === this.loading) this.more.disabled = false;
    }
  }

  matchesFilters(job) {
    return (!this.status.value || job.status === this.status.value) && (!this.model.value || job.model === this.model.value);
  }

  /** A job's new state, from the stream or a watcher: updates its row, or adds it on top if new. */
  upsert(job) {
    if (job.input) this.inputs.set(job.id, job.input);
    if (this.jobs.has(job.id)) {
      this.put(job, false);
    } else if (this.matchesFilters(job)) {
      this.put(job, true);
      $('#history-empty').hidden = true;
    }
    this.applySearch();
  }

  put(job, onTop) {
    const merged = { ...(this.jobs.get(job.id) || {}), ...job };
    this.jobs.set(job.id, merged);
    const row = this.row(merged);
    const old = this.list.querySelector(`li[data-job-id="${CSS.escape(job.id)}"]`);
    if (old) {
      // Keep the poster element when the video is unchanged, so it does not reload.
      const oldVideo = old.querySelector('video');
      const newVideo = row.querySelector('video');
      if (oldVideo && newVideo && oldVideo.getAttribute('src') === newVideo.getAttribute('src')) newVideo.replaceWith(oldVideo);
      old.replaceWith(row);
    } else if (onTop) {
      this.list.prepend(row);
    } else {
      this.list.append(row);
    }
    if (!this.inputs.has(job.id)) this.readInput(job.id);
  }

  row(job) {
    const url = job.result?.videoUrl;
    const poster =
      job.status === 'COMPLETED' && url && !job.expired && mediaAllowed(url)
        ? el('video', { class: 'poster', preload: 'metadata', muted: true, playsinline: true, src: `${url}#t=0.1`, 'aria-hidden': 'true', tabindex: '-1' })
        : el('div', { class: `poster placeholder badge-${job.status.toLowerCase()}`, 'aria-hidden': 'true', text: job.expired ? 'expired' : job.status.toLowerCase() });
    const input = this.inputs.get(job.id);
    const prompt = input ? input.prompt || '' : '';
    return el(
      'li',
      { class: 'history-item', 'data-job-id': job.id, 'data-status': job.status },
      poster,
      el(
        'div',
        { class: 'history-text' },
        el('div', { class: 'job-head' }, el('strong', { text: job.model }), el('span', { class: `badge badge-${job.status.toLowerCase()}`, text: job.status })),
        el('p', { class: 'prompt', text: input ? prompt : '…' }),
        el('p', { class: 'muted small', text: `${formatTime(job.createdAt)} · ${plural(job.creditCost ?? 0, 'credit')}${job.completedAt ? ` · took ${elapsed(job)}` : ''}` }),
      ),
      el('button', { type: 'button', class: 'secondary details', text: 'Details', 'aria-label': `Details of job ${job.id}`, onclick: () => this.open(job.id) }),
    );
  }

  /**
   * Without the all-jobs stream, re-reads the listed jobs that are not finished (jobs
   * submitted elsewhere, e.g. with the CLI); the Progress panel follows its own jobs.
   */
  refreshUnfinished() {
    if (this.live || !this.hooks.getApi()) return;
    const watched = this.hooks.watched();
    for (const job of this.jobs.values()) {
      if (!TERMINAL.has(job.status) && !watched.has(job.id)) {
        this.readInput(job.id);
      }
    }
  }

  /** Reads one job's input (for its prompt), a few at a time. */
  readInput(id) {
    if (this.queue.includes(id)) return;
    this.queue.push(id);
    this.pump();
  }

  pump() {
    const api = this.hooks.getApi();
    if (!api) {
      this.queue = [];
      return;
    }
    while (this.reading < DETAIL_READS && this.queue.length) {
      const id = this.queue.shift();
      this.reading += 1;
      api
        .get(`/v2/jobs/${encodeURIComponent(id)}`)
        .then((job) => {
          const before = this.jobs.get(id);
          if (before && !TERMINAL.has(before.status) && TERMINAL.has(job.status)) this.hooks.onSettled(job);
          this.inputs.set(id, job.input || {});
          if (this.jobs.has(id)) this.put(job, false);
          this.applySearch();
        })
        .catch(() => this.inputs.set(id, {}))
        .finally(() => {
          this.reading -= 1;
          this.pump();
        });
    }
  }

  applySearch() {
    const needle = this.search.value.trim().toLowerCase();
    let shown = 0;
    for (const row of this.list.children) {
      const prompt = (this.inputs.get(row.dataset.jobId)?.prompt || '').toLowerCase();
      const visible = !needle || prompt.includes(needle);
      row.hidden = !visible;
      if (visible) shown += 1;
    }
    const empty = $('#history-empty');
    empty.textContent = needle && this.jobs.size ? 'No loaded job matches this search.' : 'No jobs yet.';
    empty.hidden = shown > 0 || (!needle && this.jobs.size > 0);
  }

  async open(id) {
    const body = $('#detail-body');
    body.replaceChildren(el('p', { class: 'muted', text: 'Loading…' }));
    $('#detail-title').textContent = `Job ${id}`;
    if (!this.dialog.open) this.dialog.showModal();
    const api = this.hooks.getApi();
    let job;
    try {
      job = await api.get(`/v2/jobs/${encodeURIComponent(id)}`);
    } catch (e) {
      body.replaceChildren(el('p', { class: 'error', text: `Could not load the job: ${e.message}` }));
      return;
    }
    this.inputs.set(id, job.input || {});
    let hooks = null;
    try {
      hooks = await api.get(`/v2/jobs/${encodeURIComponent(id)}/webhooks`);
    } catch {
      hooks = null;
    }
    const input = job.input || {};
    const url = job.result?.videoUrl;
    const facts = [
      ['Status', job.status],
      ['Model', job.model],
      ['Progress', job.progress === null || job.progress === undefined ? '—' : `${job.progress}%`],
      ['Cost', `${plural(job.creditCost ?? 0, 'credit')}${job.status === 'FAILED' && job.creditCost === 0 ? ' (refunded)' : ''}`],
      ['Created', formatTime(job.createdAt)],
      ['Finished', formatTime(job.completedAt)],
      ['Took', job.completedAt ? elapsed(job) : '—'],
      ['Webhook', job.webhookStatus || 'none requested'],
    ];
    if (job.error) facts.push(['Error', job.error]);
    const reuse = el('button', {
      type: 'button',
      class: 'primary',
      id: 'reuse-settings',
      text: 'Use these settings again',
      onclick: () => {
        this.dialog.close();
        this.hooks.onReuse(input);
      },
    });
    body.replaceChildren(
      el('p', { class: 'prompt detail-prompt', text: input.prompt || '' }),
      job.status === 'COMPLETED' && url && mediaAllowed(url) && !job.expired
        ? el('video', { controls: true, playsinline: true, preload: 'metadata', src: url, 'aria-label': `Video of job ${job.id}` })
        : null,
      url && !job.expired ? el('p', {}, el('a', { class: 'button secondary', href: url, download: `${job.id}.mp4`, text: 'Download video' })) : null,
      el('dl', { class: 'facts' }, facts.flatMap(([k, v]) => [el('dt', { text: k }), el('dd', { text: v })])),
      el('h3', { text: 'Input' }),
      el('pre', { class: 'json' }, el('code', { text: JSON.stringify(input, null, 2) })),
      el('h3', { text: 'Webhook deliveries' }),
      webhookTable(hooks),
      el('div', { class: 'actions' }, reuse),
    );
    reuse.focus();
  }
}

function webhookTable(hooks) {
  if (!hooks) return el('p', { class: 'muted', text: 'Webhook deliveries could not be read.' });
  const events = hooks.events || [];
  if (!events.length) return el('p', { class: 'muted', text: 'No webhook events: the job was submitted without a webhookUrl.' });
  const rows = [];
  for (const event of events) {
    const attempts = event.attempts || [];
    if (!attempts.length) {
      rows.push(el('tr', {}, el('td', { text: event.event }), el('td', { text: event.status }), el('td', { text: '—' }), el('td', { text: 'not attempted yet' })));
    }
    for (const a of attempts) {
      rows.push(
        el('tr', {},
          el('td', { text: event.event }),
          el('td', { text: event.status }),
          el('td', { text: formatTime(a.attemptedAt) }),
          el('td', { text: a.statusCode ? `HTTP ${a.statusCode} in ${a.durationMs} ms` : a.error || 'no answer' })),
      );
    }
  }
  return el(
    'div',
    { class: 'table-wrap' },
    el('table', {},
      el('caption', { class: 'visually-hidden', text: 'Webhook delivery attempts' }),
      el('thead', {}, el('tr', {}, ['Event', 'State', 'Attempted', 'Outcome'].map((h) => el('th', { scope: 'col', text: h })))),
      el('tbody', {}, rows)),
  );
}
