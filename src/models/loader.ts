/** HuggingFaceModelLoader: a ModelConfig in, a VisionModel out, as from_pretrained does it. */
import { readFileSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { ConfigError, invalidArgument, ModelNotFoundError } from '../errors.js';
import { findCachedSnapshot, hubCacheDir, isDirectory, isFile, isValidRepoId } from '../hub/cache.js';
import { type DownloadProgress, downloadModel } from '../hub/download.js';
import { native } from '../native.js';
import { type ModelConfig, type ModelConfigInput, ModelType, parseModelConfig } from '../schemas/model-config.js';
import { type BatchingOptions, batchingSettings } from './micro-batcher.js';
import { VisionModel } from './vision-model.js';

export interface ModelInfo {
  architecture: string;
  modelType: ModelType;
  /** Known hub checkpoints of this class. */
  checkpoints: string[];
}

/**
 * What loadModel takes: ModelConfigSchema's input (defaults not yet applied), or a ModelConfig
 * already parsed (a ProjectConfig's `model`). Typed so that a misspelt key or a wrong value fails
 * to compile; the schema still checks at run time, for JavaScript callers.
 */
export type LoadableConfig = ModelConfigInput | ModelConfig;

type Location = Pick<ModelConfig, 'modelName' | 'revision' | 'cacheDir' | 'localFilesOnly'>;

export interface LoadModelOptions {
  /** Makes random initialisation (pretrained: false, new heads) reproducible. */
  seed?: number;
  /** Progress of the files downloaded from the hub (none when everything is cached). */
  onProgress?: (event: DownloadProgress) => void;
  /** Hub token for gated and private models; default $HF_TOKEN, $HUGGING_FACE_HUB_TOKEN, $HF_HOME/token. */
  token?: string;
  /** Tensor layout of convolutional models; 'auto' picks channels-last on CPU, where it is faster. */
  memoryFormat?: 'auto' | 'contiguous' | 'channels_last';
  /**
   * Gathers concurrent `predict` calls into shared native calls (see VisionModel.setBatching):
   * `true` for the defaults ({ maxBatchSize: 16, maxWaitMs: 5 }), or the settings; default off.
   */
  batching?: BatchingOptions | boolean;
}

/** The task each architecture class serves: its head's, or for a base model (ViTModel, DetrModel) its family's. */
function architectureTasks(): Map<string, { task: ModelType; family: string }> {
  const all = native().architectures();
  const familyTask = (modelType: string) => all.find((a) => a.modelType === modelType && a.task)?.task ?? ModelType.CLASSIFICATION;
  return new Map(all.map((a) => [a.architecture, { task: (a.task ?? familyTask(a.modelType)) as ModelType, family: a.modelType }]));
}

/**
 * The task `directory`'s config.json names, as AutoModel would pick the class: from
 * `architectures`, else from `model_type`. Undefined when it names nothing this build knows (a
 * TorchScript model, a file that does not parse: loading it says what is wrong).
 */
function inferredModelType(directory: string): ModelType | undefined {
  let config: { architectures?: unknown; model_type?: unknown };
  try {
    config = JSON.parse(readFileSync(join(directory, 'config.json'), 'utf8'));
  } catch {
    return undefined;
  }
  if (config === null || typeof config !== 'object') return undefined;
  const tasks = architectureTasks();
  const named = Array.isArray(config.architectures) && typeof config.architectures[0] === 'string' ? tasks.get(config.architectures[0]) : undefined;
  if (named) return named.task;
  return [...tasks.values()].find((entry) => entry.family === config.model_type)?.task;
}

/** Files that live in a model directory and are never a model by themselves. */
const HUGGINGFACE_FILE = /\.(json|safetensors|bin|msgpack|h5|txt|md)$/;

/** `modelName` as an existing local directory, or the places it was looked for and whether it can be a hub id. */
function localDirectory(modelName: string): { directory?: string; searched: string[]; hubId: boolean } {
  const local = resolve(modelName);
  // One of a model directory's own files (config.json, the weights) named instead of the directory.
  if (isFile(local) && HUGGINGFACE_FILE.test(basename(local))) {
    throw new ModelNotFoundError(
      modelName,
      [`${local} (a file: modelName names the directory that holds config.json, or a TorchScript archive)`],
      `Did you mean its directory, ${dirname(local)}?`,
    );
  }
  // A directory of HuggingFace files, or a TorchScript archive (a .pt file) of a custom model.
  if (isDirectory(local) || isFile(local)) return { directory: local, searched: [], hubId: false };
  const looksLikePath = modelName.startsWith('.') || modelName.startsWith('/') || modelName.split('/').length > 2;
  if (looksLikePath || !isValidRepoId(modelName)) {
    throw new ModelNotFoundError(
      modelName,
      [`local directory ${local} (does not exist)`],
      looksLikePath ? undefined : 'It is not a valid hub id either (expected "org/name").',
    );
  }
  return { searched: [`local directory ${local} (does not exist)`], hubId: true };
}

/** Where `config.modelName`'s files are without a network: a local directory, else a snapshot in the HuggingFace cache. */
export function resolveModelDirectory(config: Location): string {
  const { directory, searched } = localDirectory(config.modelName);
  if (directory) return directory;
  const cached = findCachedSnapshot(hubCacheDir(config.cacheDir), config.modelName, config.revision ?? 'main');
  if (cached.snapshot) return cached.snapshot;
  throw new ModelNotFoundError(config.modelName, [...searched, `HuggingFace cache: ${cached.looked}`]);
}

/**
 * Where `config.modelName`'s files are: a local directory, else the hub through the cache, which
 * downloads what the cache lacks (unless `localFilesOnly` or $HF_HUB_OFFLINE). `weights: false`
 * fetches the configuration files only.
 */
export async function fetchModelDirectory(config: Location, options: Omit<LoadModelOptions, 'seed'> & { weights?: boolean } = {}): Promise<string> {
  const { directory, searched } = localDirectory(config.modelName);
  if (directory) return directory;
  try {
    return await downloadModel(config.modelName, {
      ...options,
      revision: config.revision,
      cacheDir: config.cacheDir,
      localFilesOnly: config.localFilesOnly,
    });
  } catch (error) {
    if (error instanceof ModelNotFoundError) throw new ModelNotFoundError(config.modelName, [...searched, ...error.searched], error.hint);
    throw error;
  }
}

// biome-ignore lint/complexity/noStaticOnlyClass: the public API, named after transformers' loaders (HuggingFaceModelLoader.loadModel)
export class HuggingFaceModelLoader {
  /**
   * Loads the model `config` describes (validated with ModelConfigSchema; throws ConfigError),
   * from a local directory or the hub (see fetchModelDirectory). `seed` makes random
   * initialisation (pretrained: false, new heads) reproducible; `batching` gathers concurrent
   * predict calls into batches.
   */
  static loadModel<T extends ModelType>(config: LoadableConfig & { modelType: T }, options?: LoadModelOptions): Promise<VisionModel<T>>;
  /** Without modelType the task comes from config.json at run time: narrow the model with isTask(). */
  static loadModel(config: LoadableConfig, options?: LoadModelOptions): Promise<VisionModel>;
  static async loadModel(config: LoadableConfig, options: LoadModelOptions = {}): Promise<VisionModel> {
    const parsed = parseModelConfig(config);
    if (options.seed !== undefined && !(Number.isSafeInteger(options.seed) && options.seed >= 0)) {
      throw invalidArgument(RangeError, `loadModel: seed must be a non-negative integer, got ${options.seed}`);
    }
    // Checked before the (possibly long) download and load.
    const batching = batchingSettings(options.batching ?? false, 'loadModel: batching.');
    // Random initialisation needs config.json alone: no weights to download.
    const directory = await fetchModelDirectory(parsed, { onProgress: options.onProgress, token: options.token, weights: parsed.pretrained });
    const task = parsed.modelType ?? inferredModelType(directory);
    if (task === undefined) {
      throw new ConfigError([
        {
          path: 'modelType',
          message: `not given, and ${join(directory, 'config.json')} names no architecture to infer it from (a TorchScript model needs its modelType)`,
        },
      ]);
    }
    const handle = await native().loadModel({
      directory,
      task,
      pretrained: parsed.pretrained,
      numClasses: parsed.numClasses,
      id2label: parsed.id2label,
      imageSize: parsed.imageSize,
      channels: parsed.channels,
      ignoreMismatchedSizes: parsed.ignoreMismatchedSizes,
      dtype: parsed.dtype,
      quantization: parsed.quantization,
      device: parsed.device,
      seed: options.seed,
      memoryFormat: options.memoryFormat,
    });
    const model = new VisionModel(handle);
    if (batching) model.setBatching(batching);
    return model;
  }

  /** The architectures this build implements, with known hub checkpoints for each. */
  static getAvailableModels(type?: ModelType): ModelInfo[] {
    if (type !== undefined && !Object.values(ModelType).includes(type)) {
      throw invalidArgument(RangeError, `getAvailableModels: unknown model type "${String(type)}" (expected ${Object.values(ModelType).join(', ')})`);
    }
    const tasks = architectureTasks();
    return native()
      .architectures()
      .map((a) => ({ architecture: a.architecture, modelType: tasks.get(a.architecture)!.task, checkpoints: a.checkpoints }))
      .filter((info) => type === undefined || info.modelType === type);
  }
}
