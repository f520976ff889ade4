// The JS package as a web developer gets it: `npm pack web/pkg`, the tarball installed into a
// scratch project, used from a plain page (no bundler) with a few lines: it loads the shipped
// model it carries, draws the native CLI's picture for the same seed within one level, and its
// TypeScript types and package.json entry points name files that are in the tarball.
//
// Needs: web/pkg (web/build.sh), npm, the native binary in $TASTEBUD_BIN, /usr/bin/chromium.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { decodePng, root, startBrowser } from './harness.mjs';

const PROMPT = 'two yellow triangles';
const SEED = 11;
const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'tastebud-package-'));
let ctx;

const PAGE = `<!doctype html>
<meta charset="utf-8">
<script type="module">
  import { Tastebud } from './node_modules/tastebud/tastebud.js';
  try {
    const tb = await Tastebud.load({ device: new URLSearchParams(location.search).get('device') });
    const image = await tb.generate({ prompt: ${JSON.stringify(PROMPT)}, seed: ${SEED}, png: true });
    window.result = { device: tb.device, width: image.width, height: image.height, rgba: Array.from(image.data),
      png: image.png.length, metadata: image.metadata };
  } catch (e) {
    window.result = { error: String(e.message ?? e) };
  }
</script>
`;

before(async () => {
  assert.ok(fs.existsSync(path.join(root, 'web/pkg/package.json')), 'build web/pkg first (web/build.sh)');
  const npm = (args) => execFileSync('npm', args, { cwd: scratch, stdio: ['ignore', 'pipe', 'pipe'] }).toString();
  const tarball = npm(['pack', '--silent', path.join(root, 'web/pkg')]).trim().split('\n').at(-1);
  fs.writeFileSync(path.join(scratch, 'package.json'), JSON.stringify({ name: 'scratch', private: true, type: 'module' }));
  npm(['install', '--offline', '--no-audit', '--no-fund', `./${tarball}`]);
  fs.writeFileSync(path.join(scratch, 'index.html'), PAGE);
  ctx = await startBrowser(scratch);
});

after(async () => {
  await ctx?.browser.close();
  ctx?.server.close();
  fs.rmSync(scratch, { recursive: true, force: true });
});

test('the packed package works from a plain page and draws the native CLI\'s picture', { timeout: 600_000 },
  async () => {
    const installed = path.join(scratch, 'node_modules/tastebud');
    const manifest = JSON.parse(fs.readFileSync(path.join(installed, 'package.json')));
    assert.equal(manifest.name, 'tastebud');
    assert.equal(manifest.type, 'module');
    for (const file of [manifest.exports['.'].default, manifest.exports['.'].types, 'worker.js', 'comlink.mjs',
      'tastebud-web_bg.wasm', 'models/shapes/manifest.json']) {
      assert.ok(fs.existsSync(path.join(installed, file)), `the tarball lacks ${file}`);
    }
    const types = fs.readFileSync(path.join(installed, 'tastebud.d.ts'), 'utf8');
    for (const name of ['class Tastebud', 'class Taste', 'interface OptimizeOptions', 'signal?: AbortSignal']) {
      assert.ok(types.includes(name), `tastebud.d.ts lacks ${name}`);
    }

    const out = path.join(scratch, 'native.png');
    execFileSync(process.env.TASTEBUD_BIN, ['generate', '--prompt', PROMPT, '--seed', String(SEED), '--device', 'cpu',
      '--out', out], { stdio: ['ignore', 'pipe', 'pipe'] });
    const native = decodePng(fs.readFileSync(out));

    const page = await ctx.browser.newPage();
    try {
      await page.goto(`${ctx.base}/index.html?device=cpu`);
      await page.waitForFunction(() => window.result, null, { timeout: 300_000 });
      const got = await page.evaluate(() => window.result);
      assert.equal(got.error, undefined, got.error);
      assert.match(got.device, /flex \(CPU\)/);
      assert.deepEqual([got.width, got.height], [native.width, native.height]);
      assert.ok(got.png > 100);
      assert.equal(got.metadata.prompt, PROMPT);
      let worst = 0;
      for (let i = 0; i < native.width * native.height; i++) {
        for (let ch = 0; ch < 3; ch++) worst = Math.max(worst, Math.abs(got.rgba[i * 4 + ch] - native.pixels[i * 3 + ch]));
      }
      assert.ok(worst <= 1, `the package's picture differs from the native CLI's by ${worst}`);
    } finally {
      await page.close();
    }
  });
