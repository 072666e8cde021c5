// Calls to the vloc service with the signed-in key (a header, never a URL), the binary points
// format, and the live fleet's server-sent events read through fetch (EventSource cannot send
// a header).

const KEY = 'vloc.apiKey';

export const session = {
  get key() { return sessionStorage.getItem(KEY); },
  set(key) { sessionStorage.setItem(KEY, key); },
  clear() { sessionStorage.removeItem(KEY); },
};

export class ApiError extends Error {
  constructor(status, detail) {
    super(status ? `HTTP ${status}: ${detail}` : detail);
    this.status = status;
    this.detail = detail;
  }
}

export const mapPath = (mapId, rest = '') => `/v1/maps/${encodeURIComponent(mapId)}${rest}`;

export async function request(path, { method = 'GET', body, json, signal, key } = {}) {
  const headers = { Authorization: `Bearer ${key ?? session.key ?? ''}` };
  let payload = body;
  if (json !== undefined) {
    headers['Content-Type'] = 'application/json';
    payload = JSON.stringify(json);
  }
  let r;
  try {
    r = await fetch(path, { method, headers, body: payload, signal, cache: 'no-store', credentials: 'omit' });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, `the server cannot be reached (${e.message})`);
  }
  if (!r.ok) {
    let detail = r.statusText || 'error';
    try { detail = (await r.json()).detail ?? detail; } catch { /* not JSON */ }
    throw new ApiError(r.status, detail);
  }
  return r;
}

export const getJSON = async (path, opts) => (await request(path, opts)).json();

/** The body of GET .../points: b"VLP1", uint32 n, total, 0; n*3 float32 xyz; n*3 uint8 rgb. */
export function parsePoints(buf) {
  const dv = new DataView(buf);
  const magic = String.fromCharCode(dv.getUint8(0), dv.getUint8(1), dv.getUint8(2), dv.getUint8(3));
  if (magic !== 'VLP1') throw new Error('not a vloc points body');
  const n = dv.getUint32(4, true);
  const total = dv.getUint32(8, true);
  return { n, total, positions: new Float32Array(buf, 16, 3 * n), colours: new Uint8Array(buf, 16 + 12 * n, 3 * n) };
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** GET /v1/maps/{id}/live as server-sent events: onEvent(name, data), onStatus(state, detail). */
export class LiveFeed {
  constructor(mapId, onEvent, onStatus) {
    this.mapId = mapId;
    this.onEvent = onEvent;
    this.onStatus = onStatus;
    this.stopped = false;
    this.abort = null;
  }

  start() { this.run(); return this; }

  stop() {
    this.stopped = true;
    if (this.abort) this.abort.abort();
  }

  async run() {
    let delay = 1000;
    while (!this.stopped) {
      this.abort = new AbortController();
      try {
        const r = await request(mapPath(this.mapId, '/live'), { signal: this.abort.signal });
        this.onStatus('live');
        delay = 1000;
        const reader = r.body.getReader();
        const decoder = new TextDecoder();
        let buf = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += decoder.decode(value, { stream: true });
          let i;
          while ((i = buf.indexOf('\n\n')) >= 0) {
            const block = buf.slice(0, i);
            buf = buf.slice(i + 2);
            if (!this.dispatch(block)) return;
          }
        }
        if (this.stopped) return;
        this.onStatus('reconnecting', 'the server ended the stream');
      } catch (e) {
        if (this.stopped || e.name === 'AbortError') return;
        if ([401, 403, 404].includes(e.status)) { this.onStatus('error', e.detail); return; }
        this.onStatus('reconnecting', e.detail || e.message);
      }
      await sleep(delay);
      delay = Math.min(2 * delay, 10000);
    }
  }

  /** One event block; false when the stream must end (an error event). */
  dispatch(block) {
    let name = 'message';
    const data = [];
    for (const line of block.split('\n')) {
      if (line.startsWith('event:')) name = line.slice(6).trim();
      else if (line.startsWith('data:')) data.push(line.slice(5).trim());
    }
    if (!data.length) return true;
    const payload = JSON.parse(data.join('\n'));
    if (name === 'error') {
      this.onStatus('error', payload.detail);
      this.stopped = true;
      return false;
    }
    this.onEvent(name, payload);
    return true;
  }
}
