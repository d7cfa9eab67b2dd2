/**
 * `visiontorch init [path]`: writes a commented job file to start from (the shape of the
 * repository's config/model_config.yaml, every key explained), without ever clobbering one.
 */
import { randomBytes } from 'node:crypto';
import { closeSync, fsyncSync, linkSync, mkdirSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';

/** Where `visiontorch train` looks when given no job file, relative to the working directory. */
export const DEFAULT_JOB_FILE = 'config/model_config.yaml';

/** The job `init` writes: fine-tune a pretrained ViT on a folder of images, one subfolder per class. */
export const JOB_TEMPLATE = `# A visiontorch training job, written by \`visiontorch init\`.
# Run it with \`visiontorch train\` (which reads config/model_config.yaml by default) or
# \`visiontorch train <this file>\`. Keys are snake_case; a key left out takes its default.
# Relative paths under data:, and a model directory written ./dir or ../dir, are resolved
# against this file's directory; other relative paths against the working directory.

model:
  # A hub id (org/name: downloaded once into the HuggingFace cache, ~/.cache/huggingface/hub)
  # or a local directory holding config.json and the weights (a model saved by a previous run).
  name: google/vit-base-patch16-224
  # The task: classification | object_detection | segmentation. Optional: by default the one
  # config.json's architecture does (ViTForImageClassification: classification).
  type: classification
  # Start from the checkpoint's weights (true) or from a random initialisation of its config.json (false).
  pretrained: true
  # The size of the classification head: the number of classes of your data (class folders).
  num_classes: 2
  # Lets a head of another size than the checkpoint's (1000 ImageNet classes) start afresh;
  # without it, a size that differs from the checkpoint's is an error.
  ignore_mismatched_sizes: true
  # image_size: 224           # input side in pixels; default: the checkpoint's
  # channels: 3               # input channels; default: the checkpoint's
  # dtype: float32            # float32 | bfloat16 | float16: the weights' type
  # device: auto              # auto | cpu | cuda | cuda:N
  # revision: main            # hub branch, tag or commit
  # local_files_only: false   # true: never ask the hub, use the cache only

training:
  epochs: 3                   # passes over the training set
  batch_size: 16              # images per optimizer step
  learning_rate: 5.0e-5       # peak learning rate (after warmup)
  weight_decay: 0.05          # AdamW's decoupled weight decay (not on biases and LayerNorm weights)
  optimizer: adamw            # adamw | sgd
  lr_scheduler: cosine        # linear | cosine | constant | constant_with_warmup
  warmup_ratio: 0.1           # share of the steps spent warming up (or warmup_steps: N, not both)
  max_grad_norm: 1.0          # gradient clipping; 0 turns it off
  mixed_precision: "no"       # no | bf16 | fp16: bf16 runs about 2x faster on CPUs with AVX512-BF16
  seed: 42                    # makes shuffling, augmentation and new heads reproducible
  eval_every: 0               # evaluate every N optimizer steps; 0: at the end of each epoch
  save_every: 500             # checkpoint every N optimizer steps (and always at the end); 0: at the end only
  log_every: 10               # a progress line every N steps when not on a terminal
  output_dir: runs/latest     # the final model, checkpoint-<step>/ folders, metrics.jsonl, training_chart.png
  # resume_from: runs/latest  # continue an interrupted run from its last checkpoint (or a checkpoint-<step>)
  # early_stopping_patience: 3  # stop after this many evaluations without improvement of eval_loss

data:
  # One subfolder per class, named after it: data/train/cat/*.jpg, data/train/dog/*.jpg, ...
  # Other formats: csv, jsonl (an image and a label per row), idx (MNIST files), coco, masks.
  format: imagefolder
  root: ../data/train        # the training images (relative to this file's directory)
  # The share of the images held out to evaluate on; or validation_root: ../data/validation.
  validation_split: 0.1
  # limit: 1000               # use only the first N images (a quick trial run)
  augment:
    random_resized_crop: true # random crops of 8-100% of the image, resized to image_size
    horizontal_flip: true     # mirror half of the images
`;

/** Thrown when the file exists and --force was not given: a usage error, nothing written. */
export class FileExistsError extends Error {
  constructor(readonly path: string) {
    super(`${path} already exists; give --force to replace it`);
  }
}

/**
 * Writes `content` to `path` atomically: a temporary file beside it, flushed, then put in place
 * whole. Without `force` an existing file is refused, also one created meanwhile (link(2) does
 * not replace). Returns the absolute path and whether a file was replaced.
 */
export function writeJobFile(path: string, content: string, force: boolean): { path: string; replaced: boolean } {
  const target = resolve(path);
  mkdirSync(dirname(target), { recursive: true });
  const temporary = join(dirname(target), `.${basename(target)}.${randomBytes(6).toString('hex')}.tmp`);
  const fd = openSync(temporary, 'wx', 0o644);
  try {
    try {
      writeSync(fd, content);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    if (force) {
      let replaced = true;
      try {
        linkSync(temporary, target);
        replaced = false;
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
        renameSync(temporary, target);
      }
      return { path: target, replaced };
    }
    try {
      linkSync(temporary, target);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'EEXIST') throw new FileExistsError(path);
      throw error;
    }
    return { path: target, replaced: false };
  } finally {
    rmSync(temporary, { force: true });
  }
}
