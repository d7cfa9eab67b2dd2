import { z } from 'zod';
import { bool, nonEmptyString, nonNegativeInt, oneOf, parseOrThrow, positiveInt, positiveNumber, whenValid } from './common.js';

const port = () => {
  const e = { error: 'expected a TCP port from 0 to 65535 (0: a free one)' };
  return z.number(e).int(e).nonnegative(e).max(65535, e);
};

/**
 * How DistributedTrainer (and `visiontorch train --nproc-per-node`, or a YAML `distributed:`
 * block) runs a job data-parallel: torchrun's knobs under the names of the public API.
 */
export const DistributedConfigSchema = z
  .strictObject({
    /** Worker processes on this machine (torchrun's --nproc-per-node). */
    numWorkers: positiveInt(),
    /** One CUDA device per worker (cuda:LOCAL_RANK) and NCCL; needs a CUDA build. */
    useGpu: bool().default(false),
    /** Default: nccl with useGpu, else gloo. */
    backend: oneOf(['gloo', 'nccl']).optional(),
    /** Where node 0 hosts the rendezvous store (torchrun's --master-addr). */
    masterAddr: nonEmptyString().default('127.0.0.1'),
    /** Default: a free port on one machine; 29500 (torchrun's) across machines, where every node must know it. */
    masterPort: port().optional(),
    /** This machine's index among numNodes (torchrun's --node-rank). */
    nodeRank: nonNegativeInt().default(0),
    numNodes: positiveInt().default(1),
    /** Compute threads of each worker; default this machine's cores divided among its workers. */
    threadsPerWorker: positiveInt().optional(),
    /** BatchNorm statistics over all ranks (torch.nn.SyncBatchNorm); default per worker, as DDP. */
    syncBatchNorm: bool().default(false),
    /** Restart every worker from the last checkpoint this many times after a failure (torchrun's --max-restarts). */
    maxRestarts: nonNegativeInt().default(0),
    /** How long a collective or the rendezvous waits for a rank before the run fails naming it. */
    timeoutSeconds: positiveNumber().default(60),
  })
  .superRefine(
    (cfg, ctx) => {
      if (cfg.nodeRank >= cfg.numNodes) {
        ctx.addIssue({ code: 'custom', path: ['nodeRank'], message: `must be below {numNodes} (${cfg.numNodes}), got ${cfg.nodeRank}` });
      }
      if (cfg.backend === 'nccl' && !cfg.useGpu) {
        ctx.addIssue({ code: 'custom', path: ['backend'], message: 'nccl runs on GPUs: set {useGpu} too, or use gloo' });
      }
      if (cfg.numNodes > 1 && cfg.masterPort === 0) {
        ctx.addIssue({ code: 'custom', path: ['masterPort'], message: 'must be a fixed port when {numNodes} > 1: every node connects to it' });
      }
      if (cfg.numNodes > 1 && cfg.maxRestarts > 0) {
        ctx.addIssue({
          code: 'custom',
          path: ['maxRestarts'],
          message: 'restarts are coordinated on one machine only: run several nodes under torchrun (--max-restarts) instead',
        });
      }
    },
    whenValid('nodeRank', 'numNodes', 'backend', 'useGpu', 'masterPort', 'maxRestarts'),
  );

export type DistributedConfigInput = z.input<typeof DistributedConfigSchema>;
export type DistributedConfig = z.output<typeof DistributedConfigSchema>;

/** Validates DistributedTrainer's options, applying defaults; throws ConfigError listing every problem. */
export function parseDistributedConfig(input: unknown): DistributedConfig {
  return parseOrThrow(DistributedConfigSchema, input, 'Invalid distributed configuration');
}
