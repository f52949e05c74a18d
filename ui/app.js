// The dashboard window. Everything it shows comes from the app's commands
// (one `dashboard` poll a second); it reads no files and loads nothing remote.
'use strict';

const { invoke } = window.__TAURI__.core;

const POLL_MS = 1000;
const CHART_HEIGHT = 230;
const EVENT_ROWS = 200;
// Alerts the window keeps (the engine's ring holds as many).
const ALERTS_KEPT = 200;
const VIEWS = ['dashboard', 'alerts', 'settings'];

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
  view: VIEWS.includes(location.hash.slice(1)) ? location.hash.slice(1) : 'dashboard',
  windowSecs: 60,
  engine: null,
  polling: false,
  settingsLoaded: false,
  // Detection alerts, newest first; the poll asks for those after `alertsSince`.
  alerts: [],
  alertsSince: 0,
  selected: null,
  exceptions: [],
};

// ---------- views ----------

function showView(view) {
  ui.view = VIEWS.includes(view) ? view : 'dashboard';
  for (const v of VIEWS) $(`view-${v}`).classList.toggle('hidden', ui.view !== v);
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
        alertsSince: ui.alertsSince,
        alertsOpen: ui.view === 'alerts' && document.visibilityState !== 'hidden',
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
  renderDetections(d.detections);
  if (ui.view === 'dashboard') {
    renderCharts(d.charts);
    renderTotals(d.totals);
    renderCoverage(d.coverage, d.engine);
    renderShipping(d.shipping);
    renderEvents(d.events, d.eventsHeld);
  }
}

function setStatus(engine) {
  ui.engine = engine;
  const pill = $('status-pill');
  pill.dataset.state = engine.state;
  pill.dataset.alert = String(Boolean(engine.alerting));
  $('status-text').textContent = engine.status;
  const mode = $('mode-text');
  mode.textContent = engine.mode || '';
  mode.title = engine.mode || '';
  mode.dataset.service = String(engine.mode === 'Real-time · service');
  const pause = $('pause-btn');
  const live = engine.state === 'running' || engine.state === 'paused';
  pause.disabled = !live;
  pause.textContent = engine.state === 'paused' ? 'Resume' : 'Pause';
  $('folder-btn').disabled = !engine.dataDir;
}

function renderServiceBanner(engine) {
  const b = $('service-banner');
  if (!engine.serviceNote) {
    b.classList.add('hidden');
    b.replaceChildren();
    return;
  }
  b.replaceChildren(el('span', null, engine.serviceNote));
  b.classList.remove('hidden');
}

function renderEngineBanner(engine) {
  renderServiceBanner(engine);
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
  $('cov-files').textContent = c.files;
  $('cov-watched').replaceChildren(...c.watched.map((p) => el('li', null, p)));
  $('cov-unwatched').replaceChildren(...c.unwatched.map((u) => {
    const li = el('li', null, u.path);
    li.append(el('span', 'why', u.reason));
    return li;
  }));
  $('paths-info').textContent = engine.dataDir ? `Data: ${engine.dataDir}` : '';
}

function renderShipping(s) {
  const box = $('shipping');
  box.classList.toggle('hidden', !s);
  if (!s) return;
  const state = $('ship-state');
  state.textContent = s.state;
  state.classList.toggle('warn', !s.ok);
  $('ship-pending').textContent = s.pending;
  const extra = [];
  if (s.duplicates > 0) extra.push(`${s.duplicates.toLocaleString('en-US')} duplicates acknowledged`);
  if (s.gaps > 0) extra.push(`${s.gaps.toLocaleString('en-US')} gaps`);
  $('ship-shipped').textContent = extra.length ? `${s.shipped}; ${extra.join(', ')}` : s.shipped;
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

// ---------- detection alerts ----------

const LEVELS = ['informational', 'low', 'medium', 'high', 'critical'];
const levelOf = (a) => (LEVELS.includes(a.level) ? a.level : 'low');

function renderDetections(d) {
  if (!d) return;
  if (d.fromService !== ui.alertsFromService) {
    // The app switched between the service and its own engine: another
    // numbering; start the list over from the new one's first alert.
    const first = ui.alertsFromService === undefined;
    ui.alertsFromService = d.fromService;
    if (!first) {
      ui.alerts = [];
      ui.selected = null;
      ui.alertsSince = 0;
      return;
    }
  }
  if (d.lastSeq < ui.alertsSince) {
    // The engine started over (it is numbered from 1 again).
    ui.alerts = [];
    ui.selected = null;
  }
  const fresh = d.alerts.filter((a) => !ui.alerts.some((b) => b.seq === a.seq));
  ui.alertsSince = d.lastSeq;
  const badge = $('alerts-unseen');
  badge.textContent = d.unseen > 0 ? String(d.unseen) : '';
  badge.classList.toggle('hidden', d.unseen === 0);
  $('tab-alerts').title = d.unseen > 0 ? `${d.unseen} unseen` : '';
  const n = (x) => x.toLocaleString('en-US');
  $('detection-stats').textContent = `${n(d.rulesLoaded)} rules · ${n(d.evaluated)} events checked (${d.evalUsMean.toFixed(1)} µs each) · ${n(d.raised)} raised · ${n(d.suppressed)} repeats folded · ${n(d.excepted)} excepted`;
  const box = $('alert-items');
  box.dataset.excepted = String(d.excepted);
  if (fresh.length === 0 && box.childElementCount === ui.alerts.length) return;
  ui.alerts = fresh.concat(ui.alerts).slice(0, ALERTS_KEPT);
  renderAlertList();
}

function renderAlertList() {
  const box = $('alert-items');
  box.replaceChildren(...ui.alerts.map((a) => {
    const li = el('li', 'alert-item');
    li.dataset.seq = String(a.seq);
    li.dataset.rule = a.ruleId;
    li.dataset.level = levelOf(a);
    if (a.pid != null) li.dataset.pid = String(a.pid);
    li.setAttribute('role', 'option');
    li.tabIndex = 0;
    li.setAttribute('aria-selected', String(a.seq === ui.selected));
    const t = new Date(a.time);
    const time = el('span', 'time', Number.isNaN(t.getTime()) ? a.time : timeFormat.format(t));
    time.title = a.time;
    const top = el('div', 'line');
    top.append(el('span', `sev ${levelOf(a)}`, a.level), el('span', 'rule', a.ruleName), time);
    const who = el('div', 'program', a.pid != null ? `${a.program} (pid ${a.pid})` : a.program);
    if (a.count > 1) who.append(el('span', 'muted', ` · ×${a.count}`));
    li.append(top, who);
    li.addEventListener('click', () => selectAlert(a.seq));
    li.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); selectAlert(a.seq); } });
    return li;
  }));
  $('alert-items-empty').classList.toggle('hidden', ui.alerts.length > 0);
  const still = ui.alerts.find((a) => a.seq === ui.selected);
  if (!still) showAlertDetail(null);
}

function selectAlert(seq) {
  ui.selected = seq;
  for (const li of $('alert-items').children) li.setAttribute('aria-selected', String(Number(li.dataset.seq) === seq));
  showAlertDetail(ui.alerts.find((a) => a.seq === seq) || null);
  $('alert-message').textContent = '';
}

function kv(box, pairs) {
  box.replaceChildren(...pairs.flatMap(([k, v]) => [el('dt', null, k), el('dd', 'mono', v)]));
}

function showAlertDetail(a) {
  $('alert-detail-empty').classList.toggle('hidden', Boolean(a));
  $('alert-detail-body').classList.toggle('hidden', !a);
  if (!a) {
    ui.selected = null;
    return;
  }
  const lvl = $('ad-level');
  lvl.className = `sev ${levelOf(a)}`;
  lvl.textContent = `${a.level} · ${a.severity}`;
  $('ad-rule').textContent = a.ruleName;
  const t = new Date(a.time);
  const when = Number.isNaN(t.getTime()) ? a.time : t.toLocaleString();
  $('ad-when').textContent = `${when}${a.count > 1 ? ` · ${a.count} times` : ''}${a.user ? ` · user ${a.user}` : ''} · rule ${a.ruleId}`;
  $('ad-description').textContent = a.description || '';
  // The process tree, oldest ancestor first, each level indented under
  // the one that started it; the alert's own process is last.
  $('ad-tree').replaceChildren(...a.tree.map((node, depth) => {
    const li = el('li', depth === a.tree.length - 1 ? 'node self' : 'node');
    li.style.setProperty('--depth', String(depth));
    const head = el('div', 'who');
    head.append(el('span', 'prog', node.program), el('span', 'pid', `pid ${node.pid}`));
    li.append(head);
    if (node.commandLine) li.append(el('code', 'cmd', node.commandLine));
    if (node.entityId) li.title = `entity ${node.entityId}`;
    return li;
  }));
  kv($('ad-matched'), a.matchedFields.map((m) => [m.field, m.value]));
  const other = [];
  if (a.filePath) other.push(['file.path', a.filePath]);
  if (a.destination) other.push(['destination', a.destination]);
  kv($('ad-other'), other);
  $('ad-other-wrap').classList.toggle('hidden', other.length === 0);
  $('ad-fp').replaceChildren(...a.falsepositives.map((f) => el('li', null, f)));
  $('ad-fp-wrap').classList.toggle('hidden', a.falsepositives.length === 0);
  // Shown as text to copy: the window opens nothing remote.
  $('ad-refs').replaceChildren(...a.references.map((r) => {
    const li = el('li');
    const link = el('span', /^https?:\/\//.test(r) ? 'link' : null, r);
    link.title = 'Copy this address into a browser to open it';
    li.append(link);
    return li;
  }));
  $('ad-refs-wrap').classList.toggle('hidden', a.references.length === 0);
  $('ad-rule-meta').textContent = `Rule by ${a.author || 'unknown'}${a.license ? ` · license ${a.license}` : ''}`;
  $('allow-btn').disabled = !a.executable;
  $('allow-btn').title = a.executable ? `No alert from this rule for ${a.executable}` : 'The program’s path is not known';
}

async function addException(allowProgram) {
  const a = ui.alerts.find((x) => x.seq === ui.selected);
  if (!a) return;
  const m = $('alert-message');
  m.className = 'message';
  m.textContent = 'Saving…';
  const exception = { ruleId: a.ruleId, executable: allowProgram ? a.executable : null };
  try {
    renderExceptions(await invoke('add_exception', { exception }));
    m.className = 'message ok';
    m.textContent = allowProgram ? `Allowed: ${a.executable} no longer raises this alert. Undo in Settings.` : 'Silenced: this rule no longer raises alerts. Undo in Settings.';
  } catch (e) {
    m.className = 'message bad';
    m.textContent = errorText(e);
  }
}

function ruleName(id) {
  const a = ui.alerts.find((x) => x.ruleId === id);
  return a ? a.ruleName : null;
}

function renderExceptions(list) {
  ui.exceptions = list || [];
  $('exceptions-list').replaceChildren(...ui.exceptions.map((x, i) => {
    const li = el('li', 'exception');
    li.dataset.rule = x.ruleId || '';
    li.dataset.executable = x.executable || '';
    const what = el('div', 'what');
    if (x.ruleId) {
      const name = ruleName(x.ruleId);
      what.append(el('span', 'rule', name || 'Rule'), el('code', null, x.ruleId));
    } else {
      what.append(el('span', 'rule', 'Every rule'));
    }
    const scope = [];
    if (x.executable) scope.push(`program ${x.executable}`);
    if (x.commandLineContains) scope.push(`command line containing “${x.commandLineContains}”`);
    what.append(el('span', 'scope muted', scope.length ? scope.join(', ') : 'every program'));
    const rm = el('button', 'btn subtle remove-exception', 'Remove');
    rm.type = 'button';
    rm.dataset.index = String(i);
    rm.addEventListener('click', () => removeException(x));
    li.append(what, rm);
    return li;
  }));
  $('exceptions-empty').classList.toggle('hidden', ui.exceptions.length > 0);
}

async function removeException(x) {
  const m = $('exceptions-message');
  m.className = 'message';
  m.textContent = 'Removing…';
  try {
    renderExceptions(await invoke('remove_exception', { exception: x }));
    m.className = 'message ok';
    m.textContent = 'Removed and saved.';
  } catch (e) {
    m.className = 'message bad';
    m.textContent = errorText(e);
  }
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

async function loadAutostart() {
  const box = $('autostart');
  try {
    box.checked = await invoke('get_autostart');
    $('autostart-message').textContent = '';
  } catch (e) {
    $('autostart-message').textContent = errorText(e);
  }
}

async function setAutostart() {
  const box = $('autostart');
  box.disabled = true;
  try {
    box.checked = await invoke('set_autostart', { enabled: box.checked });
    $('autostart-message').textContent = '';
  } catch (e) {
    box.checked = !box.checked;
    $('autostart-message').textContent = errorText(e);
  } finally {
    box.disabled = false;
  }
}

async function loadSettings() {
  loadAutostart();
  clearErrors();
  try {
    const settings = await invoke('get_settings');
    renderSchema(settings.schema);
    fillForm(settings);
    renderExceptions(settings.exceptions);
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
  $('autostart').addEventListener('change', setAutostart);
  $('settings-form').addEventListener('submit', applySettings);
  $('revert-btn').addEventListener('click', loadSettings);
  $('preset-btn').addEventListener('click', fillPreset);
  $('silence-btn').addEventListener('click', () => addException(false));
  $('allow-btn').addEventListener('click', () => addException(true));
  window.addEventListener('hashchange', () => showView(location.hash.slice(1)));
  showView(ui.view);
  setInterval(poll, POLL_MS);
}

init();
