/** Library-wide native functions: safetensors files, image decoding, threads. */
import type { NativeOpProfile, NativeRuntimeInfo } from '../binding.js';
import { fetchImageUrl } from './models/image-url.js';
import type { ImageInput } from './models/vision-model.js';
import { native } from './native.js';
import type { Tensor } from './tensor.js';

/** Every tensor of a .safetensors file (validated before any data is read). */
export async function loadSafetensors(path: string): Promise<Record<string, Tensor>> {
  return (await native().loadSafetensors(path)) as Record<string, Tensor>;
}

/** Writes tensors to a .safetensors file atomically (temporary file, fsync, rename). */
export async function saveSafetensors(path: string, tensors: Record<string, Tensor>, metadata?: Record<string, string>): Promise<void> {
  await native().saveSafetensors(path, tensors, metadata);
}

/** Decodes a JPEG, PNG, WebP or GIF (path, http(s) URL or bytes; an animation's first frame) to 8-bit interleaved pixels, as PIL reads it. */
export async function decodeImage(image: ImageInput): Promise<{ width: number; height: number; channels: number; data: Uint8Array }> {
  return native().decodeImage(await fetchImageUrl(image, 'decodeImage'));
}

/** Intra-op compute threads for every later native call (0: the machine's physical cores). */
export function setNumThreads(threads: number): void {
  native().setNumThreads(threads);
}

export function runtimeInfo(): NativeRuntimeInfo {
  return native().runtimeInfo();
}

/**
 * Starts timing every libtorch operator, autograd node and visiontorch kernel that runs on the
 * compute thread (every model computation: forward, predict, trainingStep, train), as
 * torch.profiler's key_averages() counts them, grouped by training phase. Calls queued before it
 * are not timed; one profile runs at a time.
 */
export async function startProfiler(): Promise<void> {
  await native().startProfiler();
}

/** Stops the profile and returns each operator's calls and self time, largest first. */
export async function stopProfiler(): Promise<NativeOpProfile> {
  return native().stopProfiler();
}
