// Tastebud's JS package: one-step text-to-image generation, reward-guided noise optimisation
// (ReNO) and scoring on the visitor's own GPU (WebGPU) or CPU. The engine runs in a module
// worker (worker.js) reached through comlink; images come back as transferred buffers.
//
//   import { Tastebud } from 'tastebud';
//   const tb = await Tastebud.load({ model: 'default', onProgress: (p) => console.log(p) });
//   const image = await tb.generate({ prompt: 'a red circle to the left of a blue square', seed: 7 });
//   ctx.putImageData(new ImageData(image.data, image.width, image.height), 0, 0);
import * as Comlink from './comlink.mjs';

const DEVICES = ['auto', 'gpu', 'cpu'];
const PRECISIONS = ['f32', 'f16'];
const METHODS = ['reno', 'best-of-n', 'zero-order'];
const PREPROCESS = ['auto', 'pil', 'torchvision'];

function check(condition, message) {
  if (!condition) throw new TypeError(message);
}

// A finite whole number >= min, or the default when undefined.
function whole(value, name, fallback, min = 0) {
  if (value === undefined) return fallback;
  check(Number.isSafeInteger(value) && value >= min, `${name} must be a whole number >= ${min}, got ${value}`);
  return value;
}

function optionalNumber(value, name) {
  check(value === undefined || Number.isFinite(value), `${name} must be a finite number, got ${value}`);
  return value;
}

function noiseBytes(noise) {
  if (noise === undefined) return undefined;
  if (noise instanceof Uint8Array) return noise;
  if (noise instanceof ArrayBuffer) return new Uint8Array(noise);
  throw new TypeError('noise must be the bytes (Uint8Array or ArrayBuffer) of a .npy or safetensors tensor');
}

// Where the model comes from, as the worker wants it: a folder URL or picked files.
function modelSource(model) {
  if (model === undefined || model === 'default') {
    return { base: new URL('./models/shapes/', import.meta.url).href };
  }
  if (typeof model === 'string' || model instanceof URL) {
    const base = new URL(String(model), globalThis.location?.href ?? import.meta.url).href;
    return { base: base.endsWith('/') ? base : `${base}/` };
  }
  if (typeof model.length === 'number' && model.length > 0) {
    return { files: Array.from(model) };
  }
  throw new TypeError("model must be 'default', a folder URL, or the files of a picked folder (FileList)");
}

export class Tastebud {
  #worker;
  #remote;
  #info;

  constructor(worker, remote, info) {
    this.#worker = worker;
    this.#remote = remote;
    this.#info = info;
  }

  /**
   * Starts a worker, a device and a model. Files listed in a model folder's manifest.json are
   * checked (size, sha256) and cached, so later and offline visits load from the cache.
   */
  static async load({ model = 'default', device = 'auto', precision = 'f32', onProgress } = {}) {
    check(DEVICES.includes(device), `device must be one of ${DEVICES.join(', ')}, got ${device}`);
    check(PRECISIONS.includes(precision), `precision must be one of ${PRECISIONS.join(', ')}, got ${precision}`);
    check(onProgress === undefined || typeof onProgress === 'function', 'onProgress must be a function');
    const source = modelSource(model);
    const worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
    const remote = Comlink.wrap(worker);
    try {
      const info = await remote.load({ ...source, device, precision },
        onProgress ? Comlink.proxy(onProgress) : undefined);
      return new Tastebud(worker, remote, info);
    } catch (e) {
      worker.terminate();
      throw e;
    }
  }

  /** Which backend and adapter run the models, e.g. "wgpu (WebGPU: ...)" or "flex (CPU)". */
  get device() {
    return this.#info.device;
  }

  get precision() {
    return this.#info.precision;
  }

  /** What loading did: files with bytes and source (cache / network / folder), warnings. */
  get loadReport() {
    return this.#info;
  }

  /**
   * One image: `{ width, height, data: Uint8ClampedArray (RGBA), metadata, png? }`.
   * `seed` draws the noise (the same image on every device); `noise` gives it instead.
   */
  async generate({ prompt, seed = 0, noise, steps = 1, width, height, png = false } = {}) {
    check(typeof prompt === 'string', 'prompt must be a string');
    return this.#remote.generate({ prompt, seed: whole(seed, 'seed', 0), noise: noiseBytes(noise),
      steps: whole(steps, 'steps', 1, 1), width: whole(width, 'width', undefined, 1),
      height: whole(height, 'height', undefined, 1), png: Boolean(png) });
  }

  /**
   * ReNO toward the model's reward (the shipped CLIP), or a search under ReNO's compute
   * (`method: 'best-of-n' | 'zero-order'`, `budget` in forward passes; its steps arrive as
   * iterations): returns the best as
   * `{ image, noise (.npy bytes), iterations, bestIteration, bestScores, labels, stopped }`.
   * `onIteration(event)` sees every iteration (rewards, loss, best so far) and, every
   * `previewEvery` iterations, a `preview` image; `signal` (an AbortSignal) stops after the
   * running iteration and still returns the best so far.
   */
  async optimize({ prompt, seed = 0, noise, width, height, method = 'reno', iterations = 20, budget, batch, lr,
    gradClip, priorWeight, previewEvery = 5, onIteration, signal, png = false, taste, tasteWeight,
    clipWeight } = {}) {
    check(typeof prompt === 'string', 'prompt must be a string');
    check(taste === undefined || taste instanceof Taste, 'taste must be a Taste from tb.taste()');
    check(METHODS.includes(method), `method must be one of ${METHODS.join(', ')}, got ${method}`);
    check(method === 'reno' || noise === undefined, `${method} draws its own noises from seed: pass seed, not noise`);
    iterations = whole(iterations, 'iterations', 20, 1);
    // Search methods get ReNO's cost at this many iterations unless told (a gradient pass is 3).
    budget = budget === undefined ? 3 * (iterations - 1) + 1 : optionalNumber(budget, 'budget');
    check(onIteration === undefined || typeof onIteration === 'function', 'onIteration must be a function');
    const stop = () => this.#remote.stop();
    signal?.addEventListener('abort', stop);
    try {
      if (signal?.aborted) throw new DOMException('optimize was aborted before it started', 'AbortError');
      return await this.#remote.optimize({ prompt, seed: whole(seed, 'seed', 0), noise: noiseBytes(noise),
        width: whole(width, 'width', undefined, 1), height: whole(height, 'height', undefined, 1),
        method, iterations, budget, batch: whole(batch, 'batch', undefined, 1), lr: optionalNumber(lr, 'lr'),
        gradClip: optionalNumber(gradClip, 'gradClip'), priorWeight: optionalNumber(priorWeight, 'priorWeight'),
        previewEvery: whole(previewEvery, 'previewEvery', 5, 0) || undefined, png: Boolean(png),
        taste: taste && { weight: optionalNumber(tasteWeight, 'tasteWeight'),
          clipWeight: optionalNumber(clipWeight, 'clipWeight') } },
      onIteration ? Comlink.proxy(onIteration) : undefined);
    } finally {
      signal?.removeEventListener('abort', stop);
    }
  }

  /**
   * CLIPScore of a PNG/JPEG image (bytes) against a prompt with the model's CLIP (or a CLIP
   * folder loaded alone): `{ cosine, logit }`. `preprocess`: 'auto' (the CLIP's published
   * pipeline), 'pil' or 'torchvision' (transformers 5's CLIPImageProcessor).
   */
  async score({ prompt, image, preprocess }) {
    check(typeof prompt === 'string', 'prompt must be a string');
    check(image instanceof Uint8Array, 'image must be the bytes (Uint8Array) of a PNG or JPEG file');
    check(preprocess === undefined || PREPROCESS.includes(preprocess),
      `preprocess must be one of ${PREPROCESS.join(', ')}, got ${preprocess}`);
    return this.#remote.score({ prompt, image, preprocess });
  }

  /**
   * A visitor's taste: their answers about pairs of pictures (a Tastebud preference file),
   * a head fitted to them in the worker, the next pair to ask, a ranking; steer with
   * `optimize({ taste })`. `preferences`: a saved preference file (object) to start from.
   */
  taste({ preferences } = {}) {
    return new Taste(this.#remote, preferences);
  }

  /** False once the engine has crashed (a panic, a lost GPU device): load a new one. */
  async alive() {
    return this.#remote.alive();
  }

  /** Stops the worker and frees the device. */
  dispose() {
    this.#remote[Comlink.releaseProxy]?.();
    this.#worker.terminate();
  }
}

const EMPTY_PREFERENCES = () => ({ format: 'tastebud-preferences', version: 1, records: [] });

export class Taste {
  #remote;
  #fitted = false;

  constructor(remote, preferences) {
    this.#remote = remote;
    /** The preference file: every answer, with both pictures' embeddings. Save it as JSON. */
    this.preferences = preferences ?? EMPTY_PREFERENCES();
    check(Array.isArray(this.preferences.records), 'preferences must be a Tastebud preference file');
  }

  /** Pictures to choose between: `[{ seed, image, embedding }]`, one per seed. */
  async candidates({ prompt, seeds, steps = 1 }) {
    check(typeof prompt === 'string', 'prompt must be a string');
    check(Array.isArray(seeds) && seeds.length >= 2, 'seeds must list at least two seeds');
    seeds.forEach((s, i) => whole(s, `seeds[${i}]`, 0));
    return this.#remote.candidates({ prompt, seeds, steps: whole(steps, 'steps', 1, 1) });
  }

  /** Records which of two candidates the visitor preferred ('a', 'b' or 'tie') and refits. */
  async answer({ prompt, a, b, choice }) {
    check(['a', 'b', 'tie'].includes(choice), `choice must be 'a', 'b' or 'tie', got ${choice}`);
    const side = (c) => ({ image: c.name ?? `seed ${c.seed}`, embedding: c.embedding });
    this.preferences.records.push({ prompt, a: side(a), b: side(b), choice,
      timestamp: Math.floor(Date.now() / 1000) });
    return this.fit();
  }

  /** Fits the head to the answers so far; null until there are two. */
  async fit() {
    const description = await this.#remote.fitTaste(this.preferences);
    this.#fitted = description !== null;
    return description;
  }

  get fitted() {
    return this.#fitted;
  }

  /** The pair of `candidates` the head is least sure about (indices); in turn until fitted. */
  async nextPair(candidates) {
    check(candidates.length >= 2, 'need at least two candidates');
    if (!this.#fitted) {
      const k = (2 * this.preferences.records.length) % candidates.length;
      return [k, (k + 1) % candidates.length];
    }
    return this.#remote.nextPair(this.preferences, candidates.map((c) => c.embedding));
  }

  /** The head's score of each candidate (higher: more to the visitor's taste). */
  async rank(candidates) {
    check(this.#fitted, 'no taste fitted yet: answer at least two pairs first');
    return this.#remote.rankTaste(candidates.map((c) => c.embedding));
  }

  /** The preference file as JSON text (to download or keep). */
  export() {
    return JSON.stringify(this.preferences, null, 1);
  }

  /** Merges a saved preference file (bytes or text) in; a bad file throws and changes nothing. */
  async import(file) {
    const bytes = typeof file === 'string' ? new TextEncoder().encode(file) : new Uint8Array(file);
    this.preferences = await this.#remote.mergePreferences(this.preferences, bytes);
    return this.fit();
  }
}

export default Tastebud;
