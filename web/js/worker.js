// The engine's side of the package: a module worker that owns the wasm module and the device,
// so the page never freezes. `tastebud.js` talks to it through comlink. Calls run one at a time
// (the wasm objects are not re-entrant); `stop` jumps the queue, and ReNO yields to this
// worker's event loop after every iteration so that it is seen.
import * as Comlink from './comlink.mjs';
import init, { Head, Tastebud as Engine, merge_preferences } from './tastebud-web.js';

let engine = null;
let head = null; // the visitor's fitted taste
let stopRequested = false;
const encoder = new TextEncoder();
let queue = Promise.resolve();

// Set when the wasm module trapped (a panic) or its GPU device was lost: its state is gone, so
// every later call says so instead of failing strangely.
let crashed = null;
const AGAIN = 'load the model again with Tastebud.load (it comes from the cache in about a second)';

// The GPU device wgpu asks for is watched: once it is lost (a driver reset, the browser
// reclaiming it, destroy()) every call on it fails, so the engine counts as crashed and a new
// worker (a new device) is the way on. wgpu finds `requestDevice` on the adapter at call time.
let deviceLost = null;
if (globalThis.GPUAdapter) {
  const requestDevice = GPUAdapter.prototype.requestDevice;
  GPUAdapter.prototype.requestDevice = async function watchedRequestDevice(...args) {
    const device = await requestDevice.apply(this, args);
    device.lost.then((info) => {
      deviceLost = `the GPU device was lost (${info.reason}: ${info.message})`;
    });
    return device;
  };
}

function checkAlive() {
  if (!crashed && deviceLost) crashed = `${deviceLost}; ${AGAIN}`;
  if (crashed) throw new Error(crashed);
}

// Runs `task` after every call before it has finished.
function serial(task) {
  const run = queue.then(() => {
    checkAlive();
    return task();
  }).catch((e) => {
    if (e instanceof WebAssembly.RuntimeError) {
      crashed = `the engine crashed (${e.message}); ${AGAIN}`;
      throw new Error(crashed);
    }
    // A call that was running when the device went: its error (a failed readback) says less.
    checkAlive();
    throw e;
  });
  queue = run.catch(() => {});
  return run;
}

const rgbaOf = (image) => new Uint8ClampedArray(image.rgba().buffer);

// A wasm image as a plain object, with the buffers to transfer (not copy) to the page.
function imageOut(image, metadata, withPng) {
  const out = { width: image.width, height: image.height, data: rgbaOf(image), metadata };
  const transfers = [out.data.buffer];
  if (withPng) {
    out.png = image.png();
    transfers.push(out.png.buffer);
  }
  image.free();
  return [out, transfers];
}

// A picked folder staged into the engine: File objects from `<input webkitdirectory>` (their
// path after the folder name) or named by their path in the folder. A diffusers snapshot, or a
// bundle as the shipped models are laid out (`generator/` + `clip/`), or a transformers CLIP
// folder alone; a `clip/` beside the generator becomes the reward and the taste's CLIP.
// Unchecked: no manifest.
async function loadFolder(files) {
  const entries = files.map((f) => [f.webkitRelativePath ? f.webkitRelativePath.split('/').slice(1).join('/') : f.name, f]);
  const byName = new Map(entries);
  const prefix = byName.has('generator/model_index.json') ? 'generator/' : '';
  const index = byName.get(`${prefix}model_index.json`);
  const stage = async (name) => {
    engine.add_file(name, new Uint8Array(await byName.get(name).arrayBuffer()));
    return { file: name, bytes: byName.get(name).size, source: 'folder' };
  };
  const staged = [];
  if (index) {
    staged.push(await stage(`${prefix}model_index.json`));
    for (const group of JSON.parse(Engine.pipeline_files(new Uint8Array(await index.arrayBuffer())))) {
      const name = group.map((n) => `${prefix}${n}`).find((n) => byName.has(n));
      if (name) staged.push(await stage(name)); // else the engine names what is missing
    }
  } else if (!byName.has('config.json')) {
    throw new Error('the picked folder has neither model_index.json (a diffusers snapshot) nor config.json (a CLIP)');
  }
  for (const name of Engine.clip_files().map((n) => (index ? `clip/${n}` : n))) {
    if (byName.has(name)) staged.push(await stage(name));
  }
  const { warnings, generator, clip } = JSON.parse(engine.load_staged('picked folder'));
  return { files: staged, warnings, generator, clip };
}

const api = {
  async load({ base, files, device, precision }, onProgress) {
    return serial(async () => {
      if (engine) throw new Error('this worker already holds a model: create another Tastebud');
      await init();
      engine = await Engine.create(device, precision);
      const report = files ? await loadFolder(files)
        : JSON.parse(await engine.load_model(base, onProgress ? (p) => { onProgress(p); } : undefined));
      return { ...report, device: engine.device, precision };
    });
  },

  async generate({ prompt, seed, noise, steps, width, height, png }) {
    return serial(async () => {
      const started = performance.now();
      const image = await engine.generate(prompt, noise, BigInt(seed), steps, height, width);
      const ms = performance.now() - started;
      return Comlink.transfer(...imageOut(image, { prompt, seed: noise ? undefined : seed, steps,
        device: engine.device, ms }, png));
    });
  },

  async optimize({ prompt, seed, noise, width, height, method, iterations, budget, batch, lr, gradClip, priorWeight,
    previewEvery, png, taste }, onIteration) {
    return serial(async () => {
      stopRequested = false;
      if (taste) {
        if (!head) throw new Error('no taste fitted yet: answer at least two pairs first');
        engine.set_taste(head, taste.weight, taste.clipWeight);
      }
      const started = performance.now();
      const forward = (event, preview) => {
        const it = JSON.parse(event);
        if (onIteration) {
          if (preview) {
            const p = { width: preview.width, height: preview.height, data: rgbaOf(preview) };
            preview.free();
            onIteration(Comlink.transfer({ ...it, preview: p }, [p.data.buffer]));
          } else {
            onIteration(it);
          }
        } else preview?.free();
        // A macrotask: messages (a stop) that arrived during the iteration are handled first.
        return new Promise((resolve) => setTimeout(() => resolve(!stopRequested), 0));
      };
      const result = method === 'reno'
        ? await engine.optimize(prompt, noise, BigInt(seed), height, width, iterations, lr, gradClip,
          priorWeight, forward, previewEvery, Boolean(taste))
        : await engine.explore(prompt, BigInt(seed), height, width, method, budget, batch,
          (step) => forward(JSON.stringify({ ...JSON.parse(step), iteration: JSON.parse(step).index })),
          Boolean(taste));
      const report = JSON.parse(result.report());
      if (method !== 'reno') {
        // Search steps read like iterations: `iteration` is the step's index.
        report.iterations = report.steps.map((step) => ({ ...step, iteration: step.index }));
        report.best_iteration = report.steps.findIndex((step) => step.origin === report.best_origin);
      }
      const noiseNpy = result.noise_npy();
      const [image, transfers] = imageOut(result.image(), { prompt, seed: noise ? undefined : seed, iterations,
        device: engine.device, ms: performance.now() - started }, png);
      result.free();
      return Comlink.transfer({ image, noise: noiseNpy, labels: report.labels, iterations: report.iterations,
        bestIteration: report.best_iteration, bestScores: report.best_scores, stopped: report.stopped ?? null,
        spent: report.spent, bestOrigin: report.best_origin },
      [...transfers, noiseNpy.buffer]);
    });
  },

  stop() {
    stopRequested = true;
  },

  // Whether the engine can still run (false after a crash; load again).
  alive() {
    return crashed === null && deviceLost === null;
  },

  // Candidates for the taste: each seed's picture and its unit CLIP embedding (what heads read).
  async candidates({ prompt, seeds, steps }) {
    return serial(async () => {
      const images = [];
      const pngs = [];
      for (const seed of seeds) {
        const image = await engine.generate(prompt, undefined, BigInt(seed), steps, undefined, undefined);
        pngs.push(image.png());
        images.push(imageOut(image, { prompt, seed, steps, device: engine.device }, false));
      }
      const flat = await engine.embed_images(pngs);
      const d = flat.length / seeds.length;
      const out = images.map(([image], i) => ({ seed: seeds[i], image,
        embedding: Array.from(flat.subarray(i * d, (i + 1) * d)) }));
      return Comlink.transfer(out, images.flatMap(([, transfers]) => transfers));
    });
  },

  // Fits the visitor's linear head to their preference file (an object); null below two answers.
  async fitTaste(preferences) {
    return serial(async () => {
      head?.free();
      head = null;
      if (preferences.records.length < 2) return null;
      head = await Head.fit(encoder.encode(JSON.stringify(preferences)), 'linear');
      return JSON.parse(head.description);
    });
  },

  async rankTaste(embeddings) {
    return serial(async () => Array.from(await head.score(new Float32Array(embeddings.flat()))));
  },

  async nextPair(preferences, embeddings) {
    return serial(async () => {
      const next = JSON.parse(await head.next_pair(encoder.encode(JSON.stringify(preferences)),
        new Float32Array(embeddings.flat())));
      return [next.first, next.second];
    });
  },

  // `current` with `incoming` (bytes) merged in, validated; throws and changes nothing on error.
  mergePreferences(current, incoming) {
    const merged = merge_preferences(encoder.encode(JSON.stringify(current)), incoming);
    return JSON.parse(new TextDecoder().decode(merged));
  },

  async score({ prompt, image, preprocess }) {
    return serial(async () => JSON.parse(await engine.score(prompt, image, preprocess)));
  },
};

Comlink.expose(api);
