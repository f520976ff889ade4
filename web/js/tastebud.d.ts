// Types of Tastebud's JS package (tastebud.js).

export type DeviceChoice = 'auto' | 'gpu' | 'cpu';
export type Precision = 'f32' | 'f16';

export interface Progress {
  /** The file's path in the model folder, e.g. "generator/unet/diffusion_pytorch_model.safetensors". */
  file: string;
  loaded: number;
  /** Bytes expected, when known (the manifest's size, or Content-Length). */
  total?: number;
  source: 'cache' | 'network';
}

export interface LoadOptions {
  /** 'default' (the shipped shapes-world models), a folder URL (with a manifest.json, a
   * diffusers snapshot, or a transformers CLIP folder to score with), or the files of a picked
   * folder (`<input webkitdirectory>`) of the same kinds. */
  model?: 'default' | string | URL | FileList | File[];
  device?: DeviceChoice;
  precision?: Precision;
  onProgress?: (progress: Progress) => void;
}

export interface LoadReport {
  files: { file: string; bytes: number; source: 'cache' | 'network' | 'folder' }[];
  /** What went wrong but lost nothing: a refused cached copy fetched again, a full cache. */
  warnings: string[];
  /** Whether the model has a generator (false for a CLIP folder loaded alone, to score with). */
  generator: boolean;
  /** Whether the model came with a CLIP (the reward for `optimize`, the model for `score`). */
  clip: boolean;
  device: string;
  precision: Precision;
}

export interface Image {
  width: number;
  height: number;
  /** RGBA, ready for `new ImageData(data, width, height)`. */
  data: Uint8ClampedArray;
  metadata: { prompt: string; seed?: number; steps?: number; iterations?: number; device: string; ms: number };
  /** A PNG file with the prompt and settings in its text chunks, when asked for (`png: true`). */
  png?: Uint8Array;
}

export interface GenerateOptions {
  prompt: string;
  /** Draws the noise (the same image on every device and natively). Default 0. */
  seed?: number;
  /** The noise itself: the bytes of a .npy or safetensors unit-Gaussian tensor [1, 4, H/f, W/f]. */
  noise?: Uint8Array | ArrayBuffer;
  steps?: number;
  width?: number;
  height?: number;
  png?: boolean;
}

export interface Iteration {
  iteration: number;
  rewards: number[];
  reward_loss: number;
  prior: number;
  noise_norm: number;
  grad_norm: number | null;
  best_iteration: number;
  best_loss: number;
  /** The iteration's image, every `previewEvery` iterations and on the last. */
  preview?: { width: number; height: number; data: Uint8ClampedArray };
}

export interface OptimizeOptions extends Omit<GenerateOptions, 'steps'> {
  /** ReNO (gradients), or a search over noises at the same compute. */
  method?: 'reno' | 'best-of-n' | 'zero-order';
  iterations?: number;
  /** Search methods: forward passes to spend (default: ReNO's cost at `iterations`, 3 per gradient step). */
  budget?: number;
  /** best-of-n: candidates scored together. */
  batch?: number;
  lr?: number;
  gradClip?: number;
  priorWeight?: number;
  previewEvery?: number;
  onIteration?: (event: Iteration) => void;
  /** Stops after the running iteration; the best iterate so far is returned. */
  signal?: AbortSignal;
  /** Steer by a visitor's taste (its fitted head) mixed with the prompt's CLIP reward. */
  taste?: Taste;
  /** The personal reward's weight (default 1) and the CLIP's (default 0.01; 0 leaves it out). */
  tasteWeight?: number;
  clipWeight?: number;
}

export interface Optimized {
  image: Image;
  /** The best noise as .npy bytes (`generate({ noise })` redraws the image). */
  noise: Uint8Array;
  labels: string[];
  iterations: Omit<Iteration, 'preview'>[];
  bestIteration: number;
  bestScores: unknown;
  /** Why the run ended early, if it did (a stop, a non-finite loss). */
  stopped: string | null;
  /** Search methods: forward passes spent, and where the best noise came from ("seed 12"). */
  spent?: number;
  bestOrigin?: string;
}

export declare class Tastebud {
  static load(options?: LoadOptions): Promise<Tastebud>;
  readonly device: string;
  readonly precision: Precision;
  readonly loadReport: LoadReport;
  generate(options: GenerateOptions): Promise<Image>;
  optimize(options: OptimizeOptions): Promise<Optimized>;
  /** CLIPScore with the model's CLIP; `preprocess` picks the image pipeline (default: the CLIP's published one). */
  score(options: { prompt: string; image: Uint8Array; preprocess?: 'auto' | 'pil' | 'torchvision' }):
    Promise<{ cosine: number; logit: number }>;
  taste(options?: { preferences?: PreferenceFile }): Taste;
  /** False once the engine has crashed (a panic, a lost GPU device): load a new one. */
  alive(): Promise<boolean>;
  dispose(): void;
}

export default Tastebud;

export interface Candidate {
  seed: number;
  image: Image;
  /** The unit CLIP image embedding the head reads. */
  embedding: number[];
}

export interface PreferenceFile {
  format: 'tastebud-preferences';
  version: number;
  records: unknown[];
  [key: string]: unknown;
}

export declare class Taste {
  preferences: PreferenceFile;
  readonly fitted: boolean;
  candidates(options: { prompt: string; seeds: number[]; steps?: number }): Promise<Candidate[]>;
  answer(answer: { prompt: string; a: Candidate; b: Candidate; choice: 'a' | 'b' | 'tie' }): Promise<object | null>;
  fit(): Promise<object | null>;
  nextPair(candidates: Candidate[]): Promise<[number, number]>;
  rank(candidates: Candidate[]): Promise<number[]>;
  export(): string;
  import(file: string | Uint8Array | ArrayBuffer): Promise<object | null>;
}
