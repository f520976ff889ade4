// The browser product, measured: the package's wasm size (raw, gzip, brotli), time from page
// load to the first image (cold: empty cache; warm: the model from the Cache API), one-step and
// ReNO-iteration times in headless Chromium on the CPU fallback and on WebGPU (SwiftShader),
// next to the native CLI on the same machine in the same run. Prints a Markdown table.
//
//   web/build.sh && cargo build --bin tastebud
//   TASTEBUD_BIN=$CARGO_TARGET_DIR/debug/tastebud node tests/bench/web.mjs [--gpu-iterations 2]
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { root, startBrowser } from '../browser/harness.mjs';

const PROMPT = 'a red circle to the left of a blue square';
const args = process.argv.slice(2);
const option = (name, fallback) => {
  const i = args.indexOf(name);
  return i >= 0 ? Number(args[i + 1]) : fallback;
};
const RUNS = option('--runs', 5);
const RENO = { cpu: option('--cpu-iterations', 10), gpu: option('--gpu-iterations', 2) };
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const mb = (n) => (n / 1e6).toFixed(1);

// Sizes of what a visitor downloads.
const wasm = fs.readFileSync(path.join(root, 'web/pkg/tastebud-web_bg.wasm'));
const sizes = {
  raw: wasm.length,
  gzip: zlib.gzipSync(wasm, { level: 9 }).length,
  brotli: zlib.brotliCompressSync(wasm, { params: { [zlib.constants.BROTLI_PARAM_QUALITY]: 9 } }).length,
};
const models = JSON.parse(fs.readFileSync(path.join(root, 'models/shapes/manifest.json'))).files
  .filter((f) => !f.file.startsWith('proxy/')).reduce((sum, f) => sum + f.bytes, 0);

// Native: the same model, prompt and seed on this machine's CPU.
const bin = process.env.TASTEBUD_BIN;
if (!bin) throw new Error('set TASTEBUD_BIN to the native tastebud binary');
const bench = JSON.parse(execFileSync(bin, ['bench', '--width', '64', '--height', '64', '--runs', String(RUNS * 4),
  '--warmup', '3', '--device', 'cpu', '--prompt', PROMPT], { stdio: ['ignore', 'pipe', 'ignore'] }));
const optimized = JSON.parse(execFileSync(bin, ['optimize', '--prompt', PROMPT, '--seed', '0', '--iters',
  String(RENO.cpu), '--lr', '2', '--device', 'cpu', '--out', '/tmp/tastebud-web-bench.png', '--json'],
{ stdio: ['ignore', 'pipe', 'ignore'] }));

const ctx = await startBrowser();
async function visit(context, device) {
  const page = await context.newPage();
  await page.goto(`${ctx.base}/tests/browser/blank.html`);
  const result = await page.evaluate(async ({ device, PROMPT, RUNS, iterations }) => {
    const { Tastebud } = await import('/web/pkg/tastebud.js');
    const tb = await Tastebud.load({ device });
    const loaded = performance.now();
    await tb.generate({ prompt: PROMPT, seed: 0 });
    const first = performance.now(); // since navigation started
    const times = [];
    for (let i = 0; i < RUNS; i++) {
      const t = performance.now();
      await tb.generate({ prompt: PROMPT, seed: i + 1 });
      times.push(performance.now() - t);
    }
    const t = performance.now();
    await tb.optimize({ prompt: PROMPT, seed: 0, iterations, lr: 2, previewEvery: 0 });
    const reno = (performance.now() - t) / iterations;
    const sources = [...new Set(tb.loadReport.files.map((f) => f.source))];
    tb.dispose();
    return { device: tb.device, loaded, first, times, reno, sources };
  }, { device, PROMPT, RUNS: device === 'gpu' ? 2 : RUNS, iterations: RENO[device] });
  await page.close();
  return result;
}

const rows = [];
for (const device of ['cpu', 'gpu']) {
  const context = await ctx.browser.newContext();
  const cold = await visit(context, device);
  const warm = await visit(context, device);
  await context.close();
  rows.push({ device, cold, warm });
}
await ctx.browser.close();
ctx.server.close();

console.log(`wasm: ${mb(sizes.raw)} MB raw, ${mb(sizes.gzip)} MB gzip, ${mb(sizes.brotli)} MB brotli; ` +
  `models: ${mb(models)} MB (f16 safetensors, fetched once, then from the Cache API)\n`);
console.log('| where | device | page load to first image, cold / warm (ms) | one step (ms, median) | ReNO iteration (ms) |');
console.log('|---|---|---|---|---|');
for (const { device, cold, warm } of rows) {
  console.log(`| Chromium, ${device === 'gpu' ? 'WebGPU' : 'CPU fallback'} | ${warm.device} | ` +
    `${Math.round(cold.first)} / ${Math.round(warm.first)} (warm from ${warm.sources.join(' + ')}) | ` +
    `${Math.round(median(warm.times))} | ${Math.round(warm.reno)} |`);
}
console.log(`| native CLI | ${bench.device} | - | ${Math.round(bench.total_ms)} | ${Math.round(optimized.ms.per_step)} |`);
