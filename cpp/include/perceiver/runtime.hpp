// perceiver-export C++ runtime: open an artifact directory (manifest.json + one of its ONNX graphs), check inputs
// against its I/O contract with the same rules and messages as the Python runners, run ONNX Runtime.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace perceiver {

enum class DType { Float32, Float16, BFloat16, Bool };

std::string dtype_name(DType dtype);   // "float32", "float16", "bfloat16", "bool" (as in manifest.json)
std::size_t dtype_size(DType dtype);

// A borrowed, C-contiguous input tensor.
struct TensorView {
  DType dtype;
  std::vector<int64_t> shape;
  const void* data;
};

// An owned output tensor.
struct Tensor {
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
  template <typename T> const T* as() const { return reinterpret_cast<const T*>(bytes.data()); }
  std::size_t numel() const;
};

// An input does not match the artifact's I/O contract (same message as Python's InputError), or an input
// file is not a well-formed .npy (src/npy.hpp).
class InputError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// The artifact directory is missing a file or its manifest is invalid.
class ArtifactError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The requested execution provider is not in the linked onnxruntime.
class BackendUnavailableError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct AxisRange { int64_t min, opt, max; };
constexpr int64_t kMaxAxisLength = 2147483647;   // the manifest schema's bound on axis ranges and fixed sizes

// One input or output of the contract; a dim is a fixed size or a sum of axis names ("k_len + v_len").
struct TensorSpec {
  std::string name;
  DType dtype;
  std::vector<std::string> dims;   // "batch", "k_len + v_len", or a number such as "32"
  bool optional = false;
};

struct Contract {
  std::vector<std::pair<std::string, AxisRange>> axes;   // in manifest order
  std::vector<TensorSpec> inputs, outputs;

  // Checks named inputs and returns each axis' length; throws InputError.
  std::map<std::string, int64_t> check_inputs(const std::map<std::string, const TensorView*>& feeds) const;
  std::vector<int64_t> concrete_shape(const TensorSpec& spec, const std::map<std::string, int64_t>& sizes) const;
  // Throws ArtifactError unless check_inputs can rely on it: ranges within [1, kMaxAxisLength], known axes,
  // every axis of a sum carried by a required input, only bool masks optional. Runtime calls it on load.
  void validate() const;
};

struct Options {
  int intra_op_threads = 0;              // 0 = ONNX Runtime's default
  // In priority order, e.g. {"TensorrtExecutionProvider", "CUDAExecutionProvider"}; empty = CPU only.
  // CUDA and TensorRT need an onnxruntime library built with them (onnxruntime-gpu); CPU is always the fallback.
  std::vector<std::string> providers;
  // Which of the artifact's verified graphs to run: "plain" (model.onnx), or a name under the manifest's "graphs"
  // ("optimized", "int8"); empty = the manifest's default_graph (the fastest verified one where it was exported).
  // Last member, so that aggregate initialisation of the members above keeps working.
  std::string graph;
};

class Runtime {
 public:
  explicit Runtime(const std::string& artifact_dir, const Options& options = {});
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  // Runs the model. mask may be null (= attend to everything). Safe to call from several threads.
  Tensor run(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView* mask = nullptr) const;

  const Contract& contract() const;
  const std::string& dtype() const;   // the artifact's float dtype
  const std::string& graph() const;   // the graph this runtime runs: "plain", "optimized", "int8"

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace perceiver
