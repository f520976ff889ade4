// The demo page (index.html) in headless Chromium, "Your taste" through the JS package: the page
// draws eight candidates with the shipped model, asks pairs, refits a linear head after each
// click, ranks the candidates exactly as the native CLI ranks them from the page's exported
// preferences, and "Make it mine" raises the personal reward; a bad import is refused and
// changes nothing.
//
// Needs: web/pkg (web/build.sh), the native binary in $TASTEBUD_BIN, /usr/bin/chromium.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { useBrowser } from './harness.mjs';

const tastebud = process.env.TASTEBUD_BIN;
const ctx = useBrowser({ needsCli: true });
const CANDIDATES = 8;
const ANSWERS = 6;

for (const device of ['cpu', 'gpu']) {
  test(`the demo learns a taste from clicks, ranks like the native CLI and steers toward it on ${device}`,
    { timeout: 900_000 }, async () => {
    const page = await ctx.browser.newPage();
    const logs = [];
    page.on('pageerror', (e) => logs.push(String(e)));
    try {
      await page.goto(`${ctx.base}/index.html?device=${device}`);
      await page.waitForFunction(() => !document.getElementById('taste-start').disabled, null, { timeout: 300_000 });
      await page.click('#taste-start');
      for (let k = 0; k < ANSWERS; k++) {
        await page.waitForFunction((k) => document.getElementById('taste-status').textContent.startsWith(`${k} answers`), k,
          { timeout: 300_000 });
        await page.click(k % 3 === 2 ? '#pick-right' : '#pick-left');
      }
      await page.waitForFunction((n) => document.getElementById('taste-status').textContent.startsWith(`${n} answers`),
        ANSWERS, { timeout: 300_000 });
      const ranking = await page.$$eval('#ranking li', (lis) => lis.map((li) => li.dataset.name));
      assert.equal(ranking.length, CANDIDATES);
      const stored = await page.evaluate(() => localStorage.getItem('tastebud-preferences'));
      const prefs = JSON.parse(stored);
      assert.equal(prefs.records.length, ANSWERS);
      assert.equal(prefs.embedding_model, 'tastebud/shapes-clip');

      // Native: fit the same head on the exported answers, rank the same embeddings.
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tastebud-demo-'));
      fs.writeFileSync(path.join(dir, 'prefs.json'), stored);
      const embeddings = new Map();
      for (const r of prefs.records) for (const c of [r.a, r.b]) embeddings.set(c.image, c.embedding);
      const names = [...embeddings.keys()];
      fs.writeFileSync(path.join(dir, 'candidates.json'), JSON.stringify(names.map((n) => embeddings.get(n))));
      execFileSync(tastebud, ['personalize', 'fit', '--prefs', path.join(dir, 'prefs.json'), '--head', 'linear',
        '--out', path.join(dir, 'head')], { stdio: ['ignore', 'pipe', 'pipe'] });
      const native = JSON.parse(execFileSync(tastebud, ['personalize', 'rank', '--head', path.join(dir, 'head'),
        '--json', path.join(dir, 'candidates.json')], { stdio: ['ignore', 'pipe', 'pipe'] })).ranking
        .map((r) => names[Number(r.image.split('#')[1])]);
      assert.deepEqual(ranking.filter((n) => names.includes(n)), native, 'same order as the native CLI');

      // Make it mine: ReNO toward the head (with the prompt's CLIP) raises the personal reward.
      await page.fill('#steer-iterations', device === 'gpu' ? '2' : '4'); // SwiftShader: ~10 s an iteration
      await page.click('#make-mine');
      await page.waitForFunction(() => document.getElementById('make-mine').dataset.done
        || document.getElementById('mine-status').textContent.startsWith('failed'), null, { timeout: 300_000 });
      const mine = await page.textContent('#mine-status');
      const [, before, after] = mine.match(/your taste (-?[\d.]+) -> (-?[\d.]+)/) ?? [];
      assert.ok(Number(after) > Number(before), `the personal reward did not rise: ${mine}`);

      // A file of another dimension is refused and the stored answers stay.
      const bad = path.join(dir, 'bad.json');
      fs.writeFileSync(bad, JSON.stringify({ format: 'tastebud-preferences', version: 1, records: [
        { prompt: 'p', a: { embedding: [1, 0] }, b: { embedding: [0, 1] }, choice: 'a', timestamp: 0 }] }));
      await page.setInputFiles('#import', bad);
      await page.waitForFunction(() => document.getElementById('taste-status').textContent.startsWith('import refused'));
      assert.match(await page.textContent('#taste-status'), /dimension 2/);
      assert.equal(await page.evaluate(() => localStorage.getItem('tastebud-preferences')), stored);

      // So is a file from another model, even with embeddings of the same size.
      const other = path.join(dir, 'other.json');
      fs.writeFileSync(other, JSON.stringify({ ...prefs, embedding_model: 'openai/clip-vit-large-patch14' }));
      await page.setInputFiles('#import', other);
      await page.waitForFunction(() => /from `openai/.test(document.getElementById('taste-status').textContent));
      assert.match(await page.textContent('#taste-status'),
        /import refused, nothing changed: .*its embeddings come from `openai\/clip-vit-large-patch14`, this store's from `tastebud\/shapes-clip`/);
      assert.equal(await page.evaluate(() => localStorage.getItem('tastebud-preferences')), stored);
    } catch (e) {
      throw new Error(`${e}\n${logs.join('\n')}`);
    } finally {
      await page.close();
    }
  });
}
