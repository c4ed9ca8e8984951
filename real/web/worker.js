// shardtwin worker page: runs model shards with ONNX Runtime Web for one shardtwin run.
//
// Rules:
// - It speaks only the fixed protocol of real/protocol.py (JSON control frames, binary
//   tensor frames). It never evaluates code or loads scripts named by the wire.
// - Identity: ?id=<browser id>&threads=<n> in the query, #secret=<run secret> in the fragment.
// - All ORT work (session create, run) is serialized on one promise chain.
// - Heartbeats come from a main-thread timer, so a real main-thread hang stops them.
// - The socket reconnects only after an injected disconnect; if the server goes away the
//   page stops everything and tries to close itself (an orphan does no work).
import * as ort from '/ort/ort.webgpu.min.mjs';

const VERSION = 1;
const MAGIC = [0x53, 0x54, 0x57, 0x31]; // "STW1"
const KIND_RUN = 1, KIND_RESULT = 2, HEADER = 32;
const MAX_TENSORS = 64, MAX_NDIM = 8, MAX_NAME = 256;
const DTYPES = { 1: ['float32', Float32Array], 2: ['int64', BigInt64Array], 3: ['int32', Int32Array] };
const CODES = { float32: 1, int64: 2, int32: 3 };

const query = new URLSearchParams(location.search);
const fragment = new URLSearchParams(location.hash.slice(1));
const ID = query.get('id') || '';
const SECRET = fragment.get('secret') || '';
const THREADS = parseInt(query.get('threads') || '0', 10);
history.replaceState(null, '', location.pathname + location.search); // secret off the URL bar

ort.env.wasm.wasmPaths = '/ort/';
ort.env.logLevel = 'error';
if (THREADS > 0) ort.env.wasm.numThreads = THREADS;

const st = {
  ws: null, caps: null, sessions: new Map(), chain: Promise.resolve(), hbTimer: null, hbSeq: 0,
  held: [], failNext: new Map(), slow: 1, reconnecting: false, stopped: false,
};
const status = (s) => { const el = document.getElementById('status'); if (el) el.textContent = s; };
const pad8 = (n) => (8 - (n % 8)) % 8;
const send = (obj) => { if (st.ws && st.ws.readyState === WebSocket.OPEN) st.ws.send(JSON.stringify({ v: VERSION, ...obj })); };
const sendError = (kind, message, extra = {}) => send({ type: 'error', kind, message: String(message).slice(0, 2000), ...extra });
const busy = (ms) => { const end = performance.now() + ms; while (performance.now() < end) { /* truly block */ } };
const enqueue = (task) => { st.chain = st.chain.then(task).catch((e) => sendError('page_error', e)); };
const timeout = (p, ms, what) => Promise.race([p, new Promise((_, rej) => setTimeout(() => rej(new Error(`${what} timed out after ${ms} ms`)), ms))]);

// --- capabilities ---------------------------------------------------------------
async function gpuInfo() {
  if (!navigator.gpu) return { available: false, reason: 'navigator.gpu missing' };
  try {
    const a = await timeout(navigator.gpu.requestAdapter(), 3000, 'requestAdapter');
    if (!a) return { available: false, reason: 'requestAdapter returned null' };
    const i = a.info || {};
    return { available: true, vendor: i.vendor, architecture: i.architecture, device: i.device,
      description: i.description, is_fallback_adapter: a.isFallbackAdapter ?? i.isFallbackAdapter ?? null };
  } catch (e) { return { available: false, reason: String(e) }; }
}

async function webnnInfo() {
  if (!navigator.ml) return { available: false, navigator_ml: false, reason: 'navigator.ml missing' };
  try {
    await timeout(navigator.ml.createContext(), 3000, 'ml.createContext');
    return { available: true, navigator_ml: true };
  } catch (e) { return { available: false, navigator_ml: true, reason: String(e) }; }
}

async function capabilities() {
  const ua = navigator.userAgent;
  const ff = ua.match(/Firefox\/([\d.]+)/), cr = ua.match(/Chrom(?:e|ium)\/([\d.]+)/);
  const [webgpu, webnn] = await Promise.all([gpuInfo(), webnnInfo()]);
  return { user_agent: ua, browser: ff ? 'firefox' : (cr ? 'chromium' : 'unknown'),
    browser_version: (ff || cr || [])[1] || null, hardware_concurrency: navigator.hardwareConcurrency,
    cross_origin_isolated: self.crossOriginIsolated, wasm_threads_requested: THREADS || null,
    ort_version: ort.env.versions?.web ?? null, webgpu, webnn };
}

// --- binary tensor frames (layout: real/protocol.py) ----------------------------
function decodeFrame(buf) {
  if (buf.byteLength < HEADER) throw new Error(`frame too short: ${buf.byteLength}`);
  const dv = new DataView(buf);
  MAGIC.forEach((b, i) => { if (dv.getUint8(i) !== b) throw new Error('bad magic'); });
  const version = dv.getUint8(4), kind = dv.getUint8(5), count = dv.getUint16(6, true);
  if (version !== VERSION || count > MAX_TENSORS) throw new Error(`bad version ${version} or count ${count}`);
  const f = { kind, req: Number(dv.getBigInt64(8, true)), shard: dv.getInt32(16, true),
    attempt: dv.getInt32(20, true), ms: dv.getFloat64(24, true), tensors: [] };
  let pos = HEADER;
  for (let c = 0; c < count; c++) {
    if (pos + 4 > buf.byteLength) throw new Error('descriptor past end');
    const nameLen = dv.getUint16(pos, true), code = dv.getUint8(pos + 2), ndim = dv.getUint8(pos + 3);
    pos += 4;
    if (!DTYPES[code] || nameLen < 1 || nameLen > MAX_NAME || ndim > MAX_NDIM) throw new Error('bad descriptor');
    if (pos + nameLen + 8 * ndim > buf.byteLength) throw new Error('descriptor past end');
    const name = new TextDecoder('utf-8', { fatal: true }).decode(new Uint8Array(buf, pos, nameLen));
    pos += nameLen;
    const dims = [];
    for (let d = 0; d < ndim; d++, pos += 8) {
      const v = Number(dv.getBigInt64(pos, true));
      if (v < 0 || v > 2 ** 31) throw new Error(`bad dim ${v}`);
      dims.push(v);
    }
    f.tensors.push({ name, code, dims });
  }
  pos += pad8(pos);
  for (const t of f.tensors) {
    const [dtype, Ctor] = DTYPES[t.code];
    const n = t.dims.reduce((a, b) => a * b, 1), nbytes = n * Ctor.BYTES_PER_ELEMENT;
    if (pos + nbytes > buf.byteLength) throw new Error(`tensor ${t.name} past end`);
    t.dtype = dtype; t.data = new Ctor(buf, pos, n);
    pos += nbytes + pad8(nbytes);
  }
  if (pos !== buf.byteLength) throw new Error(`length ${buf.byteLength} != content ${pos}`);
  return f;
}

function encodeFrame(kind, req, shard, attempt, ms, tensors) {
  const enc = new TextEncoder(), names = tensors.map((t) => enc.encode(t.name));
  let hdr = HEADER;
  tensors.forEach((t, i) => { hdr += 4 + names[i].length + 8 * t.dims.length; });
  hdr += pad8(hdr);
  let total = hdr;
  tensors.forEach((t) => { total += t.data.byteLength + pad8(t.data.byteLength); });
  const buf = new ArrayBuffer(total), dv = new DataView(buf), u8 = new Uint8Array(buf);
  u8.set(MAGIC, 0);
  dv.setUint8(4, VERSION); dv.setUint8(5, kind); dv.setUint16(6, tensors.length, true);
  dv.setBigInt64(8, BigInt(req), true); dv.setInt32(16, shard, true); dv.setInt32(20, attempt, true);
  dv.setFloat64(24, ms, true);
  let pos = HEADER;
  tensors.forEach((t, i) => {
    const code = CODES[t.dtype];
    if (!code) throw new Error(`output ${t.name}: dtype ${t.dtype} not sendable (float32|int64|int32)`);
    dv.setUint16(pos, names[i].length, true); dv.setUint8(pos + 2, code); dv.setUint8(pos + 3, t.dims.length);
    pos += 4; u8.set(names[i], pos); pos += names[i].length;
    for (const d of t.dims) { dv.setBigInt64(pos, BigInt(d), true); pos += 8; }
  });
  pos = hdr;
  for (const t of tensors) {  // typed arrays are little-endian on every platform browsers run on here
    u8.set(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), pos);
    pos += t.data.byteLength + pad8(t.data.byteLength);
  }
  return buf;
}

// --- shards -----------------------------------------------------------------------
function createSession(bytes, backend) {
  if (backend === 'webgpu' && !navigator.gpu) throw new Error('navigator.gpu unavailable');
  const ep = backend === 'webnn' ? { name: 'webnn', deviceType: 'cpu' } : backend;
  return ort.InferenceSession.create(bytes, { executionProviders: [ep], graphOptimizationLevel: 'all' });
}

async function loadShard(m) {
  const t0 = performance.now();
  const kept = st.sessions.get(m.shard);
  if (kept && kept.url === m.url && kept.backend === m.backend) {  // still in the page (e.g. after a reconnect)
    send({ type: 'shard_loaded', shard: m.shard, ms: 0, fetch_ms: 0, create_ms: 0, bytes: 0,
      backend_requested: m.backend, backend_used: kept.used, fallback_reason: kept.reason,
      inputs: kept.session.inputNames, outputs: kept.outputs, wasm_threads: ort.env.wasm.numThreads ?? null });
    return;
  }
  try {
    const resp = await fetch(m.url);
    if (!resp.ok) throw new Error(`fetch ${m.url}: HTTP ${resp.status}`);
    const bytes = new Uint8Array(await resp.arrayBuffer());
    const t1 = performance.now();
    let used = m.backend, reason = null, session;
    try { session = await createSession(bytes, m.backend); } catch (e) {
      if (m.backend === 'wasm') throw e;
      reason = `${m.backend}: ${e?.message || e}`.slice(0, 1000); used = 'wasm';
      session = await createSession(bytes, 'wasm');
    }
    const t2 = performance.now();
    if (m.inputs.length && [...m.inputs].sort().join() !== [...session.inputNames].sort().join()) {
      await session.release();
      throw new Error(`inputs ${session.inputNames} != expected ${m.inputs}`);
    }
    await st.sessions.get(m.shard)?.session.release();
    const outputs = m.outputs.length ? m.outputs : session.outputNames;
    st.sessions.set(m.shard, { session, outputs, url: m.url, backend: m.backend, used, reason });
    send({ type: 'shard_loaded', shard: m.shard, ms: t2 - t0, fetch_ms: t1 - t0, create_ms: t2 - t1,
      bytes: bytes.length, backend_requested: m.backend, backend_used: used, fallback_reason: reason,
      inputs: session.inputNames, outputs, wasm_threads: ort.env.wasm.numThreads ?? null });
  } catch (e) { sendError('load_failed', e?.message || e, { shard: m.shard }); }
}

async function runShard(f) {
  const ids = { req: f.req, shard: f.shard, attempt: f.attempt };
  const s = st.sessions.get(f.shard);
  if (!s) { sendError('unknown_shard', `shard ${f.shard} is not loaded`, ids); return; }
  let injected = false;
  try {
    const feeds = {};
    for (const t of f.tensors) feeds[t.name] = new ort.Tensor(t.dtype, t.data, t.dims);
    const t0 = performance.now();
    const left = st.failNext.get(f.shard) || 0;
    if (left > 0) {
      st.failNext.set(f.shard, left - 1); injected = true;
      throw new Error(`injected shard_error in shard ${f.shard}`);
    }
    const out = await s.session.run(feeds, s.outputs);
    if (st.slow > 1) busy((performance.now() - t0) * (st.slow - 1));
    const ms = performance.now() - t0;
    const tensors = s.outputs.map((n) => ({ name: n, dtype: out[n].type, dims: out[n].dims, data: out[n].data }));
    const buf = encodeFrame(KIND_RESULT, f.req, f.shard, f.attempt, ms, tensors);
    if (st.ws && st.ws.readyState === WebSocket.OPEN) st.ws.send(buf);
  } catch (e) { sendError('shard_error', e?.message || e, { ...ids, injected }); }
}

// --- faults -------------------------------------------------------------------------
const heldMb = () => st.held.reduce((a, b) => a + b.byteLength, 0) / 2 ** 20;
const ack = (m) => send({ type: 'fault_applied', fault: m.fault, params: m.params, held_mb: heldMb(), t: performance.now() });

function inject(m) {
  const p = m.params || {};
  switch (m.fault) {
    case 'hang': ack(m); setTimeout(() => busy(Number(p.ms) || 0), 0); break;
    case 'memory_pressure':
      // Allocate in 16 MB chunks and yield to the event loop every 64 MB: the pressure is real
      // memory, not a main-thread hang (heartbeats keep flowing unless memory really runs out).
      (async () => {
        try {
          let since = 0;
          for (let left = Number(p.mb) || 0; left > 0; left -= 16) {
            const a = new Uint8Array(Math.min(16, left) * 2 ** 20);
            for (let i = 0; i < a.length; i += 4096) a[i] = 1; // touch every page
            st.held.push(a);
            if ((since += 16) >= 64) { since = 0; await new Promise((r) => setTimeout(r, 0)); }
          }
          ack(m);
        } catch (e) { sendError('oom', `${e} after holding ${heldMb()} MB`, { injected: true }); }
      })();
      break;
    case 'shard_error': st.failNext.set(p.shard, (st.failNext.get(p.shard) || 0) + (p.count ?? 1)); ack(m); break;
    case 'slow': st.slow = Math.max(1, Number(p.factor) || 1); ack(m); break;
    case 'clear': {  // params.what: one fault to end (memory_pressure | slow); none: all
      if (!p.what || p.what === 'memory_pressure') st.held = [];
      if (!p.what || p.what === 'slow') st.slow = 1;
      if (!p.what) st.failNext.clear();
      ack(m); break;
    }
    case 'disconnect': {
      ack(m); st.reconnecting = true; stopHeartbeats();
      const ws = st.ws;
      setTimeout(() => ws.close(4001, 'injected disconnect'), 0);
      setTimeout(() => { st.reconnecting = false; connect(); }, Number(p.delay_ms) || 0);
      break;
    }
    default: sendError('bad_message', `unknown fault ${m.fault}`);
  }
}

// --- connection -------------------------------------------------------------------
function stopHeartbeats() { clearInterval(st.hbTimer); st.hbTimer = null; }

function onControl(m) {
  switch (m.type) {
    case 'welcome':
      stopHeartbeats();
      st.hbTimer = setInterval(() => send({ type: 'heartbeat', seq: st.hbSeq++, t: performance.now() }), m.heartbeat_interval_ms);
      status(`connected as ${ID}`); break;
    case 'load_shard': enqueue(() => loadShard(m)); break;
    case 'unload_shard': enqueue(async () => { await st.sessions.get(m.shard)?.session.release(); st.sessions.delete(m.shard); }); break;
    case 'inject': inject(m); break;
    case 'ping': send({ type: 'pong', nonce: m.nonce, t: performance.now() }); break;
    default: sendError('bad_message', `unknown control type ${m.type}`);
  }
}

function onBinary(buf) {
  let f;
  try { f = decodeFrame(buf); } catch (e) { sendError('bad_frame', e.message); return; }
  if (f.kind !== KIND_RUN) { sendError('bad_frame', `expected a run frame, got kind ${f.kind}`); return; }
  enqueue(() => runShard(f));
}

function shutdown(why) {
  st.stopped = true; stopHeartbeats(); st.held = [];
  for (const { session } of st.sessions.values()) session.release().catch(() => {});
  st.sessions.clear();
  status(`stopped: ${why}`);
  try { window.close(); } catch (e) { /* not closable: stays idle */ }
}

function connect() {
  if (st.stopped) return;
  const ws = new WebSocket(`ws://${location.host}/ws`);
  ws.binaryType = 'arraybuffer';
  ws.onopen = () => send({ type: 'hello', id: ID, secret: SECRET, capabilities: st.caps });
  ws.onmessage = (ev) => {
    try {
      if (typeof ev.data === 'string') onControl(JSON.parse(ev.data)); else onBinary(ev.data);
    } catch (e) { sendError('bad_message', e?.message || e); }
  };
  ws.onclose = (ev) => {
    if (st.ws !== ws) return;
    stopHeartbeats();
    if (!st.reconnecting) shutdown(`socket closed (${ev.code} ${ev.reason})`);
  };
  st.ws = ws;
}

window.addEventListener('unhandledrejection', (ev) => sendError('page_error', ev.reason));
status('probing capabilities');
st.caps = await capabilities();
connect();
