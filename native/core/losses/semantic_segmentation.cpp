#include "losses/semantic_segmentation.h"

#include "common/error.h"

namespace vt::losses {

torch::Tensor semantic_segmentation_loss(const torch::Tensor& logits, const torch::Tensor& labels, int64_t ignore_index) {
  VT_CHECK(labels.dim() == 3 && labels.size(0) == logits.size(0), "labels: expected a label map [", logits.size(0),
           ", height, width], got shape ", labels.sizes());
  VT_CHECK(!labels.is_floating_point(), "labels: a label map holds integer class indices, got ", labels.scalar_type());
  const int64_t num_labels = logits.size(1);
  auto target = labels.to(torch::kLong);
  {
    auto valid = target.ne(ignore_index);
    auto bad = valid.logical_and(target.lt(0).logical_or(target.ge(num_labels)));
    if (bad.any().item<bool>()) {
      fail("labels: class ", target.masked_select(bad)[0].item<int64_t>(), " is out of range for ", num_labels, " labels (", ignore_index,
           " marks pixels to ignore)");
    }
  }
  auto upsampled =
      torch::nn::functional::interpolate(logits.to(torch::kFloat32), torch::nn::functional::InterpolateFuncOptions()
                                                                         .size(std::vector<int64_t>{labels.size(1), labels.size(2)})
                                                                         .mode(torch::kBilinear)
                                                                         .align_corners(false));
  if (num_labels > 1) {
    return torch::nn::functional::cross_entropy(upsampled, target,
                                                torch::nn::functional::CrossEntropyFuncOptions().ignore_index(ignore_index));
  }
  auto valid = target.ge(0).logical_and(target.ne(ignore_index)).to(torch::kFloat32);
  auto loss = torch::binary_cross_entropy_with_logits(upsampled.squeeze(1), target.to(torch::kFloat32), {}, {}, at::Reduction::None);
  return (loss * valid).mean();
}

}  // namespace vt::losses
