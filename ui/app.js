// The dashboard window. Everything it shows comes from the app's commands
// (one `dashboard` poll a second); it reads no files and loads nothing remote.
'use strict';

const { invoke } = window.__TAURI__.core;

const POLL_MS = 1000;
const CHART_HEIGHT = 230;
const EVENT_ROWS = 200;

// Content-Security-Policy violations, kept so the tests can assert none.
window.edrCspViolations = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.edrCspViolations.push(`${e.violatedDirective}: ${e.blockedURI}`);
});

const $ = (id) => document.getElementById(id);
const el = (tag, cls, text) => {
  const n = document.createElement(tag);
  if (cls) n.className = cls;
  if (text !== undefined) n.textContent = text;
  return n;
};

const ui = {
  view: location.hash === '#settings' ? 'settings' : 'dashboard',
  windowSecs: 60,
  engine: null,
  polling: false,
  settingsLoaded: false,
};

// ---------- views ----------

function showView(view) {
  ui.view = view === 'settings' ? 'settings' : 'dashboard';
  $('view-dashboard').classList.toggle('hidden', ui.view !== 'dashboard');
  $('view-settings').classList.toggle('hidden', ui.view !== 'settings');
  for (const t of document.querySelectorAll('.tab')) {
    if (t.dataset.view === ui.view) t.setAttribute('aria-current', 'page');
    else t.removeAttribute('aria-current');
  }
  history.replaceState(null, '', `#${ui.view}`);
  if (ui.view === 'settings' && !ui.settingsLoaded) loadSettings();
  poll();
}
// Called by the app when the tray's Settings or Open Dashboard is chosen.
window.edrShowView = showView;

// ---------- the poll ----------

function chartWidth() {
  const card = document.querySelector('.chart') || $('charts');
  const w = Math.round(card.clientWidth || 480);
  return Math.min(2400, Math.max(240, w));
}

async function poll() {
  if (ui.polling) return;
  ui.polling = true;
  try {
    const kind = $('event-kind').value;
    const d = await invoke('dashboard', {
      request: {
        windowSecs: ui.windowSecs,
        charts: ui.view === 'dashboard',
        chartWidth: chartWidth(),
        chartHeight: CHART_HEIGHT,
        events: { limit: EVENT_ROWS, kind: kind || null, text: $('event-text').value },
      },
    });
    render(d);
  } catch (e) {
    setStatus({ state: 'failed', status: `No data: ${errorText(e)}` });
  } finally {
    ui.polling = false;
  }
}

function errorText(e) {
  return (e && e.message) || String(e);
}

function render(d) {
  setStatus(d.engine);
  renderEngineBanner(d.engine);
  renderAlerts(d.alerts);
  if (ui.view === 'dashboard') {
    renderCharts(d.charts);
    renderTotals(d.totals);
    renderCoverage(d.coverage, d.engine);
    renderEvents(d.events, d.eventsHeld);
  }
}

function setStatus(engine) {
  ui.engine = engine;
  const pill = $('status-pill');
  pill.dataset.state = engine.state;
  pill.dataset.alert = String(Boolean(engine.alerting));
  $('status-text').textContent = engine.status;
  const pause = $('pause-btn');
  const live = engine.state === 'running' || engine.state === 'paused';
  pause.disabled = !live;
  pause.textContent = engine.state === 'paused' ? 'Resume' : 'Pause';
  $('folder-btn').disabled = !engine.dataDir;
}

function renderEngineBanner(engine) {
  const b = $('engine-banner');
  if (!engine.message) {
    b.classList.add('hidden');
    return;
  }
  b.dataset.state = engine.state;
  const lines = [];
  if (engine.state === 'failed') lines.push(el('strong', null, 'The engine did not start. '));
  else if (engine.state !== 'off') lines.push(el('strong', null, 'The config file was edited but not applied: '));
  lines.push(el('span', null, engine.message));
  const where = el('div', 'small muted');
  where.append('Config file: ', el('span', 'path', engine.configFile));
  lines.push(where);
  b.replaceChildren(...lines);
  b.classList.remove('hidden');
}

function renderAlerts(alerts) {
  const banner = $('alerts-banner');
  banner.classList.toggle('hidden', alerts.length === 0);
  $('alerts-list').replaceChildren(...alerts.map((a) => {
    const li = el('li');
    li.dataset.kind = a.kind;
    const num = el('span', 'num');
    num.append('value ', el('b', null, a.value), ' · threshold ', el('b', null, a.threshold));
    li.append(el('span', 'msg', a.message), num);
    return li;
  }));
}

// One card per chart, made once; each tick replaces only its SVG node.
// The SVG carries the title, the current value and the legend.
function renderCharts(charts) {
  const box = $('charts');
  if (box.children.length !== charts.length) {
    box.replaceChildren(...charts.map(() => el('section', 'card chart')));
  }
  const parser = new DOMParser();
  charts.forEach((c, i) => {
    const card = box.children[i];
    card.dataset.chart = c.title;
    card.dataset.value = c.value;
    card.setAttribute('aria-label', `${c.title}: ${c.value}`);
    const svg = parser.parseFromString(c.svg, 'image/svg+xml').documentElement;
    if (svg.nodeName !== 'svg') return;
    card.replaceChildren(document.importNode(svg, true));
  });
}

function renderTotals(t) {
  const box = $('totals');
  if (!t) {
    box.replaceChildren();
    return;
  }
  const item = (label, value) => {
    const d = el('div');
    d.append(el('dt', null, label), el('dd', null, value));
    return d;
  };
  const n = (x) => x.toLocaleString('en-US');
  box.replaceChildren(
    item('Events', n(t.produced)),
    item('Stored', n(t.stored)),
    item('Dropped', n(t.dropped)),
    item('Batches', n(t.batches)),
    item('Storage', `${t.storageUsed} of ${t.storageCap}`),
  );
}

function renderCoverage(c, engine) {
  if (!c) return;
  $('cov-process').textContent = c.process;
  $('cov-network').textContent = c.network;
  $('cov-watched').replaceChildren(...c.watched.map((p) => el('li', null, p)));
  $('cov-unwatched').replaceChildren(...c.unwatched.map((u) => {
    const li = el('li', null, u.path);
    li.append(el('span', 'why', u.reason));
    return li;
  }));
  $('paths-info').textContent = engine.dataDir ? `Data: ${engine.dataDir}` : '';
}

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false });

function renderEvents(rows, held) {
  $('events-body').replaceChildren(...rows.map((r) => {
    const tr = el('tr');
    tr.dataset.kind = r.kind;
    const t = new Date(r.time);
    const time = el('td', 'time', Number.isNaN(t.getTime()) ? r.time : timeFormat.format(t));
    time.title = r.time;
    const type = el('td');
    type.append(el('span', `badge ${r.kind}`, r.kind));
    const details = el('td', 'details', r.summary);
    details.title = r.summary;
    tr.append(time, type, el('td', 'action', r.action), details);
    return tr;
  }));
  $('events-empty').classList.toggle('hidden', rows.length > 0);
  $('events-empty').textContent = held === 0 ? 'No events yet.' : 'No event matches the filter.';
  $('events-count').textContent = held ? `Showing ${rows.length} of the latest ${held} stored events.` : '';
}

// ---------- settings ----------

function fields() {
  return [...$('settings-form').querySelectorAll('[name]')];
}

// Grouped with spaces, as the hints always were: 3 600 000.
function grouped(n) {
  return n.toLocaleString('en-US', { maximumFractionDigits: 6 }).replace(/,/g, '\u2009');
}

function rangeText(r) {
  if (!r) return '';
  return r.minOpen ? `more than ${grouped(r.min)}, up to ${grouped(r.max)}` : `${grouped(r.min)} – ${grouped(r.max)}`;
}

// Labels, hints and preset choices come from the engine's key table (the
// `schema` part of get_settings), so no range or preset is typed in the HTML.
// Until it has come (or when the engine is not running) the form stays
// hidden rather than showing unlabelled inputs.
function renderSchema(schema) {
  if (!schema) return;
  const byName = new Map(fields().map((f) => [f.name, f]));
  for (const s of schema.fields) {
    const f = byName.get(s.key);
    if (!f) continue;
    const label = f.closest('label');
    const name = label.querySelector('.name') || label.querySelector('.label');
    if (name) name.textContent = s.label;
    f.title = s.doc;
    const hint = label.querySelector('.hint');
    if (hint) hint.textContent = [rangeText(s.range), s.hint].filter(Boolean).join('; ');
  }
  const picker = $('preset');
  const chosen = picker.value;
  picker.replaceChildren(...schema.presets.map((p) => {
    const o = el('option', null, p.title);
    o.value = p.name;
    o.title = p.summary;
    return o;
  }));
  if (chosen) picker.value = chosen;
  $('settings-form').classList.add('ready');
}

function fillForm(form) {
  for (const f of fields()) {
    const v = form[f.name];
    if (v === undefined) continue;
    if (f.type === 'checkbox') f.checked = v === true;
    else f.value = String(v);
  }
}

function readForm() {
  const out = {};
  for (const f of fields()) out[f.name] = f.type === 'checkbox' ? f.checked : f.value;
  return out;
}

function clearErrors() {
  for (const f of fields()) {
    f.classList.remove('invalid');
    f.removeAttribute('aria-invalid');
    const err = f.parentElement.querySelector('.error');
    if (err) err.textContent = '';
  }
}

function showErrors(list) {
  const byName = new Map(fields().map((f) => [f.name, f]));
  const elsewhere = [];
  for (const { field, message } of list) {
    const f = byName.get(field);
    if (!f) {
      elsewhere.push(`${field}: ${message}`);
      continue;
    }
    f.classList.add('invalid');
    f.setAttribute('aria-invalid', 'true');
    const err = f.parentElement.querySelector('.error');
    err.textContent = err.textContent ? `${err.textContent} ${message}` : message;
  }
  return elsewhere;
}

function say(text, kind) {
  const m = $('settings-message');
  m.textContent = text;
  m.className = `message ${kind || ''}`;
}

async function loadSettings() {
  clearErrors();
  try {
    const settings = await invoke('get_settings');
    renderSchema(settings.schema);
    fillForm(settings);
    ui.settingsLoaded = true;
    say('');
  } catch (e) {
    say(errorText(e), 'bad');
  }
}

async function applySettings(ev) {
  ev.preventDefault();
  clearErrors();
  say('Applying…');
  $('apply-btn').disabled = true;
  try {
    fillForm(await invoke('apply_settings', { form: readForm() }));
    say('Applied and saved.', 'ok');
  } catch (e) {
    const elsewhere = showErrors((e && e.fields) || []);
    say([errorText(e), ...elsewhere].join(' '), 'bad');
    const first = $('settings-form').querySelector('.invalid');
    if (first) first.focus();
  } finally {
    $('apply-btn').disabled = false;
  }
}

async function fillPreset() {
  clearErrors();
  const name = $('preset').value;
  try {
    fillForm(await invoke('preset_settings', { name }));
    say(`Preset “${$('preset').selectedOptions[0].textContent}” filled in. Review, then Apply.`);
  } catch (e) {
    say(errorText(e), 'bad');
  }
}

// ---------- wiring ----------

function init() {
  for (const t of document.querySelectorAll('.tab')) {
    t.addEventListener('click', () => showView(t.dataset.view));
  }
  for (const b of $('window-picker').querySelectorAll('button')) {
    b.addEventListener('click', () => {
      ui.windowSecs = Number(b.dataset.window);
      for (const o of $('window-picker').querySelectorAll('button')) {
        o.setAttribute('aria-checked', String(o === b));
      }
      poll();
    });
  }
  $('pause-btn').addEventListener('click', async () => {
    const paused = ui.engine && ui.engine.state === 'paused';
    try {
      setStatus(await invoke('set_paused', { paused: !paused }));
    } catch (e) {
      setStatus({ state: 'failed', status: errorText(e) });
    }
  });
  $('folder-btn').addEventListener('click', () => invoke('open_data_folder').catch((e) => say(errorText(e), 'bad')));
  $('event-kind').addEventListener('change', poll);
  $('event-text').addEventListener('input', poll);
  $('settings-form').addEventListener('submit', applySettings);
  $('revert-btn').addEventListener('click', loadSettings);
  $('preset-btn').addEventListener('click', fillPreset);
  window.addEventListener('hashchange', () => showView(location.hash.slice(1)));
  showView(ui.view);
  setInterval(poll, POLL_MS);
}

init();
