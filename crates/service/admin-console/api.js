// The console's client of the admin API (/admin/v1/...), its only data source, as
// described in the admin API's contract (GET /admin/v1/openapi.json). Every request
// carries `Authorization: Bearer <admin token>`; an answer of 401 means the token is no
// longer good, and the console signs out (see app.js, onUnauthorized).

import { sleep } from './util.js';

/** An answer other than 2xx, with the server's JSON body (`error`, `details`, ...). */
export class HttpError extends Error {
  constructor(status, body) {
    super((body && body.error) || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
  }
}

/** Requests made with one admin token. */
export class AdminApi {
  /** @param {string} token  @param {() => void} onUnauthorized called on any 401 */
  constructor(token, onUnauthorized = () => {}) {
    this.token = token;
    this.onUnauthorized = onUnauthorized;
  }

  async request(method, path, { json, headers: extra = {} } = {}) {
    const headers = { Authorization: `Bearer ${this.token}`, Accept: 'application/json', ...extra };
    let body;
    if (json !== undefined) {
      headers['Content-Type'] = 'application/json';
      body = JSON.stringify(json);
    }
    for (let attempt = 0; ; attempt += 1) {
      let response;
      try {
        response = await fetch(`/admin/v1${path}`, { method, headers, body, cache: 'no-store', credentials: 'omit' });
      } catch {
        throw new HttpError(0, { error: 'The server could not be reached. Check the connection and try again.' });
      }
      // Reads are safe to repeat after a 429; changes are left to the operator.
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
      if (!response.ok) {
        const error = new HttpError(response.status, data);
        if (response.status === 401) this.onUnauthorized(error);
        throw error;
      }
      return data;
    }
  }

  get(path, query) {
    return this.request('GET', withQuery(path, query));
  }

  post(path, json, headers) {
    return this.request('POST', path, { json, headers });
  }

  patch(path, json) {
    return this.request('PATCH', path, { json });
  }
}

/** `path?k=v&...`, leaving out empty values. */
export function withQuery(path, query = {}) {
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) {
    if (v !== undefined && v !== null && v !== '') params.set(k, String(v));
  }
  const qs = params.toString();
  return qs ? `${path}?${qs}` : path;
}

/** A path segment from an id the operator typed or the API gave. */
export const seg = (id) => encodeURIComponent(String(id));
