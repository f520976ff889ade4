// ReNO in headless Chromium through the JS package: 5 iterations on the tiny SD-Turbo snapshot
// for CLIPScore (0.1) + LAION aesthetic (1.0), from the noise of the PyTorch reference loop
// (tests/reference/make_reno_fixtures.py), on WebGPU (SwiftShader) and on the CPU fallback.
// Each iteration arrives live through the callback; the CLIP reward rises; the trajectory
// equals the Python reference's and the native CLI's; returning false stops the run.
//
// Needs: web/pkg (web/build.sh), the native binary in $TASTEBUD_BIN, /usr/bin/chromium.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { assertClose, fixtures, referenceTensor, blankPage, useBrowser } from './harness.mjs';

const tastebud = process.env.TASTEBUD_BIN;
const PROMPT = 'a photo of a cat';
const ITERATIONS = 5;
const GRAD_CLIP = 0.025; // the reference run's
// Reward kind, folders its files come from, weight.
const REWARDS = [
  ['clip', ['clip-openai'], 0.1],
  ['aesthetic', ['clip-openai', 'rewards/aesthetic-head'], 1.0],
];

const ctx = useBrowser({ needsCli: true });

async function optimizeInBrowser(device, stopAfter) {
  const { page, logs } = await blankPage(ctx);
  try {
    return await page.evaluate(async ({ device, rewards, prompt, iterations, gradClip, stopAfter }) => {
      const { default: init, Tastebud } = await import('/web/pkg/tastebud-web.js');
      await init();
      const { loadPipeline, stageFirst } = await import('/tests/browser/page.mjs');
      const tb = await Tastebud.create(device);
      await loadPipeline(tb, Tastebud, '/tests/fixtures/sd-turbo-tiny');
      for (const [kind, folders, weight] of rewards) {
        for (const name of Tastebud.reward_files(kind)) {
          await stageFirst(tb, folders.map((f) => [name, `/tests/fixtures/${f}/${name}`]));
        }
        tb.add_reward(kind, `/tests/fixtures/${folders[0]}`, weight);
      }
      const noise = new Uint8Array(await (await fetch('/tests/fixtures/reno/reference.safetensors')).arrayBuffer());
      const live = [];
      const result = await tb.optimize(prompt, noise, 0n, undefined, undefined, iterations, undefined, gradClip,
        undefined, (json) => {
          const it = JSON.parse(json);
          live.push(it.iteration);
          return stopAfter === null || it.iteration < stopAfter;
        });
      const image = result.image();
      return { device: tb.device, live, report: JSON.parse(result.report()), width: image.width,
        height: image.height, noiseBytes: result.noise_npy().length };
    }, { device, rewards: REWARDS, prompt: PROMPT, iterations: ITERATIONS, gradClip: GRAD_CLIP, stopAfter });
  } catch (e) {
    throw new Error(`${e}\n${logs.join('\n')}`);
  } finally {
    await page.close();
  }
}

function native() {
  const args = ['optimize', '--model', path.join(fixtures, 'sd-turbo-tiny'), '--prompt', PROMPT, '--noise',
    path.join(fixtures, 'reno/reference.safetensors'), '--iters', String(ITERATIONS), '--grad-clip',
    String(GRAD_CLIP), '--device', 'cpu', '--json', '--out', path.join(os.tmpdir(), 'tastebud-reno-browser.png')];
  for (const [kind, folders, weight] of REWARDS) {
    const paths = kind === 'aesthetic'
      ? [path.join(fixtures, 'rewards/aesthetic-head/sac+logos+ava1-l14-linearMSE.pth'), path.join(fixtures, 'clip-openai')]
      : [path.join(fixtures, folders[0])];
    args.push('--reward', `${kind}=${paths.join(',')}:${weight}`);
  }
  return JSON.parse(execFileSync(tastebud, args, { stdio: ['ignore', 'pipe', 'pipe'] }));
}

for (const [device, backend] of [['gpu', 'wgpu'], ['cpu', 'flex']]) {
  test(`ReNO in the browser on ${device} follows the reference loop and the native CLI`, async () => {
    const got = await optimizeInBrowser(device, null);
    assert.ok(got.device.startsWith(backend), `ran on ${got.device}, wanted ${backend}`);
    assert.deepEqual(got.live, [0, 1, 2, 3, 4], 'one live event per iteration');
    assert.deepEqual(got.report.labels, ['clip', 'aesthetic']);
    const its = got.report.iterations;
    assert.equal(its.length, ITERATIONS);
    const clip = referenceTensor('reno/reference.safetensors', 'sgd.clip');
    const loss = referenceTensor('reno/reference.safetensors', 'sgd.reward_loss');
    const cli = native();
    for (const [i, it] of its.entries()) {
      if (i > 0) assert.ok(it.rewards[0] > its[i - 1].rewards[0], `clip reward rises at ${i}`);
      assertClose(it.rewards[0], clip[i], `${device} clip at ${i} vs Python`, 1e-3);
      assertClose(it.reward_loss, loss[i], `${device} loss at ${i} vs Python`, 1e-5);
      assertClose(it.reward_loss, cli.iterations[i].reward_loss, `${device} loss at ${i} vs native`, 1e-5);
    }
    assert.equal(got.report.best_iteration, ITERATIONS - 1);
    assert.deepEqual([got.width, got.height], [40, 48]);
    assert.ok(got.noiseBytes > 4 * 120, 'the best noise comes back as .npy');
  });
}

test('returning false from the callback stops ReNO and keeps the best so far', async () => {
  const got = await optimizeInBrowser('cpu', 1);
  assert.deepEqual(got.live, [0, 1]);
  assert.equal(got.report.iterations.length, 2);
  assert.match(got.report.stopped, /after iteration 1/);
});
