// The contract between native/addon and src/: every function the native module exports, with
// its TypeScript type. src/ reaches the addon only through these declarations.

export type NativeDType = 'float32' | 'float16' | 'bfloat16' | 'int64' | 'int32' | 'uint8' | 'bool';

export interface NativeTensor {
  dtype: NativeDType;
  shape: number[];
  data: Float32Array | Uint16Array | BigInt64Array | Int32Array | Uint8Array;
}

/** A file path, encoded JPEG, PNG, WebP or GIF bytes, or raw interleaved 8-bit pixels. */
export type NativeImage = string | Uint8Array | { data: Uint8Array; width: number; height: number; channels: 1 | 3 | 4 };

export interface NativeLoadOptions {
  /** A local directory holding config.json (and the weights when pretrained). */
  directory: string;
  task?: NativeTask;
  pretrained?: boolean;
  numClasses?: number;
  id2label?: Record<number, string>;
  imageSize?: number;
  channels?: number;
  ignoreMismatchedSizes?: boolean;
  dtype?: 'float32' | 'bfloat16' | 'float16';
  device?: string;
  /** Seeds random initialisation (pretrained: false, new heads). */
  seed?: number;
  /** auto: channels-last for convolutional models on CPU, where it is faster. */
  memoryFormat?: 'auto' | 'contiguous' | 'channels_last';
  /** int8: dynamic int8 linear layers for CPU float32 inference. */
  quantization?: 'none' | 'int8';
}

export interface NativeLoadReport {
  /** The weights file read, or "random initialisation". */
  source: string;
  /** Head keys absent from the checkpoint, initialised afresh. */
  initialized: string[];
  /** Checkpoint keys the model has no place for (ignored). */
  unexpected: string[];
  /** "key: checkpoint [..] vs model [..]", re-initialised with ignoreMismatchedSizes. */
  mismatched: string[];
  /** Checkpoint tensors resampled to the model's shape (position embeddings). */
  adapted: string[];
}

export interface NativeModelInfo {
  architecture: string;
  modelType: NativeTask;
  /** Preprocessing pads a batch to its largest image (predictions depend on the batch's sizes). */
  padsBatches: boolean;
  labels: string[];
  device: string;
  dtype: NativeDType;
  quantization: 'none' | 'int8';
  /** config.json as the model uses it (overrides applied), JSON text. */
  config: string;
  /** preprocessor_config.json as the model uses it, JSON text. */
  processorConfig: string;
  loadReport: NativeLoadReport;
}

export interface NativeForwardInputs {
  pixelValues: NativeTensor;
  pixelMask?: NativeTensor;
  labels?: NativeTensor | { classLabels: NativeTensor; boxes?: NativeTensor; maskLabels?: NativeTensor }[];
  allowNonFinite?: boolean;
}

export interface NativeClassScore {
  label: string;
  score: number;
  index: number;
}

export interface NativeDetection {
  label: string;
  score: number;
  /** Pixels of the original image. */
  box: { xmin: number; ymin: number; xmax: number; ymax: number };
}

export interface NativeSegmentation {
  width: number;
  height: number;
  /** The class index of every pixel, row-major, at the original size. */
  labelMap: Int32Array;
  /** The classes present, with their pixel counts, most pixels first. */
  segments: { label: string; index: number; pixels: number }[];
}

/** Instance or panoptic segmentation (Mask2Former, predict's `task: 'instance' | 'panoptic'`). */
export interface NativeSegmentSegmentation {
  width: number;
  height: number;
  /** The segment id of every pixel, row-major, at the original size; -1 where no segment. */
  segmentation: Int32Array;
  /** One entry per segment id: its class, score (class probability times mask confidence) and pixel count. */
  segments: { id: number; label: string; index: number; score: number; pixels: number; isThing: boolean }[];
}

/**
 * The tasks of native/core/tasks/, each with what predict() gives per image: the one place the
 * TypeScript types of a task come from (ModelType, Prediction).
 */
export interface NativeTaskPredictions {
  classification: NativeClassScore[];
  object_detection: NativeDetection[];
  segmentation: NativeSegmentation | NativeSegmentSegmentation;
}
export type NativeTask = keyof NativeTaskPredictions;

/** predict()'s options; a task reads those it knows (defaults in native/core/tasks/). */
export interface NativePredictOptions {
  /** Classification: how many labels per image, best first (default 5). */
  topK?: number;
  /**
   * Object detection, instance and panoptic segmentation: the lowest score kept (default 0.5), as
   * post_process_object_detection / post_process_{instance,panoptic}_segmentation.
   */
  threshold?: number;
  /** Segmentation with Mask2Former: 'semantic' (default, a label map), 'instance' or 'panoptic' (segments). */
  task?: 'semantic' | 'instance' | 'panoptic';
  /** Instance and panoptic: the mask probability a pixel needs to belong to a segment (default 0.5). */
  maskThreshold?: number;
  /** Instance and panoptic: the share of a mask that must survive overlaps for its segment to be kept (default 0.8). */
  overlapMaskAreaThreshold?: number;
  /** Panoptic: classes whose segments merge into one per image ("stuff"; default none). */
  labelIdsToFuse?: number[];
}

export interface NativeModel {
  info(): NativeModelInfo;
  forward(inputs: NativeForwardInputs): Promise<Record<string, NativeTensor>>;
  stateDict(): Promise<Record<string, NativeTensor>>;
  preprocess(images: NativeImage[]): Promise<{ pixelValues: NativeTensor; pixelMask?: NativeTensor }>;
  /** One prediction per image, post-processed by the model's task. */
  predict(images: NativeImage[], options: NativePredictOptions): Promise<NativeTaskPredictions[NativeTask][]>;
  save(directory: string): Promise<void>;
  /** The weights and class names save() wrote in `directory` from this same model, into it. */
  loadSaved(directory: string): Promise<void>;
  dispose(): void;
}

export interface NativeArchitecture {
  architecture: string;
  /** config.json's model_type of the family, e.g. "vit". */
  modelType: string;
  /** The task of the head, null for base models. */
  task: NativeTask | null;
  checkpoints: string[];
}

/** One operator, autograd node or visiontorch kernel in an operator profile. */
export interface NativeOpTiming {
  /** The training phase it ran in ("data", "forward", "backward", "clip", "optimizer"), or "" outside any. */
  phase: string;
  /** "aten::addmm", an autograd node ("AddmmBackward0"), a kernel ("visiontorch::autocast_linear"), or the phase itself. */
  name: string;
  calls: number;
  /** Seconds in it, less the records nested inside it. */
  selfSeconds: number;
  totalSeconds: number;
}

export interface NativeOpProfile {
  /** Seconds from start to stop, recorded or not. */
  wallSeconds: number;
  /** Largest self time first. */
  ops: NativeOpTiming[];
}

export interface NativeRuntimeInfo {
  torchVersion: string;
  cudaAvailable: boolean;
  cudaDevices: number;
  computeThreads: number;
  defaultComputeThreads: number;
  /** Freed tensor memory held for reuse (see native/core/runtime/caching_allocator.h), bytes. */
  cachedMemoryBytes: number;
  /**
   * Threads of the most recent inference pass (0 before the first): computeThreads, or fewer for
   * small passes and while other processes hold cores (native/core/runtime/inference_team.h).
   */
  lastInferenceThreads: number;
  /** Whether inference passes found their threads waiting for cores that other processes hold. */
  cpuContended: boolean;
}

/**
 * The camelCase TrainingConfig (src/schemas/training-config.ts) with its defaults applied there:
 * the addon requires every field the schema defaults and applies no default of its own.
 */
export interface NativeTrainingOptions {
  epochs: number;
  maxSteps?: number;
  batchSize: number;
  learningRate: number;
  weightDecay: number;
  optimizer: 'adamw' | 'sgd';
  momentum: number;
  adamBeta1: number;
  adamBeta2: number;
  adamEpsilon: number;
  lrScheduler: 'linear' | 'cosine' | 'constant' | 'constant_with_warmup';
  warmupSteps: number;
  warmupRatio: number;
  gradientAccumulationSteps: number;
  maxGradNorm: number;
  mixedPrecision: 'no' | 'bf16' | 'fp16';
  labelSmoothing: number;
  seed: number;
  evalEvery: number;
  saveEvery: number;
  logEvery: number;
  outputDir: string;
  resumeFrom?: string;
  earlyStoppingPatience?: number;
  earlyStoppingMetric: string;
  decayBiasAndNorm: boolean;
  freezeBatchNorm: boolean;
  gradientCheckpointing: boolean;
  numWorkers: number;
  dropLast: boolean;
  dataset?: NativeDatasetSpec;
  /** This process as one rank of a data-parallel group. */
  distributed?: NativeDistributedOptions;
}

/** A torch.distributed default group (native/core/distributed/process_group.h's GroupOptions). */
export interface NativeGroupOptions {
  rank: number;
  worldSize: number;
  masterAddr: string;
  masterPort: number;
  backend: 'gloo' | 'nccl';
  timeoutSeconds: number;
  /** A launcher hosts the store; ranks connect under "/worker/attempt_<restartCount>" (torchrun's agent store). */
  launcherStore?: boolean;
  restartCount?: number;
  localRank?: number;
  localWorldSize?: number;
}

export interface NativeDistributedOptions extends NativeGroupOptions {
  /** BatchNorm statistics over every rank (SyncBatchNorm). */
  syncBatchNorm: boolean;
}

export interface NativeProcessGroup {
  /** init_process_group: resolves once every rank has joined (within the timeout). */
  init(options: NativeGroupOptions): Promise<void>;
  rank(): number;
  size(): number;
  /** Element-wise sum over the ranks. */
  allReduce(tensor: NativeTensor): Promise<NativeTensor>;
  broadcast(tensor: NativeTensor, sourceRank: number): Promise<NativeTensor>;
  allGather(tensor: NativeTensor): Promise<NativeTensor[]>;
  barrier(): Promise<void>;
  destroy(): void;
}

/** The TCPStore a launcher hosts for its workers (torchrun's agent store). */
export interface NativeStoreServer {
  port(): number;
  close(): void;
}

/** The camelCase DatasetConfig (src/schemas/dataset-config.ts), defaults applied; each format reads its own fields. */
export interface NativeDatasetSpec {
  format: 'imagefolder' | 'csv' | 'jsonl' | 'idx' | 'coco' | 'coco_panoptic' | 'masks';
  root?: string;
  validationRoot?: string;
  path?: string;
  validationPath?: string;
  imageColumn?: string;
  labelColumn?: string;
  maskColumn?: string;
  images?: string;
  labels?: string;
  masks?: string;
  annotations?: string;
  validationImages?: string;
  validationLabels?: string;
  validationMasks?: string;
  validationAnnotations?: string;
  validationSplit?: number;
  limit?: number;
  classNames?: string[];
  augment?: {
    randomResizedCrop?: boolean | { scale: [number, number]; ratio: [number, number] };
    horizontalFlip?: boolean;
    scales?: number[];
  };
}

export interface NativeStepResult {
  loss: number;
  lossDict?: Record<string, number>;
  gradNorm: number;
  learningRate: number;
  gradients?: Record<string, NativeTensor>;
  /** The loss or the gradients were not finite: the step left the weights as they were. */
  skipped: boolean;
}

/** A trainer event: {kind: 'step' | 'eval' | 'save', ...} (src/training/events.ts). */
export type NativeTrainerEvent = { kind: 'step' | 'eval' | 'save'; step: number; [key: string]: unknown };

export interface NativeTrainResult {
  globalStep: number;
  epoch: number;
  trainLoss: number;
  trainRuntime: number;
  trainSamplesPerSecond: number;
  metrics: Record<string, number>;
  bestMetric?: number;
  stoppedEarly: boolean;
  aborted: boolean;
  outputDir: string;
  checkpoint: string;
  /** Data-parallel runs: this rank, the number of ranks, and a digest of its parameters and buffers. */
  rank?: number;
  worldSize?: number;
  stateDigest?: string;
  /** DDP's timing of a step, averaged (seconds): forward_seconds, backward_seconds, allreduce_seconds, allreduce_overlapping_backward_seconds, buckets. */
  communication?: Record<string, number>;
}

export interface NativeTrainer {
  trainingStep(batch: NativeForwardInputs, returnGradients: boolean): Promise<NativeStepResult>;
  train(options: NativeTrainingOptions, onEvent?: (event: NativeTrainerEvent) => void): Promise<NativeTrainResult>;
  evaluate(dataset: NativeDatasetSpec, batchSize: number): Promise<Record<string, number>>;
  /** Asks a running train() to stop after its current step (it saves a checkpoint first). */
  stop(): void;
}

export interface Binding {
  NativeTrainer: new (model: NativeModel, options: NativeTrainingOptions) => NativeTrainer;
  loadModel(options: NativeLoadOptions): Promise<NativeModel>;
  loadSafetensors(path: string): Promise<Record<string, NativeTensor>>;
  saveSafetensors(path: string, tensors: Record<string, NativeTensor>, metadata?: Record<string, string>): Promise<void>;
  decodeImage(image: NativeImage): Promise<{ width: number; height: number; channels: number; data: Uint8Array }>;
  architectures(): NativeArchitecture[];
  /** 0 restores the default (the machine's physical cores). */
  setNumThreads(threads: number): void;
  /** The process exits: drops queued native work and waits for the running job (main thread's 'exit' event). */
  prepareExit(): void;
  runtimeInfo(): NativeRuntimeInfo;
  startProfiler(): Promise<void>;
  stopProfiler(): Promise<NativeOpProfile>;
  NativeProcessGroup: new () => NativeProcessGroup;
  NativeStoreServer: new (host: string, port: number, timeoutSeconds: number) => NativeStoreServer;
  /** The group a torchrun/PyTorchJob environment describes (RANK, WORLD_SIZE, ...), or null when it describes none. */
  distributedEnvironment(environment: Record<string, string | undefined>): NativeGroupOptions | null;
}
