/** HuggingFaceModelLoader: a ModelConfig in, a VisionModel out, as from_pretrained does it. */
import { resolve } from 'node:path';
import { ModelNotFoundError } from '../errors.js';
import { findCachedSnapshot, hubCacheDir, isDirectory, isFile, isValidRepoId } from '../hub/cache.js';
import { native } from '../native.js';
import { type ModelConfig, ModelType, parseModelConfig } from '../schemas/model-config.js';
import { VisionModel } from './vision-model.js';

export interface LoadModelOptions {
  /** Makes random initialisation (pretrained: false, new heads) reproducible. */
  seed?: number;
  /** Tensor layout of convolutional models; 'auto' picks channels-last on CPU, where it is faster. */
  memoryFormat?: 'auto' | 'contiguous' | 'channels_last';
}

export interface ModelInfo {
  architecture: string;
  modelType: ModelType;
  /** Known hub checkpoints of this class. */
  checkpoints: string[];
}

/** Where `config.modelName`'s files are: a local directory, else the HuggingFace cache. */
export function resolveModelDirectory(config: Pick<ModelConfig, 'modelName' | 'revision' | 'cacheDir' | 'localFilesOnly'>): string {
  const { modelName } = config;
  const searched: string[] = [];
  const local = resolve(modelName);
  // A directory of HuggingFace files, or a TorchScript archive (a .pt file) of a custom model.
  if (isDirectory(local) || isFile(local)) return local;
  searched.push(`local directory ${local} (does not exist)`);

  const looksLikePath = modelName.startsWith('.') || modelName.startsWith('/') || modelName.split('/').length > 2;
  if (looksLikePath || !isValidRepoId(modelName)) {
    throw new ModelNotFoundError(modelName, searched, looksLikePath ? undefined : 'It is not a valid hub id either (expected "org/name").');
  }
  const cacheDir = hubCacheDir(config.cacheDir);
  const cached = findCachedSnapshot(cacheDir, modelName, config.revision ?? 'main');
  if (cached.snapshot) return cached.snapshot;
  searched.push(`HuggingFace cache: ${cached.looked}`);
  throw new ModelNotFoundError(
    modelName,
    searched,
    'Downloading from the hub is not available in this version: put the files in a local directory ' +
      '(config.json, preprocessor_config.json, model.safetensors) or fill the cache with huggingface_hub.',
  );
}

export class HuggingFaceModelLoader {
  /** Loads the model `config` describes (validated with ModelConfigSchema; throws ConfigError). */
  static async loadModel(config: ModelConfig | unknown, options: LoadModelOptions = {}): Promise<VisionModel> {
    const parsed = parseModelConfig(config);
    if (options.seed !== undefined && !(Number.isSafeInteger(options.seed) && options.seed >= 0)) {
      throw new RangeError(`loadModel: seed must be a non-negative integer, got ${options.seed}`);
    }
    const directory = resolveModelDirectory(parsed);
    const handle = await native().loadModel({
      directory,
      task: parsed.modelType,
      pretrained: parsed.pretrained,
      numClasses: parsed.numClasses,
      id2label: parsed.id2label,
      imageSize: parsed.imageSize,
      channels: parsed.channels,
      ignoreMismatchedSizes: parsed.ignoreMismatchedSizes,
      dtype: parsed.dtype,
      device: parsed.device,
      seed: options.seed,
      memoryFormat: options.memoryFormat,
    });
    return new VisionModel(handle);
  }

  /** The architectures this build implements, with known hub checkpoints for each. */
  static getAvailableModels(type?: ModelType): ModelInfo[] {
    if (type !== undefined && !Object.values(ModelType).includes(type)) {
      throw new RangeError(`getAvailableModels: unknown model type "${String(type)}" (expected ${Object.values(ModelType).join(', ')})`);
    }
    return native()
      .architectures()
      // Base models (ViTModel) serve as backbones of their family's classification models.
      .map((a) => ({ architecture: a.architecture, modelType: (a.task ?? ModelType.CLASSIFICATION) as ModelType, checkpoints: a.checkpoints }))
      .filter((info) => type === undefined || info.modelType === type);
  }
}
