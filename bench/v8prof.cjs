#!/usr/bin/env node
// Profiles meshguard's own wasm code under V8, per function: Envoy's binary
// is stripped and its V8 writes no perf map, so `ab.py --perf` can only say
// "wasm code" as a whole. This runs the real module (wasm32-wasip1, built
// WITH its name section) in Node behind a minimal in-memory proxy-wasm host
// (the imports meshguard uses; shared data with compare-and-swap; header
// maps; metrics as no-ops), drives N requests through the exported
// callbacks exactly in Envoy's order, and prints the time per request and,
// with --cpu-prof, the wasm functions by self time.
//
//   CARGO_PROFILE_RELEASE_STRIP=false CARGO_TARGET_DIR=target/names \
//     cargo build --release --target wasm32-wasip1
//   node bench/v8prof.cjs target/names/wasm32-wasip1/release/meshguard.wasm \
//     '{"routes":[{"name":"r","match":{"path_prefix":"/"},"rate_limit":[...]}]}' 200000 [--cpu-prof]
//
// Host calls cost far less here than in Envoy (no C++ across V8's API), so
// this prices meshguard's code, not the host's; compare configurations or
// builds within one run of this script, never its absolute figures with
// Envoy's.
'use strict';
const fs = require('fs');
const { WASI } = require('node:wasi');
const inspector = require('node:inspector');

const [wasmPath, configText, nArg, ...flags] = process.argv.slice(2);
if (!wasmPath || configText === undefined) {
  console.error('usage: v8prof.cjs MODULE.wasm CONFIG_JSON [N] [--cpu-prof] [--count-calls] [--count-allocs] [--header "name: value"]... [--response-header "name: value"]... [--body-bytes N]');
  process.exit(2);
}
const N = Number(nArg || 100000);
const cpuProf = flags.includes('--cpu-prof');
const countCalls = flags.includes('--count-calls');
// --count-allocs: heap allocations per request, from a module built with
// `--features alloc-count` (src/host/alloc_count.rs).
const countAllocs = flags.includes('--count-allocs');
const bodyAt = flags.indexOf('--body-bytes');
const BODY = bodyAt >= 0 ? Number(flags[bodyAt + 1]) : 30;
const extra = [];
const extraResponse = [];
for (let i = 0; i < flags.length; i++) {
  if (flags[i] === '--header' || flags[i] === '--response-header') {
    const [k, ...v] = flags[i + 1].split(':');
    (flags[i] === '--header' ? extra : extraResponse).push([k.trim().toLowerCase(), v.join(':').trim()]);
    i++;
  }
}

const OK = 0, NOT_FOUND = 1, CAS_MISMATCH = 8, UNIMPLEMENTED = 12;
let mem, exp;
const view = () => new DataView(mem.buffer);
const text = (p, l) => Buffer.from(mem.buffer, p, l).toString('latin1');
const copy = (p, l) => Buffer.from(new Uint8Array(mem.buffer, p, l));
function give(buf, pp, sp) {
  // The host allocates in the module (a call back into wasm), as Envoy does.
  const p = buf.length ? exp.proxy_on_memory_allocate(buf.length) : 0;
  if (buf.length) new Uint8Array(mem.buffer).set(buf, p);
  view().setUint32(pp, p, true);
  view().setUint32(sp, buf.length, true);
}
function pairs(list) {
  let size = 4 + 8 * list.length;
  for (const [k, v] of list) size += Buffer.byteLength(k) + Buffer.byteLength(v) + 2;
  const b = Buffer.alloc(size);
  b.writeUInt32LE(list.length, 0);
  let o = 4;
  for (const [k, v] of list) {
    b.writeUInt32LE(Buffer.byteLength(k), o);
    b.writeUInt32LE(Buffer.byteLength(v), o + 4);
    o += 8;
  }
  for (const [k, v] of list) {
    o += b.write(k, o) + 1;
    o += b.write(v, o) + 1;
  }
  return b;
}

const shared = new Map();
let nextCas = 1;
const config = Buffer.from(configText);
const maps = { 0: [], 2: [] };
let added = 0;
const nowBase = BigInt(Date.now()) * 1000000n;
const start = process.hrtime.bigint();

/** The map of `type`, copied first if it is the shared request list. */
function mutable(type) {
  if (!maps[type] || maps[type] === request || maps[type] === response) maps[type] = (maps[type] || []).slice();
  return maps[type];
}

const env = {
  proxy_log: (level, p, l) => { if (level >= 3) console.error('[module] ' + text(p, l)); return OK; },
  proxy_get_current_time_nanoseconds: (p) => {
    view().setBigUint64(p, nowBase + (process.hrtime.bigint() - start), true);
    return OK;
  },
  proxy_define_metric: (_t, _p, _l, idp) => { view().setUint32(idp, (nextCas++ << 2) >>> 0, true); return OK; },
  proxy_increment_metric: () => OK,
  proxy_record_metric: () => OK,
  proxy_get_shared_data: (kp, kl, vpp, vsp, casp) => {
    const e = shared.get(text(kp, kl));
    if (!e) { view().setUint32(vpp, 0, true); view().setUint32(vsp, 0, true); view().setUint32(casp, 0, true); return NOT_FOUND; }
    give(e.v, vpp, vsp);
    view().setUint32(casp, e.cas, true);
    return OK;
  },
  proxy_set_shared_data: (kp, kl, vp, vl, cas) => {
    const k = text(kp, kl);
    const e = shared.get(k);
    if (e && cas && cas !== e.cas) return CAS_MISMATCH;
    shared.set(k, { v: copy(vp, vl), cas: nextCas++ });
    return OK;
  },
  proxy_get_buffer_bytes: (type, start_, size, pp, sp) => {
    size >>>= 0; // usize::MAX arrives as -1
    if (type === 7) { give(config.subarray(start_, Math.min(config.length, start_ + size)), pp, sp); return OK; }
    if (type === 1) { give(Buffer.alloc(Math.min(size, BODY), 0x61), pp, sp); return OK; }
    return NOT_FOUND;
  },
  proxy_get_header_map_pairs: (type, pp, sp) => {
    // The request's serialization is made once (it is the same every time):
    // the host's own cost stays out of the profile as far as possible.
    const m = maps[type] || [];
    give(m === request ? requestPairs : pairs(m), pp, sp);
    return OK;
  },
  proxy_get_header_map_value: (type, kp, kl, pp, sp) => {
    const k = text(kp, kl);
    const hit = (maps[type] || []).find(([n]) => n === k);
    if (!hit) return NOT_FOUND;
    give(Buffer.from(hit[1]), pp, sp);
    return OK;
  },
  proxy_add_header_map_value: (type, kp, kl, vp, vl) => { mutable(type).push([text(kp, kl), text(vp, vl)]); added++; return OK; },
  proxy_replace_header_map_value: (type, kp, kl, vp, vl) => {
    const k = text(kp, kl);
    const m = mutable(type);
    const i = m.findIndex(([n]) => n === k);
    if (i >= 0) m[i] = [k, text(vp, vl)]; else m.push([k, text(vp, vl)]);
    added++;
    return OK;
  },
  proxy_remove_header_map_value: (type, kp, kl) => {
    const k = text(kp, kl);
    maps[type] = (maps[type] || []).filter(([n]) => n !== k); // a copy: `request` stays intact
    return OK;
  },
  proxy_get_property: () => NOT_FOUND,
  proxy_set_property: () => OK,
  proxy_call_foreign_function: () => UNIMPLEMENTED,
  proxy_set_tick_period_milliseconds: () => OK,
  proxy_set_effective_context: () => OK,
  proxy_continue_stream: () => OK,
  proxy_send_local_response: () => OK,
  proxy_get_status: () => OK,
  proxy_http_call: () => UNIMPLEMENTED,
  proxy_grpc_call: () => UNIMPLEMENTED,
  proxy_grpc_cancel: () => OK,
};

// --count-calls: every import counted; printed per request after the run.
const calls = new Map();
if (countCalls) {
  for (const [name, f] of Object.entries(env)) {
    env[name] = (...args) => { calls.set(name, (calls.get(name) || 0) + 1); return f(...args); };
  }
}

const wasi = new WASI({ version: 'preview1', returnOnExit: true });
const wasmModule = new WebAssembly.Module(fs.readFileSync(wasmPath));
const instance = new WebAssembly.Instance(wasmModule, { env, wasi_snapshot_preview1: wasi.wasiImport });
exp = instance.exports;
mem = exp.memory;
wasi.initialize(instance);

const ROOT = 1;
const PAGE = 65536;
const pages0 = mem.buffer.byteLength / PAGE;
exp.proxy_on_context_create(ROOT, 0);
exp.proxy_on_vm_start(ROOT, 0);
let tc = process.hrtime.bigint();
if (!exp.proxy_on_configure(ROOT, config.length)) {
  console.error('the module refused the configuration');
  process.exit(1);
}
const configureFirstUs = Number(process.hrtime.bigint() - tc) / 1000;
const pagesConfigured = mem.buffer.byteLength / PAGE;
// on_configure again (as on a configuration push), now that V8 compiled it: its own cost.
const again = [];
for (let i = 0; i < 20; i++) {
  tc = process.hrtime.bigint();
  exp.proxy_on_configure(ROOT, config.length);
  again.push(Number(process.hrtime.bigint() - tc) / 1000);
}
again.sort((a, b) => a - b);

const request = [[':authority', 'bench.local'], [':path', '/bench'], [':method', 'GET'], [':scheme', 'http'],
  ['user-agent', 'wrk'], ['x-forwarded-proto', 'http'], ['x-request-id', '6c1e8f0a-1d7b-4b8e-9c1f-3f2a7d9e0b11'],
  ...extra];
const requestPairs = pairs(request);
const response = [[':status', '200'], ['content-length', String(BODY)], ['content-type', 'text/plain'],
  ['date', 'Wed, 02 Dec 2026 06:00:00 GMT'], ['server', 'envoy'], ['x-envoy-upstream-service-time', '0'],
  ...extraResponse];

let paused = 0;
function one(id) {
  exp.proxy_on_context_create(id, ROOT);
  maps[0] = request;
  if (exp.proxy_on_request_headers(id, request.length, 1) !== 0) paused++;
  maps[2] = response;
  exp.proxy_on_response_headers(id, response.length, 0);
  exp.proxy_on_response_body(id, BODY, 1);
  if (exp.proxy_on_log) exp.proxy_on_log(id);
}

for (let i = 0; i < Math.min(20000, N); i++) one(2 + i); // warm-up: V8 tiers up to TurboFan
let session;
if (cpuProf) {
  session = new inspector.Session();
  session.connect();
  session.post('Profiler.enable');
  session.post('Profiler.setSamplingInterval', { interval: 50 });
  session.post('Profiler.start');
}
if (countAllocs && !exp.meshguard_alloc_count) {
  console.error('--count-allocs needs a module built with --features alloc-count');
  process.exit(2);
}
let hostAllocs = 0;
if (countAllocs) {
  const allocate = exp.proxy_on_memory_allocate;
  exp = Object.assign({}, exp, { proxy_on_memory_allocate: (n) => { hostAllocs++; return allocate(n); } });
}
const allocs0 = countAllocs ? exp.meshguard_alloc_count() : 0n;
calls.clear();
const t0 = process.hrtime.bigint();
for (let i = 0; i < N; i++) one(100000 + i);
const ns = Number(process.hrtime.bigint() - t0) / N;
console.log(`${N} requests: ${ns.toFixed(0)} ns/request in Node's V8 (host calls nearly free here); ` +
  `${paused} paused or answered; ${added} response headers written`);
// Linear memory of this one VM (Envoy runs one per worker plus the main thread's).
console.log(`linear memory: ${pages0} pages at start, ${pagesConfigured} after on_configure, ` +
  `${mem.buffer.byteLength / PAGE} after the requests (64 KiB pages); on_configure ` +
  `${configureFirstUs.toFixed(0)} us the first time (Node compiles lazily: includes compilation), ` +
  `${again[10].toFixed(0)} us again (median of 20)`);
if (countAllocs) {
  const total = Number(exp.meshguard_alloc_count() - allocs0);
  console.log(`heap allocations per request: ${(total / N).toFixed(2)} ` +
    `(of which buffers the host asked for: ${(hostAllocs / N).toFixed(2)})`);
}
if (countCalls) {
  console.log('host calls per request (the module\'s imports):');
  for (const [name, n] of [...calls.entries()].sort((a, b) => b[1] - a[1])) {
    console.log(`${(n / N).toFixed(2).padStart(8)}  ${name}`);
  }
}
if (cpuProf) {
  session.post('Profiler.stop', (err, { profile }) => {
    if (err) throw err;
    // Self time per function; wasm functions (url wasm://...) apart from
    // the JS host's, so meshguard's share reads directly.
    const self = new Map();
    let wasmTotal = 0;
    let allTotal = 0;
    const dt = profile.timeDeltas.reduce((a, b) => a + b, 0) / profile.samples.length;
    const byId = new Map(profile.nodes.map((n) => [n.id, n]));
    for (const s of profile.samples) {
      const f = byId.get(s).callFrame;
      const isWasm = f.url.startsWith('wasm://');
      const name = (isWasm ? '' : '[js] ') + (f.functionName || '(anonymous)');
      self.set(name, (self.get(name) || 0) + dt);
      allTotal += dt;
      if (isWasm) wasmTotal += dt;
    }
    const per = (us) => ((us * 1000) / N).toFixed(1).padStart(8);
    console.log(`wasm code (the module's functions, V8's wrappers excluded): ${per(wasmTotal)} ns/request of ${per(allTotal)} sampled`);
    const rows = [...self.entries()].filter(([n]) => !n.startsWith('[js]')).sort((a, b) => b[1] - a[1]).slice(0, 30);
    console.log('module functions by self time, ns/request (top 30):');
    for (const [name, us] of rows) console.log(`${per(us)}  ${name.slice(0, 120)}`);
  });
}
