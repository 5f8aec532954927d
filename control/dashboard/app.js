// The ferry dashboard: plain DOM and SVG, no libraries. Everything it shows comes from
// the control plane's API with the session cookie; "your latency" is measured by this
// page against each relay's /.ferry/ping.
'use strict';

const PROBES = 5; // plus one first request for connection setup, left out
const REFRESH_MS = 5000;
const PALETTE = ['#58a6ff', '#3fb950', '#d29922', '#f778ba', '#a371f7', '#ff7b72', '#79c0ff', '#56d364', '#e3b341'];
const HOP_COLORS = { client: '#58a6ff', mesh: '#d29922', agent: '#3fb950' };
const SVG_NS = 'http://www.w3.org/2000/svg';

const state = { me: null, admin: false, regions: [], workspace: '' };

function $(sel, root) { return (root || document).querySelector(sel); }

// Builds an element; children are nodes or strings (as text, never as HTML).
function h(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v; else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) e.append(c);
  return e;
}

function s(tag, attrs, ...children) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== undefined && v !== null) e.setAttribute(k, String(v));
  for (const c of children.flat()) if (c !== null && c !== undefined) e.append(c);
  return e;
}

async function api(path, opts) {
  opts = opts || {};
  const headers = Object.assign({}, opts.headers || {});
  let body;
  if (opts.json !== undefined) { headers['content-type'] = 'application/json'; body = JSON.stringify(opts.json); }
  const r = await fetch(path, { method: opts.method || 'GET', headers, body, credentials: 'same-origin', cache: 'no-store' });
  if (r.status === 204) return null;
  const data = await r.json().catch(() => null);
  if (!r.ok) {
    const err = new Error((data && data.error && data.error.message) || r.statusText);
    err.status = r.status;
    err.code = data && data.error && data.error.code;
    throw err;
  }
  return data;
}

function fmtMs(us) {
  const ms = us / 1000;
  return (ms < 10 ? ms.toFixed(2) : ms < 100 ? ms.toFixed(1) : ms.toFixed(0)) + ' ms';
}

function fmtBytes(n) {
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return (n < 10 && n !== Math.round(n) ? n.toFixed(1) : Math.round(n)) + ' ' + units[i];
}

function fmtCount(v) {
  return Number.isInteger(v) ? String(v) : v.toFixed(1);
}

function fmtTime(ms, seconds) {
  return new Date(ms).toTimeString().slice(0, seconds ? 8 : 5);
}

function median(xs) {
  const v = xs.slice().sort((a, b) => a - b);
  return v.length ? v[Math.floor((v.length - 1) / 2)] : NaN;
}

function legend(items) {
  return h('div', { class: 'legend' }, items.map(([name, color]) => {
    const swatch = s('svg', { width: 10, height: 10, viewBox: '0 0 10 10', class: 'swatch' }, s('rect', { width: 10, height: 10, rx: 2, fill: color }));
    return h('span', { class: 'legend-item' }, swatch, ' ', name);
  }));
}

// A line chart of series [{name, color, points: [[x, y], ...]}], x in Unix ms.
function lineChart(series, opts) {
  opts = opts || {};
  const W = opts.width || 640, H = opts.height || 200, L = 64, R = 10, T = 10, B = 24;
  const all = series.flatMap((x) => x.points);
  if (!all.length) return h('p', { class: 'empty' }, opts.empty || 'No data yet.');
  let x0 = Math.min(...all.map((p) => p[0])), x1 = Math.max(...all.map((p) => p[0]));
  if (x1 === x0) { x0 -= 30000; x1 += 30000; }
  let y1 = Math.max(...all.map((p) => p[1]));
  if (!(y1 > 0)) y1 = 1;
  y1 *= 1.1;
  const X = (x) => L + (x - x0) / (x1 - x0) * (W - L - R);
  const Y = (y) => T + (1 - y / y1) * (H - T - B);
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': opts.label || 'chart' });
  for (let i = 0; i <= 4; i++) {
    const y = y1 * i / 4;
    svg.append(s('line', { class: 'grid', x1: L, x2: W - R, y1: Y(y), y2: Y(y) }));
    svg.append(s('text', { x: L - 6, y: Y(y) + 4, 'text-anchor': 'end' }, (opts.fmt || String)(y)));
  }
  for (let i = 0; i <= 4; i++) {
    const x = x0 + (x1 - x0) * i / 4;
    svg.append(s('text', { x: X(x), y: H - 6, 'text-anchor': i === 0 ? 'start' : i === 4 ? 'end' : 'middle' }, fmtTime(x, x1 - x0 < 600000)));
  }
  for (const ser of series) {
    if (!ser.points.length) continue;
    const d = ser.points.map((p, i) => (i ? 'L' : 'M') + X(p[0]).toFixed(1) + ' ' + Y(p[1]).toFixed(1)).join(' ');
    svg.append(s('path', { d, fill: 'none', stroke: ser.color, 'stroke-width': 1.8, 'stroke-linejoin': 'round' }));
    if (ser.points.length < 40) {
      for (const p of ser.points) svg.append(s('circle', { cx: X(p[0]), cy: Y(p[1]), r: 2.2, fill: ser.color }));
    }
  }
  return h('div', { class: 'chart-box' }, svg, legend(series.map((x) => [x.name, x.color])));
}

// Horizontal bars: [{label, value, text, highlight}].
function barChart(rows) {
  const W = 420, rowH = 26, L = 60, R = 130;
  const H = rows.length * rowH + 6;
  const max = Math.max(1, ...rows.map((r) => r.value || 0));
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': 'your latency per region' });
  rows.forEach((r, i) => {
    const y = 3 + i * rowH;
    svg.append(s('text', { x: L - 8, y: y + 16, 'text-anchor': 'end' }, r.label));
    if (r.value > 0) {
      const w = Math.max(2, r.value / max * (W - L - R));
      svg.append(s('rect', { x: L, y: y + 3, width: w, height: rowH - 8, rx: 3, fill: r.highlight ? '#3fb950' : '#58a6ff' }));
      svg.append(s('text', { x: L + w + 6, y: y + 16 }, r.text));
    } else {
      svg.append(s('text', { x: L, y: y + 16 }, r.text));
    }
  });
  return svg;
}

// ---- panels ----

function renderRelays(regions, load) {
  const byRelay = new Map((load.relays || []).map((r) => [r.relay, r.points]));
  const body = $('#relays .body');
  body.replaceChildren();
  if (!regions.length) { body.append(h('p', { class: 'empty' }, 'No relays have registered yet.')); return; }
  for (const region of regions) {
    const rows = region.relays.map((relay) => {
      const pts = byRelay.get(relay.name) || [];
      const last = pts[pts.length - 1];
      const rate = throughput(pts);
      const health = relay.health || 'unknown';
      return h('tr', { 'data-relay': relay.name },
        h('td', {}, relay.name),
        h('td', {}, h('span', { class: 'badge ' + health }, health)),
        h('td', {}, last ? String(last.agents) : '–'),
        h('td', {}, last ? String(last.streams) : '–'),
        h('td', {}, rate.length ? fmtBytes(rate[rate.length - 1][1]) + '/s' : '–'),
        h('td', { class: 'muted addr', title: relay.https_url || relay.quic_addr }, relay.https_url || relay.quic_addr));
    });
    body.append(h('div', { class: 'region', 'data-region': region.name },
      h('h3', {}, 'Region ' + region.name),
      h('table', {}, h('thead', {}, h('tr', {}, ['Relay', 'Health', 'Agents', 'Streams', 'Throughput', 'Address'].map((t) => h('th', {}, t)))),
        h('tbody', {}, rows))));
  }
}

// Bytes per second between successive load points; a drop in the counter is a restart.
function throughput(points) {
  const out = [];
  for (let i = 1; i < points.length; i++) {
    const a = points[i - 1], b = points[i];
    const dt = (b.at_ms - a.at_ms) / 1000;
    if (dt <= 0) continue;
    const db = b.bytes >= a.bytes ? b.bytes - a.bytes : b.bytes;
    out.push([b.at_ms, db / dt]);
  }
  return out;
}

function renderThroughput(load) {
  const body = $('#throughput .body');
  const relays = load.relays || [];
  const color = (i) => PALETTE[i % PALETTE.length];
  const chart = (title, pick, fmt) => h('div', {},
    h('p', { class: 'chart-title' }, title),
    lineChart(relays.map((r, i) => ({ name: r.relay, color: color(i), points: pick(r) })), { fmt, height: 170, label: title, empty: 'Not enough heartbeats recorded yet.' }));
  body.replaceChildren(
    chart('Throughput (bytes/s)', (r) => throughput(r.points), (v) => fmtBytes(v) + '/s'),
    chart('Agents connected', (r) => r.points.map((p) => [p.at_ms, p.agents]), fmtCount),
    chart('Open streams', (r) => r.points.map((p) => [p.at_ms, p.streams]), fmtCount));
}

function renderHeatmap(matrix) {
  const body = $('#heatmap .body');
  body.replaceChildren();
  const regions = matrix.regions || [];
  if (!regions.length) { body.append(h('p', { class: 'empty' }, 'No regions yet.')); return; }
  const cell = new Map((matrix.cells || []).map((c) => [c.from + '\u0000' + c.to, c]));
  const vals = (matrix.cells || []).map((c) => c.rtt_us);
  const n = regions.length, size = Math.max(56, Math.min(110, 480 / n)), L = 80, T = 40;
  const W = L + n * size + 10, H = T + n * size + 10;
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': 'region latency heat map' });
  svg.append(s('text', { x: 4, y: 14 }, 'from ↓  to →'));
  regions.forEach((r, i) => {
    svg.append(s('text', { x: L + i * size + size / 2, y: T - 8, 'text-anchor': 'middle' }, r));
    svg.append(s('text', { x: L - 8, y: T + i * size + size / 2 + 4, 'text-anchor': 'end' }, r));
  });
  regions.forEach((from, i) => regions.forEach((to, j) => {
    const c = cell.get(from + '\u0000' + to);
    const x = L + j * size, y = T + i * size;
    let fill = '#222b35';
    if (c) {
      // Green at 1 ms or less to red at 300 ms or more, on a log scale.
      const t = Math.min(1, Math.max(0, Math.log10(c.rtt_us / 1000) / Math.log10(300)));
      fill = `hsl(${Math.round(120 * (1 - t))}, 60%, 48%)`;
    }
    const g = s('g', { class: 'cell', 'data-from': from, 'data-to': to });
    g.append(s('rect', { x: x + 2, y: y + 2, width: size - 4, height: size - 4, rx: 4, fill }));
    const label = c ? fmtMs(c.rtt_us) : (from === to ? '·' : '–');
    g.append(s('text', { x: x + size / 2, y: y + size / 2 + 4, 'text-anchor': 'middle', class: c ? 'cell-label' : '' }, label));
    if (c) g.append(s('title', {}, `${from} → ${to}: ${fmtMs(c.rtt_us)} (median of ${c.links} relay link${c.links === 1 ? '' : 's'})`));
    svg.append(g);
  }));
  body.append(svg);
  if (!vals.length) body.append(h('p', { class: 'empty' }, 'Relays report mesh round-trip times every 10 s; none yet.'));
}

async function renderWorkspace() {
  const body = $('#workspace .body');
  if (!state.workspace) { body.replaceChildren(h('p', { class: 'empty' }, 'No workspace to show.')); return; }
  const data = await api('/api/v1/workspaces/' + encodeURIComponent(state.workspace) + '/latency');
  const shade = { client: 0, mesh: 0, agent: 0 };
  const series = data.hops.map((hop) => {
    const base = HOP_COLORS[hop.hop] || '#8b98a5';
    const k = shade[hop.hop]++;
    const color = k ? PALETTE[(k * 3 + Object.keys(HOP_COLORS).indexOf(hop.hop)) % PALETTE.length] : base;
    return { name: `${hop.hop}: ${hop.from} → ${hop.to}`, color, points: hop.points.map((p) => [p.at_ms, p.rtt_us]) };
  });
  const where = data.relays.length ? 'agent on ' + data.relays.join(', ') : 'agent not connected';
  body.replaceChildren(
    h('p', { class: 'muted' }, `${data.workspace}: ${where}; ${data.resolution === 'raw' ? 'every sample' : 'one-minute medians'}, last hour.`),
    lineChart(series, { fmt: fmtMs, width: 1200, height: 280, label: 'hop-by-hop latency', empty: 'No measurements for this workspace yet.' }));
}

// ---- workspace resources (live) ----

const HISTORY_MS = 15 * 60 * 1000;
const telemetry = { source: null, workspace: '', points: [], latest: null, items: [] };

function fmtPercent(v) { return (v < 10 ? v.toFixed(1) : v.toFixed(0)) + ' %'; }

function fmtAgo(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  return s < 60 ? s + ' s ago' : s < 3600 ? Math.round(s / 60) + ' min ago' : Math.round(s / 3600) + ' h ago';
}

function fmtUptime(s) {
  if (s < 3600) return Math.floor(s / 60) + ' min';
  if (s < 86400) return Math.floor(s / 3600) + ' h ' + Math.floor(s % 3600 / 60) + ' min';
  return Math.floor(s / 86400) + ' d ' + Math.floor(s % 86400 / 3600) + ' h';
}

// Follows the selected workspace's event stream: a `snapshot` replaces what we have,
// an `update` adds the readings since. The browser reconnects by itself when the
// control plane ends a stream (it does every few minutes, to check the session again).
function watchTelemetry() {
  if (telemetry.source && telemetry.workspace === state.workspace) return;
  if (telemetry.source) telemetry.source.close();
  telemetry.source = null;
  telemetry.workspace = state.workspace;
  telemetry.points = []; telemetry.latest = null; telemetry.items = [];
  const panel = $('#telemetry');
  panel.dataset.stream = 'closed';
  renderTelemetry();
  if (!state.workspace) return;
  const es = new EventSource('/api/v1/workspaces/' + encodeURIComponent(state.workspace) + '/telemetry/events');
  telemetry.source = es;
  es.onopen = () => { panel.dataset.stream = 'open'; };
  es.onerror = () => { panel.dataset.stream = es.readyState === EventSource.CLOSED ? 'closed' : 'reconnecting'; };
  const take = (replace) => (ev) => {
    const doc = JSON.parse(ev.data);
    if (doc.workspace !== telemetry.workspace) return;
    if (replace) telemetry.points = [];
    const last = telemetry.points.length ? telemetry.points[telemetry.points.length - 1].at_ms : -Infinity;
    for (const p of doc.history) if (p.at_ms > last) telemetry.points.push(p);
    const horizon = Date.now() - HISTORY_MS;
    telemetry.points = telemetry.points.filter((p) => p.at_ms >= horizon);
    telemetry.latest = doc.latest;
    telemetry.items = doc.items;
    renderTelemetry();
  };
  es.addEventListener('snapshot', take(true));
  es.addEventListener('update', take(false));
}

function renderTelemetry() {
  const panel = $('#telemetry');
  $('#telemetry-name').textContent = telemetry.workspace ? '· ' + telemetry.workspace : '';
  const pts = telemetry.points;
  panel.dataset.points = String(pts.length);
  panel.dataset.lastAt = pts.length ? String(pts[pts.length - 1].at_ms) : '';
  const tiles = $('.tiles', panel);
  const l = telemetry.latest;
  if (!l) {
    tiles.replaceChildren(h('p', { class: 'empty' }, telemetry.workspace ? 'No readings from this workspace\'s agent yet.' : 'No workspace to show.'));
  } else {
    const st = l.stats;
    const tile = (key, label, value) => h('div', { class: 'tile', 'data-tile': key }, h('span', { class: 'label' }, label), h('span', { class: 'value' }, value));
    const share = (a, b) => b > 0 ? ' (' + fmtPercent(a * 100 / b) + ')' : '';
    tiles.replaceChildren(
      tile('cpu', 'CPU', fmtPercent(st.cpu_percent)),
      tile('memory', 'Memory', fmtBytes(st.mem_used_bytes) + ' of ' + fmtBytes(st.mem_limit_bytes) + share(st.mem_used_bytes, st.mem_limit_bytes)),
      tile('disk', 'Disk', fmtBytes(st.disk_used_bytes) + ' of ' + fmtBytes(st.disk_total_bytes) + share(st.disk_used_bytes, st.disk_total_bytes)),
      tile('load', 'Load (1, 5, 15 min)', st.load.map((x) => x.toFixed(2)).join(' ')),
      tile('uptime', 'Uptime', fmtUptime(st.uptime_secs)),
      tile('source', 'Measured from', st.source === 'cgroup' ? 'container (cgroup)' : 'host (/proc)'),
      tile('age', 'Reported', fmtAgo(Date.now() - l.at_ms)));
  }
  const cpu = [{ name: 'CPU %', color: PALETTE[0], points: pts.map((p) => [p.at_ms, p.stats.cpu_percent]) }];
  const mem = [
    { name: 'used', color: PALETTE[1], points: pts.map((p) => [p.at_ms, p.stats.mem_used_bytes]) },
    { name: 'limit', color: PALETTE[5], points: pts.map((p) => [p.at_ms, p.stats.mem_limit_bytes]) },
  ];
  const chart = (key, title, series, fmt) => h('div', { 'data-chart': key },
    h('p', { class: 'chart-title' }, title),
    lineChart(series, { fmt, height: 180, label: title, empty: 'No readings in the last 15 minutes.' }));
  $('.body', panel).replaceChildren(
    chart('cpu', 'CPU (percent of what the workspace may use)', cpu, (v) => fmtPercent(v)),
    chart('memory', 'Memory', mem, fmtBytes));
  const rows = telemetry.items.map((i) => h('tr', { 'data-key': i.key },
    h('td', { title: i.key }, i.name || i.key),
    i.error ? h('td', { class: 'error' }, 'error: ' + i.error) : h('td', {}, i.value),
    h('td', { class: 'muted' }, fmtAgo(Date.now() - i.updated_at * 1000))));
  $('tbody', panel).replaceChildren(...(rows.length ? rows : [h('tr', {}, h('td', { colspan: 3, class: 'empty' }, 'No metadata items reported.'))]));
}

// ---- your latency ----

async function probe(url) {
  const target = url.replace(/\/+$/, '') + '/.ferry/ping';
  const rtts = [];
  let lost = 0;
  for (let i = 0; i <= PROBES; i++) {
    const u = target + '?n=' + i + '&t=' + Date.now();
    const t0 = performance.now();
    try {
      const r = await fetch(u, { mode: 'cors', cache: 'no-store', credentials: 'omit' });
      await r.arrayBuffer();
      if (!r.ok) throw new Error('HTTP ' + r.status);
      let ms = performance.now() - t0;
      // Resource Timing, when the relay allows it, leaves out the page's own overhead.
      const e = performance.getEntriesByName(u).pop();
      if (e && e.requestStart > 0 && e.responseStart > e.requestStart) ms = e.responseStart - e.requestStart;
      if (i > 0) rtts.push(ms);
    } catch (err) {
      if (i > 0) lost++;
    }
  }
  if (!rtts.length) return { lost: 1 };
  const med = median(rtts);
  const jitter = rtts.reduce((a, x) => a + Math.abs(x - med), 0) / rtts.length;
  return { rtt_us: Math.round(med * 1000), jitter_us: Math.round(jitter * 1000), loss: lost / PROBES };
}

async function measure() {
  const panel = $('#your-latency');
  panel.dataset.state = 'measuring';
  $('#measure').disabled = true;
  const tbody = $('tbody', panel);
  const relays = state.regions.flatMap((r) => r.relays.map((x) => Object.assign({ region_name: r.name }, x)));
  const results = new Map();
  for (const relay of relays) {
    if (relay.https_url) results.set(relay.name, await probe(relay.https_url));
  }
  // Per region: its best relay; the region picked is the lowest median, as the CLI does.
  const perRegion = state.regions.map((region) => {
    let best = null;
    for (const relay of region.relays) {
      const r = results.get(relay.name);
      if (r && r.rtt_us !== undefined && (!best || r.rtt_us < best.rtt_us)) best = Object.assign({ relay: relay.name }, r);
    }
    const https = region.relays.some((x) => x.https_url);
    return { region: region.name, best, https };
  });
  const measured = perRegion.filter((r) => r.best);
  const chosen = measured.length ? measured.reduce((a, b) => (b.best.rtt_us < a.best.rtt_us ? b : a)).region : null;
  tbody.replaceChildren(...perRegion.map((r) => {
    const text = r.best ? fmtMs(r.best.rtt_us) : r.https ? 'unreachable' : 'no HTTPS endpoint';
    return h('tr', { class: 'region-row' + (r.region === chosen ? ' chosen' : ''), 'data-region': r.region, 'data-rtt-us': r.best ? r.best.rtt_us : null },
      h('td', {}, r.region),
      h('td', {}, r.best ? r.best.relay : '–'),
      h('td', { class: 'rtt' }, text),
      h('td', { class: 'mark' }, r.region === chosen ? '★ would pick' : ''));
  }));
  $('.chart', panel).replaceChildren(barChart(perRegion.map((r) => ({
    label: r.region,
    value: r.best ? r.best.rtt_us : 0,
    text: r.best ? fmtMs(r.best.rtt_us) : (r.https ? 'unreachable' : 'no HTTPS endpoint'),
    highlight: r.region === chosen,
  }))));
  panel.dataset.chosen = chosen || '';
  panel.dataset.state = 'done';
  $('#measure').disabled = false;
  // Report them, so they show up as `browser:USER` series (a user's session only).
  if (state.me) {
    const samples = [];
    for (const [name, r] of results) {
      if (r.rtt_us === undefined) continue;
      samples.push({ from: 'browser:' + state.me, to: 'relay:' + name, rtt_us: r.rtt_us, jitter_us: r.jitter_us, loss: r.loss });
    }
    if (samples.length) api('/api/v1/measurements', { method: 'POST', json: { samples } }).catch((e) => console.warn('reporting latency failed', e));
  }
}

// ---- start-up and refresh ----

async function refresh() {
  const [regions, load, matrix] = await Promise.all([
    api('/api/v1/regions'), api('/api/v1/relays/load'), api('/api/v1/measurements/matrix')]);
  state.regions = regions.regions;
  renderRelays(state.regions, load);
  renderThroughput(load);
  renderHeatmap(matrix);
  await renderWorkspace().catch((e) => $('#workspace .body').replaceChildren(h('p', { class: 'error' }, e.message)));
  $('#updated').textContent = 'updated ' + new Date().toTimeString().slice(0, 8);
}

async function loadWorkspaces() {
  const list = await api('/api/v1/workspaces');
  const select = $('#ws-select');
  select.replaceChildren(...list.workspaces.map((w) => h('option', { value: w.label }, w.label)));
  state.workspace = list.workspaces.length ? list.workspaces[0].label : '';
  select.onchange = () => { state.workspace = select.value; renderWorkspace().catch(() => {}); watchTelemetry(); };
}

function showLogin(message) {
  $('#app').hidden = true;
  $('#logout').hidden = true;
  const form = $('#login');
  form.hidden = false;
  $('#login-error').textContent = message || '';
  form.onsubmit = async (ev) => {
    ev.preventDefault();
    const data = new FormData(form);
    try {
      const login = await api('/api/v1/login', { method: 'POST', json: { user: data.get('user'), password: data.get('password') } });
      await api('/api/v1/session', { method: 'POST', headers: { authorization: 'Bearer ' + login.token } });
      form.hidden = true;
      await run();
    } catch (e) {
      $('#login-error').textContent = e.message;
    }
  };
}

async function run() {
  try {
    await api('/api/v1/regions');
  } catch (e) {
    if (e.status === 401 || e.status === 403) return showLogin();
    throw e;
  }
  try {
    state.me = (await api('/api/v1/me')).user;
  } catch (e) {
    state.me = null; // an admin session: no user of its own
    state.admin = true;
  }
  $('#who').textContent = state.me ? 'signed in as ' + state.me : 'signed in as admin';
  $('#logout').hidden = false;
  $('#app').hidden = false;
  await loadWorkspaces().catch(() => {});
  watchTelemetry();
  await refresh();
  setInterval(() => refresh().catch((e) => { $('#updated').textContent = 'refresh failed: ' + e.message; }), REFRESH_MS);
  await measure();
}

async function start() {
  $('#logout').onclick = async () => {
    await api('/api/v1/session', { method: 'DELETE' }).catch(() => {});
    location.reload();
  };
  $('#measure').onclick = () => measure().catch((e) => console.warn(e));
  // A sign-in link (`ferry dev` prints one) carries a token in the fragment, which never
  // reaches any server: trade it for the session cookie and drop it from the address bar.
  const m = location.hash.match(/[#&]token=([^&]+)/);
  if (m) {
    history.replaceState(null, '', location.pathname + location.search);
    try {
      await api('/api/v1/session', { method: 'POST', headers: { authorization: 'Bearer ' + decodeURIComponent(m[1]) } });
    } catch (e) {
      return showLogin('That sign-in link did not work: ' + e.message);
    }
  }
  await run();
}

start().catch((e) => {
  document.body.append(h('p', { class: 'error' }, 'The dashboard failed to start: ' + e.message));
});
