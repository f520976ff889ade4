// Half precision in the browser: SwiftShader's WebGPU adapter has no `shader-f16`, so asking
// for f16 there is a clear error; the CPU fallback computes in f16 and ReNO's first
// iterations stay within f16's reach of the f32 PyTorch reference loop.
//
// Needs: web/pkg (web/build.sh), /usr/bin/chromium.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { referenceTensor, blankPage, useBrowser } from './harness.mjs';

const ctx = useBrowser();

async function inPage(fn, arg) {
  const { page, logs } = await blankPage(ctx);
  try {
    return await page.evaluate(fn, arg);
  } catch (e) {
    throw new Error(`${e}\n${logs.join('\n')}`);
  } finally {
    await page.close();
  }
}

test('f16 on an adapter without shader-f16 is refused, naming the feature', async () => {
  const message = await inPage(async () => {
    const { default: init, Tastebud } = await import('/web/pkg/tastebud-web.js');
    await init();
    try {
      await Tastebud.create('gpu', 'f16');
      return null;
    } catch (e) {
      return String(e.message ?? e);
    }
  });
  assert.ok(message, 'creating an f16 WebGPU device should fail on SwiftShader');
  assert.match(message, /shader-f16/);
  assert.match(message, /use f32/);
});

test('ReNO on the CPU fallback in f16 follows the f32 reference closely', async () => {
  const got = await inPage(async () => {
    const { default: init, Tastebud } = await import('/web/pkg/tastebud-web.js');
    await init();
    const { loadPipeline, stageFirst } = await import('/tests/browser/page.mjs');
    const tb = await Tastebud.create('cpu', 'f16');
    await loadPipeline(tb, Tastebud, '/tests/fixtures/sd-turbo-tiny');
    for (const [kind, folders, weight] of [['clip', ['clip-openai'], 0.1],
      ['aesthetic', ['clip-openai', 'rewards/aesthetic-head'], 1.0]]) {
      for (const name of Tastebud.reward_files(kind)) {
        await stageFirst(tb, folders.map((f) => [name, `/tests/fixtures/${f}/${name}`]));
      }
      tb.add_reward(kind, `/tests/fixtures/${folders[0]}`, weight);
    }
    const noise = new Uint8Array(await (await fetch('/tests/fixtures/reno/reference.safetensors')).arrayBuffer());
    const result = await tb.optimize('a photo of a cat', noise, 0n, undefined, undefined, 3, undefined, 0.025);
    return { device: tb.device, report: JSON.parse(result.report()) };
  });
  assert.match(got.device, /^flex .*f16/);
  const loss = referenceTensor('reno/reference.safetensors', 'sgd.reward_loss');
  const its = got.report.iterations;
  assert.equal(its.length, 3);
  for (const [i, it] of its.entries()) {
    assert.ok(Math.abs(it.reward_loss - loss[i]) < 3e-2, `f16 loss at ${i}: ${it.reward_loss} vs ${loss[i]}`);
  }
});
