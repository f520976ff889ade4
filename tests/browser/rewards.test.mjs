// Every reward in headless Chromium through the JS package: CLIPScore and PickScore from
// transformers folders, HPSv2 from its published .pt, the LAION aesthetic head (.pth) on a
// CLIP, ImageReward from its ImageReward.pt folder and DINOv2 with a reference image, together
// on WebGPU (SwiftShader) and on the CPU fallback; each equals the native CLI and the Python
// references (tests/reference/make_reward_fixtures.py, make_imagereward_fixtures.py).
//
// Needs: web/pkg (web/build.sh), the native binary in $TASTEBUD_BIN, /usr/bin/chromium.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { assertClose, fixtures, referenceTensor, blankPage, useBrowser } from './harness.mjs';

const tastebud = process.env.TASTEBUD_BIN;
const PROMPT = 'a photo of a cat';
// The order of make_fixtures.file_images(): two fixture PNGs, an upscaled and a transparent one.
const IMAGES = ['image0.png', 'image1.png', 'preprocess/rgb-93x60.png', 'preprocess/rgba-120x90.png'];
// Reward kind, folders its files come from (first found wins), files not to fetch (the .pt is
// what HPSv2 publishes), extra files handed over (DINOv2's reference image), weight, the CLI's
// paths, the Python reference's file.
const R = 'rewards/reference.safetensors';
const REWARDS = [
  ['clip', ['clip-openai'], [], [], 0.01, ['clip-openai'], R],
  ['pickscore', ['clip-openclip'], [], [], 0.05, ['clip-openclip'], R],
  ['hps', ['rewards/open-clip-tiny'], ['open_clip_model.safetensors'], [], 5.0,
    ['rewards/open-clip-tiny/HPS_v2.1_compressed.pt'], R],
  ['aesthetic', ['clip-openai', 'rewards/aesthetic-head'], [], [], 0.5,
    ['rewards/aesthetic-head/sac+logos+ava1-l14-linearMSE.pth', 'clip-openai'], R],
  ['imagereward', ['rewards/imagereward-tiny'], [], [], 1.0, ['rewards/imagereward-tiny'],
    'rewards/imagereward-tiny/reference.safetensors'],
  ['dino', ['rewards/dinov2-tiny'], [], ['image1.png'], 1.0, ['rewards/dinov2-tiny', 'image1.png'], R],
];

const ctx = useBrowser({ needsCli: true });

async function scoreInBrowser(device) {
  const { page, logs } = await blankPage(ctx);
  try {
    const out = await page.evaluate(async ({ device, rewards, images, prompt }) => {
      const { default: init, Tastebud } = await import('/web/pkg/tastebud-web.js');
      await init();
      const tb = await Tastebud.create(device);
      const { stageFirst } = await import('/tests/browser/page.mjs');
      for (const [kind, folders, skip, extra, weight] of rewards) {
        for (const name of Tastebud.reward_files(kind)) {
          if (skip.includes(name)) continue;
          await stageFirst(tb, folders.map((f) => [name, `/tests/fixtures/${f}/${name}`]));
        }
        for (const name of extra) await stageFirst(tb, [[name, `/tests/fixtures/${name}`]]);
        tb.add_reward(kind, `/tests/fixtures/${folders[0]}`, weight);
      }
      const bytes = [];
      for (const name of images) {
        bytes.push(new Uint8Array(await (await fetch(`/tests/fixtures/${name}`)).arrayBuffer()));
      }
      const torchvision = JSON.parse(await tb.score_rewards(prompt, bytes, 'torchvision'));
      return { device: tb.device, torchvision, ...JSON.parse(await tb.score_rewards(prompt, bytes)) };
    }, { device, rewards: REWARDS, images: IMAGES, prompt: PROMPT });
    return { ...out, logs };
  } catch (e) {
    throw new Error(`${e}\n${logs.join('\n')}`);
  } finally {
    await page.close();
  }
}

function native() {
  const args = ['score', '--prompt', PROMPT, '--device', 'cpu', '--json'];
  for (const [kind, , , , weight, paths] of REWARDS) {
    args.push('--reward', `${kind}=${paths.map((p) => path.join(fixtures, p)).join(',')}:${weight}`);
  }
  args.push(...IMAGES.map((n) => path.join(fixtures, n)));
  return JSON.parse(execFileSync(tastebud, args, { stdio: ['ignore', 'pipe', 'pipe'] }));
}

for (const [device, backend] of [['gpu', 'wgpu'], ['cpu', 'flex']]) {
  test(`every reward in the browser on ${device} match native and the Python references`, async () => {
    const got = await scoreInBrowser(device);
    assert.ok(got.device.startsWith(backend), `ran on ${got.device}, wanted ${backend}`);
    assert.deepEqual(got.labels, REWARDS.map(([kind]) => kind));
    const cli = native();
    for (const [i, image] of IMAGES.entries()) {
      const s = got.scores[i];
      for (const [r, [kind, , , , , , reference]] of REWARDS.entries()) {
        assertClose(s.rewards[r], cli.scores[i].rewards[kind], `${device} ${kind} ${image} vs native`);
        assertClose(s.rewards[r], referenceTensor(reference, `${kind}.file_scores`)[i], `${device} ${kind} ${image} vs Python`);
        if (kind !== 'imagereward') {  // its script records only its own pipeline
          assertClose(got.torchvision.scores[i].rewards[r], referenceTensor(reference, `${kind}.file_scores_torchvision`)[i],
            `${device} ${kind} ${image} --preprocess torchvision vs Python`);
        }
      }
      assertClose(s.loss, cli.scores[i].loss, `${device} loss ${image} vs native`);
      assertClose(s.weighted_total, cli.scores[i].weighted_total, `${device} total ${image} vs native`);
    }
  });
}
