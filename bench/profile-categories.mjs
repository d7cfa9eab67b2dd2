// Sorts an operator profile (visiontorch's stopProfiler(), or the PyTorch peer's torch.profiler
// events in the same shape) into the categories of the README's training profile, so both
// runtimes' steps are counted by the same rules. Self times only: nothing is counted twice.

/** Categories in the order the table prints them. */
export const CATEGORIES = ['products', 'attention', 'normalisation', 'element-wise', 'copies', 'optimizer', 'data', 'framework', 'unrecorded'];

const PRODUCT =
  /^aten::(addmm|mm|matmul|linear|conv2d|convolution|_convolution|mkldnn_convolution|convolution_backward|mkldnn_linear)$|^(Addmm|Mm|Convolution|MkldnnConvolution)Backward|^visiontorch::(linear|autocast_linear|float32_linear|split_linear|fused_convolution|linear_input_gradient|linear_weight_gradient|winograd_convolution|winograd_input_gradient|winograd_weight_gradient)$|^torch::autograd::CppNode<.*(AutocastLinear|SplitLinear)/;
const ATTENTION =
  /^aten::(bmm|baddbmm|_softmax|softmax|_softmax_backward_data)$|^(Bmm|Softmax)Backward|^visiontorch::(attention|training_attention)$|^torch::autograd::CppNode<.*TrainingAttention/;
const NORMALISATION = /layer_norm|batch_norm|LayerNorm|BatchNorm/;
const COPY =
  /^aten::(copy_|_to_copy|to|clone|contiguous|cat|stack|constant_pad_nd|zero_|zeros|fill_|zeros_like)$|^(ToCopy|Clone|Cat)Backward|^visiontorch::pack_bf16_weights$/;
// Operators that only make views or tensor headers, and the autograd engine's own records:
// dispatch and bookkeeping, not arithmetic.
const FRAMEWORK =
  /^aten::(empty|empty_like|empty_strided|view|_reshape_alias|reshape|transpose|t|permute|as_strided|expand|select|slice|unsqueeze|squeeze|flatten|detach|_unsafe_view|alias|resize_|split|chunk|unbind|narrow|item|_local_scalar_dense|result_type|lift_fresh|set_)$|^autograd::engine::evaluate_function|^(View|Transpose|Permute|Expand|Select|Slice|Unsqueeze|Squeeze|Reshape|Unsafe[A-Za-z]*|T|Split|Unbind|AsStrided)Backward[0-9]*$|^torch::autograd::AccumulateGrad$/;

/** The category of one profile entry (phase and operator name). */
export function categoryOf(entry) {
  if (entry.phase === 'optimizer' || entry.phase === 'clip') return 'optimizer';
  if (entry.phase === 'data') return 'data';
  // A phase's own record: its time outside every operator (glue code, the interpreter).
  if (entry.name === entry.phase) return 'framework';
  if (PRODUCT.test(entry.name)) return 'products';
  if (ATTENTION.test(entry.name)) return 'attention';
  if (NORMALISATION.test(entry.name)) return 'normalisation';
  if (COPY.test(entry.name)) return 'copies';
  if (FRAMEWORK.test(entry.name)) return 'framework';
  return 'element-wise';
}

/**
 * Seconds per step in each category, and the largest operators by self time.
 * `unrecorded` is the wall time no record covers (thread hand-offs, the interpreter between
 * records).
 */
export function summarizeProfile(profile, steps, top = 8) {
  const perStep = Object.fromEntries(CATEGORIES.map((category) => [category, 0]));
  let recorded = 0;
  for (const entry of profile.ops) {
    perStep[categoryOf(entry)] += entry.selfSeconds / steps;
    recorded += entry.selfSeconds;
  }
  perStep.unrecorded = Math.max(0, profile.wallSeconds - recorded) / steps;
  const largest = [...profile.ops]
    .sort((a, b) => b.selfSeconds - a.selfSeconds)
    .slice(0, top)
    .map((entry) => ({
      phase: entry.phase,
      name: entry.name,
      category: categoryOf(entry),
      secondsPerStep: entry.selfSeconds / steps,
    }));
  return { secondsPerStep: profile.wallSeconds / steps, categories: perStep, largest };
}
