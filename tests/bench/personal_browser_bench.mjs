// Fitting personal heads in the browser vs natively, on the same machine in one run: 100
// answered pairs of 768-dimensional unit embeddings (CLIP ViT-L/14's size), answered by a
// hidden linear taste; each head kind fitted with `personalize fit`'s defaults, natively
// (`tastebud personalize fit`, which reports its fit time) and in headless Chromium through
// the JS package (`Head.fit`, CPU backend, wasm). PAL, VPL and linear+prior start from a base
// pretrained natively on 20 simulated people (pretraining is not timed). Prints a markdown table.
//
//   node tests/bench/personal_browser_bench.mjs $CARGO_TARGET_DIR/debug/tastebud [runs=3]
//
// Needs web/pkg (web/build.sh), /usr/bin/chromium and tests/browser's node_modules.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startBrowser } from '../browser/harness.mjs';

const [bin, runsArg] = process.argv.slice(2);
const RUNS = Number(runsArg ?? 3);
const D = 768;
let seed = 1;
const random = () => { seed = (seed * 16807) % 2147483647; return seed / 2147483647; };
const gaussian = () => Math.sqrt(-2 * Math.log(random() || 1e-12)) * Math.cos(2 * Math.PI * random());
const unit = (v) => { const n = Math.hypot(...v); return v.map((x) => x / n); };
const vector = () => unit(Array.from({ length: D }, gaussian));

function prefs(pairs, users) {
  const records = [];
  for (let u = 0; u < users; u++) {
    const taste = vector();
    for (let i = 0; i < pairs; i++) {
      const a = vector(), b = vector();
      const score = (x) => x.reduce((s, v, k) => s + v * taste[k], 0);
      records.push({ prompt: '', a: { embedding: a }, b: { embedding: b }, choice: score(a) > score(b) ? 'a' : 'b',
        timestamp: 0, ...(users > 1 ? { user: `person-${u}` } : {}) });
    }
  }
  return { format: 'tastebud-preferences', version: 1, records };
}

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tastebud-personal-bench-'));
const mine = path.join(dir, 'mine.json');
const population = path.join(dir, 'population.json');
fs.writeFileSync(mine, JSON.stringify(prefs(100, 1)));
fs.writeFileSync(population, JSON.stringify(prefs(20, 20)));
const run = (args) => execFileSync(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] }).toString();
const bases = {};
for (const [name, kind] of [['pal', 'pal'], ['vpl', 'vpl'], ['linear+prior', 'linear']]) {
  bases[name] = path.join(dir, `${kind}-base`);
  run(['personalize', 'pretrain', '--prefs', population, '--head', kind, '--steps', '20', '--out', bases[name]]);
}
const median = (v) => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)];

const rows = [];
const { server, browser, base } = await startBrowser();
try {
  for (const name of ['linear', 'linear+prior', 'mlp', 'pal', 'vpl']) {
    const kind = name.split('+')[0];
    const native = [];
    for (let r = 0; r < RUNS; r++) {
      const args = ['personalize', 'fit', '--prefs', mine, '--head', kind, '--out', path.join(dir, kind), '--json'];
      if (bases[name]) args.push('--base', bases[name]);
      native.push(JSON.parse(run(args)).fit_ms);
    }
    const page = await browser.newPage();
    await page.goto(`${base}/tests/browser/blank.html`);
    const baseFiles = bases[name]
      ? ['head.json', 'head.safetensors'].map((f) => Array.from(fs.readFileSync(path.join(bases[name], f))))
      : null;
    const web = await page.evaluate(async ({ store, kind, baseFiles, runs }) => {
      const { default: init, Head } = await import('/web/pkg/tastebud-web.js');
      await init();
      const bytes = new TextEncoder().encode(JSON.stringify(store));
      const times = [];
      for (let r = 0; r < runs; r++) {
        const baseHead = baseFiles && Head.load(new Uint8Array(baseFiles[0]), new Uint8Array(baseFiles[1]));
        const t = performance.now();
        await Head.fit(bytes, kind, baseHead ?? undefined);
        times.push(performance.now() - t);
      }
      return times;
    }, { store: JSON.parse(fs.readFileSync(mine)), kind, baseFiles, runs: RUNS });
    await page.close();
    rows.push([name, median(native), median(web)]);
  }
} finally {
  await browser.close();
  server.close();
}
console.log(`Fitting a head on 100 answered pairs, ${D}-dimensional embeddings, median of ${RUNS}\n`);
console.log('| head | native CLI, flex (ms) | browser, wasm CPU backend (ms) |');
console.log('|---|---|---|');
for (const [kind, n, w] of rows) console.log(`| ${kind} | ${n.toFixed(0)} | ${w.toFixed(0)} |`);
