// The demo as a hosted site (dist/, built by trunk through web/build.sh) works offline after the first
// visit: the service worker serves the page and the package, the package serves the model from
// its cache, and the second visit draws the same picture with the server gone.
//
// Needs: dist/ and web/pkg (web/build.sh), /usr/bin/chromium.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { root, startBrowser } from './harness.mjs';

const dist = path.join(root, 'dist');

test('the hosted demo draws offline on the second visit', { timeout: 600_000 }, async () => {
  assert.ok(fs.existsSync(path.join(dist, 'sw.js')), 'build dist/ first (web/build.sh)');
  // The site is trunk's output: its asset links resolved, the engine beside the package.
  assert.doesNotMatch(fs.readFileSync(path.join(dist, 'index.html'), 'utf8'), /<link data-trunk/);
  assert.ok(fs.existsSync(path.join(dist, 'web/pkg/tastebud-web_bg.wasm')));
  const ctx = await startBrowser(dist);
  const context = await ctx.browser.newContext();
  const drawn = async (page) => {
    await page.waitForFunction(() => document.getElementById('draw').dataset.done
      || document.getElementById('draw-status').textContent.startsWith('failed'), null, { timeout: 300_000 });
    return {
      status: await page.textContent('#draw-status'),
      pixels: await page.$eval('#drawn', (c) => Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)),
    };
  };
  try {
    const page = await context.newPage();
    await page.goto(`${ctx.base}/index.html?device=cpu`);
    const online = await drawn(page);
    assert.match(online.status, /model: 19\.\d MB from network/);
    const active = await page.evaluate(() => Promise.race([navigator.serviceWorker.ready.then(() => true),
      new Promise((resolve) => setTimeout(() => resolve(false), 30_000))]));
    assert.ok(active, 'the service worker did not activate within 30 s (did its install fail?)');
    await page.close();

    // The server goes away: every request now fails at the network.
    ctx.server.closeAllConnections();
    await new Promise((resolve) => ctx.server.close(resolve));

    const again = await context.newPage();
    await again.goto(`${ctx.base}/index.html?device=cpu`);
    const offline = await drawn(again);
    assert.match(offline.status, /drawn in \d+ ms on flex \(CPU\)/, offline.status);
    assert.match(offline.status, /model: 19\.\d MB from cache/);
    assert.match(offline.status, /offline .*using the manifest cached on the last visit/);
    assert.deepEqual(offline.pixels, online.pixels);
  } finally {
    await context.close();
    await ctx.browser.close();
    ctx.server.close();
  }
});
