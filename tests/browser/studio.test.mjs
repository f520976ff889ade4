// The demo's Draw and Steer (index.html) through the JS package (web/pkg/tastebud.js, its
// module worker and the shipped shapes models), in headless Chromium:
// - the page draws on load, and its picture equals the native CLI's for the same seed within
//   one level, on the CPU fallback and on WebGPU (SwiftShader);
// - Steer raises the reward, with live previews; Stop ends a run early with the best so far;
//   the page's main thread keeps answering while ReNO runs in the worker;
// - models are verified and cached: a second load comes from the Cache API even with the
//   model's URLs unreachable; a damaged cached copy is refused and fetched again; a damaged
//   download fails naming the file and is never cached; a full cache (quota) loses nothing;
// - a GPU device lost mid-draw: the page says so, loads a fresh engine and draws again.
//
// Needs: web/pkg (web/build.sh), the native binary in $TASTEBUD_BIN, /usr/bin/chromium.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { decodePng, fixtures, root, useBrowser } from './harness.mjs';

const ctx = useBrowser({ needsCli: true });
const PROMPT = 'a red circle to the left of a blue square';
const SEED = 5;
let native;

before(() => {
  const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'tastebud-studio-')), 'native.png');
  execFileSync(process.env.TASTEBUD_BIN, ['generate', '--prompt', PROMPT, '--seed', String(SEED), '--device', 'cpu',
    '--out', out], { stdio: ['ignore', 'pipe', 'pipe'] });
  native = decodePng(fs.readFileSync(out));
});

// The largest per-channel difference between an RGBA canvas and the native RGB picture.
function worstDifference(rgba, want) {
  let worst = 0;
  for (let i = 0; i < want.width * want.height; i++) {
    for (let ch = 0; ch < 3; ch++) worst = Math.max(worst, Math.abs(rgba[i * 4 + ch] - want.pixels[i * 3 + ch]));
  }
  return worst;
}

async function studioPage(device) {
  const page = await ctx.browser.newPage();
  const logs = [];
  page.on('pageerror', (e) => logs.push(String(e)));
  await page.goto(`${ctx.base}/index.html?device=${device}&draw=0`);
  await page.fill('#draw-seed', String(SEED));
  await page.click('#draw');
  await page.waitForFunction(() => document.getElementById('draw').dataset.done
    || document.getElementById('draw-status').textContent.startsWith('failed'), null, { timeout: 300_000 });
  return { page, logs };
}

const canvasPixels = (page, id) => page.$eval(id, (c) => Array.from(c.getContext('2d')
  .getImageData(0, 0, c.width, c.height).data));

for (const device of ['cpu', 'gpu']) {
  test(`the demo draws the native CLI's picture on ${device}`, { timeout: 600_000 }, async () => {
    const { page, logs } = await studioPage(device);
    try {
      const status = await page.textContent('#draw-status');
      assert.match(status, device === 'gpu' ? /drawn in \d+ ms on wgpu/ : /drawn in \d+ ms on flex \(CPU\)/, status);
      assert.match(status, /model: 19\.\d MB from network/);
      const pixels = await canvasPixels(page, '#drawn');
      assert.equal(pixels.length, native.width * native.height * 4);
      const worst = worstDifference(pixels, native);
      assert.ok(worst <= 1, `the page's picture differs from the native CLI's by ${worst} on ${device}`);
      assert.deepEqual(logs, []);
    } finally {
      await page.close();
    }
  });
}

test('Steer raises the reward with previews, Stop ends early, the page stays responsive', { timeout: 600_000 },
  async () => {
    const { page, logs } = await studioPage('cpu');
    try {
      const drawn = await canvasPixels(page, '#drawn');
      await page.fill('#steer-iterations', '6');
      // Count main-thread timer ticks while ReNO runs in the worker.
      await page.evaluate(() => {
        window.ticks = [];
        window.ticker = setInterval(() => window.ticks.push(performance.now()), 50);
      });
      await page.click('#steer');
      await page.waitForFunction(() => document.getElementById('steer').dataset.done, null, { timeout: 300_000 });
      const ticks = await page.evaluate(() => { clearInterval(window.ticker); return window.ticks; });
      const status = await page.textContent('#steer-status');
      const [, first, best] = status.match(/reward (-?[\d.]+) -> (-?[\d.]+)/) ?? [];
      assert.ok(Number(best) > Number(first) + 1, `the reward did not rise: ${status}`);
      const steered = await canvasPixels(page, '#steered');
      assert.ok(steered.some((v, i) => Math.abs(v - drawn[i]) > 30), 'the steered picture is the drawn one');
      const gaps = ticks.slice(1).map((t, i) => t - ticks[i]);
      assert.ok(ticks.length >= 10, `only ${ticks.length} main-thread ticks during ReNO`);
      assert.ok(Math.max(...gaps) < 1000, `the main thread froze for ${Math.max(...gaps)} ms`);

      // Stop after the first preview of a long run.
      await page.fill('#steer-iterations', '200');
      await page.click('#steer');
      await page.waitForFunction(() => /^iteration [2-9]/.test(document.getElementById('steer-status').textContent),
        null, { timeout: 300_000 });
      await page.click('#steer-stop');
      await page.waitForFunction(() => document.getElementById('steer').dataset.done !== '6', null,
        { timeout: 300_000 });
      const stopped = await page.textContent('#steer-status');
      assert.match(stopped, /stopped by the caller after iteration \d+/);
      const ran = Number(await page.$eval('#steer', (b) => b.dataset.done));
      assert.ok(ran >= 2 && ran < 20, `${ran} iterations ran after Stop`);
      assert.deepEqual(logs, []);
    } finally {
      await page.close();
    }
  });

// A lost device is injected where wgpu will next touch it: the worker's device destroys itself
// at its next command encoder, i.e. in the middle of the next generation.
test('a lost GPU device mid-draw: the page says so, loads a fresh engine and draws the same picture',
  { timeout: 600_000 }, async () => {
    const { page, logs } = await studioPage('gpu');
    try {
      const [worker] = page.workers();
      await worker.evaluate(() => {
        const encoder = GPUDevice.prototype.createCommandEncoder;
        GPUDevice.prototype.createCommandEncoder = function destroyFirst(...args) {
          this.destroy();
          return encoder.apply(this, args);
        };
      });
      await page.evaluate(() => { delete document.getElementById('draw').dataset.done; });
      await page.click('#draw');
      await page.waitForFunction(() => document.getElementById('draw').dataset.done
        || document.getElementById('draw-status').textContent.startsWith('failed'), null, { timeout: 300_000 });
      const status = await page.textContent('#draw-status');
      assert.match(status, /drawn in \d+ ms on wgpu/, status);
      assert.match(status, /recovered: the GPU device was lost \(destroyed: /, status);
      assert.match(status, /model: 19\.\d MB from cache/, status);
      const worst = worstDifference(await canvasPixels(page, '#drawn'), native);
      assert.ok(worst <= 1, `the picture after the lost device differs from the native CLI's by ${worst}`);
      assert.equal(page.workers().length, 1, 'the dead engine\'s worker is still running');
      assert.deepEqual(logs, []);
    } finally {
      await page.close();
    }
  });

test('best-of-N in the page picks the native CLI\'s seed and picture at the same budget', { timeout: 600_000 },
  async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tastebud-best-of-n-'));
    const report = JSON.parse(execFileSync(process.env.TASTEBUD_BIN, ['optimize', '--prompt', PROMPT, '--seed',
      String(SEED), '--method', 'best-of-n', '--budget', '7', '--device', 'cpu', '--out', path.join(dir, 'best.png'),
      '--json'], { stdio: ['ignore', 'pipe', 'pipe'] }));
    const want = decodePng(fs.readFileSync(path.join(dir, 'best.png')));
    const { page, logs } = await studioPage('cpu');
    try {
      await page.fill('#steer-iterations', '3'); // ReNO-3's cost: 7 forward passes
      await page.selectOption('#steer-method', 'best-of-n');
      await page.click('#steer');
      await page.waitForFunction(() => document.getElementById('steer').dataset.done
        || document.getElementById('steer-status').textContent.startsWith('failed'), null, { timeout: 300_000 });
      const status = await page.textContent('#steer-status');
      assert.ok(status.includes(`(best: ${report.best})`), `${status} (native: ${report.best})`);
      assert.equal(await page.$eval('#steer', (b) => b.dataset.done), '7');
      const worst = worstDifference(await canvasPixels(page, '#steered'), want);
      assert.ok(worst <= 1, `the page's best-of-N picture differs from the native CLI's by ${worst}`);
      assert.deepEqual(logs, []);
    } finally {
      await page.close();
    }
  });

test('Steer on WebGPU raises the reward', { timeout: 600_000 }, async () => {
  const { page, logs } = await studioPage('gpu');
  try {
    await page.fill('#steer-iterations', '2');
    await page.click('#steer');
    await page.waitForFunction(() => document.getElementById('steer').dataset.done
      || document.getElementById('steer-status').textContent.startsWith('failed'), null, { timeout: 300_000 });
    const status = await page.textContent('#steer-status');
    const [, first, best] = status.match(/reward (-?[\d.]+) -> (-?[\d.]+)/) ?? [];
    assert.ok(Number(best) > Number(first), `the reward did not rise on WebGPU: ${status}`);
    assert.deepEqual(logs, []);
  } finally {
    await page.close();
  }
});

test('models are verified and cached; damaged copies are refused', { timeout: 600_000 }, async () => {
  const context = await ctx.browser.newContext();
  const page = await context.newPage();
  await page.goto(`${ctx.base}/tests/browser/blank.html`);
  const load = (options) => page.evaluate(async (options) => {
    const { Tastebud } = await import('/web/pkg/tastebud.js');
    try {
      const tb = await Tastebud.load({ device: 'cpu', ...options });
      const image = await tb.generate({ prompt: 'a green triangle', seed: 1 });
      tb.dispose();
      return { report: tb.loadReport, sum: image.data.reduce((a, b) => a + b, 0) };
    } catch (e) {
      return { error: String(e.message ?? e) };
    }
  }, options);
  const cachedNames = () => page.evaluate(async () => {
    const cache = await caches.open('tastebud-models-v1');
    return (await cache.keys()).map((r) => r.url);
  });
  try {
    // A damaged download names the file and is not cached; nothing else is lost.
    await page.route('**/generator/vae/config.json', async (route) => {
      const response = await route.fetch();
      const body = Buffer.from(await response.body());
      body[10] ^= 1;
      await route.fulfill({ response, body });
    });
    const damaged = await load({});
    assert.match(damaged.error ?? '', /generator\/vae\/config\.json: damaged download from .*sha256/);
    assert.ok(!(await cachedNames()).some((u) => u.includes('vae/config.json')));
    await page.unroute('**/generator/vae/config.json');
    await page.evaluate(() => caches.delete('tastebud-models-v1'));

    const first = await load({});
    assert.ok(first.report, first.error);
    assert.ok(first.report.files.every((f) => f.source === 'network'));
    assert.deepEqual(first.report.warnings, []);

    // Second load, the model's URLs unreachable: everything from the cache, the same picture.
    await page.route('**/models/shapes/**', (route) => route.abort('internetdisconnected'));
    const offline = await load({});
    assert.ok(offline.report, offline.error);
    assert.ok(offline.report.files.every((f) => f.source === 'cache'), JSON.stringify(offline.report.files));
    assert.equal(offline.sum, first.sum);
    assert.match(offline.report.warnings.join('\n'), /offline .*using the manifest cached on the last visit/);
    await page.unroute('**/models/shapes/**');

    // A damaged cached copy, and one cut short (a crash mid-write), are refused and fetched again.
    await page.evaluate(async () => {
      const cache = await caches.open('tastebud-models-v1');
      const keys = await cache.keys();
      const damaged = keys.find((r) => r.url.includes('clip/config.json'));
      const bytes = new Uint8Array(await (await cache.match(damaged)).arrayBuffer());
      bytes[5] ^= 1;
      await cache.put(damaged, new Response(bytes));
      const cut = keys.find((r) => r.url.includes('generator/unet/config.json'));
      const whole = new Uint8Array(await (await cache.match(cut)).arrayBuffer());
      await cache.put(cut, new Response(whole.slice(0, whole.length >> 1)));
    });
    const repaired = await load({});
    assert.ok(repaired.report, repaired.error);
    const warnings = repaired.report.warnings.join('\n');
    assert.match(warnings, /the cached copy of clip\/config\.json was refused \(sha256/);
    assert.match(warnings, /the cached copy of generator\/unet\/config\.json was refused \(\d+ bytes/);
    assert.deepEqual(repaired.report.files.filter((f) => f.source === 'network').map((f) => f.file).sort(),
      ['clip/config.json', 'generator/unet/config.json']);
    assert.equal(repaired.sum, first.sum);

    // A full cache (quota exceeded) loses nothing: the model loads and draws, and says so.
    const quota = await page.evaluate(async () => {
      await caches.delete('tastebud-models-v1');
      const { default: init, Tastebud: Engine } = await import('/web/pkg/tastebud-web.js');
      await init();
      const put = Cache.prototype.put;
      Cache.prototype.put = () => Promise.reject(new DOMException('The quota has been exceeded.', 'QuotaExceededError'));
      try {
        const engine = await Engine.create('cpu');
        const report = JSON.parse(await engine.load_model('/web/pkg/models/shapes/'));
        const image = await engine.generate('a green triangle', undefined, 1n, 1);
        return { report, sum: image.rgba().reduce((a, b) => a + b, 0),
          cached: (await (await caches.open('tastebud-models-v1')).keys()).length };
      } finally {
        Cache.prototype.put = put;
      }
    });
    assert.equal(quota.sum, first.sum);
    assert.equal(quota.cached, 0);
    assert.match(quota.report.warnings.join('\n'),
      /generator\/unet\/diffusion_pytorch_model\.safetensors was not cached \(The quota has been exceeded\.\)/);

    // 'auto' on a machine whose only WebGPU adapter is software: the CPU, and it says why.
    const auto = await load({ device: 'auto' });
    assert.ok(auto.report, auto.error);
    assert.match(auto.report.device, /^flex \(CPU\) \(auto: (no hardware GPU adapter found|wgpu chose software)/);

    // Bad arguments are Errors with clear messages, before any work.
    const bad = await load({ device: 'tpu' });
    assert.match(bad.error, /device must be one of auto, gpu, cpu, got tpu/);
    const missing = await load({ model: '/tests/fixtures/no-such-model/' });
    assert.match(missing.error, /no-such-model\/ is not a model: it has none of manifest\.json, model_index\.json \(a diffusers snapshot\) or config\.json \(a CLIP\)/);
  } finally {
    await context.close();
  }
});

// Every file under `dir`, relative to it ('unet/config.json').
function filesUnder(dir, prefix = '') {
  return fs.readdirSync(path.join(dir, prefix), { withFileTypes: true }).flatMap((e) => e.isDirectory()
    ? filesUnder(dir, path.join(prefix, e.name)) : [path.join(prefix, e.name)]);
}

for (const source of ['URL', 'picked folder']) {
  test(`a user's diffusers snapshot (${source}, no manifest) loads through the package and matches diffusers`,
    { timeout: 600_000 }, async () => {
      const c = JSON.parse(fs.readFileSync(path.join(fixtures, 'reference.json'))).pipelines[1]; // sd-turbo-tiny
      const names = source === 'URL' ? null : filesUnder(path.join(fixtures, c.model));
      const page = await ctx.browser.newPage();
      await page.goto(`${ctx.base}/tests/browser/blank.html`);
      try {
        const got = await page.evaluate(async ({ c, names }) => {
          const { Tastebud } = await import('/web/pkg/tastebud.js');
          // A picked folder: File objects named by their path in the folder.
          const model = names === null ? `/tests/fixtures/${c.model}` : await Promise.all(names.map(async (n) =>
            new File([await (await fetch(`/tests/fixtures/${c.model}/${n}`)).arrayBuffer()], n)));
          const tb = await Tastebud.load({ model, device: 'cpu' });
          const noise = new Uint8Array(await (await fetch(`/tests/fixtures/${c.noise}`)).arrayBuffer());
          const image = await tb.generate({ prompt: c.prompt, noise, steps: c.steps, width: c.width, height: c.height });
          let refused = null;
          try {
            await tb.optimize({ prompt: c.prompt, noise, iterations: 2 });
          } catch (e) {
            refused = String(e.message ?? e);
          }
          tb.dispose();
          return { report: tb.loadReport, width: image.width, height: image.height, rgba: Array.from(image.data), refused };
        }, { c, names });
        assert.equal(got.report.clip, false);
        assert.ok(got.report.files.every((f) => f.source === (names ? 'folder' : 'network')));
        assert.ok(got.report.files.some((f) => f.file === 'unet/diffusion_pytorch_model.safetensors'));
        const want = decodePng(fs.readFileSync(path.join(fixtures, c.image)));
        assert.deepEqual([got.width, got.height], [want.width, want.height]);
        const worst = worstDifference(got.rgba, want);
        assert.ok(worst <= 1, `differs from diffusers by ${worst}`);
        // No CLIP came with it: steering says what is missing.
        assert.match(got.refused, /no reward to steer toward: the model came without a CLIP/);
      } finally {
        await page.close();
      }
    });
}

test('a picked folder with a CLIP beside the generator (the shipped layout) draws, steers and learns a taste',
  { timeout: 600_000 }, async () => {
    const shapes = path.join(root, 'models/shapes');
    const names = [...filesUnder(shapes, 'generator'), ...filesUnder(shapes, 'clip')];
    const page = await ctx.browser.newPage();
    await page.goto(`${ctx.base}/tests/browser/blank.html`);
    try {
      const got = await page.evaluate(async ({ names, prompt, seed }) => {
        const { Tastebud } = await import('/web/pkg/tastebud.js');
        const files = await Promise.all(names.map(async (n) =>
          new File([await (await fetch(`/models/shapes/${n}`)).arrayBuffer()], n)));
        const tb = await Tastebud.load({ model: files, device: 'cpu' });
        const image = await tb.generate({ prompt, seed });
        const taste = tb.taste();
        const candidates = await taste.candidates({ prompt, seeds: [0, 1, 2, 3] });
        await taste.answer({ prompt, a: candidates[0], b: candidates[1], choice: 'a' });
        await taste.answer({ prompt, a: candidates[2], b: candidates[3], choice: 'b' });
        const steered = await tb.optimize({ prompt, seed, iterations: 3, taste });
        tb.dispose();
        return { report: tb.loadReport, rgba: Array.from(image.data), labels: steered.labels,
          personal: steered.iterations.map((it) => it.rewards[steered.labels.indexOf('personal')]) };
      }, { names, prompt: PROMPT, seed: SEED });
      assert.equal(got.report.clip, true);
      assert.ok(got.report.files.some((f) => f.file === 'clip/model.safetensors' && f.source === 'folder'));
      const worst = worstDifference(got.rgba, native);
      assert.ok(worst <= 1, `the picked bundle's picture differs from the native CLI's by ${worst}`);
      assert.deepEqual(got.labels, ['clip', 'personal']);
      assert.ok(got.personal.every(Number.isFinite) && got.personal.length === 3, JSON.stringify(got.personal));
    } finally {
      await page.close();
    }
  });

test('a quantized (GGUF) snapshot loads through the package and matches the native CLI on CPU and WebGPU',
  { timeout: 600_000 }, async () => {
    const c = JSON.parse(fs.readFileSync(path.join(fixtures, 'reference.json'))).pipelines[1]; // sd-turbo-tiny
    // Served from the checkout (the test server's root); .out/ is ignored by git.
    const dir = path.join(root, 'tests/browser/.out/sd-turbo-tiny-q8_0');
    fs.rmSync(dir, { recursive: true, force: true });
    execFileSync(process.env.TASTEBUD_BIN, ['quantize', '--model', path.join(fixtures, c.model), '--to', 'q8_0',
      '--out', dir], { stdio: ['ignore', 'pipe', 'pipe'] });
    const out = path.join(dir, 'native.png');
    execFileSync(process.env.TASTEBUD_BIN, ['generate', '--model', dir, '--prompt', c.prompt, '--noise',
      path.join(fixtures, c.noise), '--device', 'cpu', '--out', out], { stdio: ['ignore', 'pipe', 'pipe'] });
    const want = decodePng(fs.readFileSync(out));
    for (const device of ['cpu', 'gpu']) {
      const page = await ctx.browser.newPage();
      await page.goto(`${ctx.base}/tests/browser/blank.html`);
      try {
        const got = await page.evaluate(async ({ c, device }) => {
          const { Tastebud } = await import('/web/pkg/tastebud.js');
          const tb = await Tastebud.load({ model: '/tests/browser/.out/sd-turbo-tiny-q8_0/', device });
          const noise = new Uint8Array(await (await fetch(`/tests/fixtures/${c.noise}`)).arrayBuffer());
          const image = await tb.generate({ prompt: c.prompt, noise, width: c.width, height: c.height });
          tb.dispose();
          return { files: tb.loadReport.files.map((f) => f.file), rgba: Array.from(image.data) };
        }, { c, device });
        assert.ok(got.files.includes('unet/diffusion_pytorch_model.gguf'), got.files.join(', '));
        const worst = worstDifference(got.rgba, want);
        assert.ok(worst <= 1, `${device}: the quantized snapshot's picture differs from the native CLI's by ${worst}`);
      } finally {
        await page.close();
      }
    }
    fs.rmSync(dir, { recursive: true, force: true });
  });
