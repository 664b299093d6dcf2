// Reading and writing NumPy .npy files as LibTorch tensors: the exchange format of `inferforge export`'s samples.
#pragma once

#include <string>

#include <ATen/Tensor.h>

namespace inferforge {

// A C-ordered, little-endian .npy file (float16/32/64, int8/16/32/64, uint8, bool) as a CPU tensor.
// Throws std::runtime_error naming the file and what is wrong with it.
at::Tensor read_npy(const std::string& path);

// Writes a CPU tensor (made contiguous) as a version 1.0 .npy file.
void write_npy(const std::string& path, const at::Tensor& tensor);

}  // namespace inferforge
