// The demo page (index.html) in headless Chromium: WebGPU (SwiftShader) and the CPU fallback
// give the same CLIPScore as the native CLI and as transformers (its default CLIPImageProcessor,
// asked for with preprocess=torchvision; the default Pillow path is checked against the published
// pipelines in rewards.test.mjs), bad input shows an error, and a picked CLIP folder scores
// through the package.
//
// Needs: web/pkg (web/build.sh), the native binary in $TASTEBUD_BIN, /usr/bin/chromium.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { assertClose, fixtures, referenceTensor, useBrowser } from './harness.mjs';

const tastebud = process.env.TASTEBUD_BIN;

const ctx = useBrowser({ needsCli: true });

// Runs the demo page on one device and returns what it printed in #result.
async function demo(query) {
  const page = await ctx.browser.newPage();
  const logs = [];
  page.on('console', (m) => logs.push(m.text()));
  page.on('pageerror', (e) => logs.push(String(e)));
  try {
    await page.goto(`${ctx.base}/index.html?run=1&${new URLSearchParams(query)}`);
    await page.waitForFunction(() => document.getElementById('result').textContent.length > 0, null,
      { timeout: 600_000, polling: 250 });
    const text = await page.textContent('#result');
    return { ...JSON.parse(text), logs };
  } finally {
    await page.close();
  }
}

// The native CLI's CLIPScore (exp(logit_scale) * cos) of image0, through transformers 5's processor.
function native(flavour, prompt) {
  const out = execFileSync(tastebud, ['score', '--reward', `clip=${path.join(fixtures, flavour)}`, '--prompt', prompt,
    '--device', 'cpu', '--preprocess', 'torchvision', '--json', path.join(fixtures, 'image0.png')],
    { stdio: ['ignore', 'pipe', 'pipe'] });
  return { logit: JSON.parse(out).scores[0].rewards.clip };
}

const refJson = JSON.parse(fs.readFileSync(path.join(fixtures, 'reference.json')));

for (const flavour of ['clip-openai', 'clip-openclip']) {
  const prompt = refJson[flavour].scored_prompts[0];
  // logits_per_image[0][0]: image0 against the first prompt.
  const want = { logit: referenceTensor('reference.safetensors', `${flavour}.logits_per_image`)[0], cosine: referenceTensor('reference.safetensors', `${flavour}.cosine`)[0] };
  for (const [device, backend] of [['gpu', 'wgpu'], ['cpu', 'flex']]) {
    test(`${flavour}: CLIPScore in the browser on ${device} matches native and transformers`, async () => {
      const result = await demo({ device, model: `/tests/fixtures/${flavour}/`, image: '/tests/fixtures/image0.png', prompt,
        preprocess: 'torchvision' });
      assert.equal(result.error, undefined, `page error: ${result.error}\n${result.logs.join('\n')}`);
      assert.ok(result.device.startsWith(backend), `ran on ${result.device}, wanted ${backend}`);
      const cli = native(flavour, prompt);
      assertClose(result.logit, cli.logit, `${device} vs native logit`);
      assertClose(result.logit, want.logit, `${device} vs transformers logit`);
      assertClose(result.cosine, want.cosine, `${device} vs transformers cosine`);
    });
  }
}

test('a missing model folder is reported by name in the page', async () => {
  const result = await demo({ device: 'cpu', model: '/tests/fixtures/no-such-model/', image: '/tests/fixtures/image0.png', prompt: 'a cat' });
  assert.match(result.error ?? '', /no-such-model.*config\.json/);
});

test('an empty prompt is refused in the page', async () => {
  const result = await demo({ device: 'cpu', model: '/tests/fixtures/clip-openai/', image: '/tests/fixtures/image0.png', prompt: ' ' });
  assert.match(result.error ?? '', /prompt is empty/);
});

test('a picked CLIP folder scores through the package as the URL does', async () => {
  const flavour = 'clip-openai';
  const prompt = refJson[flavour].scored_prompts[0];
  const want = referenceTensor('reference.safetensors', `${flavour}.logits_per_image`)[0];
  const names = fs.readdirSync(path.join(fixtures, flavour));
  const page = await ctx.browser.newPage();
  await page.goto(`${ctx.base}/tests/browser/blank.html`);
  try {
    const got = await page.evaluate(async ({ flavour, names, prompt }) => {
      const { Tastebud } = await import('/web/pkg/tastebud.js');
      const files = await Promise.all(names.map(async (n) =>
        new File([await (await fetch(`/tests/fixtures/${flavour}/${n}`)).arrayBuffer()], n)));
      const tb = await Tastebud.load({ model: files, device: 'cpu' });
      const image = new Uint8Array(await (await fetch('/tests/fixtures/image0.png')).arrayBuffer());
      const score = await tb.score({ prompt, image, preprocess: 'torchvision' });
      let refused = null;
      try {
        await tb.generate({ prompt });
      } catch (e) {
        refused = String(e.message ?? e);
      }
      tb.dispose();
      return { report: tb.loadReport, score, refused };
    }, { flavour, names, prompt });
    assert.equal(got.report.generator, false);
    assert.equal(got.report.clip, true);
    assertClose(got.score.logit, want, 'picked folder vs transformers logit');
    assert.match(got.refused, /no generator loaded/);
  } finally {
    await page.close();
  }
});
