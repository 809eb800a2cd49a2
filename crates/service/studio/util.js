// Small DOM, formatting and HTTP helpers shared by the Studio's modules and the
// operator console's (which is served this same file). Text always goes in
// through textContent (never innerHTML), so API data cannot become markup.

/** Creates an element: el('p', {class: 'x', text: 'hi'}, child, ...). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === 'text') node.textContent = value;
    else if (name === 'class') node.className = value;
    else if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
    else if (value === true) node.setAttribute(name, '');
    else node.setAttribute(name, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export const $ = (selector, root = document) => root.querySelector(selector);
export const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));

/** An answer other than 2xx, with the server's JSON body (`error`, `details`, ...). */
export class HttpError extends Error {
  constructor(status, body) {
    super((body && body.error) || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
  }
}

/**
 * `fetch` for a JSON API, as both pages use it: never cached; a GET answered 429 is
 * tried again up to three times after its Retry-After (at most 10 s), since reads are
 * safe to repeat, while changes are left to the person. Resolves to the parsed body (null
 * when empty; a body that is not JSON becomes `{error: <its start>}`); throws
 * HttpError(0) when the server cannot be reached and HttpError(status, body) for any
 * other answer than 2xx.
 */
export async function fetchJson(url, { method = 'GET', headers = {}, body, credentials } = {}) {
  for (let attempt = 0; ; attempt += 1) {
    let response;
    try {
      response = await fetch(url, { method, headers, body, credentials, cache: 'no-store' });
    } catch {
      throw new HttpError(0, { error: 'The server could not be reached. Check the connection and try again.' });
    }
    if (response.status === 429 && method === 'GET' && attempt < 3) {
      const wait = Number(response.headers.get('Retry-After')) || 1;
      await sleep(Math.min(wait, 10) * 1000);
      continue;
    }
    const text = await response.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        data = { error: text.slice(0, 300) };
      }
    }
    if (!response.ok) throw new HttpError(response.status, data);
    return data;
  }
}

export const TERMINAL = new Set(['COMPLETED', 'FAILED', 'CANCELLED']);

/** "42 s", "3 min 05 s", "1 h 02 min". */
export function formatDuration(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${String(s % 60).padStart(2, '0')} s`;
  return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, '0')} min`;
}

/** How long a job has run: until it finished, or until now. */
export function elapsed(job, now = Date.now()) {
  const start = Date.parse(job.createdAt);
  if (Number.isNaN(start)) return '';
  const end = job.completedAt ? Date.parse(job.completedAt) : now;
  return formatDuration(end - start);
}

export function formatTime(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString();
}

export function plural(n, one, many = `${one}s`) {
  return `${n} ${n === 1 ? one : many}`;
}

/** Counts characters as the server does (Unicode scalar values, not UTF-16 units). */
export function charCount(s) {
  let n = 0;
  for (const _ of s) n += 1;
  return n;
}

/** The origins besides this one that media may load from (the page's CSP allows them). */
const MEDIA_ORIGINS = new Set(
  (document.querySelector('meta[name="reelgate-media-origins"]')?.content || '').split(/\s+/).filter(Boolean),
);

/** Whether the page's Content-Security-Policy lets an <img>/<video> load `url`. */
export function mediaAllowed(url) {
  if (!url) return false;
  if (/^(data|blob):/i.test(url)) return true;
  try {
    const origin = new URL(url, location.href).origin;
    return origin === location.origin || MEDIA_ORIGINS.has(origin);
  } catch {
    return false;
  }
}

/** Copies text; falls back to a selection where the Clipboard API is unavailable (plain http). */
export async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch {
      // fall through to the selection copy
    }
  }
  const area = el('textarea', { class: 'visually-hidden', readonly: true, 'aria-hidden': 'true' });
  area.value = text;
  document.body.append(area);
  area.select();
  let ok = false;
  try {
    ok = document.execCommand('copy');
  } catch {
    ok = false;
  }
  area.remove();
  return ok;
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
