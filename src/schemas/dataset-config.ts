import { isAbsolute, resolve } from 'node:path';
import { z } from 'zod';
import { bool, fraction, nonEmptyString, positiveInt, positiveNumber, whenValid } from './common.js';

/** [min, max] with min <= max; `item` checks each end. */
const range = (item: z.ZodNumber) =>
  z.tuple([item, item], { error: 'expected a list [min, max]' }).refine(([lo, hi]) => lo <= hi, { error: 'expected [min, max] with min <= max' });

const unitInterval = () => {
  const e = { error: 'expected a number in (0, 1]' };
  return z.number(e).positive(e).max(1, e);
};

const RandomResizedCropSchema = z.strictObject({
  // torchvision's RandomResizedCrop defaults.
  scale: range(unitInterval()).default([0.08, 1]),
  ratio: range(positiveNumber()).default([3 / 4, 4 / 3]),
});

export const AugmentSchema = z.strictObject({
  /** `true` uses the default scale and ratio ranges. */
  randomResizedCrop: z.union([bool(), RandomResizedCropSchema]).optional(),
  horizontalFlip: bool().optional(),
  /** Detection: a random shortest edge per image from this list (multi-scale training, as DETR's recipe). */
  scales: z.array(positiveInt()).min(1).optional(),
});

const common = {
  /** Fraction of the training set held out for evaluation when no validation set is given. */
  validationSplit: fraction().optional(),
  /** Use only the first N samples (of each split). */
  limit: positiveInt().optional(),
  /** Class names by index, where the files do not carry them (idx, numeric labels in manifests). */
  classNames: z.array(nonEmptyString()).min(1).optional(),
  augment: AugmentSchema.optional(),
};

const manifest = {
  /** The manifest file. */
  path: nonEmptyString(),
  /** Base directory for relative image paths in the manifest; default: the manifest's directory. */
  root: nonEmptyString().optional(),
  validationPath: nonEmptyString().optional(),
  imageColumn: nonEmptyString().default('image'),
  labelColumn: nonEmptyString().default('label'),
  /** Segmentation manifests: the column naming each image's label map (a PNG of class indices). */
  maskColumn: nonEmptyString().default('mask'),
  ...common,
};

const ImageFolderSchema = z.strictObject({
  format: z.literal('imagefolder'),
  /** One subdirectory per class, as torchvision's ImageFolder and HF's `imagefolder`. */
  root: nonEmptyString(),
  validationRoot: nonEmptyString().optional(),
  ...common,
});
const CsvSchema = z.strictObject({ format: z.literal('csv'), ...manifest });
const JsonlSchema = z.strictObject({ format: z.literal('jsonl'), ...manifest });
/** MNIST-style idx files, raw or gzipped. */
const IdxSchema = z.strictObject({
  format: z.literal('idx'),
  images: nonEmptyString(),
  labels: nonEmptyString(),
  validationImages: nonEmptyString().optional(),
  validationLabels: nonEmptyString().optional(),
  ...common,
});

/** COCO object detection: an instances JSON (images, annotations, categories) and the directory of its images. */
const CocoSchema = z.strictObject({
  format: z.literal('coco'),
  annotations: nonEmptyString(),
  images: nonEmptyString(),
  validationAnnotations: nonEmptyString().optional(),
  validationImages: nonEmptyString().optional(),
  ...common,
});

/**
 * COCO panoptic segmentation (Mask2Former): the panoptic JSON (images, annotations with
 * segments_info, categories with isthing), the directory of its images, and `masks`, the directory
 * of its PNGs (segment ids as R + 256 G + 256^2 B).
 */
const CocoPanopticSchema = z.strictObject({
  format: z.literal('coco_panoptic'),
  annotations: nonEmptyString(),
  images: nonEmptyString(),
  masks: nonEmptyString(),
  validationAnnotations: nonEmptyString().optional(),
  validationImages: nonEmptyString().optional(),
  validationMasks: nonEmptyString().optional(),
  ...common,
});

/** Semantic segmentation: images and their label maps (PNGs of class indices, 255 = ignore), paired by file name. */
const MasksSchema = z.strictObject({
  format: z.literal('masks'),
  images: nonEmptyString(),
  masks: nonEmptyString(),
  validationImages: nonEmptyString().optional(),
  validationMasks: nonEmptyString().optional(),
  ...common,
});

type Parsed = z.output<
  | typeof ImageFolderSchema
  | typeof CsvSchema
  | typeof JsonlSchema
  | typeof IdxSchema
  | typeof CocoSchema
  | typeof CocoPanopticSchema
  | typeof MasksSchema
>;

/** The field naming a separate validation set, if one is given. */
function validationField(d: Parsed): string | undefined {
  switch (d.format) {
    case 'imagefolder':
      return d.validationRoot !== undefined ? 'validationRoot' : undefined;
    case 'csv':
    case 'jsonl':
      return d.validationPath !== undefined ? 'validationPath' : undefined;
    case 'idx':
      return d.validationImages !== undefined ? 'validationImages' : undefined;
    case 'coco':
    case 'coco_panoptic':
      return d.validationAnnotations !== undefined ? 'validationAnnotations' : undefined;
    case 'masks':
      return d.validationImages !== undefined ? 'validationImages' : undefined;
  }
}

export const DatasetConfigSchema = z
  .discriminatedUnion('format', [ImageFolderSchema, CsvSchema, JsonlSchema, IdxSchema, CocoSchema, CocoPanopticSchema, MasksSchema])
  .superRefine(
    (d, ctx) => {
      const v = validationField(d);
      if (v && d.validationSplit) {
        ctx.addIssue({ code: 'custom', path: ['validationSplit'], message: `cannot be combined with {${v}}: give one or the other` });
      }
      if (d.format === 'idx' && (d.validationImages === undefined) !== (d.validationLabels === undefined)) {
        const [given, missing] =
          d.validationImages === undefined ? ['validationLabels', 'validationImages'] : ['validationImages', 'validationLabels'];
        ctx.addIssue({ code: 'custom', path: [missing], message: `required when {${given}} is given` });
      }
      if (d.format === 'masks' && (d.validationImages === undefined) !== (d.validationMasks === undefined)) {
        const [given, missing] = d.validationImages === undefined ? ['validationMasks', 'validationImages'] : ['validationImages', 'validationMasks'];
        ctx.addIssue({ code: 'custom', path: [missing], message: `required when {${given}} is given` });
      }
      if (d.format === 'coco_panoptic') {
        const given = (['validationAnnotations', 'validationImages', 'validationMasks'] as const).filter((k) => d[k] !== undefined);
        if (given.length > 0 && given.length < 3) {
          for (const missing of (['validationAnnotations', 'validationImages', 'validationMasks'] as const).filter((k) => d[k] === undefined))
            ctx.addIssue({ code: 'custom', path: [missing], message: `required when {${given.join(', ')}} is given` });
        }
      }
      if (d.format === 'coco' && (d.validationImages === undefined) !== (d.validationAnnotations === undefined)) {
        const [given, missing] =
          d.validationImages === undefined ? ['validationAnnotations', 'validationImages'] : ['validationImages', 'validationAnnotations'];
        ctx.addIssue({ code: 'custom', path: [missing], message: `required when {${given}} is given` });
      }
    },
    whenValid(
      'format',
      'validationSplit',
      'validationRoot',
      'validationPath',
      'validationImages',
      'validationLabels',
      'validationAnnotations',
      'validationMasks',
    ),
  )
  // The split defaults to 10% only when there is no validation set to evaluate on.
  .transform((d) => ({ ...d, validationSplit: d.validationSplit ?? (validationField(d) ? 0 : 0.1) }));

export type DatasetConfigInput = z.input<typeof DatasetConfigSchema>;
export type DatasetConfig = z.output<typeof DatasetConfigSchema>;
export type DatasetFormat = DatasetConfig['format'];
export type AugmentConfig = z.output<typeof AugmentSchema>;

/** The fields of each format that name files or directories. */
export const DATASET_PATH_FIELDS: { [F in DatasetFormat]: (keyof Extract<DatasetConfig, { format: F }>)[] } = {
  imagefolder: ['root', 'validationRoot'],
  csv: ['path', 'root', 'validationPath'],
  jsonl: ['path', 'root', 'validationPath'],
  idx: ['images', 'labels', 'validationImages', 'validationLabels'],
  coco: ['annotations', 'images', 'validationAnnotations', 'validationImages'],
  coco_panoptic: ['annotations', 'images', 'masks', 'validationAnnotations', 'validationImages', 'validationMasks'],
  masks: ['images', 'masks', 'validationImages', 'validationMasks'],
};

/** A copy of `d` with relative paths made absolute against `baseDir`. */
export function resolveDatasetPaths(d: DatasetConfig, baseDir: string): DatasetConfig {
  const out: Record<string, unknown> = { ...d };
  for (const field of DATASET_PATH_FIELDS[d.format] as string[]) {
    const p = out[field];
    if (typeof p === 'string' && !isAbsolute(p)) out[field] = resolve(baseDir, p);
  }
  return out as DatasetConfig;
}
