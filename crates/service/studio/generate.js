// The Generate form: built from GET /v2/models (models, parameter enums, price tables,
// which models take or need images), priced before submitting, and showing the server's
// validation errors at the fields they name.

import { HttpError } from './api.js';
import { $, $$, charCount, el, mediaAllowed, plural } from './util.js';

const PROMPT_MAX_FALLBACK = 2000;

/** The field that shows a validation error for each JSON path of `details`. */
const ERROR_TARGETS = {
  model: 'model',
  prompt: 'prompt',
  'hailuoParams.duration': 'hailuoParams.duration',
  'hailuoParams.resolution': 'hailuoParams.resolution',
  'hailuoParams.prompt_optimizer': 'hailuoParams.prompt_optimizer',
  'hailuoParams.image': 'hailuoParams.image',
  'hailuoParams.end_image': 'hailuoParams.end_image',
};

export class GenerateForm {
  /**
   * @param {object} hooks getApi() -> Api; getBalance() -> number|null; onChange(body);
   *   onSubmitted(jobId, body, price).
   */
  constructor(hooks) {
    this.hooks = hooks;
    this.models = [];
    this.form = $('#generate-form');
    this.model = $('#model');
    this.prompt = $('#prompt');
    this.duration = $('#duration');
    this.resolution = $('#resolution');
    this.optimizer = $('#prompt-optimizer');
    this.frames = {
      image: new FrameInput($('#first-frame'), this),
      end_image: new FrameInput($('#last-frame'), this),
    };
    this.model.addEventListener('change', () => this.modelChanged());
    this.resolution.addEventListener('change', () => this.variantChanged(true));
    this.duration.addEventListener('change', () => this.variantChanged(false));
    this.prompt.addEventListener('input', () => {
      this.clearError('prompt');
      this.updateCounter();
      this.changed();
    });
    this.optimizer.addEventListener('change', () => this.changed());
    this.form.addEventListener('submit', (event) => {
      event.preventDefault();
      this.submit();
    });
  }

  /** Builds the model list from the catalog (`GET /v2/models`). */
  setCatalog(models) {
    this.models = models.filter((m) => m.modality === 'video');
    this.model.replaceChildren(
      ...this.models.map((m) => el('option', { value: m.id, text: m.label ? `${m.label} (${m.id})` : m.id })),
    );
    this.modelChanged();
  }

  spec() {
    return this.models.find((m) => m.id === this.model.value) || null;
  }

  /** The `hailuoParams` schema of the chosen model. */
  paramsSchema() {
    const spec = this.spec();
    const rg = spec?.reelgate || {};
    const key = rg.paramsKey || 'hailuoParams';
    return { key, schema: rg.requestSchema?.properties?.[key] || {} };
  }

  promptMax() {
    return this.spec()?.reelgate?.requestSchema?.properties?.prompt?.maxLength || PROMPT_MAX_FALLBACK;
  }

  prices() {
    return this.spec()?.reelgate?.prices || [];
  }

  /** Whether the chosen model takes a last frame: the catalog says so, or its schema has `end_image`. */
  takesEndImage() {
    const spec = this.spec();
    if (spec?.reelgate && 'endImageSupported' in spec.reelgate) return !!spec.reelgate.endImageSupported;
    return 'end_image' in (this.paramsSchema().schema.properties || {});
  }

  needsImage() {
    const spec = this.spec();
    if (spec?.reelgate && 'imageRequired' in spec.reelgate) return !!spec.reelgate.imageRequired;
    return (this.paramsSchema().schema.required || []).includes('image');
  }

  modelChanged() {
    const spec = this.spec();
    const props = this.paramsSchema().schema.properties || {};
    const keep = (select, values, fallback) => {
      const current = select.value;
      select.replaceChildren(...values.map((v) => el('option', { value: String(v), text: select === this.duration ? `${v} s` : v })));
      const wanted = values.map(String).includes(current) ? current : String(fallback ?? values[0]);
      select.value = wanted;
    };
    keep(this.duration, props.duration?.enum || [6, 10], props.duration?.default);
    keep(this.resolution, props.resolution?.enum || ['768p', '1080p'], props.resolution?.default);
    $('#model-help').textContent = spec?.description || '';

    const endModels = this.models.filter((m) => m.reelgate?.endImageSupported).map((m) => m.id);
    const lastNote = this.takesEndImage()
      ? 'Optional; needs a first frame.'
      : `Only ${endModels.length ? endModels.join(', ') : 'some models'} ${endModels.length === 1 ? 'takes' : 'take'} a last frame.`;
    $('#last-frame-note').textContent = lastNote;
    this.frames.end_image.setEnabled(this.takesEndImage());
    $('#first-frame-note').textContent = this.needsImage()
      ? `Required: ${spec?.id || 'this model'} is image-to-video only.`
      : 'Optional: makes it image-to-video.';
    this.frames.image.setRequired(this.needsImage());
    this.clearError('model');
    this.variantChanged(true);
  }

  /** Keeps duration and resolution on a priced variant: 1080p exists only at 6 s. */
  variantChanged(resolutionMoved) {
    const prices = this.prices();
    const offered = (r, d) => prices.length === 0 || prices.some((p) => p.resolution === r && Number(p.duration) === Number(d));
    const notes = [];
    if (resolutionMoved && !offered(this.resolution.value, this.duration.value)) {
      const ok = Array.from(this.duration.options).find((o) => offered(this.resolution.value, o.value));
      if (ok) {
        notes.push(`Duration set to ${ok.textContent}.`);
        this.duration.value = ok.value;
      }
    }
    for (const option of this.duration.options) {
      option.disabled = !offered(this.resolution.value, option.value);
    }
    // Say what is limited, from the price table: e.g. "1080p is only available at 6 s."
    for (const r of Array.from(this.resolution.options).map((o) => o.value)) {
      const durations = Array.from(this.duration.options).map((o) => o.value).filter((d) => offered(r, d));
      if (durations.length < this.duration.options.length && durations.length > 0) {
        notes.unshift(`${r} is only available at ${durations.map((d) => `${d} s`).join(' or ')}.`);
      }
    }
    $('#variant-help').textContent = notes.join(' ');
    this.clearError('hailuoParams.duration');
    this.clearError('hailuoParams.resolution');
    this.updatePrice();
    this.changed();
  }

  updateCounter() {
    const n = charCount(this.prompt.value);
    const max = this.promptMax();
    const counter = $('#prompt-count');
    counter.textContent = `${n} / ${max}`;
    counter.classList.toggle('over', n > max);
  }

  /** The chosen variant's price, from the catalog. */
  price() {
    const p = this.prices().find(
      (x) => x.resolution === this.resolution.value && Number(x.duration) === Number(this.duration.value),
    );
    return p ? Number(p.credits) : null;
  }

  updatePrice() {
    const box = $('#price');
    const price = this.price();
    const balance = this.hooks.getBalance();
    box.replaceChildren();
    box.classList.remove('short');
    if (price === null) {
      box.append(el('span', { text: 'This variant has no price in the catalog.' }));
      return;
    }
    box.append(el('span', {}, 'Price ', el('strong', { id: 'price-credits', text: plural(price, 'credit') })));
    if (balance !== null && balance !== undefined) {
      const after = balance - price;
      if (after >= 0) {
        box.append(el('span', {}, ' · balance after ', el('strong', { id: 'balance-after', text: plural(after, 'credit') })));
      } else {
        box.classList.add('short');
        box.append(el('span', { text: ` · you have ${plural(balance, 'credit')}: ${plural(-after, 'more credit')} needed` }));
      }
    }
    this.updateCounter();
  }

  /** The request body for the current form (what is sent and what the Code panel shows). */
  body() {
    const { key } = this.paramsSchema();
    const params = {
      duration: Number(this.duration.value),
      resolution: this.resolution.value,
      prompt_optimizer: this.optimizer.checked,
    };
    const image = this.frames.image.value();
    if (image) params.image = image;
    const end = this.frames.end_image.value();
    if (end && this.takesEndImage()) params.end_image = end;
    return { model: this.model.value, prompt: this.prompt.value, [key]: params };
  }

  changed() {
    this.hooks.onChange(this.body());
  }

  /** Fills the form from a job's `input` ("Use these settings again"). */
  fill(input) {
    if (!input) return;
    if (input.model && this.models.some((m) => m.id === input.model)) this.model.value = input.model;
    this.modelChanged();
    this.prompt.value = input.prompt || '';
    const params = input[this.paramsSchema().key] || input.hailuoParams || {};
    if (params.resolution) this.resolution.value = params.resolution;
    this.variantChanged(true);
    if (params.duration) this.duration.value = String(params.duration);
    this.optimizer.checked = params.prompt_optimizer !== false;
    this.frames.image.setUrl(params.image || '');
    this.frames.end_image.setUrl(params.end_image || '');
    this.clearErrors();
    this.variantChanged(false);
    this.updateCounter();
    this.changed();
  }

  /** Empties what a user typed or chose (on sign-out, so the next user starts clean). */
  reset() {
    this.prompt.value = '';
    this.frames.image.setUrl('');
    this.frames.end_image.setUrl('');
    this.clearErrors();
    this.updateCounter();
    this.changed();
  }

  clearError(path) {
    for (const p of $$(`[data-error-for="${path}"]`, this.form)) {
      p.textContent = '';
      const control = this.controlFor(path);
      if (control) control.removeAttribute('aria-invalid');
    }
  }

  clearErrors() {
    for (const path of Object.keys(ERROR_TARGETS)) this.clearError(path);
    $('#form-error').textContent = '';
  }

  controlFor(path) {
    return {
      model: this.model,
      prompt: this.prompt,
      'hailuoParams.duration': this.duration,
      'hailuoParams.resolution': this.resolution,
      'hailuoParams.prompt_optimizer': this.optimizer,
      'hailuoParams.image': this.frames.image.url,
      'hailuoParams.end_image': this.frames.end_image.url,
    }[path];
  }

  /** Shows `details` (JSON path -> messages) at their fields; the rest in the form's error line. */
  showErrors(message, details) {
    const general = [];
    let first = null;
    for (const [path, messages] of Object.entries(details || {})) {
      const target = ERROR_TARGETS[path] || ERROR_TARGETS[path.replace(/^[a-zA-Z]+Params\./, 'hailuoParams.')];
      const text = (Array.isArray(messages) ? messages : [messages]).join(' ');
      const slot = target && $(`[data-error-for="${target}"]`, this.form);
      if (slot) {
        slot.textContent = text;
        const control = this.controlFor(target);
        if (control) {
          control.setAttribute('aria-invalid', 'true');
          first = first || control;
        }
      } else {
        general.push(`${path}: ${text}`);
      }
    }
    $('#form-error').textContent = general.length ? `${message} ${general.join('; ')}` : first ? `${message}: see the highlighted fields.` : message;
    if (first) first.focus();
  }

  /** Checks what the page can know before asking the server. */
  precheck() {
    const details = {};
    if (!this.prompt.value.trim()) details.prompt = ['Write a prompt.'];
    const n = charCount(this.prompt.value);
    if (n > this.promptMax()) details.prompt = [`The prompt is ${n} characters; the limit is ${this.promptMax()}.`];
    if (this.needsImage() && !this.frames.image.value()) details['hailuoParams.image'] = [`${this.model.value} needs a first frame.`];
    if (this.frames.end_image.value() && this.takesEndImage() && !this.frames.image.value()) {
      details['hailuoParams.end_image'] = ['A last frame needs a first frame too.'];
    }
    for (const frame of Object.values(this.frames)) {
      if (frame.busy) details[`hailuoParams.${frame.name}`] = ['Still uploading; wait a moment.'];
    }
    return details;
  }

  async submit() {
    this.clearErrors();
    const pre = this.precheck();
    if (Object.keys(pre).length) {
      this.showErrors('Check the form', pre);
      return;
    }
    const button = $('#submit');
    button.disabled = true;
    button.textContent = 'Submitting…';
    const body = this.body();
    const price = this.price();
    try {
      const accepted = await this.hooks.getApi().post('/v2/videos/generate', body);
      this.hooks.onSubmitted(accepted.jobId, body, price);
    } catch (e) {
      if (!(e instanceof HttpError)) throw e;
      if (e.status === 400 && e.body.details) {
        this.showErrors(e.body.error || 'The request was refused', e.body.details);
      } else if (e.status === 402) {
        const need = e.body.creditsRequired;
        const have = e.body.creditsAvailable;
        $('#form-error').textContent =
          need !== undefined && have !== undefined
            ? `Not enough credits: this video costs ${plural(need, 'credit')} and your balance is ${plural(have, 'credit')} (${plural(need - have, 'more credit')} needed).`
            : 'Not enough credits for this video.';
        this.hooks.onBalanceStale();
      } else if (e.status === 429) {
        $('#form-error').textContent = 'Too many requests right now; wait a second and try again.';
      } else {
        $('#form-error').textContent = e.message;
      }
    } finally {
      button.disabled = false;
      button.textContent = 'Generate video';
    }
  }
}

/** One frame input: a drop zone (also a button opening the file picker), a file input and a URL field. */
class FrameInput {
  constructor(fieldset, form) {
    this.fieldset = fieldset;
    this.form = form;
    this.name = fieldset.dataset.frame;
    this.path = `hailuoParams.${this.name}`;
    this.zone = $('.dropzone', fieldset);
    this.file = $('input.file', fieldset);
    this.url = $('input.url', fieldset);
    this.preview = $('img.preview', fieldset);
    this.status = $('.frame-status', fieldset);
    this.clear = $('button.clear', fieldset);
    this.busy = false;
    this.objectUrl = null;
    this.generation = 0;

    this.preview.addEventListener('error', () => {
      if (!this.preview.getAttribute('src')) return;
      this.preview.hidden = true;
      this.zone.classList.remove('has-preview');
      this.status.textContent = 'This image could not be loaded (uploads expire after a while).';
    });
    this.zone.addEventListener('click', () => this.pick());
    this.zone.addEventListener('keydown', (event) => {
      if (event.key === 'Enter' || event.key === ' ') {
        event.preventDefault();
        this.pick();
      }
    });
    for (const type of ['dragenter', 'dragover']) {
      this.zone.addEventListener(type, (event) => {
        if (this.fieldset.disabled) return;
        event.preventDefault();
        this.zone.classList.add('over');
      });
    }
    this.zone.addEventListener('dragleave', () => this.zone.classList.remove('over'));
    this.zone.addEventListener('drop', (event) => {
      event.preventDefault();
      this.zone.classList.remove('over');
      if (this.fieldset.disabled) return;
      const file = event.dataTransfer?.files?.[0];
      if (file) this.upload(file);
    });
    this.file.addEventListener('change', () => {
      const file = this.file.files?.[0];
      if (file) this.upload(file);
    });
    this.url.addEventListener('input', () => {
      this.generation += 1;
      this.busy = false;
      this.status.textContent = '';
      this.form.clearError(this.path);
      this.showPreview(this.url.value.trim(), false);
      this.form.changed();
    });
    this.clear.addEventListener('click', () => {
      this.setUrl('');
      this.zone.focus();
    });
  }

  pick() {
    if (!this.fieldset.disabled) this.file.click();
  }

  setEnabled(enabled) {
    this.fieldset.disabled = !enabled;
    this.fieldset.classList.toggle('disabled', !enabled);
    this.zone.tabIndex = enabled ? 0 : -1;
    this.zone.setAttribute('aria-disabled', String(!enabled));
  }

  setRequired(required) {
    this.url.required = required;
    this.fieldset.classList.toggle('required', required);
  }

  value() {
    return this.fieldset.disabled ? '' : this.url.value.trim();
  }

  setUrl(url) {
    this.generation += 1;
    this.busy = false;
    this.url.value = url;
    this.file.value = '';
    this.status.textContent = '';
    this.form.clearError(this.path);
    this.showPreview(url, false);
    this.form.changed();
  }

  showPreview(src, local) {
    if (this.objectUrl && this.objectUrl !== src) {
      URL.revokeObjectURL(this.objectUrl);
      this.objectUrl = null;
    }
    if (local) this.objectUrl = src;
    const show = !!src && mediaAllowed(src);
    this.preview.hidden = !show;
    if (show) this.preview.src = src;
    else this.preview.removeAttribute('src');
    this.zone.classList.toggle('has-preview', show);
    this.clear.hidden = !src;
    if (src && !show && /^https?:\/\/./i.test(src)) {
      this.status.textContent = 'No preview for images on other sites (this page loads media from this server only).';
    }
  }

  /** Shows the file at once, uploads it (POST /v2/uploads, field `file`) and uses the upload's URL. */
  async upload(file) {
    const generation = ++this.generation;
    this.form.clearError(this.path);
    this.showPreview(URL.createObjectURL(file), true);
    this.busy = true;
    this.url.value = '';
    this.status.textContent = `Uploading ${file.name}…`;
    const data = new FormData();
    data.append('file', file, file.name);
    try {
      const upload = await this.form.hooks.getApi().request('POST', '/v2/uploads', { form: data });
      if (generation !== this.generation) return;
      this.url.value = upload.url;
      this.status.textContent = `Uploaded ${file.name} (${Math.round(upload.byteSize / 1024)} KiB).`;
    } catch (e) {
      if (generation !== this.generation) return;
      const details = e.body?.details?.file;
      const slot = $(`[data-error-for="${this.path}"]`, this.form.form);
      slot.textContent = details ? details.join(' ') : e.message;
      this.status.textContent = 'Upload failed.';
      this.showPreview('', false);
      this.file.value = '';
    } finally {
      if (generation === this.generation) this.busy = false;
      this.form.changed();
    }
  }
}
