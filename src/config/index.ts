// The public configuration surface; src/index.ts re-exports from here.
export { ConfigError, type ConfigIssue } from '../errors.js';
export {
  type DistributedConfig,
  type DistributedConfigInput,
  DistributedConfigSchema,
  parseDistributedConfig,
} from '../schemas/distributed-config.js';
export {
  type Device,
  type ModelConfig,
  type ModelConfigInput,
  ModelConfigSchema,
  ModelType,
  parseModelConfig,
} from '../schemas/model-config.js';
export {
  type AugmentConfig,
  type DatasetConfig,
  type DatasetConfigInput,
  DatasetConfigSchema,
  type DatasetFormat,
  parseTrainingConfig,
  type TrainingConfig,
  type TrainingConfigInput,
  TrainingConfigSchema,
} from '../schemas/training-config.js';
export { loadConfig, type ProjectConfig, parseProjectConfig } from './project-config.js';
