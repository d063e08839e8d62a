// manifest.json -> what the C++ runtime reads from it (contract, dtype, the graph's files), validated as the
// untrusted input it is. Parsing only: no file system, no ONNX Runtime, so cpp/fuzz can drive it directly.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "perceiver/runtime.hpp"

namespace perceiver {

constexpr std::size_t kMaxManifestBytes = 16 * 1024 * 1024;  // as the Python reader: a manifest is metadata

struct FileRecord {
  std::string sha256;
  int64_t bytes;
};

// One ONNX graph of the artifact: the file ONNX Runtime opens and every file it reads (itself, external data).
struct Graph {
  std::string file;
  std::vector<std::string> files;   // each relative, inside the artifact, listed under files
};

struct Manifest {
  Contract contract;
  std::string dtype;
  std::string onnx_file;                     // relative, inside the artifact, listed under files
  std::optional<std::string> external_data;  // the same
  std::map<std::string, FileRecord> files;
  std::map<std::string, Graph> graphs;       // "plain" (onnx_file) and the manifest's "graphs" ("optimized", "int8")
  std::vector<std::string> graph_names;      // the same names: plain, then in manifest order
  std::string default_graph;                 // a key of graphs: schema 2's default_graph; schema 1: optimized, else plain
};

// Both throw ArtifactError("<where>: <what is wrong>"); where names the manifest and must already be printable.
void check_manifest_size(uint64_t bytes, const std::string& where);  // before reading the file
Manifest parse_manifest(std::string_view text, const std::string& where);
// "plain, optimized, int8": the graphs a message lists (plain first, then in manifest order; printable).
std::string graph_list(const Manifest& manifest);

}  // namespace perceiver
