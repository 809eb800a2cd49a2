// Bar charts drawn as inline SVG by script: no chart library, nothing fetched. Bars are
// stacked per point (e.g. completed under failed for each minute). The SVG is drawn for
// its container's width in pixels, so text stays legible at 375 px, and drawn again when
// that width changes. For assistive technology the SVG is an image with a title and a
// summary, each bar has a <title> with its numbers, and a table of every point follows
// in a <details>.

import { el } from './util.js';

const SVG = 'http://www.w3.org/2000/svg';
/** Drawing height: 200 px, or 160 on a phone-wide plot. */
const heightFor = (width) => (width < 500 ? 160 : 200);
const MARGIN = { top: 12, right: 10, bottom: 26, left: 40 };

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v !== undefined && v !== null) node.setAttribute(k, String(v));
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

/** The smallest of 1, 2, 5 × 10^k at or above `n` (at least 1), for a round axis top. */
export function niceMax(n) {
  if (!(n > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(n));
  for (const m of [1, 2, 5, 10]) if (m * p >= n) return m * p;
  return 10 * p;
}

/**
 * A stacked bar chart that fills `container` (emptied first).
 * - id: the <svg>'s id; title, summary: its accessible name and description
 * - points: [{ label: string (tooltip, table), tick: string (x-axis label), values: { key: n } }]
 * - series: [{ key, label, className }] bottom to top
 * - ticks: indexes of points to label on the x-axis (default first, middle, last)
 * - empty: text drawn when every value is 0
 */
export function barChart(container, { id, title, summary, points, series, ticks, empty = 'Nothing to show' }) {
  const figure = el('figure', { class: 'chart' });
  const plot = el('div', { class: 'chart-plot' });
  const legend = el(
    'ul',
    { class: 'legend', 'aria-hidden': 'true' },
    series.map((s) => el('li', {}, el('span', { class: `swatch ${s.className}` }), s.label)),
  );
  const numbers = el(
    'details',
    { class: 'chart-table' },
    el('summary', { text: 'Show the numbers' }),
    el(
      'div',
      { class: 'table-wrap' },
      el(
        'table',
        {},
        el('caption', { class: 'visually-hidden', text: title }),
        el('thead', {}, el('tr', {}, el('th', { scope: 'col', text: 'When' }), series.map((s) => el('th', { scope: 'col', text: s.label })))),
        el(
          'tbody',
          {},
          points.map((p) => el('tr', {}, el('th', { scope: 'row', text: p.label }), series.map((s) => el('td', { text: p.values[s.key] ?? 0 })))),
        ),
      ),
    ),
  );
  figure.append(plot, legend, numbers);
  container.replaceChildren(figure);

  let drawnWidth = 0;
  const draw = () => {
    const width = Math.max(240, Math.floor(plot.clientWidth || container.clientWidth || 600));
    if (width === drawnWidth) return;
    drawnWidth = width;
    plot.replaceChildren(drawSvg({ id, title, summary, points, series, ticks, empty, width }));
  };
  draw();
  // Drawn again in the next frame after a width change: never inside the observer's
  // callback, which would make the browser report a ResizeObserver loop.
  let frame = 0;
  const observer = new ResizeObserver(() => {
    cancelAnimationFrame(frame);
    frame = requestAnimationFrame(draw);
  });
  observer.observe(plot);
  return { stop: () => observer.disconnect() };
}

function drawSvg({ id, title, summary, points, series, ticks, empty, width }) {
  const HEIGHT = heightFor(width);
  const plotW = width - MARGIN.left - MARGIN.right;
  const plotH = HEIGHT - MARGIN.top - MARGIN.bottom;
  const totals = points.map((p) => series.reduce((sum, s) => sum + (Number(p.values[s.key]) || 0), 0));
  const top = niceMax(Math.max(0, ...totals));
  const y = (v) => MARGIN.top + plotH - (v / top) * plotH;
  const titleId = `${id}-title`;
  const descId = `${id}-desc`;
  const root = svg(
    'svg',
    {
      id,
      class: 'chart-svg',
      role: 'img',
      'aria-labelledby': `${titleId} ${descId}`,
      viewBox: `0 0 ${width} ${HEIGHT}`,
      width,
      height: HEIGHT,
      'data-points': points.length,
      'data-max': top,
    },
    svg('title', { id: titleId }, title),
    svg('desc', { id: descId }, summary),
  );

  // Horizontal grid lines and their values: 0, half, top.
  const grid = svg('g', { class: 'grid', 'aria-hidden': 'true' });
  // Counts: a middle line only where it is a whole number.
  for (const v of top % 2 === 0 ? [0, top / 2, top] : [0, top]) {
    const yy = Math.round(y(v)) + 0.5;
    grid.append(
      svg('line', { x1: MARGIN.left, x2: width - MARGIN.right, y1: yy, y2: yy }),
      svg('text', { x: MARGIN.left - 6, y: yy + 4, 'text-anchor': 'end' }, Number.isInteger(v) ? v : v.toFixed(1)),
    );
  }
  root.append(grid);

  const band = plotW / Math.max(points.length, 1);
  const barW = Math.max(1, Math.min(band * 0.78, 28));
  const bars = svg('g', { class: 'bars' });
  points.forEach((p, i) => {
    const x = MARGIN.left + i * band + (band - barW) / 2;
    let base = 0;
    const words = series.map((s) => `${p.values[s.key] ?? 0} ${s.label.toLowerCase()}`).join(', ');
    for (const s of series) {
      const v = Number(p.values[s.key]) || 0;
      if (v > 0) {
        const y0 = y(base);
        const y1 = y(base + v);
        bars.append(
          svg(
            'rect',
            { class: `bar ${s.className}`, x: x.toFixed(2), y: y1.toFixed(2), width: barW.toFixed(2), height: Math.max(1, y0 - y1).toFixed(2), 'data-value': v },
            svg('title', {}, `${p.label}: ${words}`),
          ),
        );
      }
      base += v;
    }
  });
  root.append(bars);

  // The x-axis and its labels.
  const axis = svg('g', { class: 'axis', 'aria-hidden': 'true' });
  const baseY = MARGIN.top + plotH + 0.5;
  axis.append(svg('line', { x1: MARGIN.left, x2: width - MARGIN.right, y1: baseY, y2: baseY }));
  const last = points.length - 1;
  const labelled = ticks ?? (last > 1 ? [0, Math.round(last / 2), last] : [0, last]);
  for (const i of new Set(labelled)) {
    if (!points[i]) continue;
    const text = String(points[i].tick ?? points[i].label);
    // Centred under its bar, but kept inside the drawing (about 6.5 px per character at 11 px).
    const half = (text.length * 6.5) / 2;
    const cx = MARGIN.left + i * band + band / 2;
    const tx = Math.min(Math.max(cx, MARGIN.left + half), width - MARGIN.right - half);
    axis.append(svg('text', { x: tx.toFixed(1), y: HEIGHT - 8, 'text-anchor': 'middle' }, text));
  }
  root.append(axis);

  if (totals.every((t) => t === 0)) {
    root.append(svg('text', { class: 'empty', x: MARGIN.left + plotW / 2, y: MARGIN.top + plotH / 2, 'text-anchor': 'middle' }, empty));
  }
  return root;
}
