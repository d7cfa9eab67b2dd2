/** Tensors as they cross the boundary: row-major, contiguous, typed by `dtype`. */
import type { NativeTensor } from '../binding.js';
import { invalidArgument } from './errors.js';

export type DType = 'float32' | 'float16' | 'bfloat16' | 'int64' | 'int32' | 'uint8' | 'bool';

export interface Tensor extends NativeTensor {
  dtype: DType;
  shape: number[];
  /** bfloat16 and float16 travel as Uint16Array (their raw bits). */
  data: Float32Array | BigInt64Array | Int32Array | Uint8Array | Uint16Array;
}

type DataFor<D extends DType> = D extends 'float32'
  ? Float32Array
  : D extends 'int64'
    ? BigInt64Array
    : D extends 'int32'
      ? Int32Array
      : D extends 'float16' | 'bfloat16'
        ? Uint16Array
        : Uint8Array;

const ARRAY_FOR: Record<DType, new (length: number) => Tensor['data']> = {
  float32: Float32Array,
  float16: Uint16Array,
  bfloat16: Uint16Array,
  int64: BigInt64Array,
  int32: Int32Array,
  uint8: Uint8Array,
  bool: Uint8Array,
};

export function numel(shape: readonly number[]): number {
  return shape.reduce((n, d) => n * d, 1);
}

/** A tensor of `dtype` and `shape`; zero-filled unless `data` is given (then its length must fit). */
export function tensor<D extends DType>(dtype: D, shape: number[], data?: DataFor<D>): Tensor & { data: DataFor<D> } {
  const count = numel(shape);
  const values = data ?? (new ARRAY_FOR[dtype](count) as DataFor<D>);
  if (values.length !== count) {
    throw invalidArgument(RangeError, `tensor: data holds ${values.length} elements but shape [${shape.join(', ')}] needs ${count}`);
  }
  return { dtype, shape: [...shape], data: values } as Tensor & { data: DataFor<D> };
}

/** A float32 view of a float32, bfloat16 or float16 tensor's values. */
export function toFloat32(t: Tensor): Float32Array {
  if (t.dtype === 'float32') return t.data as Float32Array;
  if (t.dtype === 'bfloat16') {
    const bits = Uint32Array.from(t.data as Uint16Array, (v) => v << 16);
    return new Float32Array(bits.buffer);
  }
  if (t.dtype === 'float16') {
    return Float32Array.from(t.data as Uint16Array, halfToFloat);
  }
  return Float32Array.from(t.data as ArrayLike<number | bigint>, Number);
}

function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exponent = (h >> 10) & 0x1f;
  const fraction = h & 0x3ff;
  if (exponent === 0) return sign * 2 ** -14 * (fraction / 1024);
  if (exponent === 0x1f) return fraction ? Number.NaN : sign * Number.POSITIVE_INFINITY;
  return sign * 2 ** (exponent - 15) * (1 + fraction / 1024);
}
