/**
 * A loaded model: the public VisionModel of the contract, over a native handle. Arguments are
 * checked here; every computing method is async and runs on the addon's worker threads.
 */
import type {
  NativeClassScore,
  NativeDetection,
  NativeImage,
  NativeLoadReport,
  NativeModel,
  NativeModelInfo,
  NativePredictOptions,
  NativeSegmentation,
  NativeSegmentSegmentation,
  NativeTaskPredictions,
} from '../../binding.js';
import { ErrorCode, invalidArgument, withCode } from '../errors.js';
import { closest, describe } from '../schemas/common.js';
import type { ModelType } from '../schemas/model-config.js';
import type { DType, Tensor } from '../tensor.js';
import { imageDimensions } from './image-dimensions.js';
import { fetchImageUrls, isImageUrl, resolveImagePaths } from './image-url.js';
import {
  type BatchingOptions,
  type BatchingSettings,
  type BatchingStats,
  type BatchRunner,
  batchingSettings,
  MicroBatcher,
} from './micro-batcher.js';

/**
 * An image: a file path (or a file:// URL); an http:// or https:// URL, fetched with Node's fetch
 * (at most VISIONTORCH_MAX_IMAGE_BYTES, default 50 MiB, within VISIONTORCH_IMAGE_FETCH_TIMEOUT
 * seconds, default 30); encoded image bytes, decoded by their signature; or 8-bit interleaved pixels.
 */
export type ImageInput = string | Uint8Array | { data: Uint8Array; width: number; height: number; channels: 1 | 3 | 4 };

export type Labels = Tensor | { classLabels: Tensor; boxes: Tensor }[] | { classLabels: Tensor; maskLabels: Tensor }[];

export interface ForwardInputs {
  pixelValues: Tensor;
  pixelMask?: Tensor;
  labels?: Labels;
  /** Let NaN or infinite pixel values through (refused by default: they give NaN outputs silently). */
  allowNonFinite?: boolean;
}

export type ClassificationPrediction = NativeClassScore;
export type DetectionPrediction = NativeDetection;
export type SegmentationPrediction = NativeSegmentation;
/** Mask2Former's instance and panoptic predictions: segment ids per pixel and the segments. */
export type SegmentPrediction = NativeSegmentSegmentation;
export type PredictOptions = NativePredictOptions;

/** Per image, what the model's task gives: classification its top-K labels, best first; detection its objects; segmentation its label map. */
export type Prediction = NativeTaskPredictions[ModelType];

/**
 * Per image, what each task's predict gives with the default options (segmentation: semantic,
 * a label map). Extending Record<ModelType, unknown> makes a task added without its entry fail to compile.
 */
export interface TaskPredictions extends Record<ModelType, unknown> {
  classification: ClassificationPrediction[];
  object_detection: DetectionPrediction[];
  segmentation: SegmentationPrediction;
}
/** predict with `task: 'instance' | 'panoptic'`: segmentation gives segments (Mask2Former); other tasks ignore the option. */
export interface SegmentTaskPredictions extends Omit<TaskPredictions, 'segmentation'> {
  segmentation: SegmentPrediction;
}
/** What predict gives per image for a model of task T (a union of tasks gives the union of their predictions). */
export type PredictionFor<T extends ModelType = ModelType> = TaskPredictions[T];
/** predict's result per image for options whose `task` is not known when compiling: any of the two segmentation shapes. */
export type AnyPredictionFor<T extends ModelType = ModelType> = (TaskPredictions | SegmentTaskPredictions)[T];
/** Options that ask Mask2Former for instance or panoptic segments. */
export type SegmentPredictOptions = PredictOptions & { task: 'instance' | 'panoptic' };
/** Options that keep the default semantic segmentation (or do not concern segmentation). */
export type SemanticPredictOptions = PredictOptions & { task?: 'semantic' };

export type LoadReport = NativeLoadReport;

/**
 * A loaded model. T is its task when the caller named it (loadModel({ modelType })), else the
 * union of tasks: narrow it with isTask() to get predict's precise result type.
 */
export class VisionModel<T extends ModelType = ModelType> {
  #native: NativeModel | undefined;
  #info: NativeModelInfo;
  #config: Record<string, unknown>;
  #processorConfig: Record<string, unknown>;
  #batching: BatchingSettings | false = false;
  /** Created when batching is first turned on; kept afterwards for its statistics. */
  #batcher: MicroBatcher<NativeImage, Prediction> | undefined;

  /** Created by HuggingFaceModelLoader.loadModel, over the native model it loaded; not for direct use. */
  constructor(handle: NativeModel) {
    this.#native = handle;
    this.#info = handle.info();
    this.#config = JSON.parse(this.#info.config) as Record<string, unknown>;
    this.#processorConfig = JSON.parse(this.#info.processorConfig) as Record<string, unknown>;
  }

  get architecture(): string {
    return this.#info.architecture;
  }
  get modelType(): T {
    // loadModel gives a VisionModel<T> only for the task it asked the native loader for.
    return this.#info.modelType as T;
  }

  /** Whether this model serves `task`; narrows the model's type, so that predict's result type is that task's. */
  isTask<K extends ModelType>(task: K): this is VisionModel<K> {
    return this.#info.modelType === task;
  }
  /** Label names by class index (a dataset's class names once trained on it). */
  get labels(): string[] {
    return this.#info.labels;
  }
  get device(): string {
    return this.#info.device;
  }
  get dtype(): DType {
    return this.#info.dtype;
  }
  /** 'int8' when loaded with quantization: 'int8' (inference only). */
  get quantization(): 'none' | 'int8' {
    return this.#info.quantization;
  }
  /** config.json as the model uses it (ModelConfig overrides applied). */
  get config(): Record<string, unknown> {
    return this.#config;
  }
  /** preprocessor_config.json as the model uses it. */
  get processorConfig(): Record<string, unknown> {
    return this.#processorConfig;
  }
  /** What loading read, initialised afresh, ignored or adapted. */
  get loadReport(): LoadReport {
    return this.#info.loadReport;
  }

  /** @internal Re-reads what training may change (labels, config); a model disposed meanwhile keeps what it had. */
  refresh(): void {
    if (!this.#native) return;
    this.#info = this.#native.info();
    this.#config = JSON.parse(this.#info.config) as Record<string, unknown>;
  }

  /** Evaluation-mode forward pass. Output keys: logits, and loss when labels are given. */
  async forward(inputs: ForwardInputs): Promise<Record<string, Tensor>> {
    if (inputs === null || typeof inputs !== 'object' || !inputs.pixelValues) {
      throw invalidArgument(TypeError, 'forward: expected { pixelValues, pixelMask?, labels? }');
    }
    return (await this.handle().forward(inputs)) as Record<string, Tensor>;
  }

  /** Every parameter and buffer under HuggingFace's key names. */
  async stateDict(): Promise<Record<string, Tensor>> {
    return (await this.handle().stateDict()) as Record<string, Tensor>;
  }

  /** The image processor's pixel values for these images, as transformers computes them. */
  async preprocess(images: ImageInput[]): Promise<{ pixelValues: Tensor; pixelMask?: Tensor }> {
    const given = imageList(images, 'preprocess');
    this.handle(); // a disposed model refuses before any download
    const list = await fetchImageUrls(given, 'preprocess');
    return (await this.handle().preprocess(list)) as { pixelValues: Tensor; pixelMask?: Tensor };
  }

  /**
   * One prediction per image, of the model's task (PredictionFor<T>); `task: 'instance' |
   * 'panoptic'` gives a segmentation model's segments (SegmentPrediction, Mask2Former). With
   * batching on (see setBatching), the call may wait up to maxWaitMs to share a native call with
   * other concurrent calls; its results are the same as without.
   */
  predict(images: ImageInput | ImageInput[], options: SegmentPredictOptions): Promise<SegmentTaskPredictions[T][]>;
  /** One prediction per image, of the model's task (PredictionFor<T>; segmentation: semantic, a label map). */
  predict(images: ImageInput | ImageInput[], options?: SemanticPredictOptions): Promise<PredictionFor<T>[]>;
  /** One prediction per image; options whose `task` is only known at run time may give either segmentation shape. */
  predict(images: ImageInput | ImageInput[], options?: PredictOptions): Promise<AnyPredictionFor<T>[]>;
  async predict(images: ImageInput | ImageInput[], options: PredictOptions = {}): Promise<Prediction[]> {
    const given = imageList(Array.isArray(images) ? images : [images], 'predict');
    const { key, run } = this.#predictor(options);
    this.handle(); // a disposed model refuses at once
    // Fetched before batching, which then reads the sizes from the bytes as for any buffer. A call
    // without URLs goes on at once, so calls reach the batcher in the order they were made.
    const list = given.some(isImageUrl) ? await fetchImageUrls(given, 'predict') : resolveImagePaths(given, 'predict');
    if (!this.#batcher || !this.#isBatching()) return run(list);
    const batchKey = this.#info.padsBatches ? await sameSizeBatchKey(key, list) : key;
    // Batching may have been turned off while the headers were read (a disposed model refuses in submit).
    if (!this.#isBatching()) return run(list);
    return this.#batcher.submit(batchKey, list, run);
  }

  /**
   * Gathers concurrent `predict` calls into batches: calls with the same options (topK,
   * threshold) that arrive within `maxWaitMs` of a batch's first call share one native call over
   * their images, up to `maxBatchSize` images; a batch starts when full or when its wait is over,
   * and one batch of a model runs at a time. `true` uses the defaults ({ maxBatchSize: 16,
   * maxWaitMs: 5 }); `false` (the default) turns batching off. Batches already waiting start as
   * they are. Each call gets its own results, in order, equal to those of a call alone (up to
   * float rounding); an image that fails fails its own call only. Object detection merges only
   * calls whose images all have one width and height, since DetrImageProcessor pads a batch to
   * its largest image and the padding changes the results of the smaller ones.
   * Throws RangeError for a maxBatchSize that is not a positive integer or a maxWaitMs outside
   * 0 to 2^31-1 (setTimeout's limit), TypeError for an unknown option.
   */
  setBatching(options: BatchingOptions | boolean): void {
    const settings = batchingSettings(options, 'setBatching: ');
    this.handle();
    this.#batching = settings;
    if (settings === false) this.#batcher?.flush();
    else if (this.#batcher) this.#batcher.configure(settings);
    else this.#batcher = new MicroBatcher(settings);
  }

  /** The batching settings in force, or false when predict calls run one by one. */
  get batching(): BatchingSettings | false {
    return this.#batching;
  }

  /** What batching has done since the model was loaded (all zero while it was never on). */
  get batchingStats(): BatchingStats {
    return this.#batcher?.stats ?? { requests: 0, images: 0, batches: 0, largestBatch: 0, splitBatches: 0, pending: 0 };
  }

  #isBatching(): boolean {
    return this.#batching !== false;
  }

  /** `key` is the same for calls that may share a native call; the native task checks the options. */
  #predictor(options: PredictOptions): { key: string; run: BatchRunner<NativeImage, Prediction> } {
    if (options === null || typeof options !== 'object' || Array.isArray(options))
      throw invalidArgument(TypeError, `predict: options must be an object, got ${describe(options)}`);
    // A misspelt option (topk) would otherwise be ignored and the default used without a word.
    for (const key of Object.keys(options)) {
      if (!PREDICT_OPTIONS.includes(key as keyof PredictOptions)) {
        const guess = closest(
          key,
          PREDICT_OPTIONS.map((name) => [name, name] as const),
        );
        throw invalidArgument(
          TypeError,
          `predict: unknown option "${key}"${guess ? `, did you mean "${guess}"?` : ''} (expected ${PREDICT_OPTIONS.join(', ')})`,
        );
      }
    }
    const { topK, threshold, task, maskThreshold, overlapMaskAreaThreshold, labelIdsToFuse } = options;
    // Checked here too, so the message names the option as the caller spelled it.
    if (topK !== undefined && !(Number.isInteger(topK) && topK > 0))
      throw invalidArgument(RangeError, `predict: topK must be a positive integer, got ${describe(topK)}`);
    for (const [name, value] of Object.entries({ threshold, maskThreshold, overlapMaskAreaThreshold })) {
      if (value !== undefined && !(typeof value === 'number' && value >= 0 && value <= 1))
        throw invalidArgument(RangeError, `predict: ${name} must be between 0 and 1, got ${describe(value)}`);
    }
    if (task !== undefined && task !== 'semantic' && task !== 'instance' && task !== 'panoptic')
      throw invalidArgument(RangeError, `predict: task must be 'semantic', 'instance' or 'panoptic', got ${JSON.stringify(task)}`);
    if (labelIdsToFuse !== undefined && !(Array.isArray(labelIdsToFuse) && labelIdsToFuse.every((id) => Number.isInteger(id) && id >= 0)))
      throw invalidArgument(TypeError, `predict: labelIdsToFuse must be an array of class indices, got ${JSON.stringify(labelIdsToFuse)}`);
    const native = { topK, threshold, task, maskThreshold, overlapMaskAreaThreshold, labelIdsToFuse };
    return { key: JSON.stringify(native), run: async (list) => this.handle().predict(list, native) };
  }

  /** Writes config.json, model.safetensors and preprocessor_config.json (each atomically). */
  async save(directory: string): Promise<void> {
    if (typeof directory !== 'string' || directory === '') throw invalidArgument(TypeError, 'save: expected a directory path');
    await this.handle().save(directory);
  }

  /**
   * Frees the native model; calls already running finish, later ones are refused, and predict
   * calls still waiting for their batch reject.
   */
  dispose(): void {
    this.#batcher?.close(
      withCode(new Error(`this ${this.architecture} model was disposed while the predict call waited for its batch`), ErrorCode.DISPOSED),
    );
    this.#native?.dispose();
    this.#native = undefined;
  }

  /** @internal */
  handle(): NativeModel {
    if (!this.#native) throw withCode(new Error(`this ${this.architecture} model was disposed`), ErrorCode.DISPOSED);
    return this.#native;
  }
}

const PREDICT_OPTIONS: (keyof PredictOptions)[] = ['topK', 'threshold', 'task', 'maskThreshold', 'overlapMaskAreaThreshold', 'labelIdsToFuse'];

function imageList(images: ImageInput[], method: string): NativeImage[] {
  if (!Array.isArray(images) || images.length === 0) throw invalidArgument(TypeError, `${method}: expected one or more images`);
  return images;
}

/**
 * A task whose preprocessing pads a batch to its largest image (DetrImageProcessor) changes what
 * the model sees near the borders of the smaller ones: its calls may share a batch only when all
 * their images have one size, which no padding then touches. A call whose images differ in
 * size, or whose size the headers do not tell, runs alone (undefined).
 */
async function sameSizeBatchKey(optionsKey: string, images: ImageInput[]): Promise<string | undefined> {
  const sizes = await Promise.all(images.map((image) => imageDimensions(image)));
  const first = sizes[0];
  if (!first || sizes.some((size) => !size || size.width !== first.width || size.height !== first.height)) return undefined;
  return `${optionsKey} ${first.width}x${first.height}`;
}
