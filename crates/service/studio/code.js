// The Code panel: the current form as a request in curl, Python (requests), JavaScript
// (fetch) and Go (net/http), against this server's real base URL, with the key masked.

import { $, $$, copyText } from './util.js';

const LANGS = { curl: 'curl', python: 'Python', javascript: 'JavaScript', go: 'Go' };

/** `afk_1a2b3c…` style: enough to tell keys apart, not enough to use one. */
export function maskKey(key) {
  if (!key) return 'afk_…';
  return `${key.slice(0, Math.min(8, Math.max(4, key.length - 4)))}${'•'.repeat(8)}`;
}

function shellQuote(s) {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/** A Go raw string literal; backticks cannot appear inside one, so they are spliced in. */
function goRaw(s) {
  return `\`${s.replace(/`/g, '` + "`" + `')}\``;
}

function pythonLiteral(value, indent = '') {
  const next = `${indent}    `;
  if (value === null) return 'None';
  if (value === true) return 'True';
  if (value === false) return 'False';
  if (Array.isArray(value)) return `[${value.map((v) => pythonLiteral(v, next)).join(', ')}]`;
  if (typeof value === 'object') {
    const entries = Object.entries(value);
    if (!entries.length) return '{}';
    return `{\n${entries.map(([k, v]) => `${next}${JSON.stringify(k)}: ${pythonLiteral(v, next)},`).join('\n')}\n${indent}}`;
  }
  return JSON.stringify(value);
}

export function snippets(base, key, body) {
  const url = `${base}/v2/videos/generate`;
  const masked = maskKey(key);
  const json = JSON.stringify(body, null, 2);
  return {
    curl: [
      `curl -s ${shellQuote(url)} \\`,
      `  -H ${shellQuote(`X-API-Key: ${masked}`)} \\`,
      `  -H 'Content-Type: application/json' \\`,
      `  -d ${shellQuote(json)}`,
    ].join('\n'),
    python: [
      'import requests',
      '',
      'response = requests.post(',
      `    ${JSON.stringify(url)},`,
      `    headers={"X-API-Key": ${JSON.stringify(masked)}},`,
      `    json=${pythonLiteral(body, '    ')},`,
      '    timeout=30,',
      ')',
      'response.raise_for_status()',
      'print(response.json())  # {"jobId": "...", "status": "QUEUED"}',
    ].join('\n'),
    javascript: [
      `const response = await fetch(${JSON.stringify(url)}, {`,
      "  method: 'POST',",
      `  headers: { 'X-API-Key': ${JSON.stringify(masked)}, 'Content-Type': 'application/json' },`,
      `  body: JSON.stringify(${json.replace(/\n/g, '\n  ')}),`,
      '});',
      'if (!response.ok) throw new Error(`HTTP ${response.status}: ${await response.text()}`);',
      'console.log(await response.json()); // { jobId: "...", status: "QUEUED" }',
    ].join('\n'),
    go: [
      'package main',
      '',
      'import (',
      '\t"fmt"',
      '\t"io"',
      '\t"net/http"',
      '\t"strings"',
      ')',
      '',
      'func main() {',
      `\tbody := ${goRaw(json).replace(/\n/g, '\n\t')}`,
      `\treq, err := http.NewRequest("POST", ${JSON.stringify(url)}, strings.NewReader(body))`,
      '\tif err != nil {',
      '\t\tpanic(err)',
      '\t}',
      `\treq.Header.Set("X-API-Key", ${JSON.stringify(masked)})`,
      '\treq.Header.Set("Content-Type", "application/json")',
      '\tresp, err := http.DefaultClient.Do(req)',
      '\tif err != nil {',
      '\t\tpanic(err)',
      '\t}',
      '\tdefer resp.Body.Close()',
      '\tout, _ := io.ReadAll(resp.Body)',
      '\tfmt.Println(resp.Status, string(out)) // 202 {"jobId":"...","status":"QUEUED"}',
      '}',
    ].join('\n'),
  };
}

export class CodePanel {
  constructor(getKey) {
    this.getKey = getKey;
    this.lang = 'curl';
    this.body = null;
    this.tabs = $$('#code [role="tab"]');
    for (const tab of this.tabs) {
      tab.addEventListener('click', () => this.select(tab.dataset.lang, false));
      tab.addEventListener('keydown', (event) => {
        const i = this.tabs.indexOf(tab);
        let j = null;
        if (event.key === 'ArrowRight') j = (i + 1) % this.tabs.length;
        if (event.key === 'ArrowLeft') j = (i - 1 + this.tabs.length) % this.tabs.length;
        if (event.key === 'Home') j = 0;
        if (event.key === 'End') j = this.tabs.length - 1;
        if (j !== null) {
          event.preventDefault();
          this.select(this.tabs[j].dataset.lang, true);
        }
      });
    }
    $('#copy-code').addEventListener('click', async () => {
      const ok = await copyText($('#code-text').textContent);
      $('#copy-status').textContent = ok ? 'Copied.' : 'Could not copy: select the text and copy it.';
      setTimeout(() => {
        $('#copy-status').textContent = '';
      }, 3000);
    });
    $('#code-base').textContent = location.origin;
  }

  select(lang, focus) {
    this.lang = lang;
    for (const tab of this.tabs) {
      const on = tab.dataset.lang === lang;
      tab.setAttribute('aria-selected', String(on));
      tab.tabIndex = on ? 0 : -1;
      if (on && focus) tab.focus();
      if (on) $('#code-panel').setAttribute('aria-labelledby', tab.id);
    }
    $('#copy-code').textContent = `Copy ${LANGS[lang]}`;
    this.render();
  }

  update(body) {
    this.body = body;
    this.render();
  }

  render() {
    if (!this.body) return;
    $('#code-text').textContent = snippets(location.origin, this.getKey(), this.body)[this.lang];
  }
}
