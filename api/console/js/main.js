// The console: sign-in, the map list, and per map the tabs Overview / 3D / Floor plan / Live
// fleet / Localize a photo. Routes are URL fragments: #/map/<id>/<tab>.
import { ApiError, LiveFeed, getJSON, mapPath, parsePoints, request, session } from './api.js';
import { FleetState, renderFleetTable } from './fleet.js';
import { bytes, fmt, levelPose } from './geometry.js';
import { LocalizeView } from './localize.js';
import { PlanCanvas } from './plan.js';
import { Viewer } from './view3d.js';

const $ = (id) => document.getElementById(id);
const TABS = ['overview', '3d', 'plan', 'fleet', 'localize'];
/** points asked for in 3D (the server decimates larger maps to this many) */
const MAX_POINTS = 300000;

const state = {
  me: null, maps: [], mapId: null, tab: 'overview', map: null,
  fleet: null, feed: null, plan: null, fleetPlan: null, viewer: null, viewer3dKey: null,
  localizeViewer: null, localize: null, planKey: null, layers: null, cameras: null,
};
window.vloc = state; // for debugging from the browser's console

function showError(id, text) {
  const el = $(id);
  el.textContent = text || '';
  el.hidden = !text;
}

function errorText(e) {
  if (e instanceof ApiError) {
    if (e.status === 401) return `This key is not valid (wrong, or revoked): ${e.detail}`;
    if (e.status === 403) return `This key may not see this: ${e.detail}`;
    return e.message;
  }
  return String(e && e.message ? e.message : e);
}

// sign-in ------------------------------------------------------------------------------------------
async function signIn(key) {
  showError('signin-error', '');
  let me;
  try {
    me = await getJSON('/v1/me', { key });
  } catch (e) {
    session.clear();
    showSignIn();
    showError('signin-error', errorText(e));
    return;
  }
  session.set(key);
  state.me = me;
  $('key-input').value = '';
  $('signin').hidden = true;
  $('app').hidden = false;
  $('whoami').hidden = false;
  $('whoami-text').textContent = `${me.name || me.key_id} (${me.role}${me.role === 'robot' ? `: ${me.maps.join(', ') || 'no map'}` : ''})`;
  await loadMaps();
  route();
}

function showSignIn() {
  $('signin').hidden = false;
  $('app').hidden = true;
  $('whoami').hidden = true;
  $('key-input').focus();
}

function signOut() {
  session.clear();
  closeMap();
  state.me = null;
  state.maps = [];
  $('map-list').replaceChildren();
  history.replaceState(null, '', '#/');
  showSignIn();
}

// maps -----------------------------------------------------------------------------------------
async function loadMaps() {
  try {
    state.maps = (await getJSON('/v1/maps')).maps;
    showError('maps-error', '');
  } catch (e) {
    state.maps = [];
    showError('maps-error', errorText(e));
    if (e.status === 401) { signOut(); showError('signin-error', errorText(e)); }
  }
  const items = state.maps.map((m) => {
    const li = document.createElement('li');
    li.dataset.mapId = m.map_id;
    const name = document.createElement('span');
    name.textContent = m.map_id;
    const badge = document.createElement('span');
    badge.className = 'badge';
    badge.textContent = m.active_version ? `v${m.active_version}` : 'no active version';
    li.append(name, badge);
    li.addEventListener('click', () => { location.hash = `#/map/${encodeURIComponent(m.map_id)}/${state.tab}`; });
    if (m.map_id === state.mapId) li.classList.add('selected');
    return li;
  });
  $('map-list').replaceChildren(...items);
  $('map-list-empty').hidden = items.length > 0 || !$('maps-error').hidden;
}

function route() {
  if (!state.me) return;
  const m = location.hash.match(/^#\/map\/([^/]+)(?:\/([a-z0-9]+))?/);
  if (!m) {
    closeMap();
    return;
  }
  const mapId = decodeURIComponent(m[1]);
  const tab = TABS.includes(m[2]) ? m[2] : 'overview';
  if (mapId !== state.mapId) openMap(mapId);
  selectTab(tab);
}

function closeMap() {
  if (state.feed) state.feed.stop();
  state.feed = null;
  state.mapId = null;
  state.map = null;
  $('map-page').hidden = true;
  $('no-map').hidden = false;
  for (const li of $('map-list').children) li.classList.remove('selected');
}

async function openMap(mapId) {
  closeMap();
  state.mapId = mapId;
  state.layers = state.cameras = null;
  state.viewer3dKey = state.planKey = null;
  $('no-map').hidden = true;
  $('map-page').hidden = false;
  $('map-title').textContent = mapId;
  showError('map-error', '');
  for (const li of $('map-list').children) li.classList.toggle('selected', li.dataset.mapId === mapId);
  state.fleet = new FleetState();
  state.fleet.onChange(() => {
    if (state.plan) state.plan.requestDraw();
    if (state.fleetPlan) state.fleetPlan.requestDraw();
    if (state.tab === 'fleet') renderFleetTable($('fleet-table').tBodies[0], $('fleet-empty'), state.fleet);
  });
  for (const p of [state.plan, state.fleetPlan]) if (p) p.fleet = state.fleet;
  renderFleetTable($('fleet-table').tBodies[0], $('fleet-empty'), state.fleet);
  await refreshMap();
  if (state.mapId !== mapId || !state.map) return;
  state.feed = new LiveFeed(mapId, (name, data) => state.fleet.apply(name, data), (s, detail) => {
    const el = $('live-status');
    el.textContent = s === 'live' ? 'live' : `live: ${s}${detail ? ` (${detail})` : ''}`;
    el.className = `live-status ${s === 'live' ? 'live' : s === 'error' ? 'error' : ''}`;
  }).start();
  selectTab(state.tab, true);
}

async function refreshMap() {
  const mapId = state.mapId;
  try {
    state.map = await getJSON(mapPath(mapId));
  } catch (e) {
    state.map = null;
    showError('map-error', errorText(e));
    for (const t of TABS) $(`tab-${t}`).hidden = true;
    return;
  }
  if (state.mapId !== mapId) return;
  for (const id of ['version-3d', 'version-plan']) {
    const sel = $(id);
    const keep = sel.value;
    sel.replaceChildren(...state.map.versions.map((v) => new Option(v.active ? `${v.version} (active)` : v.version,
                                                                      v.version)));
    sel.value = state.map.versions.some((v) => v.version === keep) ? keep : (state.map.active_version ?? '');
  }
  renderOverview();
}

function selectTab(tab, force = false) {
  if (!state.map) { state.tab = tab; return; }
  const changed = force || tab !== state.tab;
  state.tab = tab;
  for (const t of TABS) $(`tab-${t}`).hidden = t !== tab;
  for (const b of document.querySelectorAll('.tabs button')) b.classList.toggle('active', b.dataset.tab === tab);
  if (!changed && tab !== '3d' && tab !== 'plan') return;
  if (tab === '3d') show3d();
  else if (tab === 'plan' || tab === 'fleet') showPlan();
  else if (tab === 'localize') showLocalize();
  if (tab === 'fleet') renderFleetTable($('fleet-table').tBodies[0], $('fleet-empty'), state.fleet);
}

// overview -------------------------------------------------------------------------------------
function td(tr, text, cls) {
  const c = document.createElement('td');
  c.textContent = text;
  if (cls) c.className = cls;
  tr.appendChild(c);
  return c;
}

function renderOverview() {
  const m = state.map;
  const admin = state.me.role === 'admin';
  const rows = m.versions.map((v) => {
    const tr = document.createElement('tr');
    tr.dataset.version = v.version;
    td(tr, v.version);
    td(tr, v.active ? 'active' : '', v.active ? 'ok' : '');
    td(tr, v.registered_utc);
    td(tr, String(v.summary.n_images ?? '-'));
    td(tr, String(v.summary.n_points3D ?? '-'));
    td(tr, bytes(v.bytes));
    td(tr, v.summary.georeferenced ? 'yes' : 'no');
    const action = td(tr, '');
    if (admin && !v.active) {
      const b = document.createElement('button');
      b.type = 'button';
      b.textContent = 'Activate';
      b.dataset.activate = v.version;
      b.addEventListener('click', () => activate(v.version));
      action.appendChild(b);
    }
    return tr;
  });
  $('versions-table').tBodies[0].replaceChildren(...rows);
  const hist = (m.activations || []).map((a) => {
    const li = document.createElement('li');
    li.textContent = `${a.activated_utc}: version ${a.version}${a.key_id ? ` (key ${a.key_id})` : ''}`;
    return li;
  });
  if (!hist.length) {
    const li = document.createElement('li');
    li.textContent = 'none recorded';
    hist.push(li);
  }
  $('activation-history').replaceChildren(...hist);
  renderDetails();
}

async function renderDetails() {
  const m = state.map;
  const dl = $('version-details');
  if (!m.active_version) { dl.replaceChildren(); return; }
  let d;
  try {
    d = await getJSON(mapPath(m.map_id, `/versions/${encodeURIComponent(m.active_version)}`));
  } catch (e) {
    dl.replaceChildren();
    showError('map-error', errorText(e));
    return;
  }
  const s = d.statistics || {};
  const g = d.georeference;
  const kv = [
    ['version', d.version],
    ['images', String(s.n_images ?? '-')],
    ['points', String(s.n_points3D ?? '-')],
    ['size on disk', bytes(d.bytes)],
    ['extent (m)', d.extent ? d.extent.size.map((v) => fmt(v, 1)).join(' x ') : '-'],
    ['reprojection (median)', s.reprojection_error_px ? `${fmt(s.reprojection_error_px.median, 2)} px` : '-'],
    ['feature sets', d.feature_sets.join(', ') || '-'],
    ['world frame', d.world_frame ? (d.world_frame.kind || JSON.stringify(d.world_frame)) : '-'],
    ['georeference', g ? `${fmt(g.origin?.latitude, 6)}, ${fmt(g.origin?.longitude, 6)}, ${fmt(g.origin?.altitude, 1)} m`
      + (g.crs ? ` (${g.crs})` : '') : 'none'],
    ['layers', d.layers.join(', ') || 'none (vloc map layers)'],
    ['built with vloc', d.summary.vloc_version ?? '-'],
    ['revision', String(d.revision ?? '-')],
  ];
  dl.replaceChildren(...kv.flatMap(([k, v]) => {
    const dt = document.createElement('dt'); dt.textContent = k;
    const dd = document.createElement('dd'); dd.textContent = v;
    return [dt, dd];
  }));
}

async function activate(version) {
  showError('activate-error', '');
  try {
    await request(mapPath(state.mapId, `/versions/${encodeURIComponent(version)}/activate`), { method: 'POST' });
  } catch (e) {
    showError('activate-error', errorText(e));
    return;
  }
  await refreshMap();
  await loadMaps();
}

// 3D -------------------------------------------------------------------------------------------
async function show3d() {
  const version = $('version-3d').value;
  const key = `${state.mapId}@${version}`;
  if (state.viewer3dKey === key) return;
  state.viewer3dKey = key;
  if (!state.viewer) state.viewer = new Viewer($('view-3d'), 'view3d');
  await loadMapInto(state.viewer, state.mapId, version, $('info-3d'), $('show-mesh').checked);
}

/** Points, cameras (and the mesh when asked) of a map version into a viewer. */
async function loadMapInto(viewer, mapId, version, info, withMesh = false) {
  const q = version ? `?version=${encodeURIComponent(version)}` : '';
  info.textContent = 'loading...';
  try {
    const [layers, cams, buf] = await Promise.all([
      getJSON(mapPath(mapId, `/layers${q}`)),
      getJSON(mapPath(mapId, `/cameras${q}`)),
      (await request(mapPath(mapId, `/points${q}${q ? '&' : '?'}max_points=${MAX_POINTS}`))).arrayBuffer(),
    ]);
    if (state.mapId !== mapId) return null;
    const pts = parsePoints(buf);
    viewer.clear('mesh');
    viewer.clear('query');
    viewer.setUp(layers.level_from_map);
    viewer.setPoints(pts.positions, pts.colours);
    const cam0 = cams.cameras[0];
    viewer.setCameras(cams.images.map((im) => im.world_from_cam), cam0 ? cam0.width / cam0.height : 4 / 3);
    viewer.frame();
    viewer.layers = layers;
    viewer.meshLoaded = false;
    info.textContent = `${pts.n.toLocaleString()} of ${pts.total.toLocaleString()} points` +
      `${pts.n < pts.total ? ' (decimated)' : ''}, ${cams.images.length} map cameras` +
      `${layers.mesh ? `, mesh ${bytes(layers.mesh.bytes)}` : ', no mesh'}`;
    info.dataset.points = String(pts.n);
    if (withMesh) await loadMesh(viewer, mapId, version);
    return { layers, cams };
  } catch (e) {
    info.textContent = '';
    showError('map-error', errorText(e));
    return null;
  }
}

async function loadMesh(viewer, mapId, version) {
  if (!viewer.layers || !viewer.layers.mesh || viewer.meshLoaded) return;
  const q = version ? `?version=${encodeURIComponent(version)}` : '';
  const buf = await (await request(mapPath(mapId, `/layers/mesh.ply${q}`))).arrayBuffer();
  viewer.setMesh(buf);
  viewer.meshLoaded = true;
}

// floor plan and live fleet ----------------------------------------------------------------------
async function showPlan() {
  if (!state.plan) {
    state.plan = new PlanCanvas($('plan-canvas'), state.fleet, { robots: true });
    state.fleetPlan = new PlanCanvas($('fleet-canvas'), state.fleet, { robots: true });
    state.fleetPlan.showCameras = false;
  }
  const version = $('version-plan').value;
  const key = `${state.mapId}@${version}`;
  if (state.planKey === key) {
    state.plan.requestDraw();
    state.fleetPlan.requestDraw();
    return;
  }
  state.planKey = key;
  const mapId = state.mapId;
  const q = version ? `?version=${encodeURIComponent(version)}` : '';
  try {
    const [layers, cams] = await Promise.all([getJSON(mapPath(mapId, `/layers${q}`)),
                                              getJSON(mapPath(mapId, `/cameras${q}`))]);
    if (state.mapId !== mapId) return;
    state.layers = layers;
    const cameras = cams.images.map((im) => levelPose(im.world_from_cam, layers.level_from_map));
    const floors = layers.floors.length ? layers.floors : [{ index: 0, elevation: -1e9, top: null }];
    const grids = new Map();
    for (const o of layers.occupancy) {
      const blob = await (await request(mapPath(mapId, `/layers/${o.png}${q}`))).blob();
      grids.set(o.floor, { ...o, bitmap: await createImageBitmap(blob) });
    }
    const sel = $('plan-floor');
    sel.replaceChildren(...floors.map((f) => new Option(`${f.index} (${fmt(f.elevation + 0, 2).replace(/^-(0\.0+)$/, "$1")} m)`, String(f.index))));
    const setFloor = (index) => {
      for (const p of [state.plan, state.fleetPlan]) {
        p.floors = floors;
        p.cameras = cameras;
        p.floor = index;
        p.grid = grids.get(index) || null;
        p.fit();
      }
      const g = grids.get(index);
      $('info-plan').textContent = g
        ? `occupancy ${g.width}x${g.height} cells of ${fmt(100 * g.resolution, 0)} cm; black occupied, white free, grey unknown`
        : 'no occupancy grid for this map (vloc map layers): map cameras and robots only';
    };
    sel.onchange = () => setFloor(Number(sel.value));
    setFloor(floors[0].index);
  } catch (e) {
    showError('map-error', errorText(e));
  }
}

// localize ---------------------------------------------------------------------------------------
async function showLocalize() {
  if (!state.localizeViewer) state.localizeViewer = new Viewer($('view-localize'), 'localize');
  if (!state.localize) state.localize = new LocalizeView(state.localizeViewer);
  if (state.localize.mapId === state.mapId) return;
  const loaded = await loadMapInto(state.localizeViewer, state.mapId, '', document.createElement('span'));
  state.localizeViewer.setQuery(null, []);
  state.localize.setMap(state.mapId, loaded ? loaded.cams.cameras : []);
}

// wiring ---------------------------------------------------------------------------------------
function wire() {
  $('signin-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const key = $('key-input').value.trim();
    if (!key) { showError('signin-error', 'paste an API key first'); return; }
    signIn(key);
  });
  $('signout-button').addEventListener('click', signOut);
  for (const b of document.querySelectorAll('.tabs button')) {
    b.addEventListener('click', () => { location.hash = `#/map/${encodeURIComponent(state.mapId)}/${b.dataset.tab}`; });
  }
  window.addEventListener('hashchange', route);
  $('show-points').addEventListener('change', (e) => state.viewer && state.viewer.show('points', e.target.checked));
  $('show-cameras').addEventListener('change', (e) => state.viewer && state.viewer.show('cameras', e.target.checked));
  $('show-mesh').addEventListener('change', async (e) => {
    if (!state.viewer) return;
    if (e.target.checked) {
      try { await loadMesh(state.viewer, state.mapId, $('version-3d').value); } catch (err) { showError('map-error', errorText(err)); }
    }
    state.viewer.show('mesh', e.target.checked);
  });
  $('version-3d').addEventListener('change', () => show3d());
  $('version-plan').addEventListener('change', () => showPlan());
  $('plan-cameras').addEventListener('change', (e) => { if (state.plan) { state.plan.showCameras = e.target.checked; state.plan.requestDraw(); } });
  $('plan-tracks').addEventListener('change', (e) => { if (state.plan) { state.plan.showTracks = e.target.checked; state.plan.requestDraw(); } });
  // ages ("last seen") and staleness move even without events
  setInterval(() => {
    if (!state.fleet || !state.map) return;
    if (state.tab === 'fleet') renderFleetTable($('fleet-table').tBodies[0], $('fleet-empty'), state.fleet);
    if (state.tab === 'fleet' && state.fleetPlan) state.fleetPlan.requestDraw();
    if (state.tab === 'plan' && state.plan) state.plan.requestDraw();
  }, 1000);
}

wire();
if (session.key) signIn(session.key);
else showSignIn();
