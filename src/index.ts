// visiontorch: load, run and fine-tune HuggingFace vision models from Node.js.

export type { NativeOpProfile as OpProfile, NativeOpTiming as OpTiming } from '../binding.js';
export * from './config/index.js';
export { ErrorCode, HubError, ModelNotFoundError } from './errors.js';
export { hubCacheDir } from './hub/cache.js';
export { type DownloadOptions, type DownloadProgress, downloadModel } from './hub/download.js';
export {
  fetchModelDirectory,
  HuggingFaceModelLoader,
  type LoadableConfig,
  type LoadModelOptions,
  type ModelInfo,
  resolveModelDirectory,
} from './models/loader.js';
export type { BatchingOptions, BatchingSettings, BatchingStats } from './models/micro-batcher.js';
export {
  type AnyPredictionFor,
  type ClassificationPrediction,
  type DetectionPrediction,
  type ForwardInputs,
  type ImageInput,
  type Labels,
  type LoadReport,
  type Prediction,
  type PredictionFor,
  type PredictOptions,
  type SegmentationPrediction,
  type SegmentPrediction,
  type SegmentPredictOptions,
  type SegmentTaskPredictions,
  type SemanticPredictOptions,
  type TaskPredictions,
  VisionModel,
} from './models/vision-model.js';
export { type BoxAnnotation, drawDetections, drawSegmentation, drawSegments, type SegmentAnnotation } from './render/annotate.js';
export { decodeImage, loadSafetensors, runtimeInfo, saveSafetensors, setNumThreads, startProfiler, stopProfiler } from './runtime.js';
export { type DType, numel, type Tensor, tensor, toFloat32 } from './tensor.js';
export {
  BaseTrainer,
  type BaseTrainerOptions,
  type Metrics,
  type RankResult,
  type TrainingBatch,
  type TrainingStepResult,
  type TrainOptions,
  type TrainResult,
} from './training/base-trainer.js';
export {
  DistributedTrainer,
  type DistributedTrainOptions,
  type DistributedTrainResult,
  type WorkerFailure,
} from './training/distributed-trainer.js';
export type { EvalEvent, ProgressEvent, SaveEvent, TrainerEvent } from './training/events.js';
export { ProcessGroup, type ProcessGroupOptions } from './training/process-group.js';
