// The console's client of the admin API (/admin/v1/...), its only data source, as
// described in the admin API's contract (GET /admin/v1/openapi.json). Every request
// carries `Authorization: Bearer <admin token>`; an answer of 401 means the token is no
// longer good, and the console signs out (see app.js, onUnauthorized).

import { fetchJson } from './util.js';

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
    try {
      return await fetchJson(`/admin/v1${path}`, { method, headers, body, credentials: 'omit' });
    } catch (error) {
      if (error.status === 401) this.onUnauthorized(error);
      throw error;
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
