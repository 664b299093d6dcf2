#include "npy.h"

#include <cstdint>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

namespace inferforge {
namespace {

const std::vector<std::pair<std::string, at::ScalarType>>& dtypes() {
  static const std::vector<std::pair<std::string, at::ScalarType>> table = {
      {"<f2", at::kHalf}, {"<f4", at::kFloat}, {"<f8", at::kDouble}, {"|i1", at::kChar},
      {"<i2", at::kShort}, {"<i4", at::kInt},  {"<i8", at::kLong},   {"|u1", at::kByte},
      {"|b1", at::kBool}};
  return table;
}

std::string value_of(const std::string& header, const std::string& key, const std::string& path) {
  auto at = header.find("'" + key + "'");
  if (at == std::string::npos) throw std::runtime_error(path + ": .npy header has no '" + key + "'");
  at = header.find(':', at) + 1;
  while (header[at] == ' ') ++at;
  auto end = header[at] == '(' ? header.find(')', at) + 1 : header.find_first_of(",}", at);
  return header.substr(at, end - at);
}

}  // namespace

at::Tensor read_npy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open");
  char magic[8];
  in.read(magic, 8);
  if (!in || std::memcmp(magic, "\x93NUMPY", 6) != 0) throw std::runtime_error(path + ": not a .npy file");
  uint32_t header_len = 0;
  if (magic[6] == 1) {
    uint16_t len16 = 0;
    in.read(reinterpret_cast<char*>(&len16), 2);
    header_len = len16;
  } else {
    in.read(reinterpret_cast<char*>(&header_len), 4);
  }
  std::string header(header_len, ' ');
  in.read(header.data(), header_len);
  std::string descr = value_of(header, "descr", path);
  descr = descr.substr(1, descr.size() - 2);  // strip quotes
  if (value_of(header, "fortran_order", path) != "False")
    throw std::runtime_error(path + ": Fortran-ordered arrays are not read; save with np.ascontiguousarray");
  at::ScalarType type = at::kFloat;
  bool known = false;
  for (const auto& [name, t] : dtypes()) {
    if (name == descr) type = t, known = true;
  }
  if (!known) throw std::runtime_error(path + ": dtype " + descr + " is not supported");
  std::vector<int64_t> shape;
  std::string dims = value_of(header, "shape", path);
  for (size_t i = 1; i < dims.size();) {
    size_t used = 0;
    if (dims[i] >= '0' && dims[i] <= '9') {
      shape.push_back(std::stoll(dims.substr(i), &used));
      i += used;
    } else {
      ++i;
    }
  }
  at::Tensor tensor = at::empty(shape, at::TensorOptions().dtype(type));
  in.read(static_cast<char*>(tensor.data_ptr()), static_cast<std::streamsize>(tensor.nbytes()));
  if (!in) throw std::runtime_error(path + ": file is shorter than its header says");
  return tensor;
}

void write_npy(const std::string& path, const at::Tensor& tensor) {
  at::Tensor t = tensor.to(at::kCPU).contiguous();
  std::string descr;
  for (const auto& [name, type] : dtypes()) {
    if (type == t.scalar_type()) descr = name;
  }
  if (descr.empty()) {  // e.g. bfloat16: written as float32
    t = t.to(at::kFloat);
    descr = "<f4";
  }
  std::string shape = "(";  // Python's tuple syntax: (), (5,), (2, 3)
  for (int64_t i = 0; i < t.dim(); ++i) {
    shape += std::to_string(t.size(i));
    if (t.dim() == 1) shape += ",";
    if (i + 1 < t.dim()) shape += ", ";
  }
  shape += ")";
  std::string header = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
  header.append(63 - (10 + header.size()) % 64, ' ');  // pad so that the data starts at a multiple of 64
  header += '\n';
  std::ofstream out(path, std::ios::binary);
  if (!out) throw std::runtime_error(path + ": cannot write");
  const uint16_t len = static_cast<uint16_t>(header.size());
  out.write("\x93NUMPY\x01\x00", 8);
  out.write(reinterpret_cast<const char*>(&len), 2);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  out.write(static_cast<const char*>(t.data_ptr()), static_cast<std::streamsize>(t.nbytes()));
}

}  // namespace inferforge
