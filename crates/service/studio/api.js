// The Studio's client of the public API (/v2/...), and the job watchers: the job event
// stream when the server has one, polling with back-off when it does not.
//
// Event stream contract: POST /v2/jobs/events/token (X-API-Key) -> 201 {token, expiresAt};
// GET /v2/jobs/{id}/events?token=T and GET /v2/jobs/events?token=T are text/event-stream
// with `event: job` (data = the job JSON as GET /v2/jobs/{id}) and, for the list stream,
// `event: reset` ("reload your list"). A bad or expired token is a 401 on connect.
// A server without streams answers the token route 404/405: then we poll.

import { HttpError, TERMINAL, fetchJson, sleep } from './util.js';

export { HttpError };

/** Requests made on behalf of one API key. */
export class Api {
  constructor(key) {
    this.key = key;
    this.token = null;
    /** 'unknown' until the token route answered, then 'on' or 'off'. */
    this.streams = 'unknown';
  }

  async request(method, path, { json, form, auth = true } = {}) {
    const headers = {};
    if (auth) headers['X-API-Key'] = this.key;
    let body;
    if (json !== undefined) {
      headers['Content-Type'] = 'application/json';
      body = JSON.stringify(json);
    } else if (form) {
      body = form;
    }
    return fetchJson(path, { method, headers, body });
  }

  get(path) {
    return this.request('GET', path);
  }

  post(path, json) {
    return this.request('POST', path, { json });
  }

  /** A stream token, cached until a minute before it expires; null when streams are unavailable. */
  async streamToken() {
    if (this.streams === 'off') return null;
    if (this.token && Date.parse(this.token.expiresAt) - Date.now() > 60_000) return this.token.token;
    try {
      this.token = await this.request('POST', '/v2/jobs/events/token');
      this.streams = 'on';
      return this.token.token;
    } catch (e) {
      this.token = null;
      if (e.status === 404 || e.status === 405 || e.status === 501) this.streams = 'off';
      return null;
    }
  }

  /** Drops the cached token (the server refused it: expired or revoked). */
  forgetToken() {
    this.token = null;
  }
}

/** How many stream failures in a row make a watcher give up on streams and poll. */
const STREAM_FAILURES = 3;
/**
 * Job streams open at once. A browser opens at most 6 HTTP/1.1 connections to a server
 * and each stream holds one, so with the list stream this leaves room for requests and
 * videos; further jobs are polled (and the list stream, when live, updates them too).
 */
const JOB_STREAMS_MAX = 2;
let jobStreamsOpen = 0;
const POLL_FIRST_MS = 500;
const POLL_MAX_MS = 5000;

/**
 * Calls `onJob(job)` with every state of one job until it is terminal, from the job's
 * event stream, or by polling GET /v2/jobs/{id} when streams are unavailable. Returns
 * `{stop()}`; `mode` says how it currently watches ('stream' or 'poll').
 */
export function watchJob(api, id, onJob) {
  let stopped = false;
  let source = null;
  let failures = 0;
  let pollDelay = POLL_FIRST_MS;
  let last = '';
  const watcher = { mode: 'starting', stop };

  /** Closes the stream, if open, and gives its slot back. */
  function close() {
    if (!source) return;
    source.close();
    source = null;
    jobStreamsOpen -= 1;
  }

  function stop() {
    stopped = true;
    close();
  }

  function deliver(job) {
    if (stopped || !job) return;
    const fingerprint = `${job.status}:${job.progress}`;
    if (fingerprint !== last) {
      last = fingerprint;
      pollDelay = POLL_FIRST_MS;
    }
    onJob(job);
    if (TERMINAL.has(job.status)) stop();
  }

  async function connect() {
    const token = jobStreamsOpen < JOB_STREAMS_MAX ? await api.streamToken() : null;
    if (stopped) return;
    if (!token || jobStreamsOpen >= JOB_STREAMS_MAX) {
      poll();
      return;
    }
    watcher.mode = 'stream';
    const es = new EventSource(`/v2/jobs/${encodeURIComponent(id)}/events?token=${encodeURIComponent(token)}`);
    source = es;
    jobStreamsOpen += 1;
    es.addEventListener('job', (event) => {
      failures = 0;
      let job;
      try {
        job = JSON.parse(event.data);
      } catch {
        return;
      }
      deliver(job);
    });
    es.addEventListener('error', async () => {
      if (stopped || source !== es) return;
      failures += 1;
      // A closed source will not reconnect by itself: a 401 (the token expired), a 204
      // (the job ended while we were away) or no stream route at all. Read the job once:
      // it may be over already.
      const closed = es.readyState === EventSource.CLOSED;
      if (closed || failures >= STREAM_FAILURES) {
        close();
        try {
          deliver(await api.get(`/v2/jobs/${encodeURIComponent(id)}`));
        } catch {
          // the poll below reports nothing either; it keeps trying
        }
        if (stopped) return;
        if (failures >= STREAM_FAILURES) {
          poll();
        } else {
          api.forgetToken();
          await sleep(300 * failures);
          if (!stopped) connect();
        }
      }
    });
  }

  async function poll() {
    watcher.mode = 'poll';
    while (!stopped) {
      try {
        deliver(await api.get(`/v2/jobs/${encodeURIComponent(id)}`));
      } catch (e) {
        if (e.status === 401 || e.status === 403 || e.status === 404) {
          stop();
          return;
        }
      }
      if (stopped) return;
      await sleep(pollDelay);
      pollDelay = Math.min(POLL_MAX_MS, Math.round(pollDelay * 1.5));
    }
  }

  connect();
  return watcher;
}

/**
 * Follows every job of the key through GET /v2/jobs/events: `onJob(job)` per change,
 * `onReset()` when the server says to reload (`reset`), once it follows (`ready`) and
 * after a reconnect. `onMode(mode)` reports 'live' or 'off'.
 * Without streams it reports 'off' and does nothing else (the Studio still updates the
 * jobs it watches itself).
 */
export function watchAllJobs(api, { onJob, onReset, onMode }) {
  let stopped = false;
  let source = null;
  let failures = 0;

  async function connect() {
    const token = await api.streamToken();
    if (stopped) return;
    if (!token) {
      onMode('off');
      return;
    }
    const es = new EventSource(`/v2/jobs/events?token=${encodeURIComponent(token)}`);
    source = es;
    let openedAt = 0;
    es.addEventListener('open', () => {
      openedAt = Date.now();
      onMode('live');
    });
    es.addEventListener('job', (event) => {
      failures = 0;
      try {
        onJob(JSON.parse(event.data));
      } catch {
        // a malformed event is skipped; the next one carries the whole job again
      }
    });
    es.addEventListener('reset', () => {
      failures = 0;
      onReset();
    });
    // reelgate sends `ready` once the stream follows the key's jobs: the list loaded
    // before that may have missed a change, so it is loaded again (once per connection).
    es.addEventListener('ready', () => {
      failures = 0;
      onReset();
    });
    es.addEventListener('error', async () => {
      if (stopped || source !== es) return;
      // A stream that ran a good while and then ended (a token expiring, a server
      // restarting) is not a failing one: count from zero again.
      if (openedAt && Date.now() - openedAt > 60_000) failures = 0;
      openedAt = 0;
      failures += 1;
      if (es.readyState !== EventSource.CLOSED && failures < STREAM_FAILURES) return;
      es.close();
      source = null;
      if (failures >= STREAM_FAILURES * 2) {
        onMode('off');
        return;
      }
      onMode('reconnecting');
      api.forgetToken();
      await sleep(500 * failures);
      if (stopped) return;
      // Changes made while we were away: reload the list, then follow again.
      onReset();
      connect();
    });
  }

  connect();
  return {
    stop() {
      stopped = true;
      if (source) source.close();
      source = null;
    },
  };
}
