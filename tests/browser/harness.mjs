// What the browser tests share: a static server over the repository root and headless
// Chromium with WebGPU enabled.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import zlib from 'node:zlib';
import { before, after } from 'node:test';
import { chromium } from 'playwright-core';

export const root = path.resolve(import.meta.dirname, '../..');
export const fixtures = path.join(root, 'tests/fixtures');
const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.mjs': 'text/javascript',
  '.wasm': 'application/wasm', '.json': 'application/json', '.png': 'image/png' };

// Starts a static server over `serveRoot` (the repository by default) and the browser;
// returns { server, browser, base }.
export async function startBrowser(serveRoot = root) {
  const server = http.createServer((req, res) => {
    const file = path.join(serveRoot, decodeURIComponent(new URL(req.url, 'http://localhost').pathname));
    if (!file.startsWith(serveRoot) || !fs.existsSync(file) || !fs.statSync(file).isFile()) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-type': TYPES[path.extname(file)] ?? 'application/octet-stream' });
    fs.createReadStream(file).pipe(res);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--headless=new', '--no-sandbox', '--disable-background-networking', '--disable-component-update',
      '--disable-sync', '--no-first-run', '--disable-quic', '--enable-unsafe-webgpu'],
  });
  return { server, browser, base: `http://127.0.0.1:${server.address().port}` };
}

// Registers the suite's before/after hooks: the page tests need the package (web/pkg), some
// also the native CLI ($TASTEBUD_BIN). Returns an object whose fields are set once started.
export function useBrowser({ needsCli = false } = {}) {
  const ctx = {};
  before(async () => {
    if (needsCli) {
      const bin = process.env.TASTEBUD_BIN;
      assert.ok(bin && fs.existsSync(bin), 'set TASTEBUD_BIN to the native tastebud binary');
    }
    assert.ok(fs.existsSync(path.join(root, 'web/pkg/tastebud-web.js')), 'build web/pkg first (web/build.sh)');
    Object.assign(ctx, await startBrowser());
  });
  after(async () => {
    await ctx.browser?.close();
    ctx.server?.close();
  });
  return ctx;
}

// One f32 tensor from a safetensors file under tests/fixtures, as a plain array.
export function referenceTensor(file, name) {
  const bytes = fs.readFileSync(path.join(fixtures, file));
  const headerLength = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + headerLength).toString());
  const [start, end] = header[name].data_offsets;
  const data = bytes.subarray(8 + headerLength + start, 8 + headerLength + end);
  return Array.from({ length: data.length / 4 }, (_, i) => data.readFloatLE(i * 4));
}

// |got - want| <= rtol * max(|want|, 1e-3).
export function assertClose(got, want, what, rtol = 1e-4) {
  const err = Math.abs(got - want) / Math.max(Math.abs(want), 1e-3);
  assert.ok(err <= rtol, `${what}: got ${got}, want ${want} (relative error ${err.toExponential(2)})`);
}

// A new tab on the blank test page (from which tests import web/pkg), with console output and
// page errors collected in `logs`.
export async function blankPage(ctx) {
  const page = await ctx.browser.newPage();
  const logs = [];
  page.on('console', (m) => logs.push(m.text()));
  page.on('pageerror', (e) => logs.push(String(e)));
  await page.goto(`${ctx.base}/tests/browser/blank.html`);
  return { page, logs };
}

// RGB pixels of an 8-bit, non-interlaced RGB PNG (what PIL and Tastebud write).
export function decodePng(bytes) {
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
