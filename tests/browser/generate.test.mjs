// One-step generation in headless Chromium through the JS package: the tiny SD-Turbo snapshot
// with diffusers' noise gives diffusers' image within 1 level per channel on WebGPU
// (SwiftShader) and on the CPU fallback (flex compiled to wasm32), like the native CLI.
//
// Needs: web/pkg (web/build.sh), /usr/bin/chromium.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { fixtures, blankPage, useBrowser } from './harness.mjs';

const ctx = useBrowser({ needsCli: false });

// RGB pixels of an 8-bit, non-interlaced RGB PNG (what PIL and Tastebud write).
function decodePng(bytes) {
  let pos = 8, width, height, idat = [];
  while (pos < bytes.length) {
    const len = bytes.readUInt32BE(pos);
    const type = bytes.toString('latin1', pos + 4, pos + 8);
    const data = bytes.subarray(pos + 8, pos + 8 + len);
    if (type === 'IHDR') {
      width = data.readUInt32BE(0);
      height = data.readUInt32BE(4);
      assert.deepEqual([data[8], data[9], data[12]], [8, 2, 0], '8-bit RGB, not interlaced');
    } else if (type === 'IDAT') idat.push(data);
    pos += 12 + len;
  }
  const raw = zlib.inflateSync(Buffer.concat(idat));
  const stride = width * 3, out = Buffer.alloc(stride * height);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)];
    for (let x = 0; x < stride; x++) {
      const v = raw[y * (stride + 1) + 1 + x];
      const a = x >= 3 ? out[y * stride + x - 3] : 0;
      const b = y > 0 ? out[(y - 1) * stride + x] : 0;
      const c = x >= 3 && y > 0 ? out[(y - 1) * stride + x - 3] : 0;
      const p = a + b - c, pa = Math.abs(p - a), pb = Math.abs(p - b), pc = Math.abs(p - c);
      const pred = [0, a, b, (a + b) >> 1, pa <= pb && pa <= pc ? a : pb <= pc ? b : c][filter];
      out[y * stride + x] = (v + pred) & 255;
    }
  }
  return { width, height, pixels: out };
}

async function generate(device, caseInfo) {
  const { page, logs } = await blankPage(ctx);
  try {
    return await page.evaluate(async ({ device, c }) => {
      const { default: init, Tastebud } = await import('/web/pkg/tastebud_web.js');
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
