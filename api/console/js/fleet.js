// The live fleet of one map in the page: robots from the live events, their tracks, and the
// table of the "Live fleet" tab.
import { fmt } from './geometry.js';

const stats = (window.vlocStats = window.vlocStats || {});
const TRACK_POINTS = 300;
export const STALE_S = 5;
const LOG_MAX = 5000;

export class FleetState {
  constructor() {
    this.robots = new Map();   // id -> RobotLive (api.models)
    this.tracks = new Map();   // id -> [[x, y, z], ...] level frame
    this.clockOffsetMs = 0;    // server clock - page clock
    this.listeners = new Set();
    stats.liveEvents = 0;
  }

  onChange(fn) { this.listeners.add(fn); return () => this.listeners.delete(fn); }

  /** One live event: 'snapshot' replaces everything, 'update' merges (and extends the tracks). */
  apply(name, data) {
    stats.liveEvents = (stats.liveEvents || 0) + 1;
    this.clockOffsetMs = data.server_time * 1000 - Date.now();
    if (name === 'snapshot') {
      this.robots.clear();
      this.tracks.clear();
    }
    for (const r of data.robots) {
      const prev = this.robots.get(r.robot_id);
      if (r.track) this.tracks.set(r.robot_id, r.track.slice(-TRACK_POINTS));
      else if (r.xy && (!prev || prev.last_accepted !== r.last_accepted || prev.map_version !== r.map_version)) {
        const t = (prev && prev.map_version === r.map_version && this.tracks.get(r.robot_id)) || [];
        t.push([r.xy[0], r.xy[1], r.z ?? 0]);
        if (t.length > TRACK_POINTS) t.splice(0, t.length - TRACK_POINTS);
        this.tracks.set(r.robot_id, t);
      }
      delete r.track;
      this.robots.set(r.robot_id, r);
    }
    for (const id of data.gone || []) {
      this.robots.delete(id);
      this.tracks.delete(id);
    }
    for (const fn of this.listeners) fn(data.robots.length > 0 || (data.gone || []).length > 0);
    if (data.robots.length) {
      // when each answer showed: the animation frame after the listeners redrew (benchmarks read it)
      const applied = Date.now();
      const seen = data.robots.map((r) => [r.robot_id, r.frames, r.last_seen]);
      requestAnimationFrame(() => {
        const shown = Date.now();
        const log = (stats.liveLog = stats.liveLog || []);
        for (const [id, frames, lastSeen] of seen) log.push({ id, frames, lastSeen, applied, shown });
        if (log.length > LOG_MAX) log.splice(0, log.length - LOG_MAX);
      });
    }
  }

  /** Seconds since a robot's last answer, on the server's clock. */
  age(r) { return (Date.now() + this.clockOffsetMs) / 1000 - r.last_seen; }
}

function cell(tr, text, cls) {
  const td = document.createElement('td');
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
}

/** The table of robots (textContent only: robot ids come from the robots). */
export function renderFleetTable(tbody, empty, fleet) {
  const ids = [...fleet.robots.keys()].sort();
  empty.hidden = ids.length > 0;
  const rows = [];
  for (const id of ids) {
    const r = fleet.robots.get(id);
    const age = fleet.age(r);
    const tr = document.createElement('tr');
    tr.dataset.robotId = id;
    tr.dataset.accepted = String(r.accepted);
    cell(tr, id);
    cell(tr, r.accepted ? 'accepted' : `rejected: ${r.reason}`, age > STALE_S ? 'stale' : (r.accepted ? 'ok' : 'bad'));
    cell(tr, r.xy ? `${fmt(r.xy[0])}, ${fmt(r.xy[1])}` : '-');
    cell(tr, r.heading_deg === null || r.heading_deg === undefined ? '-' : `${fmt(r.heading_deg, 0)} deg`);
    cell(tr, r.position_sigma_m === null || r.position_sigma_m === undefined ? '-'
      : `${fmt(100 * r.position_sigma_m, 1)} cm`);
    cell(tr, r.latency_ms === null || r.latency_ms === undefined ? '-' : `${fmt(r.latency_ms, 0)} ms`);
    cell(tr, `${fmt(Math.max(0, age), 1)} s ago`, age > STALE_S ? 'stale' : '');
    cell(tr, `${r.accepted_frames}/${r.frames}`);
    rows.push(tr);
  }
  tbody.replaceChildren(...rows);
}
