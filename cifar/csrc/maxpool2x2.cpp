// 2x2 max pooling (stride 2, no padding, floor mode) of float32 channels-last (NHWC) tensors, for
// training on a CPU. max_pool2d keeps its whole input and an int64 index per output for the
// backward pass (at the first stage of configs/fast.json, 358 MB at batch 1024); this keeps one
// byte per output, which of the window's four inputs won, and its backward pass writes every
// input gradient once instead of zero-filling them and scattering. The results are max_pool2d's,
// bit for bit: the first maximum in row-major order wins a tie, and a NaN wins over numbers.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace {

// The maximum of one window element by element over the channels, and which input won (0..3).
inline void window_max(const float* p0, const float* p1, const float* p2, const float* p3,
                       float* out, uint8_t* won, int64_t c) {
  for (int64_t i = 0; i < c; ++i) {  // branch-free: the compiler vectorizes it
    float m = p0[i];
    uint8_t j = 0;
    float v = p1[i];
    bool take = v > m || v != v;
    m = take ? v : m;
    j = take ? 1 : j;
    v = p2[i];
    take = v > m || v != v;
    m = take ? v : m;
    j = take ? 2 : j;
    v = p3[i];
    take = v > m || v != v;
    m = take ? v : m;
    j = take ? 3 : j;
    out[i] = m;
    won[i] = j;
  }
}

}  // namespace

// x: (N, C, H, W) float32. Returns the pooled (N, C, H/2, W/2) tensor, channels-last, and the
// (N, H/2, W/2, C) uint8 winners that backward() takes.
std::vector<torch::Tensor> forward(torch::Tensor x) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == torch::kFloat && x.device().is_cpu(),
              "maxpool2x2: a 4-d float32 CPU tensor, got ", x.sizes(), " ", x.scalar_type());
  x = x.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3), ho = h / 2, wo = w / 2;
  auto out = torch::empty({n, c, ho, wo}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  auto won = torch::empty({n, ho, wo, c}, x.options().dtype(torch::kUInt8));
  const float* in = x.data_ptr<float>();
  float* o = out.data_ptr<float>();
  uint8_t* k = won.data_ptr<uint8_t>();
  at::parallel_for(0, n * ho, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {  // one output row: two input rows
      const float* top = in + ((r / ho) * h + 2 * (r % ho)) * w * c;
      const float* bottom = top + w * c;
      for (int64_t ow = 0; ow < wo; ++ow) {
        const int64_t at = 2 * ow * c;
        window_max(top + at, top + at + c, bottom + at, bottom + at + c,
                   o + (r * wo + ow) * c, k + (r * wo + ow) * c, c);
      }
    }
  });
  return {out, won};
}

// grad: (N, C, H/2, W/2); won: forward()'s winners. Returns the input's gradient (N, C, h, w),
// channels-last: the output's gradient at each window's winner, 0 elsewhere (and in a last row
// or column that no window covered).
torch::Tensor backward(torch::Tensor grad, torch::Tensor won, int64_t h, int64_t w) {
  grad = grad.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t n = grad.size(0), c = grad.size(1), ho = grad.size(2), wo = grad.size(3);
  TORCH_CHECK(won.scalar_type() == torch::kUInt8 && won.numel() == grad.numel() && ho == h / 2 && wo == w / 2,
              "maxpool2x2: gradient and winners do not match");
  auto gi = torch::empty({n, c, h, w}, grad.options().memory_format(at::MemoryFormat::ChannelsLast));
  const float* g = grad.data_ptr<float>();
  const uint8_t* k = won.data_ptr<uint8_t>();
  float* out = gi.data_ptr<float>();
  at::parallel_for(0, n * h, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {  // one input row
      float* row = out + r * w * c;
      const int64_t oh = (r % h) / 2;
      if (oh >= ho) {
        std::fill(row, row + w * c, 0.f);
        continue;
      }
      const uint8_t left = ((r % h) % 2) * 2, right = left + 1;  // this row's winners' codes
      const int64_t o = ((r / h) * ho + oh) * wo * c;
      for (int64_t ow = 0; ow < wo; ++ow) {
        const float* gp = g + o + ow * c;
        const uint8_t* kp = k + o + ow * c;
        float* lp = row + 2 * ow * c;
        float* rp = lp + c;
        for (int64_t i = 0; i < c; ++i) {
          lp[i] = kp[i] == left ? gp[i] : 0.f;
          rp[i] = kp[i] == right ? gp[i] : 0.f;
        }
      }
      std::fill(row + 2 * wo * c, row + w * c, 0.f);
    }
  });
  return gi;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "2x2 max pooling, returning the winners for backward");
  m.def("backward", &backward, "the input's gradient from the output's and the winners");
}
