// One-step generation in headless Chromium through the JS package: the tiny SD-Turbo snapshot
// with diffusers' noise gives diffusers' image within 1 level per channel on WebGPU
// (SwiftShader) and on the CPU fallback (flex compiled to wasm32), like the native CLI.
//
// Needs: web/pkg (web/build.sh), /usr/bin/chromium.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { fixtures, blankPage, decodePng, useBrowser } from './harness.mjs';

const ctx = useBrowser({ needsCli: false });

async function generate(device, caseInfo) {
  const { page, logs } = await blankPage(ctx);
  try {
    return await page.evaluate(async ({ device, c }) => {
      const { default: init, Tastebud } = await import('/web/pkg/tastebud-web.js');
      await init();
      const { loadPipeline } = await import('/tests/browser/page.mjs');
      const tb = await Tastebud.create(device);
      await loadPipeline(tb, Tastebud, `/tests/fixtures/${c.model}`);
      const noise = new Uint8Array(await (await fetch(`/tests/fixtures/${c.noise}`)).arrayBuffer());
      const image = await tb.generate(c.prompt, noise, 0n, c.steps, c.height, c.width);
      let bad = null;
      try {
        await tb.generate(c.prompt, undefined, 0n, 1, 36, c.width);
      } catch (e) {
        bad = String(e.message ?? e);
      }
      return { device: tb.device, width: image.width, height: image.height, rgba: Array.from(image.rgba()),
        pngLength: image.png().length, bad };
    }, { device, c: caseInfo });
  } catch (e) {
    throw new Error(`${e}\n${logs.join('\n')}`);
  } finally {
    await page.close();
  }
}

const reference = JSON.parse(fs.readFileSync(path.join(fixtures, 'reference.json')));

for (const device of ['gpu', 'cpu']) {
  test(`generation on ${device} matches diffusers within 1 level`, { timeout: 900_000 }, async () => {
    const c = reference.pipelines[1]; // sd-turbo-tiny, vocab.json + merges.txt, 48x40
    const got = await generate(device, c);
    const want = decodePng(fs.readFileSync(path.join(fixtures, c.image)));
    assert.equal(got.width, want.width);
    assert.equal(got.height, want.height);
    assert.match(got.device, device === 'gpu' ? /wgpu|webgpu/i : /flex|cpu/i);
    let worst = 0;
    for (let i = 0; i < want.width * want.height; i++) {
      for (let ch = 0; ch < 3; ch++) {
        worst = Math.max(worst, Math.abs(got.rgba[i * 4 + ch] - want.pixels[i * 3 + ch]));
      }
    }
    assert.ok(worst <= 1, `pixels differ by ${worst} on ${got.device}`);
    assert.ok(got.pngLength > 100);
    assert.match(got.bad, /height: 36 pixels: must be a positive multiple of 8/);
  });
}
