// vfarm web UI: plain ES module, no framework, no build step, nothing fetched from elsewhere.
// Every request is same-origin; identity is the session cookie (POST /api/v1/session) or the
// browser's client certificate. All text from the API goes into the page as text nodes (h()).

const API = '/api/v1';
const SUITES = ['bookworm', 'trixie', 'bullseye', 'forky', 'sid'];
const VARIANTS = ['minbase', 'essential', 'apt', 'required', 'important', 'standard', 'buildd'];
const GROUPS = ['core', 'base', 'build-essential', 'python3', 'ssh-server', 'networking'];
const FORMATS = ['tar', 'qcow2', 'raw', 'vmdk', 'vdi'];
const DOWNLOAD_FORMATS = ['tar', 'qcow2', 'raw'];

const state = {
  me: null,
  instances: new Map(), // id -> Instance (+ _rx: Date.now() when received)
  images: [],
  imagesLoaded: false,
  events: 0, // SSE events received since the page loaded (shown as data-events)
  es: null,
  ops: [], // image builds started from this page
  detail: null, // the instance shown on #/instances/ID, with snapshots
  quota: null, // GET /quota: limits and usage of the signed-in owner
  sort: null, // {key, dir} of the instances table; null = newest first
  usage: new Map(), // id -> InstanceUsage from /stats (the service samples every 5 s)
  showAll: false,
  hosts: null, // GET /hosts (admins): the physical host inventory, null until loaded
  jobs: new Map(), // id -> Job, as GET /jobs lists them (updated by `job` events)
  jobsLoaded: false,
  job: null, // the job shown on #/jobs/ID, with its spec, events, outputs and streams
  grids: new Map(), // name -> GridView, as GET /grids lists them
  gridsLoaded: false,
  grid: null, // the grid shown on #/grids/NAME, with its members
  gridUp: null, // {name, started} while a `grid up` from this page runs
  gridGoingDown: null, // the name of the grid a Down from this page is taking down
};

// ---------------------------------------------------------------------------------------
// DOM helpers

/** Build an element. attrs: plain attributes, `on*` listeners, `dataset`; children: nodes or text. */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'testid') el.setAttribute('data-testid', v);
    else if (k === 'value') el.value = v;
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}
function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}
const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];

function notice(text, kind = 'info') {
  const box = $('.notices');
  const n = h('div', { class: `notice notice-${kind}`, role: kind === 'error' ? 'alert' : null, testid: `notice-${kind}` }, text);
  box.append(n);
  // A few at a time: a burst of actions must not bury the page.
  while (box.children.length > 3) box.firstElementChild.remove();
  setTimeout(() => n.remove(), kind === 'error' ? 9000 : 4000);
}

// ---------------------------------------------------------------------------------------
// API

class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field || null;
  }
}

/** Call the API. `body` goes as JSON, unless `type` names another content type: then it is
 *  sent as it is (a JSDL document as application/xml). */
async function api(method, path, body, contentType) {
  const opt = { method, credentials: 'same-origin', headers: { Accept: 'application/json' } };
  if (body !== undefined) {
    opt.headers['Content-Type'] = contentType || 'application/json';
    opt.body = contentType ? body : JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(API + path, opt);
  } catch (e) {
    throw new ApiError(0, 'network', `cannot reach the vfarm service (${e.message})`);
  }
  const type = res.headers.get('content-type') || '';
  const data = type.includes('json') ? await res.json().catch(() => null) : await res.text();
  if (!res.ok) {
    const e = (data && data.error) || {};
    const err = new ApiError(res.status, e.code || `http_${res.status}`,
      e.message || (typeof data === 'string' && data.trim()) || `${res.status} ${res.statusText}`, e.field);
    // The session ended (expired or revoked token): back to the login form.
    if (res.status === 401 && state.me && path !== '/session') {
      signedOut('Your session ended; sign in again.');
    }
    throw err;
  }
  return data;
}

// ---------------------------------------------------------------------------------------
// Formatting

function duration(secs) {
  if (secs === null || secs === undefined || !isFinite(secs)) return '–';
  secs = Math.max(0, Math.floor(secs));
  const d = Math.floor(secs / 86400), hh = Math.floor((secs % 86400) / 3600);
  const m = Math.floor((secs % 3600) / 60), s = secs % 60;
  if (d) return `${d}d ${hh}h`;
  if (hh) return `${hh}h ${m}m`;
  if (m) return `${m}m ${s}s`;
  return `${s}s`;
}
function bytes(n) {
  if (n === null || n === undefined) return '–';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(n < 10 && i ? 1 : 0)} ${u[i]}`;
}
function when(ts, timeStyle = 'short') {
  if (!ts) return '–';
  const d = new Date(ts);
  return isNaN(d) ? ts : d.toLocaleString(undefined, { dateStyle: 'medium', timeStyle });
}
const short = (id) => (id || '').slice(0, 12);
const instLabel = (i) => i.name || short(i.id);
const imageLabel = (i) => i.image_name || short(i.image);

/** Seconds the instance has been up, now (advanced locally since the server said so). */
function uptimeNow(i) {
  const since = (Date.now() - (i._rx || Date.now())) / 1000;
  if (typeof i.uptime_secs === 'number') return i.uptime_secs + since;
  if (i.started && ['running', 'paused'].includes(i.state)) return (Date.now() - Date.parse(i.started)) / 1000;
  return null;
}
/** Seconds until expiry, now; null without expiry. */
function expiryNow(i) {
  const since = (Date.now() - (i._rx || Date.now())) / 1000;
  if (typeof i.expires_in_secs === 'number') return i.expires_in_secs - since;
  if (i.expires) return (Date.parse(i.expires) - Date.now()) / 1000;
  return null;
}
function stateBadge(s, testid = 'instance-state') {
  return h('span', { class: `state state-${s}`, testid, 'data-state': s }, s);
}
/** A live-ticking cell (uptime or expiry), refreshed by tick() every second. */
function tickCell(kind, inst) {
  const el = h('span', { 'data-tick': kind, 'data-id': inst.id });
  paintTick(el, inst);
  return el;
}
function paintTick(el, inst) {
  if (el.dataset.tick === 'uptime') {
    el.textContent = ['running', 'paused'].includes(inst.state) ? duration(uptimeNow(inst)) : '–';
  } else {
    const left = expiryNow(inst);
    el.classList.remove('expiry-warn', 'expiry-past');
    if (left === null) { el.textContent = 'never'; return; }
    if (left <= 0) { el.textContent = 'due now'; el.classList.add('expiry-past'); return; }
    el.textContent = duration(left);
    if (left < 15 * 60) el.classList.add('expiry-warn');
    el.title = inst.expires ? `expires ${when(inst.expires)}` : '';
  }
}
function tick() {
  for (const el of $$('[data-tick]')) {
    const inst = state.detail && state.detail.id === el.dataset.id ? state.detail : state.instances.get(el.dataset.id);
    if (inst) paintTick(el, inst);
  }
}

/** A definition list of [label, value] pairs; pairs without a value are left out. */
function kv(pairs) {
  return h('dl', { class: 'kv' }, pairs.filter(([, v]) => v !== undefined && v !== null && v !== '')
    .map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

// ---------------------------------------------------------------------------------------
// Forms: errors from the API next to the field they name

function fieldBlock(form, { name, label, control, hint, testid }) {
  const id = `${form}-${name}`;
  control.id = id;
  control.name = name;
  if (testid) control.setAttribute('data-testid', testid);
  const err = h('p', { class: 'field-error', id: `${id}-error`, testid: `${form}-error-${name}`, hidden: true });
  const hintEl = hint ? h('p', { class: 'hint', id: `${id}-hint` }, hint) : null;
  control.setAttribute('aria-describedby', [hintEl ? `${id}-hint` : null, `${id}-error`].filter(Boolean).join(' '));
  return h('div', { class: 'field', 'data-field': name }, h('label', { for: id }, label), control, hintEl, err);
}

function clearErrors(form) {
  for (const e of $$('.field-error', form)) { e.hidden = true; e.textContent = ''; }
  for (const c of $$('[aria-invalid]', form)) c.removeAttribute('aria-invalid');
  const fe = $('.form-error', form);
  if (fe) { fe.hidden = true; fe.textContent = ''; }
}

/** Show `err` next to the field it names (aliases map API field names to form fields). */
function showError(form, err, aliases = {}) {
  const field = err.field ? (aliases[err.field] || err.field) : null;
  const named = field ? $(`[data-field="${CSS.escape(field)}"]`, form) : null;
  const block = named && $('.field-error', named) ? named : null;
  const msg = err.code && err.code !== 'network' ? `${err.message} (${err.code})` : err.message;
  if (block) {
    const e = $('.field-error', block);
    e.textContent = msg;
    e.hidden = false;
    const c = $('input, select, textarea', block);
    if (c) { c.setAttribute('aria-invalid', 'true'); c.focus(); }
  } else {
    const fe = $('.form-error', form);
    fe.textContent = msg;
    fe.hidden = false;
    fe.focus();
  }
}

async function busy(button, fn) {
  button.disabled = true;
  button.setAttribute('aria-busy', 'true');
  try { return await fn(); } finally { button.disabled = false; button.removeAttribute('aria-busy'); }
}

/** A modal confirmation (native <dialog>: focus trapped, Escape cancels). Resolves true/false. */
function confirmDialog(title, text, okLabel, backLabel = 'Cancel') {
  return new Promise((resolve) => {
    const ok = h('button', { type: 'button', class: 'btn btn-danger-solid', testid: 'confirm-ok' }, okLabel);
    const cancel = h('button', { type: 'button', class: 'btn', testid: 'confirm-cancel' }, backLabel);
    const dlg = h('dialog', { testid: 'confirm-dialog', 'aria-labelledby': 'confirm-title' },
      h('h2', { id: 'confirm-title' }, title), h('p', {}, text), h('div', { class: 'actions-line' }, cancel, ok));
    const done = (v) => { dlg.close(); dlg.remove(); resolve(v); };
    ok.addEventListener('click', () => done(true));
    cancel.addEventListener('click', () => done(false));
    dlg.addEventListener('cancel', (e) => { e.preventDefault(); done(false); });
    document.body.append(dlg);
    dlg.showModal();
    cancel.focus();
  });
}

// ---------------------------------------------------------------------------------------
// Session

async function boot() {
  $('[data-testid="logout"]').addEventListener('click', logout);
  setInterval(tick, 1000);
  window.addEventListener('hashchange', route);
  try {
    const me = await api('GET', '/whoami');
    signedIn(me);
  } catch (e) {
    if (e.status === 401) renderLogin();
    else renderFatal(e);
  }
}

function signedIn(me) {
  state.me = me;
  $('.nav').hidden = false;
  $('.session').hidden = false;
  $('[data-testid="whoami-user"]').textContent = me.user;
  $('[data-testid="whoami-user"]').title = `signed in by ${me.method}`;
  $('[data-testid="whoami-admin"]').hidden = !me.admin;
  // The host inventory is the site's, not a user's (the API answers 403 to others).
  $('[data-testid="nav-hosts"]').hidden = !me.admin;
  // A client certificate or the unix socket cannot be signed out of from the page.
  $('[data-testid="logout"]').hidden = ['client-cert', 'unix-peer'].includes(me.method);
  document.body.dataset.user = me.user;
  connectEvents();
  loadInstances();
  loadImages();
  route();
}

function signedOut(message) {
  state.me = null;
  if (state.es) { state.es.close(); state.es = null; }
  state.instances.clear();
  state.detail = null;
  state.jobs.clear();
  state.jobsLoaded = false;
  state.job = null;
  state.grids.clear();
  state.gridsLoaded = false;
  state.grid = null;
  $('.nav').hidden = true;
  $('.session').hidden = true;
  delete document.body.dataset.user;
  renderLogin(message);
}

async function logout() {
  try { await api('DELETE', '/session'); } catch (e) { /* the cookie is gone either way */ }
  history.replaceState(null, '', '#/instances');
  signedOut('Signed out.');
}

function renderLogin(message) {
  const token = h('input', { type: 'password', autocomplete: 'off', required: true, spellcheck: 'false', placeholder: 'vft_…' });
  const submit = h('button', { type: 'submit', class: 'btn btn-primary', testid: 'login-submit' }, 'Sign in');
  const form = h('form', { class: 'panel login', testid: 'login-form', novalidate: true },
    h('h1', {}, 'Sign in to vfarm'),
    h('p', {}, 'Use an API token (', h('code', {}, 'vfarm token create --user NAME'), '). With a grid certificate loaded in your browser you are signed in without one.'),
    message ? h('p', { role: 'status', testid: 'login-message' }, message) : null,
    h('p', { class: 'form-error', hidden: true, tabindex: '-1', testid: 'login-error' }),
    fieldBlock('login', { name: 'token', label: 'Token', control: token, testid: 'login-token' }),
    h('div', { class: 'actions-line' }, submit));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearErrors(form);
    if (!token.value.trim()) {
      return showError(form, new ApiError(400, 'invalid_request', 'a token is required', 'token'));
    }
    await busy(submit, async () => {
      try {
        await api('POST', '/session', { token: token.value.trim() });
        signedIn(await api('GET', '/whoami'));
      } catch (e) {
        // Whatever the API blames, the one thing to fix here is the token.
        showError(form, e.code === 'network' ? e : new ApiError(e.status, e.code, e.message, 'token'));
      }
    });
  });
  const main = $('#main');
  main.replaceChildren(form);
  token.focus();
}

function renderFatal(e) {
  $('#main').replaceChildren(h('div', { class: 'panel', role: 'alert' },
    h('h1', {}, 'The vfarm service did not answer'), h('p', {}, e.message),
    h('button', { class: 'btn', type: 'button', onclick: () => location.reload() }, 'Try again')));
}

// ---------------------------------------------------------------------------------------
// Live updates (Server-Sent Events)

function setLive(status, text) {
  const el = $('[data-testid="live-status"]');
  el.dataset.live = status;
  el.dataset.events = String(state.events);
  $('.live-text', el).textContent = text;
}

function connectEvents() {
  if (state.es) state.es.close();
  const es = new EventSource(`${API}/events`);
  state.es = es;
  setLive('connecting', 'connecting…');
  es.addEventListener('open', () => {
    setLive('open', 'live');
    // Resynchronise: whatever changed while the stream was down is in the list.
    loadInstances();
    if (state.jobsLoaded) loadJobs();
  });
  es.addEventListener('error', () => {
    if (es.readyState === EventSource.CLOSED) {
      // The server refused the stream (e.g. the session ended); check who we are, then retry.
      setLive('error', 'offline');
      setTimeout(async () => {
        if (state.es !== es || !state.me) return;
        try { await api('GET', '/whoami'); connectEvents(); } catch (e) { /* api() handles 401 */ }
      }, 5000);
    } else {
      setLive('error', 'reconnecting…');
    }
  });
  // Every event carries JSON with the object's id: counted, logged, then handled.
  const on = (name, handle) => es.addEventListener(name, (ev) => {
    let data;
    try { data = JSON.parse(ev.data); } catch (e) { return; }
    state.events++;
    logEvent(name, data.id, data.state ?? null);
    setLive('open', 'live');
    handle(data);
  });
  on('instance', (inst) => { upsert(inst, true); gridMemberChanged(); });
  on('instance-removed', (msg) => { removed(msg.id); gridMemberChanged(); });
  on('job', jobChanged);
  // The service dropped events for this slow reader: the lists are the truth again.
  es.addEventListener('lagged', () => {
    loadInstances();
    if (state.jobsLoaded) loadJobs();
  });
}

/** The last events received, for people debugging the page (and the end-to-end test). */
function logEvent(event, id, st) {
  const log = (window.vfarmEvents ||= []);
  log.push({ event, id, state: st, at: Date.now() });
  if (log.length > 200) log.shift();
}

function upsert(inst, live = false) {
  inst._rx = Date.now();
  const prev = state.instances.get(inst.id);
  state.instances.set(inst.id, prev ? { ...prev, ...inst } : inst);
  if (state.detail && state.detail.id === inst.id) {
    // Keep what only the detail view carries (snapshots, VM stats) when an event lacks it.
    state.detail = { ...state.detail, ...inst };
    paintDetail();
  }
  requestPaint(live ? inst.id : null);
  loadQuotaSoon();
}

function removed(id) {
  state.instances.delete(id);
  requestPaint();
  loadQuotaSoon();
  if (state.detail && state.detail.id === id) {
    state.detail = null;
    notice('This instance was destroyed.');
    location.hash = '#/instances';
  }
}

async function loadInstances() {
  try {
    const list = await api('GET', '/instances');
    const rx = Date.now();
    state.instances = new Map(list.map((i) => [i.id, { ...i, _rx: rx }]));
    paintInstances();
  } catch (e) {
    if (e.status !== 401) notice(`Cannot list instances: ${e.message}`, 'error');
  }
}

/** `fn`, called once `ms` after the last of a burst of calls. */
function debounced(fn, ms) {
  let timer = null;
  return () => { clearTimeout(timer); timer = setTimeout(fn, ms); };
}

/** Usage changes with every create and destroy; ask once per burst of events. */
const loadQuotaSoon = debounced(loadQuota, 400);
async function loadQuota() {
  try {
    state.quota = await api('GET', '/quota');
  } catch (e) {
    state.quota = null;
  }
  paintQuota();
}

function paintQuota() {
  const box = $('[data-testid="quota"]');
  if (!box) return;
  const q = state.quota;
  // Without any limit there is nothing to budget (and the service counts no usage then).
  const limited = q && q.limits && Object.values(q.limits).some((v) => v !== null && v !== undefined);
  if (!limited || !q.usage) { box.hidden = true; return; }
  const fmt = {
    instances: (v) => String(v),
    cpus_milli: (v) => String(Math.round(v) / 1000),
    memory_mib: (v) => bytes(v * 1048576),
    disk_mib: (v) => bytes(v * 1048576),
  };
  const label = { instances: 'Instances', cpus_milli: 'CPUs', memory_mib: 'Memory', disk_mib: 'Disk' };
  box.hidden = false;
  box.replaceChildren(h('span', { class: 'quota-title' }, 'Quota'), ...Object.keys(label).map((k) => {
    const used = q.usage[k] || 0, lim = q.limits[k];
    const full = lim !== null && lim !== undefined && used >= lim;
    return h('span', { class: `quota-item${full ? ' quota-full' : ''}`, title: full ? 'quota reached' : null },
      `${label[k]} `, h('b', {}, fmt[k](used)), ` / ${lim === null || lim === undefined ? '∞' : fmt[k](lim)}`);
  }));
}

async function loadImages() {
  try {
    state.images = await api('GET', '/images');
    state.imagesLoaded = true;
    paintImageChoices();
    paintJobImageChoices();
    paintImages();
  } catch (e) {
    if (e.status !== 401) notice(`Cannot list images: ${e.message}`, 'error');
  }
}

// ---------------------------------------------------------------------------------------
// Routing

function route() {
  if (!state.me) return;
  const hash = location.hash || '#/instances';
  const m = hash.match(/^#\/instances\/([^/?]+)/);
  const mj = hash.match(/^#\/jobs\/([^/?]+)/);
  const mg = hash.match(/^#\/grids\/([^/?]+)/);
  let page = 'instances';
  state.job = null;
  state.grid = null;
  if (m) renderInstance(decodeURIComponent(m[1]));
  else if (mj) { page = 'jobs'; renderJob(decodeURIComponent(mj[1])); }
  else if (mg) { page = 'grids'; renderGrid(decodeURIComponent(mg[1])); }
  else if (hash.startsWith('#/grids')) { page = 'grids'; renderGrids(); }
  else if (hash.startsWith('#/jobs')) { page = 'jobs'; renderJobs(); }
  else if (hash.startsWith('#/images')) { page = 'images'; renderImages(); }
  else if (hash.startsWith('#/hosts')) { page = 'hosts'; renderHosts(); } else renderInstances();
  for (const a of $$('.nav a')) {
    if (a.dataset.route === page) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
}

function mount(...nodes) {
  const main = $('#main');
  main.replaceChildren(...nodes);
  main.focus({ preventScroll: true });
}

// ---------------------------------------------------------------------------------------
// Instances page

function renderInstances() {
  state.detail = null;
  document.title = 'Instances · vfarm';
  const filter = h('input', { type: 'search', placeholder: 'Filter: name, owner, host…', 'aria-label': 'Filter instances', testid: 'instances-filter' });
  filter.addEventListener('input', () => paintInstances());
  const table = h('table', { testid: 'instances-table', 'aria-label': 'Instances' },
    h('thead', {}, h('tr', {}, COLUMNS.map(([key, label]) => h('th', { scope: 'col', 'data-sort': key },
      h('button', { type: 'button', class: 'sort', testid: `sort-${key}`, onclick: () => sortBy(key) }, label))))),
    h('tbody', {}));
  mount(
    h('div', { class: 'page-head' }, h('h1', {}, 'Instances'),
      h('span', { class: 'sub' }, state.me.admin ? 'all owners (admin view)' : `owned by ${state.me.user}`)),
    h('div', { class: 'grid' },
      h('section', { class: 'panel', 'aria-labelledby': 'inst-h' },
        h('h2', { id: 'inst-h' }, 'vNodes', h('span', { class: 'count', testid: 'instances-summary' })),
        h('div', { class: 'toolbar' }, filter),
        h('div', { class: 'table-wrap' }, table),
        h('p', { class: 'empty', testid: 'instances-empty', hidden: true }),
        h('button', { type: 'button', class: 'btn', testid: 'instances-more', hidden: true,
          onclick: () => { state.showAll = true; paintInstances(); } })),
      deployForm()));
  paintInstances();
  paintImageChoices();
  // Images built since (here or with the CLI) are offered when the page opens again.
  if (state.imagesLoaded) loadImages();
  paintQuota();
  loadQuota();
  loadUsage();
}

// The service samples every 5 s; the table follows at that pace while it is shown.
const USAGE_REFRESH_MS = 5000;
let usageTimer = null;
async function loadUsage() {
  clearTimeout(usageTimer);
  // Left the pages that show usage (the table, an instance's page).
  if (!$('[data-testid="instances-table"]') && !$('[data-testid="instance-stats"]')) return;
  try {
    const list = await api('GET', '/stats');
    state.usage = new Map(list.map((u) => [u.id, u]));
    requestPaint();
    if (state.detail) paintDetail();
  } catch (e) {
    // A service without a sampler (503) has no figures: the columns stay empty.
    if (e.status !== 401 && e.status !== 503) notice(`Cannot read usage: ${e.message}`, 'error');
  }
  usageTimer = setTimeout(loadUsage, USAGE_REFRESH_MS);
}

const fmt1 = (v) => (v == null ? '–' : v.toFixed(1));
const mib = (b) => `${Math.round(b / 1048576)}`;

/** The window's history as a small line chart (SVG: no chart library). */
function sparkline(values, testid, unit, scale) {
  const NS = 'http://www.w3.org/2000/svg';
  const [w, ht] = [160, 28];
  // Against a fixed scale (100 % of one CPU, the memory limit) when there is one.
  const top = Math.max(...values, scale || 1);
  const x = (i) => (values.length > 1 ? (i / (values.length - 1)) * w : w / 2);
  const svg = document.createElementNS(NS, 'svg');
  for (const [k, v] of Object.entries({ viewBox: `0 0 ${w} ${ht}`, width: w, height: ht, class: 'spark', 'data-testid': testid,
    'data-points': values.length, role: 'img', 'aria-label': `${values.length} samples, last ${fmt1(values[values.length - 1])} ${unit}` })) {
    svg.setAttribute(k, String(v));
  }
  const line = document.createElementNS(NS, 'polyline');
  line.setAttribute('points', values.map((v, i) => `${x(i).toFixed(1)},${(ht - 1 - (v / top) * (ht - 2)).toFixed(1)}`).join(' '));
  svg.append(line);
  return svg;
}

/** A usage cell: the figure now, avg/max of the window in its title. */
function usageCell(i, key) {
  const u = state.usage.get(i.id);
  if (!u || !u.now) return h('td', { class: 'num', testid: `instance-${key}` }, '–');
  const n = u.now;
  const w = (f) => (u.avg && u.max ? `avg ${f(u.avg)} · max ${f(u.max)} over ${Math.round(u.window_secs)} s` : '');
  const cells = {
    cpu: [n.cpu_percent, `${fmt1(n.cpu_percent)} %`, w((r) => `${fmt1(r.cpu_percent)} %`) + ` · of ${u.cpus} CPU${u.cpus === 1 ? '' : 's'}`],
    memory: [n.memory_bytes, `${mib(n.memory_bytes)}${u.memory_limit_bytes ? ` / ${mib(u.memory_limit_bytes)}` : ''} MiB`, w((r) => `${mib(r.memory_bytes)} MiB`)],
    disk: [n.disk_read_kbps + n.disk_write_kbps, `${fmt1(n.disk_read_kbps)} / ${fmt1(n.disk_write_kbps)}`, `read / write KB/s; ${w((r) => `${fmt1(r.disk_read_kbps)} / ${fmt1(r.disk_write_kbps)}`)}`],
    net: [(n.net_rx_kbps ?? 0) + (n.net_tx_kbps ?? 0), n.net_rx_kbps == null ? '–' : `${fmt1(n.net_rx_kbps)} / ${fmt1(n.net_tx_kbps)}`, `rx / tx KB/s; ${w((r) => `${fmt1(r.net_rx_kbps)} / ${fmt1(r.net_tx_kbps)}`)}`],
  };
  const [value, text, title] = cells[key];
  return h('td', { class: 'num', testid: `instance-${key}`, 'data-value': String(value), title }, text);
}

// A burst of events (a hundred creates at once) repaints the table once, not a hundred times.
let paintTimer = null;
const flashIds = new Set();
function requestPaint(flashId) {
  if (flashId) flashIds.add(flashId);
  if (paintTimer) return;
  paintTimer = setTimeout(() => {
    paintTimer = null;
    const ids = new Set(flashIds);
    flashIds.clear();
    paintInstances(ids);
  }, 50);
}

const PAGE_ROWS = 500;

// Sortable columns: key, header, the value compared (null sorts last).
const COLUMNS = [
  ['name', 'Instance', (i) => instLabel(i)],
  ['state', 'State', (i) => i.state],
  ['owner', 'Owner', (i) => i.owner],
  ['hostname', 'Hostname', (i) => i.hostname],
  ['image', 'Image', (i) => imageLabel(i)],
  ['driver', 'Driver', (i) => i.driver],
  ['uptime', 'Uptime', (i) => (['running', 'paused'].includes(i.state) ? uptimeNow(i) : null)],
  ['expiry', 'Expires in', (i) => expiryNow(i)],
  ['cpu', 'CPU %', (i) => state.usage.get(i.id)?.now?.cpu_percent ?? null],
  ['memory', 'Memory', (i) => state.usage.get(i.id)?.now?.memory_bytes ?? null],
  ['disk', 'Disk R/W KB/s', (i) => { const n = state.usage.get(i.id)?.now; return n ? n.disk_read_kbps + n.disk_write_kbps : null; }],
  ['net', 'Net RX/TX KB/s', (i) => { const n = state.usage.get(i.id)?.now; return n && n.net_rx_kbps != null ? n.net_rx_kbps + n.net_tx_kbps : null; }],
];

function sortBy(key) {
  const cur = state.sort;
  state.sort = cur && cur.key === key ? { key, dir: -cur.dir } : { key, dir: 1 };
  paintInstances();
}

function compareRows(a, b) {
  const s = state.sort;
  if (!s) return (b.created || '').localeCompare(a.created || ''); // newest first
  const get = COLUMNS.find(([k]) => k === s.key)[2];
  const x = get(a), y = get(b);
  if (x === null || x === undefined) return (y === null || y === undefined) ? 0 : 1;
  if (y === null || y === undefined) return -1;
  const c = typeof x === 'number' && typeof y === 'number' ? x - y : String(x).localeCompare(String(y));
  return c * s.dir;
}

function paintInstances(flash = new Set()) {
  const table = $('[data-testid="instances-table"]');
  if (!table) return;
  const q = ($('[data-testid="instances-filter"]')?.value || '').trim().toLowerCase();
  const all = [...state.instances.values()].sort(compareRows);
  for (const th of $$('th[data-sort]', table)) {
    const s = state.sort && state.sort.key === th.dataset.sort ? state.sort.dir : 0;
    if (s) th.setAttribute('aria-sort', s > 0 ? 'ascending' : 'descending'); else th.removeAttribute('aria-sort');
  }
  const shown = all.filter((i) => !q || [i.name, i.id, i.owner, i.hostname, i.host, i.image_name, i.image, i.state, i.driver]
    .some((v) => v && String(v).toLowerCase().includes(q)));
  // Thousands of rows are no use to a person; the filter finds the rest.
  const limit = state.showAll ? shown.length : PAGE_ROWS;
  const rows = shown.slice(0, limit).map((i) => h('tr', { testid: 'instance-row', 'data-id': i.id, 'data-name': i.name || '', 'data-owner': i.owner, 'data-state': i.state, class: flash.has(i.id) ? 'flash' : null },
    h('td', {}, h('a', { class: 'inst', href: `#/instances/${encodeURIComponent(i.id)}`, testid: 'instance-link' }, instLabel(i)),
      h('span', { class: 'id' }, short(i.id))),
    h('td', {}, stateBadge(i.state), i.error ? h('span', { class: 'id', title: i.error }, i.error.slice(0, 40)) : null),
    h('td', { class: 'mono', testid: 'instance-owner' }, i.owner),
    h('td', { class: 'mono' }, i.hostname || '–', i.host ? h('span', { class: 'id', testid: 'instance-host' }, `on ${i.host}`) : null),
    h('td', {}, imageLabel(i)),
    h('td', {}, h('span', { class: `badge badge-driver-${i.driver}` }, i.driver)),
    h('td', { class: 'num' }, tickCell('uptime', i)),
    h('td', { class: 'num' }, tickCell('expiry', i)),
    ...['cpu', 'memory', 'disk', 'net'].map((k) => usageCell(i, k))));
  table.tBodies[0].replaceChildren(...rows);
  const running = all.filter((i) => i.state === 'running').length;
  $('[data-testid="instances-summary"]').textContent = `${all.length} total · ${running} running`;
  const empty = $('[data-testid="instances-empty"]');
  empty.hidden = shown.length > 0;
  empty.textContent = all.length ? 'No instance matches the filter.' : 'No instances yet. Deploy one with the form.';
  table.hidden = shown.length === 0;
  const more = $('[data-testid="instances-more"]');
  more.hidden = shown.length <= limit;
  more.textContent = `Show all ${shown.length} (${shown.length - limit} more)`;
}

function deployForm() {
  const image = h('select', { required: true });
  // Opening the list asks again: an image built meanwhile (elsewhere) is offered.
  image.addEventListener('focus', () => { if (state.imagesLoaded) loadImages(); });
  const name = h('input', { type: 'text', pattern: '[a-z0-9-]*', placeholder: 'web-01', autocomplete: 'off' });
  const hostname = h('input', { type: 'text', placeholder: 'from the pool', autocomplete: 'off' });
  const driver = h('select', {}, h('option', { value: 'oci' }, 'oci (container)'), h('option', { value: 'qemu' }, 'qemu (full VM)'));
  // The site's networks (serve.toml): the default one unless another or none is chosen.
  const network = h('select', {}, h('option', { value: '' }, 'the site default'));
  api('GET', '/networks').then((nets) => {
    network.replaceChildren(
      h('option', { value: '' }, nets.some((n) => n.default) ? `default: ${nets.find((n) => n.default).name}` : 'none (the site defines no network)'),
      ...nets.filter((n) => !n.default).map((n) => h('option', { value: n.name }, `${n.name} (${n.kind}, ${n.subnet})`)),
      h('option', { value: 'none' }, 'none (loopback only)'));
  }).catch(() => {});
  const cpus = h('input', { type: 'number', min: '0.1', step: '0.1', placeholder: '1', inputmode: 'decimal' });
  const memory = h('input', { type: 'text', placeholder: '512M' });
  const disk = h('input', { type: 'text', placeholder: '10G' });
  const expiry = h('input', { type: 'text', placeholder: 'default' });
  const ssh = h('textarea', { rows: '3', placeholder: 'ssh-ed25519 AAAA… you@host', spellcheck: 'false' });
  const reserve = h('input', { type: 'checkbox', id: 'deploy-reserve', name: 'reserve', testid: 'deploy-reserve' });
  const submit = h('button', { type: 'submit', class: 'btn btn-primary', testid: 'deploy-submit' }, 'Deploy');
  const form = h('form', { class: 'panel', testid: 'deploy-form', 'aria-labelledby': 'deploy-h', novalidate: true },
    h('h2', { id: 'deploy-h' }, 'Deploy a vNode'),
    h('p', { class: 'form-error', hidden: true, tabindex: '-1', testid: 'deploy-error' }),
    fieldBlock('deploy', { name: 'image', label: 'Image', control: image, testid: 'deploy-image' }),
    h('div', { class: 'row' },
      fieldBlock('deploy', { name: 'name', label: 'Name', control: name, testid: 'deploy-name', hint: 'a-z, 0-9 and -' }),
      fieldBlock('deploy', { name: 'driver', label: 'Driver', control: driver, testid: 'deploy-driver' })),
    h('div', { class: 'row' },
      fieldBlock('deploy', { name: 'hostname', label: 'Hostname', control: hostname, testid: 'deploy-hostname' }),
      fieldBlock('deploy', { name: 'network', label: 'Network', control: network, testid: 'deploy-network' })),
    h('div', { class: 'row' },
      fieldBlock('deploy', { name: 'cpus', label: 'CPUs', control: cpus, testid: 'deploy-cpus' }),
      fieldBlock('deploy', { name: 'memory', label: 'Memory', control: memory, testid: 'deploy-memory' })),
    h('div', { class: 'row' },
      fieldBlock('deploy', { name: 'disk', label: 'Disk', control: disk, testid: 'deploy-disk' }),
      fieldBlock('deploy', { name: 'expiry', label: 'Expires after', control: expiry, testid: 'deploy-expiry', hint: 'e.g. 2h, 1d' })),
    fieldBlock('deploy', { name: 'ssh_keys', label: 'SSH public keys', control: ssh, testid: 'deploy-sshkey', hint: 'one per line; for qemu VMs (full profile)' }),
    h('div', { class: 'check-line', 'data-field': 'reserve' }, reserve,
      h('label', { for: 'deploy-reserve' }, 'Reserve only: hold resources and the hostname, start later')),
    h('div', { class: 'quota', testid: 'quota', hidden: true }),
    h('div', { class: 'actions-line' }, submit));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearErrors(form);
    const body = { image: image.value, driver: driver.value };
    if (!body.image) return showError(form, new ApiError(400, 'invalid_request', 'choose an image (build or import one first)', 'image'));
    if (name.value.trim()) body.name = name.value.trim();
    if (hostname.value.trim()) body.hostname = hostname.value.trim();
    if (network.value) body.network = network.value;
    if (cpus.value.trim()) {
      const n = Number(cpus.value);
      if (!isFinite(n) || n <= 0) return showError(form, new ApiError(400, 'invalid_request', 'CPUs must be a positive number', 'cpus'));
      body.cpus = n;
    }
    if (memory.value.trim()) body.memory = memory.value.trim();
    if (disk.value.trim()) body.disk = disk.value.trim();
    if (expiry.value.trim()) body.expiry = expiry.value.trim();
    const keys = ssh.value.split('\n').map((l) => l.trim()).filter(Boolean);
    if (keys.length) body.ssh_keys = keys;
    if (reserve.checked) body.reserve = true;
    await busy(submit, async () => {
      try {
        const res = await api('POST', '/instances', body);
        const inst = res.instance || res;
        upsert(inst, true);
        notice(`${reserve.checked ? 'Reserved' : 'Deploying'} ${instLabel(inst)} (${short(inst.id)})`);
        name.value = '';
        hostname.value = '';
      } catch (e) {
        showError(form, e, { ssh_key: 'ssh_keys', memory_mib: 'memory', vcpus: 'cpus', body: null });
      }
    });
  });
  return form;
}

function paintImageChoices() {
  const sel = $('[data-testid="deploy-image"]');
  if (!sel) return;
  const keep = sel.value;
  const opts = state.images.map((im) => h('option', { value: im.id },
    `${im.name || short(im.id)} — ${[im.os, im.os_version, im.arch].filter(Boolean).join(' ') || im.summary || ''}`));
  if (!opts.length) opts.push(h('option', { value: '' }, state.imagesLoaded ? 'no images yet: build one on the Images page' : 'loading…'));
  sel.replaceChildren(...opts);
  if (keep && state.images.some((im) => im.id === keep)) sel.value = keep;
}

// ---------------------------------------------------------------------------------------
// Instance page

async function renderInstance(ref) {
  document.title = 'Instance · vfarm';
  const known = state.instances.get(ref);
  state.detail = known ? { ...known } : { id: ref, state: 'unknown', _partial: true };
  const consolePre = h('pre', { class: 'console', testid: 'console-log', tabindex: '0', 'aria-label': 'Console log' }, 'loading…');
  const snapName = h('input', { type: 'text', placeholder: 'before-upgrade', autocomplete: 'off' });
  const snapBtn = h('button', { type: 'submit', class: 'btn', testid: 'snapshot-create' }, 'Take snapshot');
  const snapForm = h('form', { class: 'inline-form', testid: 'snapshot-form', novalidate: true },
    fieldBlock('snap', { name: 'name', label: 'Snapshot name', control: snapName, testid: 'snapshot-name' }),
    h('div', { class: 'field' }, h('label', { 'aria-hidden': 'true' }, '\u00a0'), snapBtn));
  snapForm.prepend(h('p', { class: 'form-error', hidden: true, tabindex: '-1' }));
  snapForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearErrors(snapForm);
    if (!snapName.value.trim()) return showError(snapForm, new ApiError(400, 'invalid_request', 'a snapshot needs a name', 'name'));
    await busy(snapBtn, async () => {
      try {
        await api('POST', `/instances/${encodeURIComponent(state.detail.id)}/snapshots`, { name: snapName.value.trim() });
        notice(`Snapshot ${snapName.value.trim()} taken`);
        snapName.value = '';
        await refreshDetail();
      } catch (e) { showError(snapForm, e, { snapshot: 'name' }); }
    });
  });
  mount(
    h('div', { class: 'crumbs' }, h('a', { href: '#/instances' }, 'Instances'), ' / ', h('span', { testid: 'crumb-name' }, ref)),
    h('div', { class: 'page-head', testid: 'instance-page' },
      h('h1', { testid: 'instance-title' }, instLabel(state.detail)), h('span', { testid: 'instance-head-state' })),
    h('section', { class: 'panel', 'aria-label': 'Actions' }, h('div', { class: 'bar', testid: 'instance-actions' })),
    h('div', { class: 'grid-2' },
      h('section', { class: 'panel', 'aria-labelledby': 'det-h' }, h('h2', { id: 'det-h' }, 'Details'), h('div', { testid: 'instance-details' })),
      h('section', { class: 'panel', 'aria-labelledby': 'res-h' }, h('h2', { id: 'res-h' }, 'Resources and stats'), h('div', { testid: 'instance-stats' }))),
    h('section', { class: 'panel', 'aria-labelledby': 'con-h' },
      h('h2', { id: 'con-h' }, 'Console log',
        h('button', { type: 'button', class: 'btn btn-sm', testid: 'console-refresh', onclick: () => loadConsole() }, 'Refresh')),
      consolePre),
    h('section', { class: 'panel', 'aria-labelledby': 'exec-h' },
      h('h2', { id: 'exec-h' }, 'Run a command'), execForm(), h('pre', { class: 'console', testid: 'exec-output', hidden: true, tabindex: '0', 'aria-label': 'Command output' })),
    h('section', { class: 'panel', 'aria-labelledby': 'snap-h' },
      h('h2', { id: 'snap-h' }, 'Snapshots', h('span', { class: 'count', testid: 'snapshots-count' })),
      h('div', { testid: 'snapshots' }), snapForm));
  paintDetail();
  await refreshDetail();
  loadConsole();
  loadUsage();
}

/** The sampler's view of an instance for its page: sparklines of the last minutes. */
function usageRows(u) {
  if (!u || !u.history || !u.history.length) return [];
  const hist = u.history;
  return [
    [`CPU (${Math.round(u.window_secs / 60) || '<1'} min)`, [sparkline(hist.map((r) => r.cpu_percent), 'spark-cpu', '%', 100),
      ` ${fmt1(u.now.cpu_percent)} % of one CPU now, max ${fmt1(u.max.cpu_percent)} %`]],
    ['Memory used', [sparkline(hist.map((r) => r.memory_bytes / 1048576), 'spark-memory', 'MiB', u.memory_limit_bytes / 1048576),
      ` ${mib(u.now.memory_bytes)}${u.memory_limit_bytes ? ` of ${mib(u.memory_limit_bytes)}` : ''} MiB`]],
  ];
}

function execForm() {
  const cmd = h('input', { type: 'text', placeholder: 'cat /etc/os-release', spellcheck: 'false', autocomplete: 'off' });
  const run = h('button', { type: 'submit', class: 'btn', testid: 'exec-run' }, 'Run');
  const form = h('form', { class: 'inline-form', testid: 'exec-form', novalidate: true },
    fieldBlock('exec', { name: 'command', label: 'Command', control: cmd, testid: 'exec-command', hint: 'runs with sh -c inside the instance; the output comes back when it ends' }),
    h('div', { class: 'field' }, h('label', { 'aria-hidden': 'true' }, '\u00a0'), run));
  form.prepend(h('p', { class: 'form-error', hidden: true, tabindex: '-1' }));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearErrors(form);
    const d = state.detail;
    if (!d) return;
    if (!cmd.value.trim()) return showError(form, new ApiError(400, 'invalid_request', 'type a command', 'command'));
    const out = $('[data-testid="exec-output"]');
    await busy(run, async () => {
      try {
        const r = await api('POST', `/instances/${encodeURIComponent(d.id)}/exec`, { command: ['sh', '-c', cmd.value] });
        out.replaceChildren(
          h('span', { class: r.exit_code === 0 ? 'exit-ok' : 'exit-bad', testid: 'exec-exit' }, `$ ${cmd.value}   (exit ${r.exit_code})\n`),
          r.stdout || '', r.stderr ? h('span', { class: 'stderr' }, r.stderr) : '');
        out.hidden = false;
      } catch (e) { showError(form, e, { env: 'command' }); }
    });
  });
  return form;
}

async function refreshDetail() {
  if (!state.detail) return;
  const ref = state.detail.id;
  try {
    const d = await api('GET', `/instances/${encodeURIComponent(ref)}`);
    if (!state.detail || (state.detail.id !== ref && state.detail.id !== d.id)) return;
    d._rx = Date.now();
    state.detail = d;
    paintDetail();
  } catch (e) {
    if (e.status === 404) {
      $('#main').replaceChildren(h('div', { class: 'panel', role: 'alert', testid: 'instance-missing' },
        h('h1', {}, 'No such instance'),
        h('p', {}, `There is no instance “${ref}” that you may see. It may have been destroyed.`),
        h('a', { href: '#/instances' }, 'Back to the instances')));
      state.detail = null;
    } else notice(e.message, 'error');
  }
}

async function loadConsole() {
  const pre = $('[data-testid="console-log"]');
  if (!pre || !state.detail) return;
  try {
    const text = await api('GET', `/instances/${encodeURIComponent(state.detail.id)}/console`);
    // A serial console carries the guest's colours and cursor moves: shown as plain text.
    const plain = typeof text === 'string' ? text.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '') : JSON.stringify(text, null, 2);
    pre.textContent = plain || '(empty)';
    pre.scrollTop = pre.scrollHeight;
  } catch (e) {
    pre.textContent = `(no console log: ${e.message})`;
  }
}

/** Run an instance action, then show the state the server answered with. */
async function act(button, label, method, path, body) {
  const d = state.detail;
  if (!d) return;
  await busy(button, async () => {
    try {
      const res = await api(method, `/instances/${encodeURIComponent(d.id)}${path}`, body);
      if (res && res.id && res.state) upsert(res);
      notice(`${label}: ${instLabel(d)}`);
    } catch (e) {
      notice(`${label} failed: ${e.message} (${e.code})`, 'error');
    }
  });
  // busy() re-enabled the button; the state decides again what may be pressed.
  paintDetail();
}

function buildActions(bar) {
  const cur = () => state.detail;
  const btn = (testid, label, enabledIn, onclick, cls = 'btn') =>
    h('button', { type: 'button', class: cls, testid, 'data-enabled-in': enabledIn, onclick: (ev) => onclick(ev.currentTarget) }, label);
  const extendIn = h('input', { type: 'text', value: '1h', 'aria-label': 'Extend expiry by', testid: 'extend-by' });
  bar.replaceChildren(
    btn('action-start', 'Start', 'created stopped failed', (b) => act(b, 'Started', 'POST', '/start')),
    btn('action-stop', 'Stop', 'running paused', (b) => act(b, 'Stopped', 'POST', '/stop', {})),
    btn('action-kill', 'Force stop', 'running paused', (b) => act(b, 'Killed', 'POST', '/stop', { force: true })),
    btn('action-pause', 'Pause', 'running', (b) => act(b, 'Paused', 'POST', '/pause')),
    btn('action-resume', 'Resume', 'paused', (b) => act(b, 'Resumed', 'POST', '/resume')),
    h('span', { class: 'sep', 'aria-hidden': 'true' }),
    h('span', { class: 'extend' }, extendIn,
      btn('action-extend', 'Extend expiry', '*', (b) => {
        if (!extendIn.value.trim()) return notice('Extend by how long? e.g. 2h', 'error');
        return act(b, `Extended by ${extendIn.value.trim()}`, 'POST', '/extend', { by: extendIn.value.trim() });
      })),
    h('span', { class: 'sep', 'aria-hidden': 'true' }),
    btn('action-destroy', 'Destroy…', '*', async (b) => {
      const d = cur();
      if (!d) return;
      const ok = await confirmDialog(`Destroy ${instLabel(d)}?`,
        'The instance, its disk changes and its snapshots are deleted, and its hostname returns to the pool. This cannot be undone.',
        'Destroy');
      if (!ok) return;
      await busy(b, async () => {
        try {
          await api('DELETE', `/instances/${encodeURIComponent(d.id)}`);
          state.detail = null;
          removed(d.id);
          notice(`Destroyed ${instLabel(d)}`);
          location.hash = '#/instances';
        } catch (e) { notice(`Destroy failed: ${e.message} (${e.code})`, 'error'); }
      });
    }, 'btn btn-danger'));
}

function paintDetail() {
  const d = state.detail;
  const bar = $('[data-testid="instance-actions"]');
  if (!d || !bar) return;
  document.title = `${instLabel(d)} · vfarm`;
  $('[data-testid="instance-title"]').textContent = instLabel(d);
  $('[data-testid="crumb-name"]').textContent = instLabel(d);
  $('[data-testid="instance-head-state"]').replaceChildren(d._partial ? '' : stateBadge(d.state, 'detail-state'));
  // Built once per page, so an event arriving while someone types in "extend by" keeps it.
  if (!bar.dataset.built) { buildActions(bar); bar.dataset.built = '1'; }
  for (const b of $$('button[data-enabled-in]', bar)) {
    const when = b.dataset.enabledIn;
    b.disabled = Boolean(d._partial) || (when !== '*' && !when.split(' ').includes(d.state));
  }

  $('[data-testid="instance-details"]').replaceChildren(d._partial ? h('p', { class: 'muted' }, 'loading…') : kv([
    ['ID', h('span', { class: 'mono' }, d.id)],
    ['Name', d.name],
    ['State', stateBadge(d.state, 'detail-state-kv')],
    ['Owner', h('span', { class: 'mono' }, d.owner)],
    ['Hostname', d.hostname ? h('span', { class: 'mono' }, d.hostname) : null],
    ['Network', d.network ? h('span', { testid: 'instance-network' }, d.network) : null],
    ['Address', d.address ? h('span', { class: 'mono', testid: 'instance-address' }, d.address) : null],
    ['Log in', d.ssh_command ? h('code', { testid: 'ssh-login' }, d.ssh_command) : null],
    ['Image', [imageLabel(d), ' ', h('span', { class: 'id', style: 'display:inline' }, short(d.image))]],
    ['Driver', d.driver],
    ['Created', when(d.created)],
    ['Started', d.started ? when(d.started) : null],
    ['Uptime', tickCell('uptime', d)],
    ['Expires', d.expires ? [when(d.expires), ' (in ', tickCell('expiry', d), ')'] : 'never'],
    ['Exit code', d.exit_code],
    ['Error', d.error ? h('span', { class: 'field-error' }, d.error) : null],
  ]));

  const spec = d.spec || {};
  const st = d.stats;
  $('[data-testid="instance-stats"]').replaceChildren(d._partial ? h('p', { class: 'muted' }, 'loading…') : kv([
    ['CPUs', d.vcpus ?? spec.cpus],
    ['Memory', d.memory_mib ? `${d.memory_mib} MiB` : (typeof spec.memory === 'number' ? bytes(spec.memory) : spec.memory)],
    ['Disk', typeof spec.disk === 'number' ? bytes(spec.disk) : spec.disk],
    ['Command', Array.isArray(spec.command) && spec.command.length ? h('code', {}, spec.command.join(' ')) : null],
    ['Accelerator', d.accel ? [d.accel, d.accel_note ? h('span', { class: 'hint' }, ` — ${d.accel_note}`) : null] : null],
    ['Boot profile', d.profile],
    ['SSH', d.ssh ? h('code', { testid: 'ssh-command' }, d.ssh.command) : null],
    ['Host CPU time', st ? `${st.cpu_time_secs.toFixed(1)} s` : null],
    ['Resident memory', st ? bytes(st.rss_bytes) : null],
    ['Disk I/O', st && st.block && st.block.length ? st.block.map((b) => `${b.device}: ${bytes(b.rd_bytes)} read, ${bytes(b.wr_bytes)} written`).join('; ') : null],
    ['Network', st && st.net ? `${bytes(st.net.rx_bytes)} in, ${bytes(st.net.tx_bytes)} out` : null],
    ...usageRows(state.usage.get(d.id)),
  ]));
  if (!$('[data-testid="instance-stats"] dd')) {
    $('[data-testid="instance-stats"]').replaceChildren(h('p', { class: 'muted' }, 'No resource figures for this instance.'));
  }

  const snaps = d.snapshots || [];
  $('[data-testid="snapshots-count"]').textContent = d.snapshots ? `${snaps.length}` : '';
  const snapBox = $('[data-testid="snapshots"]');
  if (!snaps.length) {
    snapBox.replaceChildren(h('p', { class: 'muted' }, d.snapshots ? 'No snapshots yet.' : 'loading…'));
    return;
  }
  snapBox.replaceChildren(h('div', { class: 'table-wrap' }, h('table', { testid: 'snapshots-table' },
    h('thead', {}, h('tr', {}, ['Name', 'Taken', 'Size', ''].map((c) => h('th', { scope: 'col' }, c)))),
    h('tbody', {}, snaps.map((sn) => h('tr', { testid: 'snapshot-row', 'data-name': sn.name },
      h('td', { class: 'mono' }, sn.name),
      h('td', {}, when(sn.created)),
      h('td', { class: 'num' }, bytes(sn.size)),
      h('td', {}, h('div', { class: 'actions-line' },
        h('button', { type: 'button', class: 'btn btn-sm', testid: 'snapshot-revert', 'aria-label': `Revert to snapshot ${sn.name}`,
          onclick: async (ev) => {
            const ok = await confirmDialog(`Revert to ${sn.name}?`, 'Changes made since this snapshot are lost.', 'Revert');
            if (!ok) return;
            await act(ev.target, `Reverted to ${sn.name}`, 'POST', `/snapshots/${encodeURIComponent(sn.name)}/revert`);
            refreshDetail();
          } }, 'Revert'),
        h('button', { type: 'button', class: 'btn btn-sm btn-danger', testid: 'snapshot-remove', 'aria-label': `Remove snapshot ${sn.name}`,
          onclick: async (ev) => {
            const ok = await confirmDialog(`Remove snapshot ${sn.name}?`, 'The snapshot is deleted; the instance is not changed.', 'Remove');
            if (!ok) return;
            await act(ev.target, `Removed snapshot ${sn.name}`, 'DELETE', `/snapshots/${encodeURIComponent(sn.name)}`);
            refreshDetail();
          } }, 'Remove')))))))));
}

// ---------------------------------------------------------------------------------------
// Jobs page: batch jobs in disposable instances

const JOB_ORDER = ['queued', 'starting', 'running', 'succeeded', 'failed', 'cancelled'];
const jobFinal = (st) => ['succeeded', 'failed', 'cancelled'].includes(st);
/** How far a job has got: an answer sent before a `job` event must not undo it. */
const jobRank = (st) => (jobFinal(st) ? 3 : Math.max(0, JOB_ORDER.indexOf(st)));
/** `next` over `prev`, but never back to an earlier state (their ranks decide). */
function jobMerge(prev, next) {
  if (!prev || jobRank(next.state) >= jobRank(prev.state)) return { ...prev, ...next };
  const { state: _s, reason: _r, exit_code: _x, ended: _e, ...rest } = next;
  return { ...prev, ...rest };
}
const jobImage = (j) => {
  const im = state.images.find((i) => i.id === j.image);
  return im && im.name ? im.name : short(j.image);
};
/** An argument as a shell would need it typed: quoted when it has spaces or quotes. */
const shellWord = (a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, "'\\''")}'`);
const jobOutputHref = (j, name) => `${API}/jobs/${encodeURIComponent(j.id)}/outputs/${encodeURIComponent(name)}`;

async function loadJobs() {
  try {
    const list = await api('GET', '/jobs');
    state.jobs = new Map(list.map((j) => [j.id, jobMerge(state.jobs.get(j.id), j)]));
    state.jobsLoaded = true;
    paintJobs();
  } catch (e) {
    if (e.status !== 401) notice(`Cannot list jobs: ${e.message}`, 'error');
  }
}

const loadJobsSoon = debounced(loadJobs, 300);

/** A `job` event: its id, owner, state, reason, exit code and end time. */
function jobChanged(ch) {
  const prev = state.jobs.get(ch.id);
  if (prev) {
    state.jobs.set(ch.id, jobMerge(prev, ch));
    paintJobs(new Set([ch.id]));
  } else if (state.jobsLoaded) {
    // Submitted elsewhere (the CLI, another page): the list has its other columns.
    loadJobsSoon();
  }
  if (state.job && state.job.id === ch.id) {
    state.job = jobMerge(state.job, ch);
    paintJob();
    // The event carries the state only; outputs and events come with the job.
    refreshJobSoon();
  }
}

function renderJobs() {
  state.detail = null;
  document.title = 'Jobs · vfarm';
  const cols = ['Job', 'State', 'End reason', 'Exit code', 'Image', state.me.admin ? 'Owner' : null, 'Submitted', 'Ended'];
  mount(
    h('div', { class: 'page-head' }, h('h1', {}, 'Jobs'),
      h('span', { class: 'sub' }, state.me.admin ? 'all owners (admin view)' : `submitted by ${state.me.user}`)),
    h('div', { class: 'grid' },
      h('section', { class: 'panel', 'aria-labelledby': 'jobs-h' },
        h('h2', { id: 'jobs-h' }, 'Batch jobs', h('span', { class: 'count', testid: 'jobs-summary' })),
        h('div', { class: 'table-wrap' }, h('table', { testid: 'jobs-table', 'aria-label': 'Jobs' },
          h('thead', {}, h('tr', {}, cols.filter(Boolean).map((c) => h('th', { scope: 'col' }, c)))),
          h('tbody', {}))),
        h('p', { class: 'empty', testid: 'jobs-empty', hidden: true },
          'No jobs yet. Submit one with the form, or with ', h('code', {}, 'vfarm job submit'), '.')),
      h('div', {},
        jobForm(),
        h('section', { class: 'panel panel-warn', testid: 'job-warnings', role: 'status', hidden: true }))));
  paintJobs();
  paintJobImageChoices();
  loadJobs();
}

function paintJobs(flash = new Set()) {
  const table = $('[data-testid="jobs-table"]');
  if (!table) return;
  const all = [...state.jobs.values()].sort((a, b) => b.id - a.id);
  const admin = state.me && state.me.admin;
  // Thousands of rows are no use to a person: the newest, and the CLI for the rest.
  const rows = all.slice(0, PAGE_ROWS).map((j) => h('tr', { testid: 'job-row', 'data-id': j.id, 'data-state': j.state, 'data-owner': j.owner, class: flash.has(j.id) ? 'flash' : null },
    h('td', { class: 'nowrap' }, h('a', { class: 'inst', href: `#/jobs/${encodeURIComponent(j.id)}`, testid: 'job-link' }, `job ${j.id}`),
      j.name ? h('span', { class: 'id' }, j.name) : null),
    h('td', {}, stateBadge(j.state, 'job-state'), j.error ? h('span', { class: 'id', title: j.error }, j.error.slice(0, 40)) : null),
    h('td', { testid: 'job-reason' }, j.reason || '–'),
    h('td', { class: 'num', testid: 'job-exit' }, j.exit_code ?? '–'),
    h('td', {}, jobImage(j)),
    admin ? h('td', { class: 'mono', testid: 'job-owner' }, j.owner) : null,
    h('td', { class: 'num' }, when(j.submitted)),
    h('td', { class: 'num' }, when(j.ended))));
  table.tBodies[0].replaceChildren(...rows);
  const active = all.filter((j) => !jobFinal(j.state)).length;
  $('[data-testid="jobs-summary"]').textContent = state.jobsLoaded
    ? `${all.length} total · ${active} queued or running${all.length > PAGE_ROWS ? ` · newest ${PAGE_ROWS} shown` : ''}` : '';
  $('[data-testid="jobs-empty"]').hidden = !state.jobsLoaded || all.length > 0;
  table.hidden = state.jobsLoaded && all.length === 0;
}

function paintJobImageChoices() {
  const sel = $('[data-testid="job-image"]');
  if (!sel) return;
  const keep = sel.value;
  sel.replaceChildren(h('option', { value: '' }, 'the queue\'s image'), ...state.images.map((im) => h('option', { value: im.id },
    `${im.name || short(im.id)} — ${[im.os, im.os_version, im.arch].filter(Boolean).join(' ') || im.summary || ''}`)));
  if (keep && state.images.some((im) => im.id === keep)) sel.value = keep;
}

function jobForm() {
  const mode = (value, label) => h('label', {},
    h('input', { type: 'radio', name: 'mode', value, checked: value === 'command', testid: `job-mode-${value}` }), label);
  const modes = h('fieldset', { class: 'field', 'data-field': 'mode' }, h('legend', {}, 'What to run'),
    h('div', { class: 'checks' }, mode('command', 'A command line'), mode('jsdl', 'A JSDL document')));
  const command = h('input', { type: 'text', placeholder: 'echo hello', spellcheck: 'false', autocomplete: 'off' });
  const image = h('select', {});
  const cpus = h('input', { type: 'text', placeholder: 'default', inputmode: 'decimal', autocomplete: 'off' });
  const memory = h('input', { type: 'text', placeholder: 'default', autocomplete: 'off' });
  const walltime = h('input', { type: 'text', placeholder: 'default', autocomplete: 'off' });
  const file = h('input', { type: 'file', accept: '.jsdl,.xml,application/xml,text/xml' });
  const commandPart = h('div', { testid: 'job-command-part' },
    fieldBlock('job', { name: 'command', label: 'Command', control: command, testid: 'job-command', hint: 'runs with sh -c in a fresh instance' }),
    fieldBlock('job', { name: 'image', label: 'Image', control: image, testid: 'job-image' }),
    h('div', { class: 'row-3' },
      fieldBlock('job', { name: 'cpus', label: 'CPUs', control: cpus, testid: 'job-cpus' }),
      fieldBlock('job', { name: 'memory', label: 'Memory', control: memory, testid: 'job-memory', hint: 'e.g. 512M' }),
      fieldBlock('job', { name: 'walltime', label: 'Wall time', control: walltime, testid: 'job-walltime', hint: 'e.g. 30m' })));
  const jsdlPart = h('div', { testid: 'job-jsdl-part', hidden: true },
    fieldBlock('job', { name: 'jsdl', label: 'JSDL 1.0 document', control: file, testid: 'job-jsdl',
      hint: 'a JobDefinition file; what of it vfarm cannot honour is listed after submitting' }));
  const submit = h('button', { type: 'submit', class: 'btn btn-primary', testid: 'job-submit' }, 'Submit job');
  const form = h('form', { class: 'panel', testid: 'job-form', 'aria-labelledby': 'job-h', novalidate: true },
    h('h2', { id: 'job-h' }, 'Submit a job'),
    h('p', { class: 'form-error', hidden: true, tabindex: '-1', testid: 'job-error' }),
    modes, commandPart, jsdlPart,
    h('div', { class: 'actions-line' }, submit));
  const jsdlMode = () => $('input[name="mode"]:checked', form).value === 'jsdl';
  for (const r of $$('input[name="mode"]', form)) {
    r.addEventListener('change', () => {
      clearErrors(form);
      commandPart.hidden = jsdlMode();
      jsdlPart.hidden = !jsdlMode();
    });
  }
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearErrors(form);
    const fail = (field, msg) => showError(form, new ApiError(400, 'invalid_request', msg, field));
    let send;
    const jsdl = jsdlMode();
    if (jsdl) {
      const f = file.files[0];
      if (!f) return fail('jsdl', 'choose a JSDL file');
      const text = await f.text();
      send = () => api('POST', '/jobs', text, 'application/xml');
    } else {
      if (!command.value.trim()) return fail('command', 'type a command');
      const body = { command: ['sh', '-c', command.value] };
      if (image.value) body.image = image.value;
      if (cpus.value.trim()) {
        const n = Number(cpus.value);
        if (!isFinite(n) || n <= 0) return fail('cpus', 'CPUs must be a positive number');
        body.cpus = n;
      }
      if (memory.value.trim()) body.memory = memory.value.trim();
      if (walltime.value.trim()) body.walltime = walltime.value.trim();
      send = () => api('POST', '/jobs', body);
    }
    await busy(submit, async () => {
      try {
        const res = await send();
        const job = res.job;
        state.jobs.set(job.id, jobMerge(state.jobs.get(job.id), job));
        paintJobs(new Set([job.id]));
        paintWarnings(job, res.warnings || []);
        notice(`Submitted job ${job.id}`);
        if (jsdl) file.value = ''; else command.value = '';
      } catch (e) {
        // A document is one thing to fix, whichever of its parts the API names.
        const named = e.field && e.field !== 'body' && !e.message.includes(e.field) ? `${e.field}: ${e.message}` : e.message;
        showError(form, jsdl && e.code !== 'network' ? new ApiError(e.status, e.code, named, 'jsdl') : e, { body: null });
      }
    });
  });
  return form;
}

/** What of the submitted job vfarm cannot honour (JSDL limits it parsed but does not apply). */
function paintWarnings(job, warnings) {
  const box = $('[data-testid="job-warnings"]');
  if (!box) return;
  box.hidden = warnings.length === 0;
  box.replaceChildren(h('h2', {}, `Job ${job.id}: not honoured`),
    h('ul', { class: 'warnings' }, warnings.map((w) => h('li', { testid: 'job-warning' }, w))));
}

async function renderJob(ref) {
  state.detail = null;
  document.title = `Job ${ref} · vfarm`;
  const known = [...state.jobs.values()].find((j) => String(j.id) === ref);
  state.job = known ? { ...known } : { id: ref, state: 'unknown', _partial: true };
  mount(
    h('div', { class: 'crumbs' }, h('a', { href: '#/jobs' }, 'Jobs'), ' / ', h('span', {}, `job ${ref}`)),
    h('div', { class: 'page-head', testid: 'job-page' },
      h('h1', { testid: 'job-title' }, `Job ${ref}`), h('span', { testid: 'job-head-state' })),
    h('section', { class: 'panel', 'aria-label': 'Actions' }, h('div', { class: 'bar' },
      h('button', { type: 'button', class: 'btn btn-danger', testid: 'job-cancel', onclick: (ev) => cancelJob(ev.currentTarget) }, 'Cancel job…'),
      h('span', { class: 'muted', testid: 'job-cancel-note' }))),
    h('div', { class: 'grid-2' },
      h('section', { class: 'panel', 'aria-labelledby': 'jobdet-h' }, h('h2', { id: 'jobdet-h' }, 'Details'), h('div', { testid: 'job-details' })),
      h('section', { class: 'panel', 'aria-labelledby': 'jobout-h' }, h('h2', { id: 'jobout-h' }, 'Outputs'), h('div', { testid: 'job-outputs' }))),
    h('section', { class: 'panel', 'aria-labelledby': 'jobev-h' }, h('h2', { id: 'jobev-h' }, 'Events'), h('div', { testid: 'job-events' })));
  paintJob();
  await refreshJob();
}

const refreshJobSoon = debounced(refreshJob, 200);

async function refreshJob() {
  if (!state.job) return;
  const ref = String(state.job.id);
  try {
    const j = await api('GET', `/jobs/${encodeURIComponent(ref)}`);
    if (!state.job || String(state.job.id) !== ref) return;
    if (jobRank(j.state) < jobRank(state.job.state)) {
      // Answered before the event that moved it on: ask again.
      refreshJobSoon();
      return;
    }
    state.job = j;
    if (state.jobs.has(j.id)) state.jobs.set(j.id, jobMerge(state.jobs.get(j.id), j));
    paintJob();
  } catch (e) {
    if (e.status === 404) {
      $('#main').replaceChildren(h('div', { class: 'panel', role: 'alert', testid: 'job-missing' },
        h('h1', {}, 'No such job'),
        h('p', {}, `There is no job “${ref}” that you may see.`),
        h('a', { href: '#/jobs' }, 'Back to the jobs')));
      state.job = null;
    } else notice(e.message, 'error');
  }
}

function paintJob() {
  const j = state.job;
  const details = $('[data-testid="job-details"]');
  if (!j || !details) return;
  const label = j.name ? `Job ${j.id} · ${j.name}` : `Job ${j.id}`;
  document.title = `${label} · vfarm`;
  $('[data-testid="job-title"]').textContent = label;
  $('[data-testid="job-head-state"]').replaceChildren(j._partial ? '' : stateBadge(j.state, 'job-detail-state'));
  const cancel = $('[data-testid="job-cancel"]');
  cancel.disabled = Boolean(j._partial) || jobFinal(j.state);
  $('[data-testid="job-cancel-note"]').textContent = jobFinal(j.state) ? `The job has ended (${j.state}).` : '';
  if (j._partial) {
    details.replaceChildren(h('p', { class: 'muted' }, 'loading…'));
    return;
  }
  const spec = j.spec || {};
  details.replaceChildren(kv([
    ['ID', h('span', { class: 'mono' }, String(j.id))],
    ['Name', j.name],
    ['State', stateBadge(j.state, 'job-detail-state-kv')],
    ['End reason', j.reason ? h('span', { testid: 'job-detail-reason' }, j.reason) : null],
    ['Exit code', j.exit_code ?? null],
    ['Error', j.error ? h('span', { class: 'field-error' }, j.error) : null],
    ['Owner', h('span', { class: 'mono', testid: 'job-detail-owner' }, j.owner)],
    ['Command', Array.isArray(spec.argv) && spec.argv.length ? h('code', {}, spec.argv.map(shellWord).join(' ')) : null],
    ['Queue', j.queue],
    ['Image', j.image ? [jobImage(j), ' ', h('span', { class: 'id', style: 'display:inline' }, short(j.image))] : null],
    ['Driver', j.driver],
    ['CPUs', j.cpus],
    ['Memory', typeof j.memory_mib === 'number' ? bytes(j.memory_mib * 1048576) : null],
    ['Wall time', typeof j.walltime_secs === 'number' ? duration(j.walltime_secs) : null],
    ['Submitted', when(j.submitted)],
    ['Started', j.started ? when(j.started) : null],
    ['Ended', j.ended ? when(j.ended) : null],
    ['Waited', typeof j.wait_secs === 'number' ? duration(j.wait_secs) : null],
    ['Ran', typeof j.run_secs === 'number' ? `${j.run_secs.toFixed(1)} s` : null],
    ['Kept instance', j.instance_kept ? h('a', { href: `#/instances/${encodeURIComponent(j.instance_kept)}` }, short(j.instance_kept)) : null],
  ]));
  // Staged-out files, then the command's captured streams: links the browser downloads.
  const files = [...(j.outputs || []).map((o) => ({ ...o, kind: 'file' })), ...(j.streams || []).map((o) => ({ ...o, kind: 'stream' }))];
  $('[data-testid="job-outputs"]').replaceChildren(files.length
    ? h('ul', { class: 'ops' }, files.map((o) => h('li', {},
      h('a', { href: jobOutputHref(j, o.name), download: o.name, testid: 'job-output', 'data-name': o.name,
        'aria-label': `Download ${o.name} of job ${j.id}` }, o.name),
      h('span', { class: 'muted' }, ` ${bytes(o.size)}${o.kind === 'stream' ? ' · captured output' : ''}`))))
    : h('p', { class: 'muted', testid: 'job-no-outputs' }, jobFinal(j.state) ? 'This job left no outputs.' : 'Outputs appear here when the job has run.'));
  const events = j.events || [];
  $('[data-testid="job-events"]').replaceChildren(events.length
    ? h('div', { class: 'table-wrap' }, h('table', { testid: 'job-events-table' },
      h('thead', {}, h('tr', {}, ['At', 'Event', 'Detail'].map((c) => h('th', { scope: 'col' }, c)))),
      h('tbody', {}, events.map((e) => h('tr', {},
        h('td', { class: 'num' }, when(e.at, 'medium')), h('td', {}, e.kind),
        h('td', { class: 'mono' }, e.detail && Object.keys(e.detail).length ? JSON.stringify(e.detail) : ''))))))
    : h('p', { class: 'muted' }, 'No events yet.'));
}

async function cancelJob(button) {
  const j = state.job;
  if (!j) return;
  const ok = await confirmDialog(`Cancel job ${j.id}?`,
    'A queued job never starts; a running one is stopped and its instance removed.', 'Cancel job', 'Keep it');
  if (!ok) return;
  await busy(button, async () => {
    try {
      const r = await api('POST', `/jobs/${encodeURIComponent(j.id)}/cancel`);
      if (state.job && state.job.id === r.id) state.job = jobMerge(state.job, r);
      if (state.jobs.has(r.id)) state.jobs.set(r.id, jobMerge(state.jobs.get(r.id), r));
      notice(r.state === 'cancelled' ? `Job ${r.id} cancelled` : `Cancelling job ${r.id}…`);
    } catch (e) {
      notice(`Cancel failed: ${e.message} (${e.code})`, 'error');
    }
  });
  // busy() re-enabled the button; the state decides again.
  paintJob();
}

// ---------------------------------------------------------------------------------------
// Virtual Grids page: whole sites from one grid file, up and down together

// Members come up one after another; while a grid is made or shown, its state is asked
// for at this pace (the event stream carries instances, not grids).
const GRIDS_REFRESH_MS = 2500;
let gridsTimer = null;
let gridTimer = null;
const gridFinal = (st) => st === 'up' || st === 'failed';

async function loadGrids() {
  clearTimeout(gridsTimer);
  if (!$('[data-testid="grids-table"]')) return; // left the page
  try {
    const list = await api('GET', '/grids');
    state.grids = new Map(list.map((g) => [g.name, g]));
    state.gridsLoaded = true;
    paintGrids();
  } catch (e) {
    if (e.status !== 401) notice(`Cannot list grids: ${e.message}`, 'error');
  }
  // A grid being made or taken down (here, with the CLI, by the reaper) changes by itself.
  if (state.gridUp || [...state.grids.values()].some((g) => !gridFinal(g.state))) {
    gridsTimer = setTimeout(loadGrids, GRIDS_REFRESH_MS);
  }
}

/** An instance changed: when it may be a grid's member, the grids shown follow. */
const gridMemberChanged = debounced(() => {
  if ($('[data-testid="grids-table"]')) loadGrids();
  if (state.grid && $('[data-testid="grid-page"]')) refreshGrid();
}, 500);

function renderGrids() {
  state.detail = null;
  state.grid = null;
  document.title = 'Virtual Grids · vfarm';
  const cols = ['Grid', 'State', state.me.admin ? 'Owner' : null, 'Members', 'Network', 'Expires'];
  mount(
    h('div', { class: 'page-head' }, h('h1', {}, 'Virtual Grids'),
      h('span', { class: 'sub' }, state.me.admin ? 'all owners (admin view)' : `owned by ${state.me.user}`)),
    h('div', { class: 'grid' },
      h('section', { class: 'panel', 'aria-labelledby': 'grids-h' },
        h('h2', { id: 'grids-h' }, 'Grids', h('span', { class: 'count', testid: 'grids-summary' })),
        h('div', { class: 'table-wrap' }, h('table', { testid: 'grids-table', 'aria-label': 'Virtual grids' },
          h('thead', {}, h('tr', {}, cols.filter(Boolean).map((c) => h('th', { scope: 'col' }, c)))),
          h('tbody', {}))),
        h('p', { class: 'empty', testid: 'grids-empty', hidden: true },
          'No grids yet. Bring one up with the form, or with ', h('code', {}, 'vfarm grid up FILE'), '.')),
      gridForm()));
  paintGrids();
  paintGridProgress();
  loadGrids();
}

function paintGrids() {
  const table = $('[data-testid="grids-table"]');
  if (!table) return;
  const all = [...state.grids.values()].sort((a, b) => a.name.localeCompare(b.name));
  const admin = state.me && state.me.admin;
  table.tBodies[0].replaceChildren(...all.map((g) => h('tr', { testid: 'grid-row', 'data-name': g.name, 'data-state': g.state },
    h('td', {}, h('a', { class: 'inst', href: `#/grids/${encodeURIComponent(g.name)}`, testid: 'grid-link' }, g.name)),
    h('td', {}, stateBadge(g.state, 'grid-state'), g.error ? h('span', { class: 'id', title: g.error }, g.error.slice(0, 40)) : null),
    admin ? h('td', { class: 'mono', testid: 'grid-owner' }, g.owner) : null,
    h('td', { class: 'num', testid: 'grid-members' }, String(g.members.length)),
    h('td', { testid: 'grid-network' }, g.network || 'none'),
    h('td', { class: 'num' }, g.expires ? when(g.expires) : 'never'))));
  const up = all.filter((g) => g.state === 'up').length;
  $('[data-testid="grids-summary"]').textContent = state.gridsLoaded ? `${all.length} total · ${up} up` : '';
  $('[data-testid="grids-empty"]').hidden = !state.gridsLoaded || all.length > 0;
  table.hidden = state.gridsLoaded && all.length === 0;
}

/** Where a refusal of `up` belongs: the name and expiry fields when they were filled in,
 *  the file for everything else the file says (the field path inside it leads the text). */
function gridRefusal(e, nameSet, expirySet) {
  if (!e.field || e.code === 'network') return e;
  if (e.field === 'body') return new ApiError(e.status, e.code, e.message, null);
  if ((e.field === 'name' && nameSet) || (e.field === 'expiry' && expirySet)) return e;
  const msg = e.field === 'file' || e.message.includes(e.field) ? e.message : `${e.field}: ${e.message}`;
  return new ApiError(e.status, e.code, msg, 'file');
}

function gridForm() {
  const file = h('textarea', { rows: '14', spellcheck: 'false', autocomplete: 'off',
    placeholder: '[grid]\nname = "site"\n\n[roles.ce]\nimage = "minbase"\n…' });
  const upload = h('input', { type: 'file', accept: '.toml,text/plain,application/toml' });
  const name = h('input', { type: 'text', placeholder: 'the file\'s', autocomplete: 'off', spellcheck: 'false' });
  const expiry = h('input', { type: 'text', placeholder: 'the file\'s', autocomplete: 'off' });
  const submit = h('button', { type: 'submit', class: 'btn btn-primary', testid: 'grid-submit' }, 'Bring up');
  const form = h('form', { class: 'panel', testid: 'grid-form', 'aria-labelledby': 'grid-h', novalidate: true },
    h('h2', { id: 'grid-h' }, 'Bring a grid up'),
    h('p', { class: 'form-error', hidden: true, tabindex: '-1', testid: 'grid-error' }),
    fieldBlock('grid', { name: 'file', label: 'Grid file (TOML)', control: file, testid: 'grid-file',
      hint: 'roles, images, counts and what each member runs: see docs/guide/grids.md' }),
    fieldBlock('grid', { name: 'upload', label: 'Or upload a grid file', control: upload, testid: 'grid-upload',
      hint: 'a .toml file; its text goes into the field above' }),
    h('div', { class: 'row' },
      fieldBlock('grid', { name: 'name', label: 'Name', control: name, testid: 'grid-name', hint: 'optional: instead of the file\'s [grid] name' }),
      fieldBlock('grid', { name: 'expiry', label: 'Expires after', control: expiry, testid: 'grid-expiry', hint: 'optional, e.g. 2d: one lease for every member' })),
    h('div', { class: 'actions-line' }, submit),
    h('p', { class: 'muted', role: 'status', testid: 'grid-progress', hidden: true }));
  upload.addEventListener('change', async () => {
    clearErrors(form);
    const f = upload.files[0];
    if (!f) return;
    try {
      file.value = await f.text();
    } catch (e) {
      showError(form, new ApiError(0, 'invalid_argument', `cannot read ${f.name}: ${e.message}`, 'upload'));
    }
  });
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearErrors(form);
    if (state.gridUp) return;
    if (!file.value.trim()) {
      return showError(form, new ApiError(400, 'invalid_request', 'paste a grid file, or choose one to upload', 'file'));
    }
    const body = { file: file.value };
    if (name.value.trim()) body.name = name.value.trim();
    if (expiry.value.trim()) body.expiry = expiry.value.trim();
    // The answer comes when every member runs (or the grid failed and was torn down):
    // until then the button is busy and the list shows the grid being made.
    state.gridUp = { name: body.name || null, started: Date.now() };
    paintGridProgress();
    const progress = setInterval(paintGridProgress, 1000);
    setTimeout(loadGrids, 500);
    await busy(submit, async () => {
      try {
        const g = await api('POST', '/grids', body);
        state.grids.set(g.name, g);
        notice(`Grid ${g.name} is up: ${g.members.length} member(s)`);
        file.value = '';
        upload.value = '';
        name.value = '';
        expiry.value = '';
      } catch (e) {
        const f = $('#grid-file');
        // The form may have been left while `up` ran: then the refusal is a notice.
        if (f && f.isConnected) showError(form, gridRefusal(e, Boolean(body.name), Boolean(body.expiry)));
        else notice(`Grid up failed: ${e.message} (${e.code})`, 'error');
      } finally {
        clearInterval(progress);
        state.gridUp = null;
        paintGridProgress();
      }
    });
    loadGrids();
  });
  return form;
}

function paintGridProgress() {
  const p = $('[data-testid="grid-progress"]');
  if (!p) return;
  const up = state.gridUp;
  p.hidden = !up;
  if (!up) { p.textContent = ''; return; }
  const made = up.name && state.grids.get(up.name);
  p.textContent = `Bringing ${up.name || 'the grid'} up… ${duration((Date.now() - up.started) / 1000)}` +
    (made ? `, ${made.members.length} member(s) made` : '') + '. Members are made one after another; the page answers when all run.';
}

async function renderGrid(ref) {
  state.detail = null;
  state.gridGoingDown = null;
  document.title = `Grid ${ref} · vfarm`;
  state.grid = state.grids.get(ref) || { name: ref, state: 'unknown', members: [], _partial: true };
  const by = h('input', { type: 'text', value: '1h', 'aria-label': 'Extend expiry by', testid: 'grid-extend-by' });
  const extend = h('button', { type: 'button', class: 'btn', testid: 'grid-extend' }, 'Extend expiry');
  const down = h('button', { type: 'button', class: 'btn btn-danger', testid: 'grid-down' }, 'Down…');
  extend.addEventListener('click', () => gridExtend(extend, by));
  down.addEventListener('click', () => gridDown(down));
  mount(
    h('div', { class: 'crumbs' }, h('a', { href: '#/grids' }, 'Virtual Grids'), ' / ', h('span', {}, ref)),
    h('div', { class: 'page-head', testid: 'grid-page' },
      h('h1', { testid: 'grid-title' }, ref), h('span', { testid: 'grid-head-state' })),
    h('section', { class: 'panel', 'aria-label': 'Actions' },
      h('div', { class: 'bar', testid: 'grid-actions' }, h('span', { class: 'extend' }, by, extend),
        h('span', { class: 'sep', 'aria-hidden': 'true' }), down,
        h('span', { class: 'muted', role: 'status', testid: 'grid-action-status' }))),
    h('section', { class: 'panel', 'aria-labelledby': 'gmem-h' },
      h('h2', { id: 'gmem-h' }, 'Members', h('span', { class: 'count', testid: 'grid-members-count' })),
      h('div', { class: 'table-wrap' }, h('table', { testid: 'grid-members-table', 'aria-label': 'Grid members' },
        h('thead', {}, h('tr', {}, ['Role', '#', 'Instance', 'Hostname', 'Address', 'State', 'Log in']
          .map((c) => h('th', { scope: 'col' }, c)))),
        h('tbody', {})))),
    h('section', { class: 'panel', 'aria-labelledby': 'gdet-h' }, h('h2', { id: 'gdet-h' }, 'Details'), h('div', { testid: 'grid-details' })));
  paintGrid();
  await refreshGrid();
}

async function refreshGrid() {
  clearTimeout(gridTimer);
  const g = state.grid;
  // While Down runs, the grid's answers (its members going, then 404) are not news.
  const down = () => state.gridGoingDown === g.name;
  if (!g || !$('[data-testid="grid-page"]') || down()) return;
  try {
    const cur = await api('GET', `/grids/${encodeURIComponent(g.name)}`);
    if (!state.grid || state.grid.name !== cur.name || down()) return;
    state.grid = cur;
    state.grids.set(cur.name, cur);
    paintGrid();
  } catch (e) {
    if (e.status === 404) {
      if (down()) return;
      if (state.grid && state.grid.name === g.name) {
        $('#main').replaceChildren(h('div', { class: 'panel', role: 'alert', testid: 'grid-missing' },
          h('h1', {}, 'No such grid'),
          h('p', {}, `There is no grid “${g.name}” that you may see. It may have been taken down.`),
          h('a', { href: '#/grids' }, 'Back to the grids')));
        state.grid = null;
      }
      state.grids.delete(g.name);
      return;
    }
    if (e.status !== 401) notice(e.message, 'error');
  }
  // Members' states change by themselves (an instance that ends, one being made).
  gridTimer = setTimeout(refreshGrid, GRIDS_REFRESH_MS);
}

function paintGrid() {
  const g = state.grid;
  const table = $('[data-testid="grid-members-table"]');
  if (!g || !table) return;
  $('[data-testid="grid-head-state"]').replaceChildren(g._partial ? '' : stateBadge(g.state, 'grid-detail-state'));
  for (const b of $$('[data-testid="grid-actions"] button')) {
    if (b.getAttribute('aria-busy') !== 'true') b.disabled = Boolean(g._partial) || g.state === 'creating' || g.state === 'deleting';
  }
  // In the order the roles come up, as the file's `after` makes them.
  const order = (g.stages || []).flat();
  const members = [...g.members].sort((a, b) => order.indexOf(a.role) - order.indexOf(b.role) ||
    a.role.localeCompare(b.role) || a.index - b.index);
  $('[data-testid="grid-members-count"]').textContent = g._partial ? '' : String(members.length);
  table.tBodies[0].replaceChildren(...members.map((m) => h('tr', { testid: 'grid-member-row', 'data-role': m.role, 'data-index': m.index, 'data-state': m.state },
    h('td', {}, m.role),
    h('td', { class: 'num' }, String(m.index)),
    h('td', {}, m.state === 'gone' ? (m.name || short(m.instance_id))
      : h('a', { class: 'inst', href: `#/instances/${encodeURIComponent(m.instance_id)}`, testid: 'grid-member-link',
        'aria-label': `Instance ${m.name || short(m.instance_id)} (${m.role} ${m.index})` }, m.name || short(m.instance_id))),
    h('td', { class: 'mono' }, m.hostname || '–'),
    h('td', { class: 'mono', testid: 'grid-member-address' }, m.address || '–'),
    h('td', {}, stateBadge(m.state, 'grid-member-state')),
    h('td', {}, m.ssh_command ? h('code', {}, m.ssh_command) : '–'))));
  $('[data-testid="grid-details"]').replaceChildren(g._partial ? h('p', { class: 'muted' }, 'loading…') : kv([
    ['Name', h('span', { class: 'mono' }, g.name)],
    ['Owner', h('span', { class: 'mono', testid: 'grid-detail-owner' }, g.owner)],
    ['State', stateBadge(g.state, 'grid-detail-state-kv')],
    ['Network', h('span', { testid: 'grid-detail-network' }, g.network || 'none (loopback only)')],
    ['Roles, in order', (g.stages || []).map((s) => s.join(', ')).join(' → ')],
    ['Created', when(g.created)],
    ['Expires', g.expires ? when(g.expires) : 'never'],
    ['Error', g.error ? h('span', { class: 'field-error' }, g.error) : null],
  ]));
}

async function gridExtend(button, input) {
  const g = state.grid;
  if (!g) return;
  const by = input.value.trim();
  if (!by) return notice('Extend by how long? e.g. 2h', 'error');
  await busy(button, async () => {
    try {
      state.grid = await api('POST', `/grids/${encodeURIComponent(g.name)}/extend`, { by });
      notice(`Extended ${g.name} by ${by}`);
    } catch (e) { notice(`Extend failed: ${e.message} (${e.code})`, 'error'); }
  });
  paintGrid();
}

async function gridDown(button) {
  const g = state.grid;
  if (!g) return;
  const ok = await confirmDialog(`Take grid ${g.name} down?`,
    `Its ${g.members.length} member(s) are destroyed with their disks, their host names and addresses go back, ` +
    'their certificates are revoked and the grid\'s own network is removed. This cannot be undone.', 'Take down');
  if (!ok) return;
  const status = $('[data-testid="grid-action-status"]');
  status.textContent = 'Taking the grid down: destroying its members…';
  state.gridGoingDown = g.name;
  clearTimeout(gridTimer);
  const page = location.hash;
  await busy(button, async () => {
    try {
      await api('DELETE', `/grids/${encodeURIComponent(g.name)}`);
      state.grids.delete(g.name);
      notice(`Grid ${g.name} is down`);
      // Back to the list, unless the user went elsewhere meanwhile.
      if (location.hash === page) location.hash = '#/grids';
    } catch (e) {
      state.gridGoingDown = null;
      if (status.isConnected) status.textContent = '';
      notice(`Down failed: ${e.message} (${e.code})`, 'error');
      refreshGrid();
    }
  });
}

// ---------------------------------------------------------------------------------------
// Images page

// ---------------------------------------------------------------------------------------
// Hosts page (admins): the vNode host inventory

const HOSTS_REFRESH_MS = 3000;
let hostsTimer = null;

function renderHosts() {
  state.detail = null;
  document.title = 'Hosts · vfarm';
  if (!state.me.admin) {
    mount(h('div', { class: 'page-head' }, h('h1', {}, 'Hosts')),
      h('p', { class: 'panel', testid: 'hosts-denied' }, 'Only site admins see the host inventory.'));
    return;
  }
  mount(
    h('div', { class: 'page-head' }, h('h1', {}, 'Hosts'),
      h('span', { class: 'sub' }, 'nodes that joined with a token from ', h('code', {}, 'vfarm host add NAME'))),
    h('section', { class: 'panel', 'aria-labelledby': 'hosts-h' },
      h('h2', { id: 'hosts-h' }, 'Inventory', h('span', { class: 'count', testid: 'hosts-summary' })),
      h('div', { class: 'table-wrap' }, h('table', { testid: 'hosts-table', 'aria-label': 'Hosts' },
        h('thead', {}, h('tr', {}, ['Host', 'State', 'CPUs used / total', 'Memory used / total', 'Instances', 'Drivers', 'Last heartbeat']
          .map((c) => h('th', { scope: 'col' }, c)))),
        h('tbody', {}))),
      h('p', { class: 'empty', testid: 'hosts-empty', hidden: true },
        'No hosts: instances run on this service\'s own machine. Add a node with ', h('code', {}, 'vfarm host add NAME'),
        ' and start ', h('code', {}, 'vfarm node --token …'), ' there.')));
  paintHosts();
  loadHosts();
}

async function loadHosts() {
  clearTimeout(hostsTimer);
  if (!$('[data-testid="hosts-table"]')) return; // left the page
  try {
    state.hosts = await api('GET', '/hosts');
    paintHosts();
  } catch (e) {
    if (e.status !== 401) notice(`Cannot list hosts: ${e.message}`, 'error');
  }
  // Heartbeats change the figures every 2 s; a node that stops answering turns `down`.
  hostsTimer = setTimeout(loadHosts, HOSTS_REFRESH_MS);
}

function paintHosts() {
  const table = $('[data-testid="hosts-table"]');
  if (!table || !state.hosts) return;
  const hosts = state.hosts;
  const up = hosts.filter((x) => x.state === 'up').length;
  $('[data-testid="hosts-summary"]').textContent = `${hosts.length} total · ${up} up`;
  $('[data-testid="hosts-empty"]').hidden = hosts.length > 0;
  table.hidden = hosts.length === 0;
  const mib = (n) => bytes(n * 1048576);
  table.tBodies[0].replaceChildren(...hosts.map((x) => h('tr', { testid: 'host-row', 'data-name': x.name, 'data-state': x.state },
    h('td', {}, h('strong', {}, x.name), x.url ? h('span', { class: 'id' }, x.url) : null),
    h('td', {}, stateBadge(x.state, 'host-state'), x.drained ? h('span', { class: 'badge', testid: 'host-drained' }, 'drained') : null,
      x.state === 'pending' && x.token_expires ? h('span', { class: 'id' }, `token until ${when(x.token_expires)}`) : null),
    h('td', { class: 'num' }, `${(x.used_cpus_milli / 1000).toFixed(1)} / ${x.cpus}`),
    h('td', { class: 'num' }, `${mib(x.used_memory_mib)} / ${mib(x.memory_mib)}`),
    h('td', { class: 'num', testid: 'host-instances' }, String(x.instances),
      x.lost ? h('span', { class: 'id expiry-past' }, `${x.lost} lost`) : null),
    h('td', {}, (x.features || []).map((f) => h('span', { class: 'badge' }, f))),
    h('td', { class: 'num' }, x.last_heartbeat ? when(x.last_heartbeat) : '–'))));
}

function renderImages() {
  state.detail = null;
  document.title = 'Images · vfarm';
  mount(
    h('div', { class: 'page-head' }, h('h1', {}, 'Images'), h('span', { class: 'sub' }, 'the image farm: build, import, download')),
    h('div', { class: 'grid' },
      h('section', { class: 'panel', 'aria-labelledby': 'img-h' },
        h('h2', { id: 'img-h' }, 'Repository', h('span', { class: 'count', testid: 'images-count' })),
        h('div', { class: 'table-wrap' }, h('table', { testid: 'images-table', 'aria-label': 'Images' },
          h('thead', {}, h('tr', {}, ['Image', 'System', 'Origin', 'Created', 'Artifacts', 'Download'].map((c) => h('th', { scope: 'col' }, c)))),
          h('tbody', {}))),
        h('p', { class: 'empty', testid: 'images-empty', hidden: true }, 'No images yet. Build one with the form, or import one: ', h('code', {}, 'vfarm image import rootfs.tar --name NAME'))),
      h('div', {},
        buildForm(),
        h('section', { class: 'panel', 'aria-labelledby': 'ops-h' },
          h('h2', { id: 'ops-h' }, 'Builds'), h('ul', { class: 'ops', testid: 'operations' })))));
  paintImages();
  paintOps();
  loadImages();
}

function paintImages() {
  const table = $('[data-testid="images-table"]');
  if (!table) return;
  $('[data-testid="images-count"]').textContent = state.imagesLoaded ? String(state.images.length) : '';
  $('[data-testid="images-empty"]').hidden = !state.imagesLoaded || state.images.length > 0;
  table.hidden = state.imagesLoaded && state.images.length === 0;
  table.tBodies[0].replaceChildren(...state.images.map((im) => {
    const have = new Set((im.artifacts || []).map((a) => a.format));
    return h('tr', { testid: 'image-row', 'data-id': im.id, 'data-name': im.name || '' },
      h('td', {}, h('strong', {}, im.name || short(im.id)), h('span', { class: 'id', title: im.id }, short(im.id))),
      h('td', { class: 'nowrap' }, [im.os, im.os_version].filter(Boolean).join(' ') || '–', im.arch ? h('span', { class: 'id' }, im.arch) : null),
      h('td', {}, im.origin || '–', im.summary ? h('span', { class: 'id', title: im.summary }, im.summary.slice(0, 48)) : null),
      h('td', { class: 'num' }, when(im.created)),
      h('td', { class: 'nowrap' }, (im.artifacts || []).map((a) => h('div', { class: 'mono', style: 'font-size:.8rem' }, `${a.format} ${bytes(a.size)}`))),
      h('td', {}, h('div', { class: 'dl-links' }, DOWNLOAD_FORMATS.map((f) => h('a', {
        href: `${API}/images/${encodeURIComponent(im.id)}/download?format=${f}`,
        class: have.has(f) ? 'cached' : null, download: '', testid: `download-${f}`,
        title: have.has(f) ? `download the ${f} artifact` : `converted on first download (${f})`,
        'aria-label': `Download ${im.name || short(im.id)} as ${f}`,
      }, f)))));
  }));
}

function buildForm() {
  const name = h('input', { type: 'text', placeholder: 'web-node', autocomplete: 'off' });
  const suite = h('select', {}, SUITES.map((s) => h('option', { value: s }, s)));
  const variant = h('select', {}, VARIANTS.map((v) => h('option', { value: v }, v)));
  const groups = h('div', { class: 'checks' }, GROUPS.map((g) =>
    h('label', {}, h('input', { type: 'checkbox', name: 'group', value: g, testid: `build-group-${g}` }), g)));
  const packages = h('input', { type: 'text', placeholder: 'curl vim-tiny', autocomplete: 'off', spellcheck: 'false' });
  const formats = h('div', { class: 'checks' }, FORMATS.map((f) =>
    h('label', {}, h('input', { type: 'checkbox', name: 'format', value: f, checked: f === 'tar', testid: `build-format-${f}` }), f)));
  const size = h('input', { type: 'text', placeholder: 'auto' });
  const boot = h('select', {}, h('option', { value: 'none' }, 'none'), h('option', { value: 'vm' }, 'vm (with kernel)'));
  const submit = h('button', { type: 'submit', class: 'btn btn-primary', testid: 'build-submit' }, 'Build image');
  const fs = (fname, legend, control) => h('fieldset', { class: 'field', 'data-field': fname },
    h('legend', {}, legend), control,
    h('p', { class: 'field-error', id: `build-${fname}-error`, testid: `build-error-${fname}`, hidden: true }));
  const form = h('form', { class: 'panel', testid: 'build-form', 'aria-labelledby': 'build-h', novalidate: true },
    h('h2', { id: 'build-h' }, 'Build an image'),
    h('p', { class: 'form-error', hidden: true, tabindex: '-1', testid: 'build-error' }),
    h('div', { class: 'row' },
      fieldBlock('build', { name: 'suite', label: 'Debian suite', control: suite, testid: 'build-suite' }),
      fieldBlock('build', { name: 'variant', label: 'Variant', control: variant, testid: 'build-variant' })),
    fs('group', 'Package groups', groups),
    fieldBlock('build', { name: 'package', label: 'Extra packages', control: packages, testid: 'build-packages', hint: 'separated by spaces or commas' }),
    fs('format', 'Formats', formats),
    h('div', { class: 'row' },
      fieldBlock('build', { name: 'size', label: 'Disk size', control: size, testid: 'build-size' }),
      fieldBlock('build', { name: 'boot', label: 'Boot', control: boot, testid: 'build-boot' })),
    fieldBlock('build', { name: 'name', label: 'Name (alias)', control: name, testid: 'build-name' }),
    h('div', { class: 'actions-line' }, submit));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearErrors(form);
    const body = {
      suite: suite.value,
      variant: variant.value,
      groups: $$('input[name="group"]:checked', form).map((c) => c.value),
      packages: packages.value.split(/[\s,]+/).filter(Boolean),
      formats: $$('input[name="format"]:checked', form).map((c) => c.value),
      boot: boot.value,
    };
    if (name.value.trim()) body.name = name.value.trim();
    if (size.value.trim()) body.size = size.value.trim();
    await busy(submit, async () => {
      try {
        const res = await api('POST', '/images', body);
        const op = { ...res.operation, spec: body, started: Date.now() };
        state.ops.unshift(op);
        paintOps();
        notice(`Building ${body.name || body.suite}…`);
        pollOperation(op);
      } catch (e) {
        showError(form, e, { packages: 'package', groups: 'group', formats: 'format', body: null });
      }
    });
  });
  return form;
}

async function pollOperation(op) {
  while (op.status === 'running' && state.me) {
    try {
      const cur = await api('GET', `/operations/${encodeURIComponent(op.id)}?wait=25`);
      Object.assign(op, cur);
    } catch (e) {
      op.status = 'failed';
      op.error = e.message;
    }
    paintOps();
  }
  if (op.status === 'succeeded') {
    notice(`Image built: ${op.spec.name || short(op.target)}`);
    loadImages();
  } else if (op.status === 'failed') {
    notice(`Build failed: ${op.error || 'see the build log'}`, 'error');
  }
}

function paintOps() {
  const ul = $('[data-testid="operations"]');
  if (!ul) return;
  if (!state.ops.length) {
    ul.replaceChildren(h('li', { class: 'muted' }, 'Builds started here show their progress here.'));
    return;
  }
  ul.replaceChildren(...state.ops.map((op) => {
    const s = op.spec;
    const what = [s.name, s.suite, s.variant, ...(s.groups || []), ...(s.packages || [])].filter(Boolean).join(' · ');
    const result = op.result || {};
    return h('li', { testid: 'operation', 'data-status': op.status },
      h('div', {}, h('span', { class: `op-status op-${op.status}` }, op.status), ' ', what),
      h('div', { class: 'id' }, `image ${short(op.target)} · started ${new Date(op.started).toLocaleTimeString()}`,
        op.status === 'succeeded' && result.cached ? ' · already built (cached)' : '',
        op.status === 'succeeded' && typeof result.seconds === 'number' ? ` · ${result.seconds.toFixed(1)} s` : ''),
      op.error ? h('div', { class: 'field-error' }, op.error) : null,
      op.target && op.status !== 'running'
        ? h('a', { href: `${API}/images/${encodeURIComponent(op.target)}/log`, target: '_blank', rel: 'noopener' }, 'build log') : null);
  }));
}

boot();
