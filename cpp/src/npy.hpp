// Minimal .npy (format 1.0/2.0/3.0) reading and writing for the command-line tool and tests:
// C-order float32, float16 and bool arrays, little-endian, which is what numpy.save writes here.
#pragma once

#include <cstdint>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "perceiver/runtime.hpp"

namespace perceiver::npy {

struct Array {
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
  TensorView view() const { return {dtype, shape, bytes.data()}; }
};

inline std::string descr_of(DType d) {
  switch (d) {
    case DType::Float32: return "<f4";
    case DType::Float16: return "<f2";
    case DType::Bool: return "|b1";
    default: throw std::runtime_error("npy: bfloat16 has no numpy descr");
  }
}

inline Array load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open");
  char magic[6];
  in.read(magic, 6);
  if (!in || std::string(magic, 6) != "\x93NUMPY") throw std::runtime_error(path + ": not a .npy file");
  uint8_t version[2];
  in.read(reinterpret_cast<char*>(version), 2);
  uint32_t header_len = 0;
  if (version[0] == 1) {
    uint8_t b[2];
    in.read(reinterpret_cast<char*>(b), 2);
    header_len = b[0] | (b[1] << 8);
  } else {
    uint8_t b[4];
    in.read(reinterpret_cast<char*>(b), 4);
    header_len = b[0] | (b[1] << 8) | (b[2] << 16) | (uint32_t(b[3]) << 24);
  }
  std::string header(header_len, '\0');
  in.read(header.data(), header_len);
  auto field = [&](const std::string& key) {
    auto p = header.find("'" + key + "':");
    if (p == std::string::npos) throw std::runtime_error(path + ": npy header has no " + key);
    return header.substr(p + key.size() + 3);
  };
  std::string descr = field("descr");
  descr = descr.substr(descr.find('\'') + 1);
  descr = descr.substr(0, descr.find('\''));
  Array a;
  if (descr == "<f4") a.dtype = DType::Float32;
  else if (descr == "<f2") a.dtype = DType::Float16;
  else if (descr == "|b1") a.dtype = DType::Bool;
  else throw std::runtime_error(path + ": unsupported dtype " + descr + " (float32, float16 or bool)");
  if (field("fortran_order").rfind(" True", 0) == 0 || field("fortran_order").rfind("True", 0) == 0)
    throw std::runtime_error(path + ": Fortran-order arrays are not supported");
  std::string shape = field("shape");
  shape = shape.substr(shape.find('(') + 1, shape.find(')') - shape.find('(') - 1);
  std::size_t n = 1;
  std::size_t pos = 0;
  while (pos < shape.size()) {
    auto comma = shape.find(',', pos);
    std::string tok = shape.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    if (tok.find_first_of("0123456789") != std::string::npos) {
      a.shape.push_back(std::stoll(tok));
      n *= static_cast<std::size_t>(a.shape.back());
    }
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  a.bytes.resize(n * dtype_size(a.dtype));
  in.read(reinterpret_cast<char*>(a.bytes.data()), static_cast<std::streamsize>(a.bytes.size()));
  if (!in) throw std::runtime_error(path + ": truncated data");
  return a;
}

inline void save(const std::string& path, DType dtype, const std::vector<int64_t>& shape, const void* data, std::size_t bytes) {
  std::string dims;
  for (std::size_t i = 0; i < shape.size(); ++i) dims += (i ? ", " : "") + std::to_string(shape[i]);
  if (shape.size() == 1) dims += ",";
  std::string header = "{'descr': '" + descr_of(dtype) + "', 'fortran_order': False, 'shape': (" + dims + "), }";
  const std::size_t unpadded = 10 + header.size() + 1;
  header += std::string((64 - unpadded % 64) % 64, ' ') + "\n";
  std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary);
    out.write("\x93NUMPY\x01\x00", 8);
    const uint16_t len = static_cast<uint16_t>(header.size());
    const char le[2] = {static_cast<char>(len & 0xff), static_cast<char>(len >> 8)};
    out.write(le, 2);
    out.write(header.data(), static_cast<std::streamsize>(header.size()));
    out.write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
    if (!out) throw std::runtime_error(path + ": write failed");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) throw std::runtime_error(path + ": rename failed");
}

}  // namespace perceiver::npy
