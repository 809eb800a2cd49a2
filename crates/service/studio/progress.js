// The Progress panel: one card per job submitted from this page, following the job
// (event stream or polling, see api.js) to its end: a player and a download link when
// it completed, the error and the refund when it failed, a cancel button while queued.

import { HttpError, watchJob } from './api.js';
import { $, TERMINAL, el, elapsed, mediaAllowed, plural } from './util.js';

export class Progress {
  /** @param {object} hooks getApi(); onSettled(job) after a job ended; onUpdate(job) on every change. */
  constructor(hooks) {
    this.hooks = hooks;
    this.list = $('#active-jobs');
    this.cards = new Map();
    this.timer = setInterval(() => this.tick(), 1000);
  }

  /** Starts following a job submitted with `body` at `price` credits. */
  track(jobId, body, price) {
    const card = new JobCard(jobId, body, price, this);
    this.cards.set(jobId, card);
    this.list.prepend(card.node);
    $('#progress-empty').hidden = true;
    card.node.scrollIntoView({ block: 'nearest' });
    card.watcher = watchJob(this.hooks.getApi(), jobId, (job) => card.update(job));
    return card;
  }

  /** A job's new state seen elsewhere (the all-jobs stream). */
  offer(job) {
    const card = this.cards.get(job.id);
    if (card) card.update(job);
  }

  remove(jobId) {
    const card = this.cards.get(jobId);
    if (!card) return;
    card.watcher?.stop();
    card.node.remove();
    this.cards.delete(jobId);
    $('#progress-empty').hidden = this.cards.size > 0;
  }

  clear() {
    for (const id of Array.from(this.cards.keys())) this.remove(id);
  }

  tick() {
    for (const card of this.cards.values()) card.tick();
  }
}

class JobCard {
  constructor(jobId, body, price, owner) {
    this.id = jobId;
    this.owner = owner;
    this.price = price;
    this.job = { id: jobId, status: 'QUEUED', progress: 0, createdAt: new Date().toISOString(), model: body.model };
    this.settled = false;
    this.status = el('span', { class: 'badge', text: 'QUEUED' });
    this.elapsed = el('span', { class: 'muted elapsed', text: '0 s' });
    this.bar = el('progress', { max: '100', value: '0', 'aria-label': `Progress of job ${jobId}` });
    this.percent = el('span', { class: 'percent', text: '0%' });
    this.outcome = el('div', { class: 'outcome' });
    // Screen readers hear each change of status, not every percent.
    this.announce = el('p', { class: 'visually-hidden', 'aria-live': 'polite' });
    this.cancel = el('button', { type: 'button', class: 'secondary', text: 'Cancel', onclick: () => this.doCancel() });
    this.dismiss = el('button', {
      type: 'button',
      class: 'link',
      text: 'Dismiss',
      'aria-label': `Dismiss job ${jobId}`,
      onclick: () => owner.remove(jobId),
    });
    this.node = el(
      'article',
      { class: 'job-card', 'data-job-id': jobId, 'data-status': 'QUEUED', 'aria-label': `Job ${jobId}` },
      el('div', { class: 'job-head' }, el('strong', { text: body.model }), this.status, this.elapsed),
      el('p', { class: 'prompt', text: body.prompt }),
      el('div', { class: 'bar-row' }, this.bar, this.percent),
      el('p', { class: 'muted small job-id', text: `Job ${jobId}` }),
      this.outcome,
      this.announce,
      el('div', { class: 'actions' }, this.cancel, this.dismiss),
    );
  }

  update(job) {
    this.job = { ...this.job, ...job };
    const { status } = this.job;
    const progress = status === 'COMPLETED' ? 100 : Math.max(0, Math.min(100, Number(this.job.progress) || 0));
    if (this.node.dataset.status !== status) this.announce.textContent = `${this.job.model} job ${status.toLowerCase()}`;
    this.node.dataset.status = status;
    this.status.textContent = status;
    this.status.className = `badge badge-${status.toLowerCase()}`;
    this.bar.value = progress;
    this.percent.textContent = `${progress}%`;
    this.cancel.hidden = status !== 'QUEUED';
    this.tick();
    this.owner.hooks.onUpdate(this.job);
    if (TERMINAL.has(status) && !this.settled) {
      this.settled = true;
      this.showOutcome();
      this.owner.hooks.onSettled(this.job);
    }
  }

  tick() {
    this.elapsed.textContent = elapsed(this.job);
  }

  showOutcome() {
    const job = this.job;
    this.outcome.replaceChildren();
    if (job.status === 'COMPLETED') {
      const url = job.result?.videoUrl;
      if (!url) {
        this.outcome.append(el('p', { class: 'error', text: 'Completed, but the job has no video URL.' }));
        return;
      }
      if (mediaAllowed(url)) {
        this.outcome.append(
          el('video', { controls: true, playsinline: true, preload: 'metadata', src: url, 'aria-label': `Video of job ${job.id}` }),
        );
      }
      this.outcome.append(
        el('p', { class: 'actions' }, el('a', { class: 'button primary', href: url, download: `${job.id}.mp4`, text: 'Download video' }),
          el('span', { class: 'muted', text: ` ${plural(job.creditCost ?? this.price ?? 0, 'credit')} charged` })),
      );
    } else if (job.status === 'FAILED') {
      const refunded = job.creditCost === 0;
      this.outcome.append(
        el('p', { class: 'error', text: `Failed: ${job.error || 'no reason given'}` }),
        el('p', {
          class: 'refund',
          text: refunded
            ? `Your ${this.price ? plural(this.price, 'credit') : 'credits'} were refunded (the job now costs 0).`
            : `Charged ${plural(job.creditCost ?? 0, 'credit')}.`,
        }),
      );
    } else if (job.status === 'CANCELLED') {
      this.outcome.append(el('p', { class: 'refund', text: 'Cancelled before it started; the credits were refunded.' }));
    }
  }

  async doCancel() {
    this.cancel.disabled = true;
    try {
      const job = await this.owner.hooks.getApi().post(`/v2/jobs/${encodeURIComponent(this.id)}/cancel`);
      this.update(job);
      this.watcher?.stop();
    } catch (e) {
      if (!(e instanceof HttpError)) throw e;
      this.outcome.replaceChildren(el('p', { class: 'error', text: e.status === 409 ? `Too late to cancel: ${e.message}` : e.message }));
    } finally {
      this.cancel.disabled = false;
    }
  }
}
