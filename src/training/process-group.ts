/**
 * torch.distributed's default process group, from JavaScript: `init_process_group` with env://
 * semantics (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, or the options), then collectives on
 * CPU tensors. A Python process calling `torch.distributed.init_process_group("gloo")` with the
 * same environment joins the same group: the store, the barrier and the wire are c10d's own.
 */
import type { NativeGroupOptions, NativeProcessGroup } from '../../binding.js';
import { ErrorCode, withCode } from '../errors.js';
import { native } from '../native.js';
import type { Tensor } from '../tensor.js';

export interface ProcessGroupOptions {
  rank?: number;
  worldSize?: number;
  masterAddr?: string;
  masterPort?: number;
  backend?: 'gloo' | 'nccl';
  /** How long the rendezvous and each collective wait for the other ranks (default 60). */
  timeoutSeconds?: number;
}

export class ProcessGroup {
  #native: NativeProcessGroup;
  readonly rank: number;
  readonly size: number;

  private constructor(group: NativeProcessGroup) {
    this.#native = group;
    this.rank = group.rank();
    this.size = group.size();
  }

  /** Joins the group; resolves once every rank has (within the timeout). */
  static async init(options: ProcessGroupOptions = {}): Promise<ProcessGroup> {
    const fromEnvironment = native().distributedEnvironment(process.env);
    const rank = options.rank ?? fromEnvironment?.rank;
    const worldSize = options.worldSize ?? fromEnvironment?.worldSize;
    const masterAddr = options.masterAddr ?? fromEnvironment?.masterAddr ?? process.env.MASTER_ADDR;
    const masterPort = options.masterPort ?? fromEnvironment?.masterPort ?? (process.env.MASTER_PORT ? Number(process.env.MASTER_PORT) : undefined);
    const missing = [
      rank === undefined && 'rank (or RANK)',
      worldSize === undefined && 'worldSize (or WORLD_SIZE)',
      masterAddr === undefined && 'masterAddr (or MASTER_ADDR)',
      masterPort === undefined && 'masterPort (or MASTER_PORT)',
    ].filter(Boolean);
    if (missing.length > 0) throw withCode(new Error(`ProcessGroup.init: no ${missing.join(', ')}`), ErrorCode.CONFIG);
    const group = new (native().NativeProcessGroup)();
    const settings: NativeGroupOptions = {
      ...fromEnvironment,
      rank: rank as number,
      worldSize: worldSize as number,
      masterAddr: masterAddr as string,
      masterPort: masterPort as number,
      backend: options.backend ?? 'gloo',
      timeoutSeconds: options.timeoutSeconds ?? 60,
    };
    await group.init(settings);
    return new ProcessGroup(group);
  }

  /** The element-wise sum of every rank's `tensor` (same shape and dtype on each). */
  async allReduce(tensor: Tensor): Promise<Tensor> {
    return (await this.#native.allReduce(tensor)) as Tensor;
  }
  /** `tensor` as rank `sourceRank` holds it. */
  async broadcast(tensor: Tensor, sourceRank = 0): Promise<Tensor> {
    return (await this.#native.broadcast(tensor, sourceRank)) as Tensor;
  }
  /** Every rank's `tensor`, by rank. */
  async allGather(tensor: Tensor): Promise<Tensor[]> {
    return (await this.#native.allGather(tensor)) as Tensor[];
  }
  async barrier(): Promise<void> {
    await this.#native.barrier();
  }
  /** Leaves the group (collectives in flight finish first). */
  destroy(): void {
    this.#native.destroy();
  }
}
