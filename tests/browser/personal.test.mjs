// Personal heads in headless Chromium through the JS package: a linear and an MLP head fitted
// from 20 answered pairs (two people of tests/fixtures/personal/pairs.json, made by
// tests/reference/make_personal_fixtures.py) rank six candidate embeddings exactly as the
// native CLI's `personalize fit` + `personalize rank` do, and so does a linear head fitted on a
// population prior (pretrained natively on all three people, loaded into the page); the head's
// files load back.
//
// Needs: web/pkg (web/build.sh), the native binary in $TASTEBUD_BIN, /usr/bin/chromium.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { assertClose, fixtures, referenceTensor, blankPage, useBrowser } from './harness.mjs';

const tastebud = process.env.TASTEBUD_BIN;
const ctx = useBrowser({ needsCli: true });

function twentyPairs() {
  const store = JSON.parse(fs.readFileSync(path.join(fixtures, 'personal/pairs.json')));
  store.records = store.records.filter((r) => r.user !== 'person-2').map(({ user, ...r }) => r);
  assert.equal(store.records.length, 20);
  return store;
}

function probes() {
  const flat = referenceTensor('personal/reference.safetensors', 'probes');
  return Array.from({ length: 6 }, (_, i) => flat.slice(i * 8, i * 8 + 8));
}

function native(kind, prefsFile, probesFile, base) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `tastebud-head-${kind}-`));
  execFileSync(tastebud, ['personalize', 'fit', '--prefs', prefsFile, '--head', kind, '--out', dir,
    ...(base ? ['--base', base] : [])], { stdio: ['ignore', 'pipe', 'pipe'] });
  const out = execFileSync(tastebud, ['personalize', 'rank', '--head', dir, '--json', probesFile],
    { stdio: ['ignore', 'pipe', 'pipe'] });
  return JSON.parse(out).ranking;
}

/// A linear prior pretrained natively on everyone in pairs.json: its folder.
function linearPrior() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tastebud-prior-'));
  execFileSync(tastebud, ['personalize', 'pretrain', '--prefs', path.join(fixtures, 'personal/pairs.json'),
    '--head', 'linear', '--rank', '1', '--out', dir], { stdio: ['ignore', 'pipe', 'pipe'] });
  return dir;
}

for (const [kind, onPrior] of [['linear', false], ['mlp', false], ['linear', true]]) {
  const name = onPrior ? `${kind} head on a population prior` : `${kind} head`;
  test(`a ${name} fitted in the browser from 20 pairs ranks like the native CLI`, async () => {
    const store = twentyPairs();
    const base = onPrior ? linearPrior() : null;
    const baseFiles = base && ['head.json', 'head.safetensors'].map((f) => Array.from(fs.readFileSync(path.join(base, f))));
    const { page, logs } = await blankPage(ctx);
    let got;
    try {
      got = await page.evaluate(async ({ store, kind, candidates, baseFiles }) => {
        const { default: init, Head } = await import('/web/pkg/tastebud-web.js');
        await init();
        const bytes = new TextEncoder().encode(JSON.stringify(store));
        const prior = baseFiles && Head.load(new Uint8Array(baseFiles[0]), new Uint8Array(baseFiles[1]));
        const started = performance.now();
        const head = await Head.fit(bytes, kind, prior ?? undefined);
        const fitMs = performance.now() - started;
        const scores = Array.from(await head.score(new Float32Array(candidates.flat())));
        const again = Head.load(head.config(), head.weights());
        const reloaded = Array.from(await again.score(new Float32Array(candidates.flat())));
        return { scores, reloaded, fitMs, description: JSON.parse(head.description) };
      }, { store, kind, candidates: probes(), baseFiles });
    } catch (e) {
      throw new Error(`${e}\n${logs.join('\n')}`);
    } finally {
      await page.close();
    }
    assert.equal(got.description.kind, kind);
    assert.equal(got.description.pairs, 20);
    assert.deepEqual(got.reloaded, got.scores, 'a saved head scores the same');
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tastebud-prefs-'));
    const prefsFile = path.join(dir, 'prefs.json');
    const probesFile = path.join(dir, 'probes.json');
    fs.writeFileSync(prefsFile, JSON.stringify(store));
    fs.writeFileSync(probesFile, JSON.stringify(probes()));
    const ranking = native(kind, prefsFile, probesFile, base);
    const browserOrder = got.scores.map((s, i) => [s, i]).sort((a, b) => b[0] - a[0]).map(([, i]) => i);
    assert.deepEqual(ranking.map((r) => Number(r.image.split('#')[1])), browserOrder, 'same ranking');
    for (const r of ranking) {
      const i = Number(r.image.split('#')[1]);
      assertClose(got.scores[i], r.score, `${name} score of candidate ${i} vs native`, 1e-4);
    }
    console.log(`${name}: fitted in ${got.fitMs.toFixed(0)} ms in the browser (CPU backend)`);
  });
}
