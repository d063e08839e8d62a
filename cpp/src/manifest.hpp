// manifest.json -> what the C++ runtime reads from it (contract, dtype, the graph's files), validated as the
// untrusted input it is. Parsing only: no file system, no ONNX Runtime, so cpp/fuzz can drive it directly.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "perceiver/runtime.hpp"

namespace perceiver {

constexpr std::size_t kMaxManifestBytes = 16 * 1024 * 1024;  // as the Python reader: a manifest is metadata

struct FileRecord {
  std::string sha256;
  int64_t bytes;
};

struct Manifest {
  Contract contract;
  std::string dtype;
  std::string onnx_file;                     // relative, inside the artifact, listed under files
  std::optional<std::string> external_data;  // the same
  std::map<std::string, FileRecord> files;
};

// Both throw ArtifactError("<where>: <what is wrong>"); where names the manifest and must already be printable.
void check_manifest_size(uint64_t bytes, const std::string& where);  // before reading the file
Manifest parse_manifest(std::string_view text, const std::string& where);

}  // namespace perceiver
